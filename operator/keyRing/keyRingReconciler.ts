// Reconciles one KeyRing into its ring in the HSM: creation, scheduled and requested rotation,
// the desired states of versions, destruction when its time has come, and deletion by policy.
// Level-based and idempotent: the HSM holds what has been done (ring ids are the KeyRing's uid,
// rotation requests are recorded with the rotation), so a reconcile that dies anywhere and runs
// again never makes a second key for a version nor repeats a rotation.
import pkcs11js from 'pkcs11js';
import { KeywardError } from '../../core/errors.js';
import { pkcs11Code } from '../../core/hsm/hsmToken.js';
import type { AuditLog } from '../../core/audit/auditLog.js';
import type { Logger } from '../../core/observability/logger.js';
import { RingStateCorruptError, type RingAlgorithm, type RingState, type RingVersion, type VersionState } from '../../core/hsm/ringState.js';
import type { RingStore } from '../../core/hsm/ringStore.js';
import { parseDuration } from '../../core/api/duration.js';
import { algorithmsByPurpose, defaultApprovalWindowMs, type DestroyRequest, type KeyAlgorithm, type KeyRing, type KeyRingDesiredVersion, type KeyRingStatus } from '../../core/api/keyRing.js';
import type { KeyRingLabels, OperatorMetrics } from '../operatorMetrics.js';
import type { Reconcile } from '../runtime/controllerLoop.js';
import { keyRingFinalizer, type KeyRingClient } from './keyRingClient.js';
import { withConditions, type ConditionInput } from '../../core/api/conditions.js';
import { keyRingStatus, nextRotationTime } from './keyRingStatus.js';
import type { KeyUseRecords } from '../../core/keyUse/keyUseRecords.js';
import type { ReEncryptionJobs } from '../retirement/reEncryptionJobs.js';
import { advanceRetirement, type RetirementStep } from '../retirement/retirement.js';
import { etcdRetirementRefusal } from '../retirement/retirementGate.js';

export interface KeyRingReconcilerDeps {
  store: RingStore;
  client: KeyRingClient;
  /** The informer's cache of KeyRings. */
  keyRings: { get(name: string, namespace?: string): KeyRing | undefined };
  tokenLabel: string;
  metrics: OperatorMetrics;
  log: Logger;
  /** Called after an HSM failure, so the next attempt reconnects (and re-initialises the module). */
  recoverHsm: () => void;
  audit: AuditLog;
  /** How long a destruction approval stays usable; see operator/admission/keyRingAdmission.ts. */
  approvalWindowMs?: number;
  /** Re-encryption and retirement of rings the KMS plugin serves; without it, versions are not gated by etcd. */
  retirement?: { keyUse: KeyUseRecords; jobs: ReEncryptionJobs; rewrite?: boolean };
  now?: () => Date;
}

const defaultDestroyWindow = '720h';
/** The HSM ring algorithm of each CRD algorithm the operator generates. */
const hsmAlgorithmOf: Partial<Record<KeyAlgorithm, RingAlgorithm>> = { 'AES-256-GCM': 'AES_256_GCM', 'HMAC-SHA-384': 'HMAC_SHA_384', 'ECDSA-P384': 'ECDSA_P384' };
/** What the refusal of any other algorithm names, e.g. "AES-256-GCM (encryption), ...". */
const generatedAlgorithms = Object.entries(algorithmsByPurpose)
  .flatMap(([purpose, algorithms]) => algorithms.filter((a) => hsmAlgorithmOf[a]).map((a) => `${a} (${purpose})`))
  .join(', ');
/** Look again at least this often, so missed events and clock jumps heal. */
const maxRequeueMs = 60 * 60 * 1000;

/** One reconciler's dependencies and its own memory of what it has audited. */
interface Reconciling extends KeyRingReconcilerDeps {
  /** Reconciles repeat while a request waits for approval; its refusal is audited once. */
  auditedDestructions: Set<string>;
}

export function keyRingReconciler(dependencies: KeyRingReconcilerDeps): Reconcile {
  const deps: Reconciling = { ...dependencies, auditedDestructions: new Set() };
  const now = deps.now ?? (() => new Date());
  return async (key) => {
    const [namespace = '', name = ''] = key.split('/');
    const keyRing = deps.keyRings.get(name, namespace);
    if (!keyRing) {
      // Deleted: its series go with it.
      deps.metrics.forgetKeyRing({ namespace, keyring: name });
      return;
    }
    const end = deps.metrics.reconcileDuration.startTimer();
    try {
      const result = keyRing.metadata.deletionTimestamp ? await finalize(deps, keyRing, now()) : await reconcileRing(deps, keyRing, now());
      end({ result: 'success' });
      return result;
    } catch (err) {
      end({ result: 'error' });
      deps.metrics.reconcileErrors.inc({ reason: failureReason(err) });
      throw err;
    }
  };
}

async function reconcileRing(deps: Reconciling, keyRing: KeyRing, now: Date): Promise<{ requeueAfterMs: number }> {
  const { store, client, metrics } = deps;
  const { name = '', namespace = '', uid = '' } = keyRing.metadata;
  const spec = keyRing.spec;
  if (!keyRing.metadata.finalizers?.includes(keyRingFinalizer)) await client.setFinalizer(keyRing, true);

  const requested = spec.algorithm ?? algorithmsByPurpose[spec.purpose][0];
  const algorithm = hsmAlgorithmOf[requested];
  if (!algorithm) {
    // RSA signing keys are not generated yet: refusing beats making a key of the wrong kind.
    const message = `algorithm ${requested} (purpose ${spec.purpose}) is not generated by this operator version; ${generatedAlgorithms} are`;
    const conditions = withConditions(keyRing.status?.conditions, [{ type: 'Ready', status: 'False', reason: 'PurposeNotSupported', message }], keyRing.metadata.generation ?? 0, now);
    await client.applyStatus(keyRing, { observedGeneration: keyRing.metadata.generation ?? 0, conditions });
    metrics.observeKeyRing({ namespace, keyring: name }, { ready: false });
    return { requeueAfterMs: maxRequeueMs };
  }

  let ring: RingState;
  const rotationPeriodMs = spec.rotationPeriod ? parseDuration(spec.rotationPeriod) : undefined;
  const refused: Refusal[] = [];
  let retirement: RetirementStep | undefined;
  try {
    const ensured = await metrics.hsm('create', () => store.ensure({ ringId: uid, name, namespace, algorithm }));
    ring = ensured.ring;
    if (ensured.created) await client.event(keyRing, 'Normal', 'Created', `version 1 generated in HSM token ${deps.tokenLabel}: key id ${ring.versions[0]?.keyId}`);
    // Until the KeyRing is first Ready: its ring takes the name from any ring whose KeyRing's
    // deletion was never finalized (a listing searches the whole token, so not on every reconcile).
    if (ensured.created || !isReady(keyRing)) {
      for (const released of await metrics.hsm('claimName', () => store.claimName(uid))) {
        await client.event(keyRing, 'Normal', 'NameClaimed', `ring id ${released} released the name ${namespace}/${name} to this KeyRing's ring`);
      }
    }

    if (spec.rotationRequest !== undefined && spec.rotationRequest !== ring.lastRotationRequest) {
      ring = await metrics.hsm('rotate', () => store.rotate({ ringId: uid }, { request: spec.rotationRequest }));
      await announceRotation(deps, keyRing, ring, 'on request');
    }
    const due = nextRotationTime(ring, rotationPeriodMs);
    if (due && due.getTime() <= now.getTime()) {
      ring = await metrics.hsm('rotate', () => store.rotate({ ringId: uid }));
      await announceRotation(deps, keyRing, ring, `on schedule (every ${spec.rotationPeriod})`);
    }

    if (deps.retirement) {
      retirement = await metrics.hsm('keyUse', () => advanceRetirement({ ...deps.retirement!, now }, keyRing, ring));
      for (const event of retirement.events) await client.event(keyRing, event.type, event.reason, event.message);
    }
    // What etcd still needs of each version, as the status about to be written will say.
    const etcdUse = retirement?.reEncryption
      ? { primaryVersion: ring.primary, reEncryption: retirement.reEncryption, versions: ring.versions.map((v) => ({ number: v.number, state: v.state, ...retirement?.versions.get(v.number) })) }
      : undefined;
    const destroyWindowMs = parseDuration(spec.destroyScheduledDuration ?? defaultDestroyWindow);
    for (const desired of [...(spec.versions ?? [])].sort((a, b) => a.number - b.number)) {
      const outcome = await applyDesiredState(deps, keyRing, ring, desired, now, new Date(now.getTime() + destroyWindowMs), etcdUse);
      if ('refused' in outcome) refused.push(outcome);
      else ring = outcome;
    }

    for (const { version } of await metrics.hsm('destroy', () => store.destroyDue(now, uid))) {
      await client.event(keyRing, 'Normal', 'Destroyed', `version ${version}: key material destroyed in HSM token ${deps.tokenLabel}`);
    }
    ring = await metrics.hsm('get', () => store.require({ ringId: uid }));
  } catch (err) {
    deps.recoverHsm();
    await reportFailure(deps, keyRing, err, now);
    throw err;
  }

  const conditions: ConditionInput[] = [
    { type: 'Ready', status: 'True', reason: 'KeyAvailable', message: `version ${ring.primary} is primary in HSM token ${deps.tokenLabel}` },
    refused.length === 0
      ? { type: 'VersionRequestsApplied', status: 'True', reason: 'Applied', message: 'spec.versions is in effect' }
      : { type: 'VersionRequestsApplied', status: 'False', reason: refused[0]?.reason ?? 'TransitionRefused', message: refused.map((r) => r.refused).join('; ') },
  ];
  if (retirement?.condition) conditions.push(retirement.condition);
  await client.applyStatus(keyRing, keyRingStatus(keyRing, ring, { tokenLabel: deps.tokenLabel, rotationPeriodMs, conditions, now, retirement }));
  metrics.observeKeyRing({ namespace, keyring: name }, { ready: true, rotationPeriodMs, ring });
  const next = nextRotationTime(ring, rotationPeriodMs);
  return { requeueAfterMs: Math.min(requeueAfter(ring, next, now), retirement?.requeueAfterMs ?? Number.POSITIVE_INFINITY) };
}

async function announceRotation(deps: Reconciling, keyRing: KeyRing, ring: RingState, why: string): Promise<void> {
  const primary = ring.versions.find((v) => v.number === ring.primary);
  await deps.client.event(keyRing, 'Normal', 'Rotated', `version ${ring.primary} is now primary (${why}): key id ${primary?.keyId}`);
}

/** A desired state the operator does not carry out, and why. */
interface Refusal {
  refused: string;
  reason: 'TransitionRefused' | 'DestroyNotApproved' | 'VersionInUse';
}

/** The steps from one state to another that an admin may ask for; a string says why not. */
function stepsTo(version: RingVersion, target: KeyRingDesiredVersion['state'], primary: number): VersionState[] | string {
  if (version.state === target || (version.state === 'Destroyed' && target === 'DestroyScheduled')) return [];
  if (version.state === 'Destroyed' || version.state === 'PendingGeneration') return `version ${version.number} is ${version.state}; it cannot become ${target}`;
  if (version.number === primary) return `version ${version.number} is the primary and stays Enabled; rotate first`;
  switch (`${version.state}>${target}`) {
    case 'Enabled>Disabled':
    case 'Disabled>Enabled':
    case 'Disabled>DestroyScheduled':
    case 'DestroyScheduled>Disabled':
      return [target];
    case 'DestroyScheduled>Enabled':
      return ['Disabled', 'Enabled'];
    default:
      return `version ${version.number} is Enabled; disable it first and watch for failures before scheduling its destruction`;
  }
}

const stateEvents: Record<string, string> = {
  Disabled: 'VersionDisabled',
  Enabled: 'VersionEnabled',
  DestroyScheduled: 'DestroyScheduled',
};

async function applyDesiredState(
  deps: Reconciling,
  keyRing: KeyRing,
  ring: RingState,
  desired: KeyRingDesiredVersion,
  now: Date,
  destroyAt: Date,
  etcdUse: KeyRingStatus | undefined,
): Promise<RingState | Refusal> {
  const version = ring.versions.find((v) => v.number === desired.number);
  if (!version) return { refused: `version ${desired.number} does not exist`, reason: 'TransitionRefused' };
  const steps = stepsTo(version, desired.state, ring.primary);
  if (typeof steps === 'string') return { refused: steps, reason: 'TransitionRefused' };
  // Retiring: an Enabled version stopping, or a Disabled one going towards destruction.
  const retiring = (version.state === 'Enabled' && steps.length > 0 && desired.state !== 'Enabled') || (version.state === 'Disabled' && desired.state === 'DestroyScheduled');
  const inUse = retiring ? etcdRetirementRefusal(etcdUse, desired.number) : undefined;
  if (inUse) {
    auditRetirement(deps, keyRing, desired, inUse);
    if (!desired.retirementOverride) return { refused: inUse, reason: 'VersionInUse' };
  }
  if (steps.includes('DestroyScheduled')) {
    const refusal = twoPersonRefusal(desired.destroyRequest, deps.approvalWindowMs ?? defaultApprovalWindowMs, now);
    auditDestruction(deps, keyRing, desired.destroyRequest, refusal, desired.number);
    if (refusal) return { refused: `version ${desired.number}: ${refusal}`, reason: 'DestroyNotApproved' };
  }
  let current = ring;
  for (const state of steps) {
    const cancelling = version.state === 'DestroyScheduled' && state === 'Disabled';
    current = await deps.metrics.hsm('setVersionState', () => deps.store.setVersionState({ ringId: ring.ringId }, desired.number, state, { destroyAt }));
    if (state === 'DestroyScheduled') deps.metrics.destructionsScheduled.inc(labelsOf(keyRing));
    const message =
      state === 'DestroyScheduled' ? `version ${desired.number}: key material will be destroyed at ${destroyAt.toISOString()}` : `version ${desired.number} is now ${state}`;
    await deps.client.event(keyRing, 'Normal', cancelling ? 'DestroyCancelled' : (stateEvents[state] ?? state), message);
  }
  return current;
}

/** Deletion: Retain leaves the keys; Destroy schedules every version, never destroying at once. */
async function finalize(deps: Reconciling, keyRing: KeyRing, now: Date): Promise<void> {
  if (!keyRing.metadata.finalizers?.includes(keyRingFinalizer)) return;
  const uid = keyRing.metadata.uid ?? '';
  const destroying = keyRing.spec.deletionPolicy === 'Destroy';
  // An approved deletionPolicy Destroy stands until the deletion: no window applies.
  const refusal = destroying ? twoPersonRefusal(keyRing.spec.deletionDestroyRequest, Number.POSITIVE_INFINITY, now) : undefined;
  if (destroying) auditDestruction(deps, keyRing, keyRing.spec.deletionDestroyRequest, refusal);
  const destroyAt = new Date(now.getTime() + parseDuration(keyRing.spec.destroyScheduledDuration ?? defaultDestroyWindow));
  try {
    // With either policy the ring gives up its name, so a KeyRing created again under the name
    // gets a ring of its own and no component resolves the name to this one (RingStore.resolve).
    await deps.metrics.hsm('release', () => deps.store.release(uid));
    const before = destroying && !refusal ? await deps.store.get({ ringId: uid }) : undefined;
    if (before) {
      const after = await deps.metrics.hsm('scheduleRingDestruction', () => deps.store.scheduleRingDestruction({ ringId: uid }, destroyAt));
      const scheduled = (ring: RingState): number => ring.versions.filter((v) => v.state === 'DestroyScheduled').length;
      deps.metrics.destructionsScheduled.inc(labelsOf(keyRing), Math.max(0, scheduled(after) - scheduled(before)));
    }
  } catch (err) {
    deps.recoverHsm();
    await reportFailure(deps, keyRing, err, now);
    throw err;
  }
  if (destroying && !refusal) {
    await deps.client.event(keyRing, 'Normal', 'DestroyScheduled', `KeyRing deleted with deletionPolicy Destroy: every version is destroyed at ${destroyAt.toISOString()}`);
  } else if (refusal) {
    await deps.client.event(keyRing, 'Warning', 'DestroyNotApproved', `KeyRing deleted with deletionPolicy Destroy, but ${refusal}: its keys stay in HSM token ${deps.tokenLabel}`);
  } else {
    await deps.client.event(keyRing, 'Normal', 'KeysRetained', `KeyRing deleted with deletionPolicy Retain: its keys stay in HSM token ${deps.tokenLabel}`);
  }
  await deps.client.setFinalizer(keyRing, false);
}

/**
 * Why a destruction may not go ahead, or undefined: it needs a request and an approval by two
 * distinct people, stamped by admission, and an approval not older than the window.
 */
function twoPersonRefusal(stamp: DestroyRequest | undefined, windowMs: number, now: Date): string | undefined {
  if (!stamp) return 'destruction was not requested through Keyward admission (no requester recorded); request it again';
  if (!stamp.approvedBy || !stamp.approvedAt) return `destruction requested by ${stamp.requestedBy} awaits approval by a second person holding approveDestroy`;
  if (stamp.approvedBy === stamp.requestedBy) return `destruction was requested and approved by the same person (${stamp.requestedBy}); a second person must approve`;
  const expiresAt = Date.parse(stamp.approvedAt) + windowMs;
  if (now.getTime() > expiresAt) return `the approval by ${stamp.approvedBy} expired unused at ${new Date(expiresAt).toISOString()}; request and approve again`;
  return undefined;
}

/** Audits, once per request, a retirement etcd does not prove safe: refused, or let through by a break-glass stamp. */
function auditRetirement(deps: Reconciling, keyRing: KeyRing, desired: KeyRingDesiredVersion, inUse: string): void {
  const override = desired.retirementOverride;
  const key = `${keyRing.metadata.uid ?? ''}/${desired.number}/${desired.state}/retire/${JSON.stringify(override ?? {})}/${inUse}`;
  if (deps.auditedDestructions.has(key)) return;
  if (deps.auditedDestructions.size > 10_000) deps.auditedDestructions.clear();
  deps.auditedDestructions.add(key);
  deps.audit.record({
    requestId: `${keyRing.metadata.uid ?? ''}/${keyRing.metadata.generation ?? 0}`,
    actor: override?.by ?? desired.destroyRequest?.requestedBy ?? '',
    operation: desired.state === 'DestroyScheduled' ? 'scheduleDestroy' : 'disableVersion',
    result: override ? 'allowed' : 'denied',
    ring: `${keyRing.metadata.namespace ?? ''}/${keyRing.metadata.name ?? ''}`,
    ringId: keyRing.metadata.uid,
    keyVersion: desired.number,
    code: override ? 'BreakGlassRetirement' : 'VersionInUse',
    reason: override ? `break-glass by ${override.by} at ${override.at} although ${inUse}` : inUse,
    ...(override ? { breakGlass: true } : {}),
  });
}

function auditDestruction(deps: Reconciling, keyRing: KeyRing, stamp: DestroyRequest | undefined, refusal: string | undefined, version?: number): void {
  const key = `${keyRing.metadata.uid ?? ''}/${version ?? 'ring'}/${JSON.stringify(stamp ?? {})}/${refusal ?? ''}`;
  if (deps.auditedDestructions.has(key)) return;
  if (deps.auditedDestructions.size > 10_000) deps.auditedDestructions.clear();
  deps.auditedDestructions.add(key);
  deps.audit.record({
    requestId: `${keyRing.metadata.uid ?? ''}/${keyRing.metadata.generation ?? 0}`,
    actor: stamp?.requestedBy ?? '',
    operation: 'scheduleDestroy',
    result: refusal ? 'denied' : 'allowed',
    ring: `${keyRing.metadata.namespace ?? ''}/${keyRing.metadata.name ?? ''}`,
    ringId: keyRing.metadata.uid,
    keyVersion: version,
    code: refusal ? 'TwoPersonRule' : 'Approved',
    reason: refusal ?? `requested by ${stamp?.requestedBy ?? ''}, approved by ${stamp?.approvedBy ?? ''}`,
  });
}

/** Ready=False with a reason the admin can act on; the caller retries with backoff. */
async function reportFailure(deps: Reconciling, keyRing: KeyRing, err: unknown, now: Date): Promise<void> {
  const reason = failureReason(err);
  const message = err instanceof KeywardError ? err.message : `HSM operation failed: ${(err as Error).message}`;
  if (err instanceof RingStateCorruptError) {
    deps.metrics.corruptRingStates.inc();
    deps.log.error({ keyRing: `${keyRing.metadata.namespace}/${keyRing.metadata.name}`, ringId: err.ringId, reason, err: message }, 'ring state in the HSM is corrupt');
  }
  deps.log.warn({ keyRing: `${keyRing.metadata.namespace}/${keyRing.metadata.name}`, reason, err: message }, 'KeyRing not ready');
  // The HSM cannot tell the last rotation now: after a restart the status still can.
  const primary = keyRing.status?.versions?.find((v) => v.number === keyRing.status?.primaryVersion);
  deps.metrics.observeKeyRing(labelsOf(keyRing), {
    ready: false,
    rotationPeriodMs: keyRing.spec.rotationPeriod ? parseDuration(keyRing.spec.rotationPeriod) : undefined,
    lastRotation: primary?.createTime ? new Date(primary.createTime) : undefined,
  });
  const previous = keyRing.status;
  try {
    await deps.client.applyStatus(keyRing, {
      ...previous,
      observedGeneration: keyRing.metadata.generation ?? 0,
      conditions: [
        ...(previous?.conditions ?? []).filter((c) => c.type !== 'Ready'),
        ...withConditions(previous?.conditions, [{ type: 'Ready', status: 'False', reason, message }], keyRing.metadata.generation ?? 0, now),
      ],
    });
    await deps.client.event(keyRing, 'Warning', reason, message);
  } catch (statusErr) {
    deps.log.warn({ err: (statusErr as Error).message }, 'could not record the failure on the KeyRing');
  }
}

const labelsOf = (keyRing: KeyRing): KeyRingLabels => ({ namespace: keyRing.metadata.namespace ?? '', keyring: keyRing.metadata.name ?? '' });

const isReady = (keyRing: KeyRing): boolean => keyRing.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;

function failureReason(err: unknown): string {
  if (err instanceof RingStateCorruptError) return 'RingStateCorrupt';
  const code = pkcs11Code(err);
  if (code === pkcs11js.CKR_MECHANISM_INVALID || code === pkcs11js.CKR_MECHANISM_PARAM_INVALID) return 'MechanismUnsupported';
  if (!(err instanceof KeywardError)) return 'HsmError';
  switch (err.code) {
    case 'Unavailable':
      return 'HsmUnavailable';
    case 'PermissionDenied':
      return 'HsmLoginFailed';
    case 'FailedPrecondition':
      return 'LifecycleRefused';
    default:
      return 'HsmError';
  }
}

/** When to look again: the next rotation or destruction, at most an hour away. */
function requeueAfter(ring: RingState, nextRotation: Date | undefined, now: Date): number {
  const times = ring.versions.filter((v) => v.state === 'DestroyScheduled' && v.destroyAt).map((v) => Date.parse(v.destroyAt ?? ''));
  if (nextRotation) times.push(nextRotation.getTime());
  const soonest = Math.min(now.getTime() + maxRequeueMs, ...times);
  return Math.max(1000, soonest - now.getTime());
}
