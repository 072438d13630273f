// One reconcile's step of a ring's retirement, for a ring the KMS plugin serves: wait until every
// kube-apiserver encrypts with the new primary (its KMS plugin saw an Encrypt under it), have etcd
// rewritten under it, ask the scanner for a fresh count, and say on the KeyRing which older versions
// etcd no longer needs. What each version still protects, and when it was last used, comes from the
// HSM records the scanner, the KMS plugins and the CSI providers write (core/keyUse).
import type { KeyRing, KeyRingStatus, KeyRingVersionStatus, ReEncryptionStatus } from '../../core/api/keyRing.js';
import type { ConditionInput } from '../../core/api/conditions.js';
import type { EtcdScanReport, KeyUseRecord, KeyUseRecords } from '../../core/keyUse/keyUseRecords.js';
import { primaryVersion, type RingState, type RingVersion } from '../../core/hsm/ringState.js';
import type { ReEncryptionJobs } from './reEncryptionJobs.js';
import { etcdRetirementRefusal } from './retirementGate.js';

/** A KMS plugin whose Status was not called for this long has no apiserver calling it. */
const liveStatusMs = 3 * 60_000;
/** A failed run is tried again after this long. */
const retryFailedMs = 10 * 60_000;
/** How often the reconciler looks again: while a run is under way, while retirement waits on a scan, and otherwise (last-use times). */
const activeRequeueMs = 5000;
const waitingRequeueMs = 30_000;
const idleRequeueMs = 5 * 60_000;
/** A ring no KMS plugin uses yet is looked at once a minute, so a plugin starting on it is noticed soon. */
const unservedRequeueMs = 60_000;

export interface RetirementDeps {
  keyUse: KeyUseRecords;
  jobs: ReEncryptionJobs;
  now: Date;
  /** False: the operator may not rewrite (keyward operator --re-encryption=false); the cluster admin re-encrypts. */
  rewrite?: boolean;
}

export type VersionFacts = Pick<KeyRingVersionStatus, 'etcdObjects' | 'etcdObjectsProvenAt' | 'lastDecryptTime' | 'lastUseTime'>;

export interface RetirementStep {
  /** Undefined for a ring no KMS plugin serves. */
  reEncryption?: ReEncryptionStatus;
  /** By version number. */
  versions: Map<number, VersionFacts>;
  /** RetirementComplete, for a ring the KMS plugin serves. */
  condition?: ConditionInput;
  events: Array<{ type: 'Normal' | 'Warning'; reason: string; message: string }>;
  requeueAfterMs?: number;
}

export async function advanceRetirement(deps: RetirementDeps, keyRing: KeyRing, ring: RingState): Promise<RetirementStep> {
  const { now } = deps;
  const uses = await deps.keyUse.uses(ring.ringId);
  const reports = await deps.keyUse.scanReports(ring.ringId);
  const proof = reports.find((r) => r.complete);
  const versions = versionFacts(ring, uses, proof);
  const kmsUses = uses.filter((u) => u.component === 'kms-plugin');
  const previous = keyRing.status?.reEncryption;
  if (kmsUses.length === 0 && !previous) return { versions, events: [], requeueAfterMs: unservedRequeueMs };

  const events: RetirementStep['events'] = [];
  const primary = primaryVersion(ring);
  let run: ReEncryptionStatus = previous?.targetVersion === ring.primary ? { ...previous } : { targetVersion: ring.primary, phase: 'WaitingForApiserver' };
  if (previous && previous.targetVersion !== ring.primary && isActive(previous)) {
    events.push({ type: 'Normal', reason: 'ReEncryptionSuperseded', message: `re-encryption under version ${previous.targetVersion} superseded by version ${ring.primary}` });
  }
  if (!run.apiserverSwitchedAt) {
    const switched = apiserverSwitchedAt(kmsUses, primary, now);
    if (switched) {
      run.apiserverSwitchedAt = switched.toISOString();
      events.push({ type: 'Normal', reason: 'ApiserverSwitched', message: `every kube-apiserver encrypts with version ${ring.primary} (key id ${primary.keyId})` });
    }
  }
  run = await advanceRun(deps, keyRing, ring, run, reports, events);

  const status: KeyRingStatus = {
    primaryVersion: ring.primary,
    reEncryption: run,
    versions: ring.versions.map((v) => ({ number: v.number, state: v.state, ...versions.get(v.number) })),
  };
  const condition = retirementCondition(status, ring, run, reports);
  const requeueAfterMs = isActive(run) ? activeRequeueMs : condition.status === 'False' ? waitingRequeueMs : idleRequeueMs;
  return { reEncryption: run, versions, condition, events, requeueAfterMs };
}

async function advanceRun(
  deps: RetirementDeps,
  keyRing: KeyRing,
  ring: RingState,
  run: ReEncryptionStatus,
  reports: EtcdScanReport[],
  events: RetirementStep['events'],
): Promise<ReEncryptionStatus> {
  const { now, jobs } = deps;
  const settings = keyRing.spec.reEncryption;
  if (settings?.enabled === false) return { ...run, phase: 'Off', message: 'spec.reEncryption.enabled is false: objects stay under the version they were written with' };
  if (deps.rewrite === false) {
    const message = 'the operator does not rewrite etcd here (--re-encryption=false; chart value operator.reEncryption.enabled): objects stay under the version they were written with until the cluster admin re-encrypts them';
    return { ...run, phase: 'Off', message };
  }
  let next = run.phase === 'Off' ? { ...run, phase: 'WaitingForApiserver' as const, message: undefined } : run;

  // A failed run whose objects went away since (deleted, or rewritten by their owners): done.
  const laterProof = next.phase === 'Failed' && next.completedAt ? reports.find((r) => r.complete && Date.parse(r.startedAt) > Date.parse(next.completedAt ?? '')) : undefined;
  if (laterProof && olderCounts(ring, laterProof).length === 0) {
    events.push({ type: 'Normal', reason: 'ReEncryptionComplete', message: `etcd holds nothing under versions older than ${ring.primary} (scan at ${laterProof.startedAt})` });
    return { ...next, phase: 'Complete', message: `etcd holds nothing under older versions (scan at ${laterProof.startedAt}); the objects that could not be rewritten are gone` };
  }
  if (next.phase === 'Failed' && next.completedAt && now.getTime() - Date.parse(next.completedAt) >= retryFailedMs) {
    jobs.forget(ring.ringId);
    next = { ...next, phase: 'Rewriting', startedAt: now.toISOString(), completedAt: undefined, rewrittenObjects: 0, failedObjects: 0 };
  }
  if (next.phase === 'WaitingForApiserver') {
    if (!next.apiserverSwitchedAt) return { ...next, message: `waiting until every kube-apiserver encrypts with version ${ring.primary} (it asks the KMS plugin about once a minute)` };
    next = { ...next, phase: 'Rewriting', startedAt: now.toISOString() };
    events.push({ type: 'Normal', reason: 'ReEncryptionStarted', message: `rewriting etcd under version ${ring.primary}` });
  }
  if (next.phase === 'Rewriting') {
    const progress = jobs.ensure({
      ringId: ring.ringId,
      key: `${keyRing.metadata.namespace ?? ''}/${keyRing.metadata.name ?? ''}`,
      target: ring.primary,
      resources: resourcesToRewrite(reports),
      maxWritesPerSecond: settings?.maxWritesPerSecond ?? 100,
      method: settings?.method ?? 'Auto',
    });
    next = { ...next, method: progress.method, rewrittenObjects: progress.rewritten, failedObjects: progress.failed };
    if (!progress.done) return { ...next, message: `${progress.rewritten} objects rewritten${progress.note ? `; ${progress.note}` : ''}` };
    next = { ...next, completedAt: now.toISOString() };
    if (progress.error || progress.failed > 0) {
      const why = progress.error ?? `${progress.failed} objects could not be rewritten: ${progress.failures.join('; ')}`;
      events.push({ type: 'Warning', reason: 'ReEncryptionFailed', message: why.slice(0, 1024) });
      return { ...next, phase: 'Failed', message: `${why.slice(0, 3500)}; older versions stay protected; tried again in ${retryFailedMs / 60000} min` };
    }
    next = { ...next, phase: 'Verifying' };
    events.push({ type: 'Normal', reason: 'ReEncryptionRewritten', message: `${progress.rewritten} objects rewritten under version ${ring.primary} (${progress.method}); asking for a scan of etcd` });
  }
  if (next.phase === 'Verifying') {
    const base = scanRequestId(next);
    const answer = reports.find((r) => r.complete && asksFor(r.request, base));
    if (!answer) {
      // Looked at on every look: cheap, and it survives a restart between rewriting and scanning.
      const asked = await deps.keyUse.scanRequest(ring.ringId);
      let request = asked && asksFor(asked.request, base) ? asked.request : base;
      // The scanner counts a request answered even when its scan did not finish, and would not scan
      // for it again: ask again under a new id.
      if (reports.some((r) => r.request === request && !r.complete)) request = `${base}~${now.getTime()}`;
      if (asked?.request !== request) await deps.keyUse.requestScan(ring.ringId, { schema: 1, request, requestedAt: now.toISOString() });
      return { ...next, message: 'waiting for a scan of etcd to count what older versions still protect' };
    }
    const remaining = olderCounts(ring, answer);
    if (remaining.length === 0) {
      events.push({ type: 'Normal', reason: 'ReEncryptionComplete', message: `etcd holds nothing under versions older than ${ring.primary} (scan at ${answer.startedAt})` });
      return { ...next, phase: 'Complete', message: `etcd holds nothing under older versions (scan at ${answer.startedAt})` };
    }
    const why = `after rewriting, etcd still holds ${describeCounts(remaining)} (scan at ${answer.startedAt}; e.g. ${sampleKeys(ring, answer).join(', ')})`;
    events.push({ type: 'Warning', reason: 'ReEncryptionFailed', message: why.slice(0, 1024) });
    return { ...next, phase: 'Failed', message: `${why.slice(0, 3500)}; older versions stay protected; tried again in ${retryFailedMs / 60000} min` };
  }
  return next;
}

const isActive = (run: ReEncryptionStatus): boolean => run.phase !== 'Complete' && run.phase !== 'Off';

/** One scan request per finished rewrite: a retried run asks again. */
const scanRequestId = (run: ReEncryptionStatus): string => `v${run.targetVersion}-${run.completedAt ?? ''}`;
/** Whether a request id is this run's: its first request, or one asked again after a scan that did not finish. */
const asksFor = (request: string | undefined, base: string): boolean => request === base || (request?.startsWith(`${base}~`) ?? false);

/**
 * When the last live kube-apiserver began encrypting with the primary, or undefined while one has
 * not: every KMS plugin whose Status is still being called has seen an Encrypt under the primary.
 */
export function apiserverSwitchedAt(kmsUses: KeyUseRecord[], primary: RingVersion, now: Date): Date | undefined {
  const live = kmsUses.filter((u) => u.lastStatusAt && now.getTime() - Date.parse(u.lastStatusAt) < liveStatusMs);
  if (live.length === 0) return undefined;
  let latest = 0;
  for (const use of live) {
    const at = Date.parse(use.versions[primary.keyId]?.lastEncryptAt ?? '');
    if (!Number.isFinite(at) || at < Date.parse(primary.createdAt)) return undefined;
    latest = Math.max(latest, at);
  }
  return new Date(latest);
}

/** The resources the latest complete scan found objects of; Secrets when there is no scan yet. */
function resourcesToRewrite(reports: EtcdScanReport[]): string[] {
  const scanned = reports.find((r) => r.complete)?.resources.filter((r) => r.objects > 0).map((r) => r.resource) ?? [];
  return scanned.length > 0 ? scanned : ['secrets'];
}

const countOf = (report: EtcdScanReport, keyId: string): number => report.resources.reduce((sum, r) => sum + (r.byKeyId[keyId] ?? 0), 0);

function olderCounts(ring: RingState, report: EtcdScanReport): Array<{ number: number; count: number }> {
  return ring.versions
    .filter((v) => v.number !== ring.primary)
    .map((v) => ({ number: v.number, count: countOf(report, v.keyId) }))
    .filter((c) => c.count > 0);
}

const describeCounts = (counts: Array<{ number: number; count: number }>): string =>
  counts.map((c) => `${c.count} object${c.count === 1 ? '' : 's'} under version ${c.number}`).join(', ');

function sampleKeys(ring: RingState, report: EtcdScanReport): string[] {
  return ring.versions.filter((v) => v.number !== ring.primary).flatMap((v) => report.samples[v.keyId] ?? []).slice(0, 5);
}

function latestOf(values: Array<string | undefined>): string | undefined {
  const times = values.filter((v): v is string => typeof v === 'string' && Number.isFinite(Date.parse(v)));
  return times.length > 0 ? times.reduce((a, b) => (Date.parse(a) >= Date.parse(b) ? a : b)) : undefined;
}

/** Per version: what the latest complete scan counted, and its last use by the KMS plugins and CSI providers. */
function versionFacts(ring: RingState, uses: KeyUseRecord[], proof: EtcdScanReport | undefined): Map<number, VersionFacts> {
  const facts = new Map<number, VersionFacts>();
  for (const version of ring.versions) {
    const entry: VersionFacts = {};
    if (proof && version.state !== 'Destroyed') {
      entry.etcdObjects = countOf(proof, version.keyId);
      entry.etcdObjectsProvenAt = proof.startedAt;
    }
    const decrypted = latestOf(uses.filter((u) => u.component === 'kms-plugin').map((u) => u.versions[version.keyId]?.lastDecryptAt));
    const used = latestOf(uses.filter((u) => u.component === 'csi-provider').map((u) => u.versions[version.keyId]?.lastUseAt));
    if (decrypted) entry.lastDecryptTime = decrypted;
    if (used) entry.lastUseTime = used;
    facts.set(version.number, entry);
  }
  return facts;
}

/** RetirementComplete: True once etcd is proven to need no version but the primary. */
function retirementCondition(status: KeyRingStatus, ring: RingState, run: ReEncryptionStatus, reports: EtcdScanReport[]): ConditionInput {
  const older = ring.versions.filter((v) => v.number !== ring.primary && v.state !== 'Destroyed' && v.state !== 'PendingGeneration');
  if (older.length === 0) return { type: 'RetirementComplete', status: 'True', reason: 'NothingToRetire', message: `version ${ring.primary} is the only version with key material` };
  const refusals = older.map((v) => etcdRetirementRefusal(status, v.number)).filter((r): r is string => r !== undefined);
  if (refusals.length === 0) {
    const provenAt = status.versions?.find((v) => v.number === older[0]?.number)?.etcdObjectsProvenAt;
    return {
      type: 'RetirementComplete',
      status: 'True',
      reason: 'Retirable',
      message: `etcd holds nothing under versions ${older.map((v) => v.number).join(', ')} (scan at ${provenAt}): they may be disabled and destroyed`,
    };
  }
  const failedScan = reports[0] && !reports[0].complete ? reports[0] : undefined;
  if (failedScan) {
    return { type: 'RetirementComplete', status: 'False', reason: 'ScanFailed', message: `the last scan of etcd did not finish (${failedScan.error ?? 'no reason given'}): ${refusals.join('; ')}` };
  }
  const reason = { WaitingForApiserver: 'AwaitingApiserver', Rewriting: 'ReEncrypting', Verifying: 'AwaitingScan', Failed: 'ReEncryptionFailed', Complete: 'ObjectsRemain', Off: 'ObjectsRemain' }[run.phase];
  return { type: 'RetirementComplete', status: 'False', reason, message: refusals.join('; ').slice(0, 4000) };
}
