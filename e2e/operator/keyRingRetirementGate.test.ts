// The operator's own retirement gate, on a real control plane and a real SoftHSM2 token, with no
// admission webhook in front of it (as when the webhook was removed or bypassed): a desired
// Disabled for a version etcd still uses is refused and audited, and carried out only with the
// break-glass stamp admission would have written. The KMS plugin's use record and the scanner's
// report are written into the HSM as those components write them (core/keyUse).
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CoreV1Api, CustomObjectsApi, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { HsmToken } from '../../core/hsm/hsmToken.js';
import { HsmRecords } from '../../core/hsm/hsmRecords.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { createAuditLog, type AuditLog, type AuditRecord } from '../../core/audit/auditLog.js';
import { KeyUseRecords } from '../../core/keyUse/keyUseRecords.js';
import { keyUseWriter } from '../../core/keyUse/keyUseRecorder.js';
import { createLogger } from '../../core/observability/logger.js';
import { keyRingResource, type KeyRing } from '../../core/api/keyRing.js';
import { startOperator, type Operator } from '../../operator/operator.js';
import { eventually } from '../../testbed/eventually.js';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { installCrds } from './crds.js';

const namespace = 'default';
const name = 'etcd-secrets';
const merge = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

describe('KeyRing operator: retirement gated on etcd without the webhook [practice:verified-retirement]', function () {
  this.timeout(120_000);
  let dir: string;
  let cp: ControlPlane;
  let softhsm: SoftHsmToken;
  let admin: HsmToken;
  let store: RingStore;
  let keyUse: KeyUseRecords;
  let operator: Operator;
  let audit: AuditLog;
  let auditPath: string;
  let objects: CustomObjectsApi;
  let scanAt: string;

  before(async function () {
    this.timeout(300_000);
    dir = mkdtempSync(join(tmpdir(), 'keyward-e2e-retirement-gate-'));
    cp = await startControlPlane();
    await installCrds(cp.kubeConfig);
    softhsm = createSoftHsmToken({ parentDir: dir });
    process.env.SOFTHSM2_CONF = softhsm.configPath;
    admin = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.pin });
    store = new RingStore(admin);
    keyUse = new KeyUseRecords(new HsmRecords(admin));
    objects = cp.kubeConfig.makeApiClient(CustomObjectsApi);
    auditPath = join(dir, 'audit.jsonl');
    audit = createAuditLog('operator', auditPath);
    operator = await startOperator(
      {
        kubeConfig: cp.kubeConfig,
        modulePath: softhsm.modulePath,
        tokenLabel: softhsm.label,
        pin: softhsm.pin,
        leaseNamespace: namespace,
        identity: 'retirement-gate-test',
        leaseDurationMs: 4000,
        renewDeadlineMs: 2700,
        retryPeriodMs: 500,
        audit,
      },
      createLogger('operator', 'warn'),
    );
  });
  after(async () => {
    await operator?.stop();
    await audit?.flush();
    admin?.close();
    await cp?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const getKeyRing = async (): Promise<KeyRing> => (await objects.getNamespacedCustomObject({ ...keyRingResource, namespace, name })) as KeyRing;
  const patch = (body: Record<string, unknown>): Promise<unknown> => objects.patchNamespacedCustomObject({ ...keyRingResource, namespace, name, body }, merge);
  /** A no-op change that makes the operator look again (HSM records raise no Kubernetes event). */
  const poke = (): Promise<unknown> => patch({ metadata: { annotations: { 'test.keyward.dev/poke': String(Date.now()) } } });
  const statusWhen = (what: string, check: (kr: KeyRing) => boolean, timeoutMs = 30_000): Promise<KeyRing> =>
    eventually(what, timeoutMs, async () => {
      const kr = await getKeyRing();
      return check(kr) ? kr : undefined;
    }, 200);
  const condition = (kr: KeyRing, type: string) => kr.status?.conditions?.find((c) => c.type === type && c.observedGeneration === kr.metadata.generation);
  const auditRecords = async (): Promise<AuditRecord[]> => {
    await audit.flush();
    return readFileSync(auditPath, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as AuditRecord);
  };
  const hsmState = async (ringId: string, number: number): Promise<string | undefined> => (await store.require({ ringId })).versions.find((v) => v.number === number)?.state;

  it('shows on version 1 what the scanner counted after kube-apiserver switched to version 2', async () => {
    // Re-encryption off: the operator rewrites nothing, so the count under version 1 stands.
    await objects.createNamespacedCustomObject({
      ...keyRingResource,
      namespace,
      body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name }, spec: { purpose: 'encryption', reEncryption: { enabled: false } } },
    });
    await statusWhen('version 1 primary', (kr) => kr.status?.primaryVersion === 1);
    await patch({ spec: { rotationRequest: 'rotate-1' } });
    const rotated = await statusWhen('version 2 primary', (kr) => kr.status?.primaryVersion === 2);
    const ringId = rotated.status?.ringId ?? assert.fail('no ring id');
    const ring = await store.require({ ringId });
    const [v1, v2] = ring.versions;
    assert.ok(v1 && v2);
    // The KMS plugin beside kube-apiserver: Status reports version 2, and kube-apiserver encrypts with it.
    const switchedAt = new Date(Math.max(Date.now(), Date.parse(v2.createdAt) + 1)).toISOString();
    await keyUse.writeUse(
      {
        schema: 1,
        ringId,
        component: 'kms-plugin',
        host: 'cp-1',
        updatedAt: switchedAt,
        statusKeyId: v2.keyId,
        lastStatusAt: switchedAt,
        versions: { [v1.keyId]: { lastEncryptAt: v1.createdAt, lastDecryptAt: switchedAt }, [v2.keyId]: { lastEncryptAt: switchedAt } },
      },
      keyUseWriter('kms-plugin', 'cp-1'),
    );
    // The scanner, a moment later: 1,500 Secrets still under version 1.
    scanAt = new Date(Date.parse(switchedAt) + 1000).toISOString();
    await keyUse.writeScanReport(
      {
        schema: 1,
        ringId,
        provider: 'keyward',
        startedAt: scanAt,
        finishedAt: new Date(Date.parse(scanAt) + 2000).toISOString(),
        revision: 1234,
        complete: true,
        resources: [{ resource: 'secrets', objects: 1540, byKeyId: { [v1.keyId]: 1500, [v2.keyId]: 40 }, otherProvider: 0, unencrypted: 0 }],
        samples: { [v1.keyId]: ['/registry/secrets/default/s-0001'] },
      },
      'scanner@cp-1',
    );
    await poke();
    const counted = await statusWhen('version 1 counted in etcd', (kr) => kr.status?.versions?.find((v) => v.number === 1)?.etcdObjects === 1500);
    assert.deepEqual([counted.status?.reEncryption?.phase, counted.status?.reEncryption?.apiserverSwitchedAt], ['Off', switchedAt]);
    assert.equal(counted.status?.versions?.find((v) => v.number === 1)?.etcdObjectsProvenAt, scanAt);
    assert.equal(counted.status?.versions?.find((v) => v.number === 1)?.lastDecryptTime, switchedAt);
    assert.deepEqual([condition(counted, 'RetirementComplete')?.status, condition(counted, 'RetirementComplete')?.reason], ['False', 'ObjectsRemain']);
  });

  it('refuses a desired Disabled for version 1 while etcd holds objects under it: VersionRequestsApplied False, VersionInUse, audited', async () => {
    await patch({ spec: { versions: [{ number: 1, state: 'Disabled' }] } });
    const refused = await statusWhen('VersionRequestsApplied False', (kr) => condition(kr, 'VersionRequestsApplied')?.status === 'False');
    const applied = condition(refused, 'VersionRequestsApplied');
    assert.equal(applied?.reason, 'VersionInUse');
    assert.equal(applied?.message, `version 1 still protects 1500 objects in etcd (scan at ${scanAt}); re-encrypt them first`);
    const ringId = refused.status?.ringId ?? '';
    assert.equal(await hsmState(ringId, 1), 'Enabled', 'the HSM still lets version 1 decrypt');
    assert.equal(refused.status?.versions?.find((v) => v.number === 1)?.state, 'Enabled');
    const denials = (await auditRecords()).filter((r) => r.code === 'VersionInUse');
    assert.equal(denials.length, 1, 'audited once, however many reconciles');
    assert.deepEqual(
      { operation: denials[0]?.operation, result: denials[0]?.result, ring: denials[0]?.ring, ringId: denials[0]?.ringId, keyVersion: denials[0]?.keyVersion },
      { operation: 'disableVersion', result: 'denied', ring: `${namespace}/${name}`, ringId, keyVersion: 1 },
    );
    assert.match(denials[0]?.reason ?? '', /1500 objects/);
    // Looking again changes nothing.
    await poke();
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.equal(await hsmState(ringId, 1), 'Enabled');
  });

  it('carries it out with the break-glass stamp admission writes, audited as BreakGlassRetirement', async () => {
    const at = new Date().toISOString();
    const stamp = { by: 'dave', at, reason: `version 1 still protects 1500 objects in etcd (scan at ${scanAt}); re-encrypt them first` };
    await patch({ spec: { versions: [{ number: 1, state: 'Disabled', retirementOverride: stamp }] } });
    const done = await statusWhen('version 1 Disabled', (kr) => kr.status?.versions?.find((v) => v.number === 1)?.state === 'Disabled' && condition(kr, 'VersionRequestsApplied')?.status === 'True');
    const ringId = done.status?.ringId ?? '';
    assert.equal(await hsmState(ringId, 1), 'Disabled');
    const overrides = (await auditRecords()).filter((r) => r.code === 'BreakGlassRetirement');
    assert.equal(overrides.length, 1);
    assert.deepEqual(
      { actor: overrides[0]?.actor, operation: overrides[0]?.operation, result: overrides[0]?.result, keyVersion: overrides[0]?.keyVersion, breakGlass: overrides[0]?.breakGlass },
      { actor: 'dave', operation: 'disableVersion', result: 'allowed', keyVersion: 1, breakGlass: true },
    );
    assert.match(overrides[0]?.reason ?? '', new RegExp(`break-glass by dave at ${at} although version 1 still protects 1500 objects`));
    const events = await cp.kubeConfig.makeApiClient(CoreV1Api).listNamespacedEvent({ namespace, fieldSelector: `involvedObject.name=${name},reason=VersionDisabled` });
    assert.equal(events.items.length, 1);
  });
});
