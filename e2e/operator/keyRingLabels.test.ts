// KeyRings carry Kubernetes labels for inventory: every key an application uses is one label
// query across namespaces, and the operator keeps the labels through its reconciles and
// rotations. Labels stay in Kubernetes: nothing of them reaches the HSM or a metric label.
import assert from 'node:assert/strict';
import { CoreV1Api, CustomObjectsApi, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { createAuditLog } from '../../core/audit/auditLog.js';
import { keyRingResource, type KeyRing } from '../../core/api/keyRing.js';
import { HsmToken } from '../../core/hsm/hsmToken.js';
import { versionStates } from '../../core/hsm/ringState.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { createLogger } from '../../core/observability/logger.js';
import { operations } from '../../core/policy/operations.js';
import { startOperator, type Operator } from '../../operator/operator.js';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { eventually } from '../../testbed/eventually.js';
import { everyObject } from '../../testbed/hsm/tokenObjects.js';
import { oneOf, scrape, secretsInLabels, unboundedLabels } from '../../testbed/metricsText.js';
import { installCrds } from './crds.js';

const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
const partOf = 'app.kubernetes.io/part-of';

// Label values distinctive enough that finding one anywhere cannot be a coincidence.
const costCenter = 'cc-4471-zxq';
const team = 'team-quokka-9d';
const keyRings = [
  { namespace: 'shop-east', name: 'orders', labels: { [partOf]: 'shop', 'app.kubernetes.io/component': 'orders', 'example.com/cost-center': costCenter } },
  { namespace: 'shop-west', name: 'payments', labels: { [partOf]: 'shop', 'example.com/team': team } },
  { namespace: 'shop-west', name: 'reports', labels: { [partOf]: 'analytics' } },
  { namespace: 'shop-east', name: 'unlabelled', labels: {} },
];

describe('KeyRing labels for inventory, through the operator [practice:inventory-labels]', function () {
  this.timeout(120_000);
  let cp: ControlPlane;
  let softhsm: SoftHsmToken;
  let admin: HsmToken;
  let operator: Operator;
  let objects: CustomObjectsApi;

  before(async function () {
    this.timeout(300_000);
    cp = await startControlPlane();
    await installCrds(cp.kubeConfig);
    const core = cp.kubeConfig.makeApiClient(CoreV1Api);
    for (const namespace of ['shop-east', 'shop-west']) await core.createNamespace({ body: { metadata: { name: namespace } } });
    softhsm = createSoftHsmToken();
    process.env.SOFTHSM2_CONF = softhsm.configPath;
    admin = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.pin });
    objects = cp.kubeConfig.makeApiClient(CustomObjectsApi);
    operator = await startOperator(
      {
        kubeConfig: cp.kubeConfig,
        modulePath: softhsm.modulePath,
        tokenLabel: softhsm.label,
        pin: softhsm.pin,
        leaseNamespace: 'default',
        identity: 'labels-test',
        janitorIntervalMs: 500,
        leaseDurationMs: 4000,
        renewDeadlineMs: 2700,
        retryPeriodMs: 500,
        audit: createAuditLog('operator', '/dev/null'),
      },
      createLogger('operator', 'warn'),
    );
    for (const { namespace, name, labels } of keyRings) {
      await objects.createNamespacedCustomObject({
        ...keyRingResource,
        namespace,
        body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name, labels }, spec: { purpose: 'encryption' } },
      });
    }
    for (const { namespace, name } of keyRings) await statusWhen(namespace, name, 'Ready', (kr) => kr.status?.primaryVersion === 1 && ready(kr));
  });

  after(async () => {
    await operator?.stop();
    admin?.close();
    softhsm?.remove();
    await cp?.stop();
  });

  const getKeyRing = async (namespace: string, name: string): Promise<KeyRing> =>
    (await objects.getNamespacedCustomObject({ ...keyRingResource, namespace, name })) as KeyRing;
  const ready = (kr: KeyRing): boolean => kr.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True' && c.observedGeneration === kr.metadata.generation) ?? false;
  const statusWhen = (namespace: string, name: string, what: string, check: (kr: KeyRing) => boolean): Promise<KeyRing> =>
    eventually(`${namespace}/${name}: ${what}`, 30_000, async () => {
      const kr = await getKeyRing(namespace, name);
      return check(kr) ? kr : undefined;
    });

  /** One list across all namespaces: the KeyRings a label selector matches, as namespace/name. */
  const selected = async (labelSelector: string): Promise<string[]> => {
    const list = (await objects.listClusterCustomObject({ ...keyRingResource, labelSelector })) as { items: KeyRing[] };
    return list.items.map((kr) => `${kr.metadata.namespace}/${kr.metadata.name}`).sort();
  };

  it("lists every key of an application, across namespaces, with one label query", async () => {
    assert.deepEqual(await selected(`${partOf}=shop`), ['shop-east/orders', 'shop-west/payments']);
    assert.deepEqual(await selected(`${partOf}=analytics`), ['shop-west/reports']);
    assert.deepEqual(await selected(`${partOf}=shop,example.com/team=${team}`), ['shop-west/payments']);
    assert.deepEqual(await selected(`!${partOf}`), ['shop-east/unlabelled']);
  });

  it('keeps the labels, those set after creation too, through reconciles and rotations', async () => {
    await objects.patchNamespacedCustomObject(
      { ...keyRingResource, namespace: 'shop-east', name: 'unlabelled', body: { metadata: { labels: { [partOf]: 'shop' } } } },
      mergePatch,
    );
    for (const [namespace, name] of [['shop-east', 'orders'], ['shop-west', 'payments'], ['shop-east', 'unlabelled']] as const) {
      for (const request of ['r-1', 'r-2']) {
        await objects.patchNamespacedCustomObject({ ...keyRingResource, namespace, name, body: { spec: { rotationRequest: request } } }, mergePatch);
        await statusWhen(namespace, name, `rotation ${request} done`, (kr) => kr.status?.lastRotationRequest === request && ready(kr));
      }
    }
    const rotated = await getKeyRing('shop-east', 'orders');
    assert.equal(rotated.status?.primaryVersion, 3);
    assert.deepEqual(rotated.metadata.labels, keyRings[0]!.labels, 'labels as created');
    assert.deepEqual((await getKeyRing('shop-west', 'payments')).metadata.labels, keyRings[1]!.labels);
    assert.deepEqual((await getKeyRing('shop-east', 'unlabelled')).metadata.labels, { [partOf]: 'shop' }, 'a label added later');
    assert.deepEqual(await selected(`${partOf}=shop`), ['shop-east/orders', 'shop-east/unlabelled', 'shop-west/payments']);
  });

  it('copies no label into the HSM: not into any object label, id or application, nor into ring state [practice:no-sensitive-metadata]', async () => {
    const tokenObjects = await everyObject(admin);
    assert.ok(tokenObjects.length >= keyRings.length * 2, `only ${tokenObjects.length} objects in the token`);
    const labelTexts = [costCenter, team, partOf, 'app.kubernetes.io/component', 'example.com/cost-center', 'example.com/team'];
    for (const object of tokenObjects) {
      const where = object.label?.toString('utf8') ?? '(no label)';
      for (const text of labelTexts) {
        for (const [what, bytes] of [['CKA_LABEL', object.label], ['CKA_ID', object.id], ['CKA_APPLICATION', object.application], ['CKA_VALUE', object.value]] as const) {
          assert.ok(!bytes?.includes(Buffer.from(text)), `${what} of ${where} holds '${text}'`);
        }
      }
      // 'shop' is also in the namespaces, which ring state holds; the metadata must not hold either.
      for (const bytes of [object.label, object.id, object.application]) assert.ok(!bytes?.includes(Buffer.from('shop')), `metadata of ${where} holds 'shop'`);
    }
    // Every KeyRing has its ring, and each ring state holds only what resolves its name.
    const rings = await new RingStore(admin).list();
    assert.equal(rings.filter((r) => r.released === undefined).length, keyRings.length);
    for (const ring of rings) assert.ok(!('labels' in ring) && !JSON.stringify(ring).includes('app.kubernetes.io'), `ring ${ring.ringId} holds labels`);
  });

  it("puts no label value in the operator's metrics; every keyward_* label value is a KeyRing's namespace or name, or from a bounded set [practice:no-sensitive-metadata]", async () => {
    const samples = await scrape(operator.metricsAddress);
    assert.deepEqual(secretsInLabels(samples, { 'a cost-center label': costCenter, 'a team label': team, 'a label key': 'app.kubernetes.io' }), []);
    assert.deepEqual(
      unboundedLabels(samples, {
        namespace: oneOf(...keyRings.map((kr) => kr.namespace)),
        keyring: oneOf(...keyRings.map((kr) => kr.name)),
        state: oneOf(...versionStates),
        result: oneOf('success', 'error', 'allowed', 'denied'),
        reason: oneOf('RingStateCorrupt', 'MechanismUnsupported', 'HsmError', 'HsmUnavailable', 'HsmLoginFailed', 'LifecycleRefused', 'Granted', 'NoPolicy', 'NotGranted', 'GrantExpired', 'SeparationOfDuties'),
        operation: oneOf(...Object.keys(operations), 'claimName', 'create', 'destroy', 'get', 'release', 'rotate', 'scheduleRingDestruction', 'setVersionState', 'check', 'keyUse'),
        code: (v) => /^CKR_\w+$/.test(v) || /^[A-Z][A-Za-z]+$/.test(v),
        resource: oneOf('KeyRing', 'KeyPolicy', 'keyrings', 'keypolicies'),
        name: oneOf('keyrings', 'keypolicies'),
      }),
      [],
    );
    assert.ok(samples.some((s) => s.name === 'keyward_keyring_ready' && s.labels.namespace === 'shop-west' && s.labels.keyring === 'payments' && s.value === 1), 'KeyRing series are there to check');
  });
});
