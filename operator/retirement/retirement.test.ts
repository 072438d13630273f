// Retirement step by step against a real SoftHSM2 token: rings made and rotated by RingStore, and
// the key-use records and etcd scan reports written into the HSM as the KMS plugins, the CSI
// providers and the scanner write them. Only the rewrite itself, which needs a real kube-apiserver
// (e2e/retirement runs it), is a stub here: RewriteStub below.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { KeyRing, KeyRingSpec } from '../../core/api/keyRing.js';
import { HsmRecords } from '../../core/hsm/hsmRecords.js';
import type { RingState } from '../../core/hsm/ringState.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import { keyUseWriter } from '../../core/keyUse/keyUseRecorder.js';
import { KeyUseRecords, type EtcdScanReport, type KeyUseRecord, type VersionUse } from '../../core/keyUse/keyUseRecords.js';
import { useSoftHsmToken } from '../../testbed/hsm/softHsmFixture.js';
import type { ReEncryptionJobs, ReEncryptionProgress, ReEncryptionRequest } from './reEncryptionJobs.js';
import { advanceRetirement, type RetirementStep } from './retirement.js';
import { etcdRetirementRefusal } from './retirementGate.js';

const minute = 60_000;

/**
 * A STUB FOR THE REWRITE ONLY: ReEncryptionJobs' interface (ensure, forget, progress), rewriting
 * nothing. A test says when a run finishes and how. Everything else here is the real HSM.
 */
class RewriteStub {
  readonly started: ReEncryptionRequest[] = [];
  readonly forgotten: string[] = [];
  ensureCalls = 0;
  private readonly runs = new Map<string, { request: ReEncryptionRequest; progress: ReEncryptionProgress }>();

  progress(ringId: string, target: number): ReEncryptionProgress | undefined {
    const run = this.runs.get(ringId);
    return run?.request.target === target ? run.progress : undefined;
  }

  ensure(request: ReEncryptionRequest): ReEncryptionProgress {
    this.ensureCalls++;
    const existing = this.runs.get(request.ringId);
    if (existing?.request.target === request.target) return existing.progress;
    const progress: ReEncryptionProgress = { target: request.target, method: 'Rewrite', done: false, rewritten: 0, failed: 0, failures: [] };
    this.runs.set(request.ringId, { request, progress });
    this.started.push(request);
    return progress;
  }

  forget(ringId: string): void {
    const run = this.runs.get(ringId);
    if (run && !run.progress.done) return;
    this.runs.delete(ringId);
    this.forgotten.push(ringId);
  }

  /** The run under way for a ring moves on, or ends. */
  update(ringId: string, change: Partial<ReEncryptionProgress>): void {
    const run = this.runs.get(ringId) ?? assert.fail(`no rewrite under way for ring ${ringId}`);
    Object.assign(run.progress, change);
  }
}

describe('Retirement against a real SoftHSM2 token: re-encryption phases, scans and the gate [practice:verified-retirement]', () => {
  const hsm = useSoftHsmToken();
  let clock = Date.parse('2026-12-01T10:00:00.000Z');
  let store: RingStore;
  let keyUse: KeyUseRecords;
  let jobs: RewriteStub;
  before(() => {
    store = new RingStore(hsm.token, () => new Date(clock));
    keyUse = new KeyUseRecords(new HsmRecords(hsm.token));
  });
  beforeEach(() => {
    jobs = new RewriteStub();
  });

  const iso = (ms = clock): string => new Date(ms).toISOString();
  const tick = (ms: number): string => iso((clock += ms));

  /** One KeyRing and its ring, and what the reconciler would have written to status after each step. */
  interface Subject {
    keyRing: KeyRing;
    ring: RingState;
    step?: RetirementStep;
  }

  const makeRing = async (spec: Partial<KeyRingSpec> = {}): Promise<Subject> => {
    const ringId = randomUUID();
    const name = `r-${ringId.slice(0, 8)}`;
    const ring = await store.create({ ringId, name, namespace: 'kube-system' });
    const keyRing: KeyRing = {
      apiVersion: 'keyward.dev/v1alpha1',
      kind: 'KeyRing',
      metadata: { name, namespace: 'kube-system', uid: ringId },
      spec: { purpose: 'encryption', destroyScheduledDuration: '720h', deletionPolicy: 'Retain', ...spec },
    };
    return { keyRing, ring };
  };
  const rotate = async (s: Subject): Promise<void> => {
    s.ring = await store.rotate({ ringId: s.ring.ringId });
  };
  const keyId = (s: Subject, number: number): string => s.ring.versions.find((v) => v.number === number)?.keyId ?? assert.fail(`no version ${number}`);

  /** One reconcile's retirement step, and the status the reconciler writes from it. */
  const advance = async (s: Subject, options: { rewrite?: boolean } = {}): Promise<RetirementStep> => {
    s.ring = await store.require({ ringId: s.ring.ringId });
    const step = await advanceRetirement({ keyUse, jobs: jobs as unknown as ReEncryptionJobs, now: new Date(clock), ...options }, s.keyRing, s.ring);
    s.step = step;
    s.keyRing.status = {
      primaryVersion: s.ring.primary,
      ...(step.reEncryption ? { reEncryption: step.reEncryption } : {}),
      versions: s.ring.versions.map((v) => ({ number: v.number, state: v.state, keyId: v.keyId, ...step.versions.get(v.number) })),
    };
    return step;
  };
  const phase = (s: Subject): string | undefined => s.keyRing.status?.reEncryption?.phase;
  const reasons = (step: RetirementStep): string[] => step.events.map((e) => e.reason);
  const gate = (s: Subject, number: number): string | undefined => etcdRetirementRefusal(s.keyRing.status, number);

  /** What a KMS plugin's KeyUseRecorder writes: Status last called at `statusAt`, uses by version number. */
  const pluginUse = async (s: Subject, host: string, statusAt: string | undefined, uses: Record<number, VersionUse>): Promise<void> => {
    const record: KeyUseRecord = {
      schema: 1,
      ringId: s.ring.ringId,
      component: 'kms-plugin',
      host,
      updatedAt: iso(),
      ...(statusAt ? { statusKeyId: keyId(s, s.ring.primary), lastStatusAt: statusAt } : {}),
      versions: Object.fromEntries(Object.entries(uses).map(([number, use]) => [keyId(s, Number(number)), use])),
    };
    await keyUse.writeUse(record, keyUseWriter('kms-plugin', host));
  };
  const providerUse = async (s: Subject, host: string, uses: Record<number, VersionUse>): Promise<void> => {
    const versions = Object.fromEntries(Object.entries(uses).map(([number, use]) => [keyId(s, Number(number)), use]));
    await keyUse.writeUse({ schema: 1, ringId: s.ring.ringId, component: 'csi-provider', host, updatedAt: iso(), versions }, keyUseWriter('csi-provider', host));
  };
  /** What the scanner writes after a scan of etcd: objects per version number, by resource. */
  const scanned = async (
    s: Subject,
    counts: Record<string, Record<number, number>>,
    options: { request?: string; complete?: boolean; error?: string; writer?: string } = {},
  ): Promise<EtcdScanReport> => {
    const startedAt = iso();
    const resources = Object.entries(counts).map(([resource, byVersion]) => {
      const byKeyId = Object.fromEntries(Object.entries(byVersion).map(([number, count]) => [keyId(s, Number(number)), count]));
      return { resource, objects: Object.values(byVersion).reduce((a, b) => a + b, 0), byKeyId, otherProvider: 0, unencrypted: 0 };
    });
    const samples: Record<string, string[]> = {};
    for (const [resource, byVersion] of Object.entries(counts)) {
      for (const [number, count] of Object.entries(byVersion)) {
        const id = keyId(s, Number(number));
        samples[id] = [...(samples[id] ?? []), ...Array.from({ length: Math.min(count, 3) }, (_, i) => `/registry/${resource}/default/${resource}-${number}-${i}`)];
      }
    }
    const complete = options.complete ?? true;
    const report: EtcdScanReport = {
      schema: 1,
      ringId: s.ring.ringId,
      provider: 'keyward',
      ...(options.request ? { request: options.request } : {}),
      startedAt,
      finishedAt: tick(2000),
      ...(complete ? { revision: 4242 } : {}),
      complete,
      ...(options.error ? { error: options.error } : {}),
      resources: complete ? resources : [],
      samples: complete ? samples : {},
    };
    await keyUse.writeScanReport(report, options.writer ?? 'scanner@cp-1');
    return report;
  };
  /** The scanner answers the operator's pending request. */
  const answer = async (s: Subject, counts: Record<string, Record<number, number>>, options: { complete?: boolean; error?: string } = {}): Promise<EtcdScanReport> => {
    const request = await keyUse.scanRequest(s.ring.ringId);
    assert.ok(request, 'the operator asked for a scan');
    return scanned(s, counts, { ...options, request: request.request });
  };

  /**
   * A ring with 40 Secrets and 3 ConfigMaps under version 1, whose first run (under version 1: the
   * operator rewrites once when it first sees a ring the KMS plugin serves) is Complete; then rotated
   * to version 2, which its one KMS plugin now encrypts with. `spec` applies from the rotation on.
   */
  const rotatedAndSwitched = async (spec: Partial<KeyRingSpec> = {}): Promise<Subject> => {
    const s = await makeRing();
    tick(minute);
    await pluginUse(s, 'cp-1', iso(), { 1: { lastEncryptAt: iso(), lastDecryptAt: iso() } });
    await scanned(s, { secrets: { 1: 40 }, configmaps: { 1: 3 } });
    assert.equal((await advance(s)).reEncryption?.phase, 'Rewriting');
    jobs.update(s.ring.ringId, { done: true, rewritten: 43 });
    assert.equal((await advance(s)).reEncryption?.phase, 'Verifying');
    await answer(s, { secrets: { 1: 40 }, configmaps: { 1: 3 } });
    assert.equal((await advance(s)).reEncryption?.phase, 'Complete', 'nothing under an older version');
    jobs = new RewriteStub();
    s.keyRing.spec = { ...s.keyRing.spec, ...spec };
    tick(minute);
    await rotate(s);
    tick(30_000);
    await pluginUse(s, 'cp-1', iso(), { 1: { lastEncryptAt: iso(clock - 40_000), lastDecryptAt: iso() }, 2: { lastEncryptAt: iso() } });
    return s;
  };

  it('gives a ring no KMS plugin serves no re-encryption, but shows its CSI provider use', async () => {
    const s = await makeRing();
    await rotate(s);
    await providerUse(s, 'node-a', { 1: { lastUseAt: iso(clock - 5000) }, 2: { lastUseAt: iso() } });
    const step = await advance(s);
    assert.equal(step.reEncryption, undefined);
    assert.equal(step.condition, undefined);
    assert.deepEqual(step.events, []);
    assert.equal(step.versions.get(1)?.lastUseTime, iso(clock - 5000));
    assert.equal(step.versions.get(2)?.lastUseTime, iso());
    assert.equal(gate(s, 1), undefined, 'nothing in etcd depends on it');
  });

  it('shows the latest decryption by any KMS plugin as lastDecryptTime and the CSI providers\' use as lastUseTime', async () => {
    const s = await makeRing();
    const early = iso();
    const late = tick(minute);
    await pluginUse(s, 'cp-1', iso(), { 1: { lastEncryptAt: early, lastDecryptAt: early } });
    await pluginUse(s, 'cp-2', iso(), { 1: { lastEncryptAt: early, lastDecryptAt: late } });
    await providerUse(s, 'node-a', { 1: { lastUseAt: early } });
    await rotate(s);
    const step = await advance(s);
    assert.equal(step.versions.get(1)?.lastDecryptTime, late, 'the later of the two plugins');
    assert.equal(step.versions.get(1)?.lastUseTime, early);
    assert.equal(step.versions.get(2)?.lastDecryptTime, undefined);
    assert.equal(s.keyRing.status?.versions?.[0]?.lastDecryptTime, late, 'as the status shows it');
  });

  it('waits for kube-apiserver: no live plugin, a plugin not yet encrypting under the primary, or one whose Encrypt predates the rotation', async () => {
    const s = await makeRing();
    tick(minute);
    // Only a plugin whose Status nobody has called for four minutes: no apiserver is known to use it.
    await pluginUse(s, 'cp-1', iso(clock - 4 * minute), { 1: { lastEncryptAt: iso(clock - 5 * minute) } });
    await rotate(s);
    tick(1000);
    await pluginUse(s, 'cp-1', iso(clock - 4 * minute), { 1: { lastEncryptAt: iso(clock - 5 * minute) }, 2: { lastEncryptAt: iso() } });
    let step = await advance(s);
    assert.equal(phase(s), 'WaitingForApiserver');
    assert.equal(step.reEncryption?.targetVersion, 2);
    assert.equal(step.reEncryption?.apiserverSwitchedAt, undefined, 'a stale plugin proves nothing');
    assert.match(step.reEncryption?.message ?? '', /waiting until every kube-apiserver encrypts with version 2/);
    assert.deepEqual([step.condition?.status, step.condition?.reason], ['False', 'AwaitingApiserver']);
    assert.match(gate(s, 1) ?? '', /kube-apiserver does not encrypt with version 2 yet/);

    // A live plugin still encrypting under version 1 only.
    await pluginUse(s, 'cp-1', iso(), { 1: { lastEncryptAt: iso() } });
    await advance(s);
    assert.equal(phase(s), 'WaitingForApiserver');
    // An Encrypt under version 2 stamped before version 2 existed (a skewed clock) does not count.
    await pluginUse(s, 'cp-1', iso(), { 2: { lastEncryptAt: iso(clock - 10 * minute) } });
    await advance(s);
    assert.equal(phase(s), 'WaitingForApiserver');
    // One of two live plugins switched: a lagging apiserver would write under version 1 again.
    tick(1000);
    await pluginUse(s, 'cp-1', iso(), { 2: { lastEncryptAt: iso() } });
    await pluginUse(s, 'cp-2', iso(), { 1: { lastEncryptAt: iso() } });
    await advance(s);
    assert.equal(phase(s), 'WaitingForApiserver');
    assert.equal(jobs.ensureCalls, 0, 'nothing rewritten while waiting');
    // cp-2's Status stops being called (its apiserver is gone): only cp-1 counts, and it has switched.
    const switched = iso(clock - 1000);
    tick(3 * minute + 1000);
    await pluginUse(s, 'cp-1', iso(), { 2: { lastEncryptAt: switched } });
    step = await advance(s);
    assert.equal(step.reEncryption?.apiserverSwitchedAt, switched, 'when the last live apiserver switched');
    assert.equal(phase(s), 'Rewriting');
    assert.deepEqual(reasons(step), ['ApiserverSwitched', 'ReEncryptionStarted']);
  });

  it('rewrites, asks the scanner, and completes when the answering scan counts nothing under older versions; the gate then opens', async () => {
    const s = await rotatedAndSwitched({ reEncryption: { enabled: true, maxWritesPerSecond: 50, method: 'Rewrite' } });
    let step = await advance(s);
    assert.equal(phase(s), 'Rewriting');
    assert.deepEqual(reasons(step), ['ApiserverSwitched', 'ReEncryptionStarted']);
    assert.equal(jobs.started.length, 1);
    assert.deepEqual(jobs.started[0], {
      ringId: s.ring.ringId,
      key: `kube-system/${s.keyRing.metadata.name}`,
      target: 2,
      resources: ['secrets', 'configmaps'],
      maxWritesPerSecond: 50,
      method: 'Rewrite',
    });
    assert.deepEqual([step.condition?.reason, step.requeueAfterMs], ['ReEncrypting', 5000]);
    assert.match(gate(s, 1) ?? '', /no complete scan since kube-apiserver switched to version 2/, 'the scan before the rotation proves nothing now');

    jobs.update(s.ring.ringId, { rewritten: 20 });
    tick(5000);
    step = await advance(s);
    assert.equal(phase(s), 'Rewriting');
    assert.equal(step.reEncryption?.rewrittenObjects, 20);
    assert.match(step.reEncryption?.message ?? '', /^20 objects rewritten/);
    assert.equal(jobs.started.length, 1, 'one run per rotation, however many reconciles');
    const earlier = await keyUse.scanRequest(s.ring.ringId);

    jobs.update(s.ring.ringId, { rewritten: 43, done: true });
    tick(5000);
    step = await advance(s);
    assert.equal(phase(s), 'Verifying');
    assert.deepEqual(reasons(step), ['ReEncryptionRewritten']);
    assert.equal(step.reEncryption?.completedAt, iso());
    const request = await keyUse.scanRequest(s.ring.ringId);
    assert.ok(request, 'a scan request in the HSM for the scanner');
    assert.notEqual(request.request, earlier?.request, 'a request of its own (the first run\'s was answered)');
    assert.equal(request.requestedAt, iso());
    assert.equal(step.condition?.reason, 'AwaitingScan');
    // Looking again before the scanner answers writes no second request.
    tick(5000);
    await advance(s);
    assert.deepEqual(await keyUse.scanRequest(s.ring.ringId), request);

    // A periodic scan that answers no request does not end Verifying (it may have started before the rewrite ended).
    await scanned(s, { secrets: { 1: 1, 2: 39 }, configmaps: { 2: 3 } });
    step = await advance(s);
    assert.equal(phase(s), 'Verifying');
    assert.equal(step.versions.get(1)?.etcdObjects, 1, 'its counts show');
    const answered = await answer(s, { secrets: { 2: 40 }, configmaps: { 2: 3 } });
    step = await advance(s);
    assert.equal(phase(s), 'Complete');
    assert.deepEqual(reasons(step), ['ReEncryptionComplete']);
    assert.deepEqual([step.condition?.status, step.condition?.reason], ['True', 'Retirable']);
    assert.deepEqual([step.versions.get(1)?.etcdObjects, step.versions.get(1)?.etcdObjectsProvenAt], [0, answered.startedAt]);
    assert.equal(step.versions.get(2)?.etcdObjects, 43);
    assert.equal(gate(s, 1), undefined, 'version 1 may now be disabled and destroyed');
    // Complete stays Complete: no new run, no new events.
    tick(minute);
    step = await advance(s);
    assert.deepEqual([phase(s), step.events.length, jobs.started.length], ['Complete', 0, 1]);
  });

  it('fails naming the count and sample keys when the scan still finds objects under an older version, and tries again after 10 min', async () => {
    const s = await rotatedAndSwitched();
    await advance(s);
    // Objects the rewrite could not write are named.
    jobs.update(s.ring.ringId, { done: true, rewritten: 41, failed: 2, failures: ['secrets default/locked-0: admission webhook "deny.example.com" denied the request', 'secrets default/locked-1: conflict'] });
    tick(5000);
    let step = await advance(s);
    assert.equal(phase(s), 'Failed');
    assert.match(step.reEncryption?.message ?? '', /2 objects could not be rewritten: secrets default\/locked-0: admission webhook "deny.example.com" denied the request; secrets default\/locked-1: conflict; older versions stay protected; tried again in 10 min/);
    assert.deepEqual(reasons(step), ['ReEncryptionFailed']);
    assert.equal(step.events[0]?.type, 'Warning');
    assert.equal(step.condition?.reason, 'ReEncryptionFailed');
    assert.ok(gate(s, 1), 'version 1 stays protected');

    tick(9 * minute);
    await advance(s);
    assert.deepEqual([phase(s), jobs.started.length, jobs.forgotten.length], ['Failed', 1, 0], 'not before 10 min');
    tick(minute);
    step = await advance(s);
    assert.equal(phase(s), 'Rewriting');
    assert.deepEqual(jobs.forgotten, [s.ring.ringId], 'the finished run forgotten, so a new one starts');
    assert.equal(jobs.started.length, 2);
    assert.deepEqual([step.reEncryption?.rewrittenObjects, step.reEncryption?.failedObjects, step.reEncryption?.completedAt], [0, 0, undefined]);

    // The retry rewrites everything, but a scan still finds two Secrets under version 1 (written by a lagging writer, say).
    jobs.update(s.ring.ringId, { done: true, rewritten: 43 });
    tick(5000);
    await advance(s);
    assert.equal(phase(s), 'Verifying');
    const report = await answer(s, { secrets: { 1: 2, 2: 38 }, configmaps: { 2: 3 } });
    step = await advance(s);
    assert.equal(phase(s), 'Failed');
    const message = step.reEncryption?.message ?? '';
    assert.match(message, new RegExp(`after rewriting, etcd still holds 2 objects under version 1 \\(scan at ${report.startedAt}; e\\.g\\. /registry/secrets/default/secrets-1-0, /registry/secrets/default/secrets-1-1\\)`));
    assert.equal(step.condition?.reason, 'ReEncryptionFailed');
    assert.equal(gate(s, 1), `version 1 still protects 2 objects in etcd (scan at ${report.startedAt}); re-encrypt them first`);
    assert.equal(s.keyRing.status?.versions?.[0]?.etcdObjects, 2);
  });

  it('says ScanFailed, naming the error, when the latest scan did not finish; the gate still refuses, and the operator asks again', async () => {
    const s = await rotatedAndSwitched();
    await advance(s);
    jobs.update(s.ring.ringId, { done: true, rewritten: 43 });
    tick(5000);
    await advance(s);
    assert.equal(phase(s), 'Verifying');
    const first = await keyUse.scanRequest(s.ring.ringId);
    // The scanner takes the request and cannot reach etcd: it reports, and counts the request answered.
    await answer(s, {}, { complete: false, error: 'etcd https://10.0.0.1:2379 unreachable: connect ECONNREFUSED' });
    tick(5000);
    const step = await advance(s);
    assert.equal(phase(s), 'Verifying');
    assert.deepEqual([step.condition?.status, step.condition?.reason], ['False', 'ScanFailed']);
    assert.match(step.condition?.message ?? '', /the last scan of etcd did not finish \(etcd https:\/\/10\.0\.0\.1:2379 unreachable: connect ECONNREFUSED\)/);
    assert.match(gate(s, 1) ?? '', /no complete scan since kube-apiserver switched/);
    // The scanner will not scan again for a request it answered: the operator must ask anew.
    const second = await keyUse.scanRequest(s.ring.ringId);
    assert.ok(second);
    assert.notEqual(second.request, first?.request, 'a new request id after an incomplete answer');
    tick(5000);
    await advance(s);
    assert.deepEqual(await keyUse.scanRequest(s.ring.ringId), second, 'asked once per failed answer, not at every look');

    await answer(s, { secrets: { 2: 40 } });
    await advance(s);
    assert.equal(phase(s), 'Complete');
    assert.equal(gate(s, 1), undefined);
  });

  it('lets a second rotation supersede a run under way: a new target, a new wait for kube-apiserver', async () => {
    const s = await rotatedAndSwitched();
    await advance(s);
    assert.equal(phase(s), 'Rewriting');
    tick(minute);
    await rotate(s);
    let step = await advance(s);
    assert.deepEqual(reasons(step), ['ReEncryptionSuperseded']);
    assert.match(step.events[0]?.message ?? '', /re-encryption under version 2 superseded by version 3/);
    assert.deepEqual([step.reEncryption?.targetVersion, step.reEncryption?.phase, step.reEncryption?.apiserverSwitchedAt], [3, 'WaitingForApiserver', undefined]);
    assert.match(gate(s, 1) ?? '', /does not encrypt with version 3 yet/);
    assert.match(gate(s, 2) ?? '', /does not encrypt with version 3 yet/);
    tick(1000);
    await pluginUse(s, 'cp-1', iso(), { 2: { lastEncryptAt: iso(clock - minute) }, 3: { lastEncryptAt: iso() } });
    step = await advance(s);
    assert.deepEqual([step.reEncryption?.targetVersion, phase(s)], [3, 'Rewriting']);
    assert.deepEqual(jobs.started.map((r) => r.target), [2, 3], 'the run for version 2 replaced (ReEncryptionJobs aborts it)');
    jobs.update(s.ring.ringId, { done: true, rewritten: 43 });
    tick(5000);
    await advance(s);
    await answer(s, { secrets: { 3: 40 }, configmaps: { 3: 3 } });
    await advance(s);
    assert.equal(phase(s), 'Complete');
    assert.deepEqual([gate(s, 1), gate(s, 2)], [undefined, undefined]);
    // A rotation after a finished run starts a new one without a Superseded event.
    await rotate(s);
    step = await advance(s);
    assert.deepEqual([reasons(step), step.reEncryption?.targetVersion, phase(s)], [[], 4, 'WaitingForApiserver']);
  });

  it('with spec.reEncryption.enabled false: phase Off, nothing rewritten, the counts still shown and still gating', async () => {
    const s = await rotatedAndSwitched({ reEncryption: { enabled: false, maxWritesPerSecond: 100, method: 'Auto' } });
    let step = await advance(s);
    assert.equal(phase(s), 'Off');
    assert.match(step.reEncryption?.message ?? '', /spec\.reEncryption\.enabled is false/);
    assert.ok(step.reEncryption?.apiserverSwitchedAt, 'the switch is still noted');
    assert.equal(jobs.ensureCalls, 0);
    const report = await scanned(s, { secrets: { 1: 40, 2: 5 } });
    step = await advance(s);
    assert.equal(step.versions.get(1)?.etcdObjects, 40);
    assert.equal(gate(s, 1), `version 1 still protects 40 objects in etcd (scan at ${report.startedAt}); re-encrypt them first`);
    assert.deepEqual([step.condition?.status, step.condition?.reason], ['False', 'ObjectsRemain']);
    // Someone else re-encrypts (the cluster admin): a later scan proves version 1 unused.
    await scanned(s, { secrets: { 2: 45 } });
    step = await advance(s);
    assert.deepEqual([phase(s), gate(s, 1), step.condition?.reason], ['Off', undefined, 'Retirable']);
    // Turned back on: the run resumes from the switch already seen.
    s.keyRing.spec.reEncryption = { enabled: true, maxWritesPerSecond: 100, method: 'Auto' };
    await advance(s);
    assert.equal(phase(s), 'Rewriting');
    assert.equal(jobs.started.length, 1);
  });

  it('where the operator may not rewrite (--re-encryption=false): phase Off for every ring, and the scans alone decide retirement', async () => {
    const s = await rotatedAndSwitched();
    let step = await advance(s, { rewrite: false });
    assert.equal(phase(s), 'Off');
    assert.match(step.reEncryption?.message ?? '', /--re-encryption=false.*until the cluster admin re-encrypts them/);
    assert.equal(jobs.ensureCalls, 0, 'no rewrite attempted (it would be refused by RBAC)');
    assert.deepEqual(step.events.map((e) => e.type), ['Normal'], 'no Warning');
    await scanned(s, { secrets: { 2: 40 }, configmaps: { 2: 3 } });
    step = await advance(s, { rewrite: false });
    assert.deepEqual([phase(s), gate(s, 1), step.condition?.reason], ['Off', undefined, 'Retirable']);
  });
});
