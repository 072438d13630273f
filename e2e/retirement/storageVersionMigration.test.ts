// Re-encryption through the cluster's own StorageVersionMigration, on a control plane that serves
// storagemigration.k8s.io (the StorageVersionMigrator gate, beta and off by default in 1.36, on in
// kube-apiserver and kube-controller-manager); and the fallback when the API is served but its
// controller is not running. etcdRetirement.test.ts covers a cluster without the API.
import assert from 'node:assert/strict';
import { CoreV1Api } from '@kubernetes/client-node';
import type { KeyRing } from '../../core/api/keyRing.js';
import { parseKmsV2Value } from '../../testbed/control-plane/encryptedObject.js';
import { readEtcdPrefix } from '../../testbed/control-plane/etcdClient.js';
import { RetirementCluster } from './retirementCluster.js';

const secretCount = 300;
const gate = '--feature-gates=StorageVersionMigrator=true';

describe('Retirement through StorageVersionMigration (the StorageVersionMigrator gate on)', function () {
  this.timeout(900_000);
  let cluster: RetirementCluster;

  const completed = (target: number): Promise<KeyRing> => cluster.phase(target, 'Complete', 420_000);
  const storedKeyIds = async (): Promise<string[]> =>
    [...new Set((await readEtcdPrefix(cluster.cp.etcdEndpoint, '/registry/secrets/default/')).map(({ value }) => parseKmsV2Value(value)?.keyId ?? 'not KMS'))];
  const migrations = async (): Promise<Array<{ metadata?: { name?: string }; status?: { conditions?: Array<{ type?: string; status?: string }> } }>> =>
    ((await cluster.objects().listClusterCustomObject({ group: 'storagemigration.k8s.io', version: 'v1beta1', plural: 'storageversionmigrations' })) as { items: [] }).items;

  before(async () => {
    cluster = await RetirementCluster.start({
      name: 'svm',
      controlPlane: { controllerManager: true, extraApiserverArgs: [gate, '--runtime-config=storagemigration.k8s.io/v1beta1=true'], extraControllerManagerArgs: [gate] },
      keyRingSpec: { reEncryption: { enabled: true, maxWritesPerSecond: 200, method: 'Auto' } },
      scanner: { intervalSeconds: 30 },
    });
    const core = cluster.cp.kubeConfig.makeApiClient(CoreV1Api);
    for (let i = 0; i < secretCount; i++) await core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name: `s-${i}` }, stringData: { value: `v-${i}` } } });
  });
  after(() => cluster?.stop());

  it('re-encrypts through a StorageVersionMigration the cluster runs, proven from etcd [practice:verified-retirement]', async () => {
    const v2 = await cluster.rotate('rotate-to-2', 2);
    const kr = await completed(2);
    assert.equal(kr.status?.reEncryption?.method, 'StorageVersionMigration');
    const succeeded = (await migrations()).filter((m) => m.metadata?.name?.endsWith('-v2-secrets'));
    assert.equal(succeeded.length, 1, 'one StorageVersionMigration for the rotation');
    assert.ok(succeeded[0]?.status?.conditions?.some((c) => c.type === 'Succeeded' && c.status === 'True'));
    assert.deepEqual(await storedKeyIds(), [v2], 'every Secret is stored under version 2');
    assert.equal(kr.status?.versions?.find((v) => v.number === 1)?.etcdObjects, 0);
  });

  it('rewrites by itself when the API is served but no controller picks the migration up', async () => {
    await cluster.cp.controllerManager?.stop();
    const v3 = await cluster.rotate('rotate-to-3', 3);
    const kr = await completed(3);
    assert.equal(kr.status?.reEncryption?.method, 'Rewrite');
    assert.ok(!(await migrations()).some((m) => m.metadata?.name?.endsWith('-v3-secrets')), 'the unserved migration was removed');
    assert.deepEqual(await storedKeyIds(), [v3], 'every Secret is stored under version 3');
    const values = await cluster.cp.kubeConfig.makeApiClient(CoreV1Api).listNamespacedSecret({ namespace: 'default' });
    assert.equal(values.items.length, secretCount + 1, 'the Secrets and the probe');
    for (const s of values.items.filter((i) => i.metadata?.name !== 'probe')) assert.equal(Buffer.from(s.data?.value ?? '', 'base64').toString(), `v-${s.metadata?.name?.slice(2)}`);
  });
});
