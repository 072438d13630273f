// The operator against a real control plane and a real SoftHSM2 token: KeyRings become HSM keys
// and follow their lifecycle. The operator runs in this process with a clock the test moves
// forward, so day-long rotation periods and destruction windows pass in seconds.
import assert from 'node:assert/strict';
import { createPublicKey, randomUUID } from 'node:crypto';
import { renameSync } from 'node:fs';
import { CoreV1Api, CustomObjectsApi, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import pkcs11js from 'pkcs11js';
import { HsmToken } from '../../core/hsm/hsmToken.js';
import { keyObjectId, keyObjectLabel } from '../../core/hsm/ringState.js';
import { generateAesKey } from '../../core/hsm/aesGcm.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { createAuditLog } from '../../core/audit/auditLog.js';
import { createLogger } from '../../core/observability/logger.js';
import { keyRingResource, type KeyRing, type KeyRingSpec } from '../../core/api/keyRing.js';
import { keyRingFinalizer } from '../../operator/keyRing/keyRingClient.js';
import { startOperator, type Operator } from '../../operator/operator.js';
import { eventually } from '../../testbed/eventually.js';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { approvedDestruction } from './approvedDestruction.js';
import { installCrds } from './crds.js';

const namespace = 'default';
const hour = 3600_000;

describe('KeyRing operator: HSM keys through their lifecycle', function () {
  this.timeout(120_000);
  let cp: ControlPlane;
  let softhsm: SoftHsmToken;
  let admin: HsmToken;
  let store: RingStore;
  let operator: Operator;
  let objects: CustomObjectsApi;
  let clockOffsetMs = 0;

  before(async function () {
    this.timeout(300_000);
    cp = await startControlPlane();
    await installCrds(cp.kubeConfig);
    softhsm = createSoftHsmToken();
    process.env.SOFTHSM2_CONF = softhsm.configPath;
    admin = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.pin });
    store = new RingStore(admin);
    objects = cp.kubeConfig.makeApiClient(CustomObjectsApi);
    operator = await startOperator(
      {
        kubeConfig: cp.kubeConfig,
        modulePath: softhsm.modulePath,
        tokenLabel: softhsm.label,
        pin: softhsm.pin,
        leaseNamespace: namespace,
        identity: 'lifecycle-test',
        janitorIntervalMs: 500,
        leaseDurationMs: 4000,
        renewDeadlineMs: 2700,
        retryPeriodMs: 500,
        now: () => operatorNow(),
        audit: createAuditLog('operator', '/dev/null'),
      },
      createLogger('operator', 'warn'),
    );
  });
  after(async () => {
    await operator?.stop();
    admin?.close();
    softhsm?.remove();
    await cp?.stop();
  });

  const operatorNow = (offsetMs = 0): Date => new Date(Date.now() + clockOffsetMs + offsetMs);

  const getKeyRing = async (name: string): Promise<KeyRing> =>
    (await objects.getNamespacedCustomObject({ ...keyRingResource, namespace, name })) as KeyRing;

  const createKeyRing = async (name: string, spec: Partial<KeyRingSpec> = {}): Promise<KeyRing> =>
    (await objects.createNamespacedCustomObject({
      ...keyRingResource,
      namespace,
      body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name }, spec: { purpose: 'encryption', ...spec } },
    })) as KeyRing;

  const patchSpec = (name: string, spec: Record<string, unknown>): Promise<unknown> =>
    objects.patchNamespacedCustomObject({ ...keyRingResource, namespace, name, body: { spec } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));

  /** A no-op change that makes the operator look again (after the test moved its clock). */
  const poke = (name: string): Promise<unknown> =>
    objects.patchNamespacedCustomObject(
      { ...keyRingResource, namespace, name, body: { metadata: { annotations: { 'test.keyward.dev/poke': String(Date.now()) } } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );

  /** Waits until the KeyRing's status satisfies `check`, and returns it. */
  const statusWhen = (name: string, what: string, check: (kr: KeyRing) => boolean, timeoutMs = 30_000): Promise<KeyRing> =>
    eventually(`${name}: ${what}`, timeoutMs, async () => {
      const kr = await getKeyRing(name);
      return check(kr) ? kr : undefined;
    });

  const ready = (kr: KeyRing): boolean =>
    kr.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True' && c.observedGeneration === kr.metadata.generation) ?? false;
  const versionState = (kr: KeyRing, number: number): string | undefined => kr.status?.versions?.find((v) => v.number === number)?.state;

  const keyAttributes = (ringId: string, version: number): Promise<{ extractable: boolean; sensitive: boolean } | undefined> =>
    admin.withSession((s) => {
      admin.pkcs11.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_ID, value: keyObjectId(ringId, version) }]);
      const [handle] = admin.pkcs11.C_FindObjects(s, 1);
      admin.pkcs11.C_FindObjectsFinal(s);
      if (!handle) return undefined;
      const [extractable, sensitive] = admin.pkcs11.C_GetAttributeValue(s, handle, [{ type: pkcs11js.CKA_EXTRACTABLE }, { type: pkcs11js.CKA_SENSITIVE }]);
      return { extractable: extractable?.value?.readUInt8(0) === 1, sensitive: sensitive?.value?.readUInt8(0) === 1 };
    });

  const eventReasons = async (name: string): Promise<string[]> => {
    const events = await cp.kubeConfig.makeApiClient(CoreV1Api).listNamespacedEvent({ namespace, fieldSelector: `involvedObject.name=${name}` });
    return events.items.map((e) => e.reason ?? '');
  };

  it('creates version 1 in the HSM, sensitive and non-extractable, and reports where it is kept [practice:key-location] [practice:no-plaintext-export]', async () => {
    const created = await createKeyRing('orders');
    const kr = await statusWhen('orders', 'Ready', ready);
    const uid = created.metadata.uid ?? '';
    assert.equal(kr.status?.ringId, uid);
    assert.equal(kr.status?.primaryVersion, 1);
    const [v1] = kr.status?.versions ?? [];
    assert.equal(v1?.state, 'Enabled');
    assert.equal(v1?.algorithm, 'AES-256-GCM');
    assert.equal(v1?.hsmToken, softhsm.label);
    assert.equal(v1?.hsmObjectId, keyObjectId(uid, 1).toString('hex'));
    assert.match(v1?.keyId ?? '', /^kw1-/);
    assert.deepEqual(await keyAttributes(uid, 1), { extractable: false, sensitive: true });
    assert.ok(kr.metadata.finalizers?.includes(keyRingFinalizer), 'finalizer guards the keys');
    assert.ok((await eventReasons('orders')).includes('Created'));
    const ring = await store.require({ ringId: uid });
    assert.deepEqual([ring.name, ring.namespace, ring.primary], ['orders', namespace, 1], 'the ring in the HSM the KMS plugin reads');
  });

  it('cannot be asked for an algorithm it does not generate: the apiserver refuses RSA at creation, and nothing reaches the HSM [practice:cnsa]', async () => {
    // Admission, not a PurposeNotSupported condition later: the CRD offers only what the operator makes.
    await assert.rejects(
      createKeyRing('rsa-signer', { purpose: 'signing', algorithm: 'RSA-3072' as KeyRingSpec['algorithm'] }),
      (err: unknown) => {
        const { code, body } = err as { code?: number; body?: unknown };
        assert.equal(code, 422);
        assert.match((JSON.parse(String(body)) as { message?: string }).message ?? '', /spec\.algorithm: Unsupported value: "RSA-3072"/);
        return true;
      },
    );
    assert.ok(!(await store.list()).some((r) => r.name === 'rsa-signer'), 'no ring in the HSM');
  });

  it('generates signing rings as ECDSA P-384 key pairs, the private key non-extractable and the public key readable', async () => {
    const created = await createKeyRing('signer', { purpose: 'signing' });
    const kr = await statusWhen('signer', 'Ready', ready);
    const uid = created.metadata.uid ?? '';
    assert.equal(kr.status?.versions?.[0]?.algorithm, 'ECDSA-P384', 'the default algorithm of signing');
    assert.equal((await store.require({ ringId: uid })).algorithm, 'ECDSA_P384');
    const key = await store.keyHandle(uid, 1);
    assert.ok(key);
    const [extractable, sensitive] = await admin.withSession((s) =>
      admin.pkcs11.C_GetAttributeValue(s, key, [{ type: pkcs11js.CKA_EXTRACTABLE }, { type: pkcs11js.CKA_SENSITIVE }]),
    );
    assert.deepEqual([extractable?.value?.readUInt8(0), sensitive?.value?.readUInt8(0)], [0, 1]);
    const publicKey = await store.publicKey(uid, 1);
    assert.ok(publicKey);
    assert.equal(createPublicKey({ key: publicKey, format: 'der', type: 'spki' }).asymmetricKeyDetails?.namedCurve, 'secp384r1');
  });

  it('generates derivation rings as HMAC-SHA-384 keys', async () => {
    const created = await createKeyRing('deriver', { purpose: 'derivation' });
    const kr = await statusWhen('deriver', 'Ready', ready);
    assert.equal(kr.status?.versions?.[0]?.algorithm, 'HMAC-SHA-384');
    assert.equal((await store.require({ ringId: created.metadata.uid ?? '' })).algorithm, 'HMAC_SHA_384');
    assert.deepEqual(await keyAttributes(created.metadata.uid ?? '', 1), { extractable: false, sensitive: true });
  });

  it('rotates on request exactly once per request value [practice:rotation]', async () => {
    await patchSpec('orders', { rotationRequest: 'first' });
    let kr = await statusWhen('orders', 'version 2 primary', (k) => k.status?.primaryVersion === 2 && ready(k));
    assert.equal(kr.status?.lastRotationRequest, 'first');
    assert.equal(versionState(kr, 1), 'Enabled', 'the old version keeps decrypting');
    await poke('orders');
    kr = await statusWhen('orders', 'settled after a poke', (k) => ready(k) && k.metadata.generation === k.status?.observedGeneration);
    assert.equal(kr.status?.primaryVersion, 2, 'the same request value does not rotate again');
    assert.ok((await eventReasons('orders')).includes('Rotated'));
  });

  it('rotates on schedule when the rotation period has passed [practice:rotation]', async () => {
    await patchSpec('orders', { rotationPeriod: '24h' });
    let kr = await statusWhen('orders', 'next rotation shown', (k) => k.status?.nextRotationTime !== undefined && ready(k));
    const primary = kr.status?.versions?.find((v) => v.number === 2);
    assert.equal(Date.parse(kr.status?.nextRotationTime ?? ''), Date.parse(primary?.createTime ?? '') + 24 * hour);
    clockOffsetMs += 25 * hour;
    await poke('orders');
    kr = await statusWhen('orders', 'version 3 primary by schedule', (k) => k.status?.primaryVersion === 3);
    assert.ok(Date.parse(kr.status?.nextRotationTime ?? '') > Date.now() + clockOffsetMs, 'the next rotation is a period ahead');
  });

  it('disables and re-enables versions, and refuses to disable the primary', async () => {
    await patchSpec('orders', { versions: [{ number: 1, state: 'Disabled' }] });
    let kr = await statusWhen('orders', 'version 1 Disabled', (k) => versionState(k, 1) === 'Disabled');
    assert.equal((await store.require({ ringId: kr.status?.ringId ?? '' })).versions[0]?.state, 'Disabled', 'the HSM ring state the plugin reads');
    await patchSpec('orders', { versions: [{ number: 1, state: 'Enabled' }, { number: 3, state: 'Disabled' }] });
    kr = await statusWhen('orders', 'version 1 Enabled again', (k) => versionState(k, 1) === 'Enabled' && k.status?.observedGeneration === k.metadata.generation);
    const refusal = kr.status?.conditions?.find((c) => c.type === 'VersionRequestsApplied');
    assert.equal(refusal?.status, 'False');
    assert.match(refusal?.message ?? '', /version 3 is the primary/);
    assert.equal(versionState(kr, 3), 'Enabled');
    assert.ok(ready(kr), 'a refused request does not make the ring unready');
  });

  it('schedules destruction only of a disabled version, cancels it, and destroys once the window has passed [practice:soft-delete]', async () => {
    await patchSpec('orders', { versions: [{ number: 1, state: 'DestroyScheduled' }] });
    let kr = await statusWhen('orders', 'refusal for an Enabled version', (k) =>
      k.status?.conditions?.some((c) => c.type === 'VersionRequestsApplied' && /disable it first/.test(c.message)) ?? false,
    );
    assert.equal(versionState(kr, 1), 'Enabled');

    await patchSpec('orders', { versions: [{ number: 1, state: 'Disabled' }] });
    await statusWhen('orders', 'version 1 Disabled', (k) => versionState(k, 1) === 'Disabled');
    // Two-person rule, checked again by the operator: no approval, or one gone stale, is not acted on.
    await patchSpec('orders', { versions: [{ number: 1, state: 'DestroyScheduled' }] });
    kr = await statusWhen('orders', 'refusal without an approval', (k) =>
      k.status?.conditions?.some((c) => c.type === 'VersionRequestsApplied' && c.reason === 'DestroyNotApproved' && /no requester recorded/.test(c.message)) ?? false,
    );
    assert.equal(versionState(kr, 1), 'Disabled');
    await patchSpec('orders', { versions: [{ number: 1, state: 'DestroyScheduled', destroyRequest: approvedDestruction(operatorNow(-2 * hour)) }] });
    kr = await statusWhen('orders', 'refusal of a stale approval', (k) =>
      k.status?.conditions?.some((c) => c.type === 'VersionRequestsApplied' && /expired unused/.test(c.message)) ?? false,
    );
    assert.equal(versionState(kr, 1), 'Disabled');
    await patchSpec('orders', { versions: [{ number: 1, state: 'DestroyScheduled', destroyRequest: approvedDestruction(operatorNow()) }] });
    kr = await statusWhen('orders', 'version 1 DestroyScheduled', (k) => versionState(k, 1) === 'DestroyScheduled');
    const when = Date.parse(kr.status?.versions?.find((v) => v.number === 1)?.destroyTime ?? '');
    assert.ok(Math.abs(when - (Date.now() + clockOffsetMs + 720 * hour)) < 60_000, 'destroyed after the default 30-day window');

    await patchSpec('orders', { versions: [{ number: 1, state: 'Disabled' }] });
    kr = await statusWhen('orders', 'destruction cancelled', (k) => versionState(k, 1) === 'Disabled');
    const uid = kr.status?.ringId ?? '';
    assert.ok(await keyAttributes(uid, 1), 'the key is still in the HSM');

    await patchSpec('orders', { versions: [{ number: 1, state: 'DestroyScheduled', destroyRequest: approvedDestruction(operatorNow()) }] });
    await statusWhen('orders', 'version 1 DestroyScheduled again', (k) => versionState(k, 1) === 'DestroyScheduled');
    assert.ok(await keyAttributes(uid, 1), 'nothing is destroyed before the window has passed');
    clockOffsetMs += 721 * hour;
    await poke('orders');
    kr = await statusWhen('orders', 'version 1 Destroyed', (k) => versionState(k, 1) === 'Destroyed');
    assert.equal(await keyAttributes(uid, 1), undefined, 'the key object is gone from the HSM');
    assert.ok(kr.status?.versions?.find((v) => v.number === 1)?.destroyTime);
    assert.ok((await eventReasons('orders')).includes('Destroyed'));
  });

  it('keeps the keys of a KeyRing deleted with deletionPolicy Retain', async () => {
    const created = await createKeyRing('kept');
    await statusWhen('kept', 'Ready', ready);
    await objects.deleteNamespacedCustomObject({ ...keyRingResource, namespace, name: 'kept' });
    await eventually('KeyRing kept gone', 30_000, async () => ((await getKeyRing('kept').catch(() => undefined)) ? undefined : true));
    const ring = await store.require({ ringId: created.metadata.uid ?? '' });
    assert.equal(ring.versions[0]?.state, 'Enabled');
    assert.ok(await keyAttributes(ring.ringId, 1));
  });

  it('schedules every version of a KeyRing deleted with deletionPolicy Destroy, and destroys them only after the window [practice:soft-delete]', async () => {
    const created = await createKeyRing('dropped', { deletionPolicy: 'Destroy', destroyScheduledDuration: '48h', deletionDestroyRequest: approvedDestruction(operatorNow()) });
    await statusWhen('dropped', 'Ready', ready);
    const uid = created.metadata.uid ?? '';
    await objects.deleteNamespacedCustomObject({ ...keyRingResource, namespace, name: 'dropped' });
    await eventually('KeyRing dropped gone', 30_000, async () => ((await getKeyRing('dropped').catch(() => undefined)) ? undefined : true));
    const ring = await store.require({ ringId: uid });
    assert.equal(ring.versions[0]?.state, 'DestroyScheduled');
    assert.ok(await keyAttributes(uid, 1), 'not destroyed at once');
    clockOffsetMs += 49 * hour;
    await eventually('the janitor destroys the due key', 30_000, async () => ((await keyAttributes(uid, 1)) === undefined ? true : undefined));
    assert.equal((await store.require({ ringId: uid })).versions[0]?.state, 'Destroyed');
  });

  it('exposes rings and versions by state, rotation times, reconciles, HSM latency and orphan keys as metrics', async () => {
    const sample = async (): Promise<Map<string, number>> => {
      const text = await (await fetch(`http://${operator.metricsAddress}/metrics`)).text();
      return new Map(text.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => [l.slice(0, l.lastIndexOf(' ')), Number(l.slice(l.lastIndexOf(' ') + 1))]));
    };
    const metrics = await sample();
    assert.ok((metrics.get('keyward_hsm_key_versions{state="Destroyed"}') ?? 0) >= 2, 'destroyed versions counted');
    assert.ok((metrics.get('keyward_hsm_key_versions{state="Enabled"}') ?? 0) >= 3);
    assert.ok((metrics.get('keyward_operator_reconcile_duration_seconds_count{result="success"}') ?? 0) > 0);
    assert.ok((metrics.get('keyward_hsm_operation_duration_seconds_count{operation="rotate"}') ?? 0) >= 2);
    const orders = '{namespace="default",keyring="orders"}';
    assert.equal(metrics.get(`keyward_keyring_ready${orders}`), 1);
    assert.equal(metrics.get(`keyward_keyring_rotation_period_seconds${orders}`), 24 * 3600);
    // The previous test moved the clock 49 h past orders' last rotation (period 24 h) and nothing
    // has reconciled orders since: the scrape itself shows it 25 h overdue.
    const overdue = metrics.get(`keyward_keyring_rotation_overdue_seconds${orders}`) ?? 0;
    assert.ok(Math.abs(overdue - 25 * 3600) < 120, `overdue by 25 h: ${overdue} s`);
    assert.ok((metrics.get(`keyward_keyring_last_rotation_timestamp_seconds${orders}`) ?? 0) > 0);
    assert.equal(metrics.get(`keyward_keyring_versions{namespace="default",keyring="orders",state="Destroyed"}`), 1);
    assert.equal(metrics.get(`keyward_keyring_destructions_scheduled_total${orders}`), 2, 'scheduled, cancelled, scheduled again');
    assert.equal(metrics.get('keyward_keyring_destructions_scheduled_total{namespace="default",keyring="dropped"}'), 1, 'counted at deletion, kept after it');
    assert.ok(![...metrics.keys()].some((series) => /^keyward_keyring_(ready|versions|rotation_\w+|last_rotation\w+)\{[^}]*keyring="(kept|dropped)"/.test(series)), 'deleted KeyRings have no gauges');
    assert.equal(metrics.get('keyward_operator_leader'), 1);
    assert.equal(metrics.get('keyward_hsm_up'), 1);
    assert.equal(metrics.get('keyward_hsm_orphan_keys'), 0);

    // A Keyward-labelled key no ring accounts for: reported by the janitor, left in place.
    const stray = randomUUID();
    await generateAesKey(admin, { label: keyObjectLabel(stray, 1), id: keyObjectId(stray, 1) });
    await eventually('the orphan key reported', 15_000, async () => ((await sample()).get('keyward_hsm_orphan_keys') === 1 ? true : undefined));
    assert.ok(await keyAttributes(stray, 1), 'never deleted');
  });

  it('turns Ready=False with a reason while the HSM is unavailable, and Ready again by itself [practice:continuity]', async () => {
    await createKeyRing('outage');
    await statusWhen('outage', 'Ready', ready);
    renameSync(softhsm.tokenDir, `${softhsm.tokenDir}.away`);
    try {
      await patchSpec('outage', { rotationRequest: 'during-outage' });
      const kr = await statusWhen('outage', 'Ready=False', (k) => k.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'False') ?? false);
      const condition = kr.status?.conditions?.find((c) => c.type === 'Ready');
      assert.match(condition?.reason ?? '', /^Hsm/);
      assert.ok(condition?.message, 'says why');
    } finally {
      renameSync(`${softhsm.tokenDir}.away`, softhsm.tokenDir);
    }
    const kr = await statusWhen('outage', 'Ready again with the requested rotation done', (k) => ready(k) && k.status?.primaryVersion === 2, 60_000);
    assert.equal(kr.status?.lastRotationRequest, 'during-outage', 'nothing was lost');
  });
});
