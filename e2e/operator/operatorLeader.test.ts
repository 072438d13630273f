// Leader election between operator processes on one control plane and one HSM token: only the
// leader reconciles; a SIGKILLed leader is replaced once its Lease expires, a gracefully stopped
// one at once (it releases the Lease); and an apiserver restart does not stop the leader: its
// KeyRing watch lists again and it carries on.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CoordinationV1Api, CoreV1Api, CustomObjectsApi, PatchStrategy, setHeaderOptions, type V1Lease } from '@kubernetes/client-node';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { keyRingResource, type KeyRing, type KeyRingSpec } from '../../core/api/keyRing.js';
import { eventually } from '../../testbed/eventually.js';
import { trackDirectory } from '../../testbed/control-plane/componentProcess.js';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { installCrds } from './crds.js';
import { startOperatorProcess, type OperatorProcess } from './operatorProcess.js';

const namespace = 'default';
const leaseName = 'keyward-operator';
const leaseSeconds = 4;
const leaseMs = leaseSeconds * 1000;
/** The CLI's retry period: 2/15 of the lease. */
const retryPeriodMs = (leaseMs * 2) / 15;

describe('KeyRing operator: leader election between two processes', function () {
  this.timeout(300_000);
  let cp: ControlPlane;
  let softhsm: SoftHsmToken;
  let dir: string;
  let removeDir: (() => void) | undefined;
  let objects: CustomObjectsApi;
  let coordination: CoordinationV1Api;
  let core: CoreV1Api;
  const processes: OperatorProcess[] = [];
  /** Which process leads and which stands by, as the tests go along. */
  let leader: OperatorProcess;
  let standby: OperatorProcess;
  const figures: string[] = [];

  before(async function () {
    this.timeout(300_000);
    cp = await startControlPlane();
    await installCrds(cp.kubeConfig);
    softhsm = createSoftHsmToken();
    dir = mkdtempSync(join(tmpdir(), 'keyward-operator-leader-'));
    removeDir = trackDirectory(dir);
    objects = cp.kubeConfig.makeApiClient(CustomObjectsApi);
    coordination = cp.kubeConfig.makeApiClient(CoordinationV1Api);
    core = cp.kubeConfig.makeApiClient(CoreV1Api);
  });
  after(async () => {
    for (const p of processes) p.process.killNow();
    await Promise.all(processes.map((p) => p.process.exitedPromise()));
    softhsm?.remove();
    await cp?.stop();
    removeDir?.();
    if (figures.length > 0) console.error(figures.map((f) => `      [leader] ${f}`).join('\n'));
  });

  const startOperator = async (identity: string, seconds = leaseSeconds): Promise<OperatorProcess> => {
    const operator = await startOperatorProcess({ hsm: softhsm, kubeconfigPath: cp.kubeconfigPath, dir, identity, leaseSeconds: seconds, workers: 2 });
    processes.push(operator);
    return operator;
  };

  const lease = (): Promise<V1Lease> => coordination.readNamespacedLease({ namespace, name: leaseName });
  const holder = async (): Promise<string> => (await lease()).spec?.holderIdentity ?? '';
  /** Polls the Lease until `identity` holds it; the time it was first seen so. */
  const heldBy = async (identity: string, timeoutMs: number): Promise<number> =>
    eventually(`Lease held by ${identity}`, timeoutMs, async () => ((await holder()) === identity ? Date.now() : undefined), 25);

  const getKeyRing = async (name: string): Promise<KeyRing> => (await objects.getNamespacedCustomObject({ ...keyRingResource, namespace, name })) as KeyRing;
  const createKeyRing = (name: string, spec: Partial<KeyRingSpec> = {}): Promise<unknown> =>
    objects.createNamespacedCustomObject({
      ...keyRingResource,
      namespace,
      body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name }, spec: { purpose: 'encryption', ...spec } },
    });
  const patchSpec = (name: string, spec: Partial<KeyRingSpec>): Promise<unknown> =>
    objects.patchNamespacedCustomObject({ ...keyRingResource, namespace, name, body: { spec } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
  const ready = (kr: KeyRing): boolean =>
    kr.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True' && c.observedGeneration === kr.metadata.generation) ?? false;
  const statusWhen = (name: string, what: string, check: (kr: KeyRing) => boolean, timeoutMs = 30_000): Promise<number> =>
    eventually(`${name}: ${what}`, timeoutMs, async () => (check(await getKeyRing(name)) ? Date.now() : undefined), 25);

  /** The operator instances that wrote Events about a KeyRing. */
  const reporters = async (name: string): Promise<string[]> => {
    const events = await core.listNamespacedEvent({ namespace, fieldSelector: `involvedObject.name=${name}` });
    return [...new Set(events.items.map((e) => e.reportingInstance ?? ''))];
  };
  const logMessages = (operator: OperatorProcess): string[] =>
    readFileSync(operator.logFile, 'utf8')
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => (JSON.parse(line) as { msg?: string }).msg ?? '');
  const startedControllers = (operator: OperatorProcess): number => logMessages(operator).filter((m) => m === 'leading: starting the KeyRing controller').length;

  const scrape = async (operator: OperatorProcess): Promise<string> => (await fetch(`${operator.metricsUrl}/metrics`)).text();
  const leaderGauge = async (operator: OperatorProcess): Promise<number> => Number(/^keyward_operator_leader (\d)$/m.exec(await scrape(operator))?.[1]);

  it('one of two processes holds the Lease, and only it reconciles', async () => {
    const [a, b] = await Promise.all([startOperator('a'), startOperator('b')]);
    const first = await eventually('a holder of the Lease', 30_000, async () => {
      const identity = await holder().catch(() => '');
      return identity === '' ? undefined : identity;
    });
    assert.ok(first === 'a' || first === 'b', `the holder is one of the candidates, not '${first}'`);
    [leader, standby] = first === 'a' ? [a, b] : [b, a];

    await createKeyRing('first');
    await statusWhen('first', 'Ready', ready);
    assert.deepEqual(await reporters('first'), [leader.identity], 'every Event comes from the leader');
    assert.equal(startedControllers(leader), 1, 'the leader runs the KeyRing controller');
    assert.equal(startedControllers(standby), 0, 'the standby does not');
    assert.ok(standby.process.running, 'the standby keeps campaigning');
    assert.equal(await holder(), leader.identity, 'the leader keeps renewing');
    assert.equal(await leaderGauge(leader), 1);
    assert.equal(await leaderGauge(standby), 0);
    assert.doesNotMatch(await scrape(standby), /^keyward_keyring_ready\{/m, 'a standby exports no KeyRing series');
  });

  it('SIGKILL of the leader: the standby takes over once the Lease expires, and reconciles', async () => {
    const before = await lease();
    leader.process.killNow();
    const killedAt = Date.now();
    await leader.process.exitedPromise();
    // Work that arrives while nobody leads.
    await createKeyRing('second');
    await patchSpec('first', { rotationRequest: 'after-kill' });

    const tookOverAt = await heldBy(standby.identity, leaseMs + 10_000);
    const secondReadyAt = await statusWhen('second', 'Ready', ready, leaseMs + 10_000);
    const rotatedAt = await statusWhen('first', 'rotated by the new leader', (k) => k.status?.primaryVersion === 2 && k.status?.lastRotationRequest === 'after-kill');
    const reconciledAt = Math.max(secondReadyAt, rotatedAt);
    figures.push(`SIGKILL: Lease taken over ${tookOverAt - killedAt} ms after the kill, new work reconciled ${reconciledAt - killedAt} ms after it (lease ${leaseMs} ms)`);

    assert.ok(reconciledAt - killedAt < leaseMs + 10_000, `reconciled within the lease duration and a margin: ${reconciledAt - killedAt} ms`);
    // Safety: the standby did not take a Lease its holder may still have been renewing.
    assert.ok(tookOverAt - killedAt >= leaseMs - 2 * retryPeriodMs, `the standby waited for the Lease to expire: ${tookOverAt - killedAt} ms`);
    const after = await lease();
    assert.equal(after.spec?.leaseTransitions, (before.spec?.leaseTransitions ?? 0) + 1, 'one transition recorded');
    assert.deepEqual(await reporters('second'), [standby.identity], 'the new leader reconciled the new KeyRing');
    assert.equal(startedControllers(standby), 1);
    assert.equal(await leaderGauge(standby), 1, 'the gauge flips with the leadership');
    [leader, standby] = [standby, leader];
  });

  it('graceful stop of the leader releases the Lease: a standby takes over well before it would expire', async () => {
    const c = await startOperator('c');
    await eventually('c sees the leader', 30_000, () => (logMessages(c).includes('new leader observed') ? true : undefined));
    assert.equal(await holder(), leader.identity);
    const stoppingAt = Date.now();
    await leader.process.stop();
    const exitedAt = Date.now();
    const tookOverAt = await heldBy('c', leaseMs + 10_000);
    figures.push(`graceful stop: leader exited ${exitedAt - stoppingAt} ms after SIGTERM; Lease taken over ${tookOverAt - exitedAt} ms after the exit (lease ${leaseMs} ms)`);

    assert.ok(logMessages(leader).includes('released the Lease'), 'the old leader says it released the Lease');
    assert.ok(tookOverAt - exitedAt < leaseMs, `taken over before the lease duration ran out: ${tookOverAt - exitedAt} ms`);
    await createKeyRing('third');
    await statusWhen('third', 'Ready', ready);
    assert.deepEqual(await reporters('third'), ['c']);
    [leader, standby] = [c, leader];
  });

  it('apiserver restart: the leader lists again and carries on', async function () {
    this.timeout(180_000);
    // A lease longer than the restart, so this leader keeps leading throughout (a short one would
    // make it step down and exit, and its Deployment would start it afresh).
    // The leader leaves first and releases the Lease, so d takes it on its first attempt (a
    // candidate with this lease retries only every 16 s).
    await leader.process.stop();
    const d = await startOperator('d', 120);
    await heldBy('d', 10_000);
    await createKeyRing('before-restart');
    await statusWhen('before-restart', 'Ready', ready);

    const restartStart = Date.now();
    await cp.restartApiserver();
    figures.push(`apiserver restart took ${Date.now() - restartStart} ms`);

    await createKeyRing('after-restart');
    await patchSpec('before-restart', { rotationRequest: 'after-restart' });
    await statusWhen('after-restart', 'Ready', ready, 60_000);
    await statusWhen('before-restart', 'rotated after the restart', (k) => k.status?.primaryVersion === 2 && ready(k), 60_000);
    assert.ok(d.process.running, 'the same process carries on');
    assert.equal(await holder(), 'd', 'and keeps the Lease');
    assert.equal(startedControllers(d), 1, 'without restarting its controller');
    assert.ok(logMessages(d).includes('keyrings watch failed; listing again'), 'the watch did fail, and was started again');
    assert.deepEqual(await reporters('after-restart'), ['d']);
  });
});
