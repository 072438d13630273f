// Re-encryption through the cluster's own StorageVersionMigration, on a control plane that serves
// storagemigration.k8s.io (the StorageVersionMigrator gate, beta and off by default in 1.36, on in
// kube-apiserver and kube-controller-manager); and the fallback when the API is served but its
// controller is not running. etcdRetirement.test.ts covers a cluster without the API.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CoreV1Api, CustomObjectsApi, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { keyRingResource, type KeyRing } from '../../core/api/keyRing.js';
import { eventually } from '../../testbed/eventually.js';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { parseKmsV2Value } from '../../testbed/control-plane/encryptedObject.js';
import { readEtcdPrefix } from '../../testbed/control-plane/etcdClient.js';
import { kmsEncryptionConfig, startKmsPluginProcess, type KmsPluginProcess } from '../kms/kmsPluginProcess.js';
import { installCrds } from '../operator/crds.js';
import { startOperatorProcess, type OperatorProcess } from '../operator/operatorProcess.js';
import { startScannerProcess, type ScannerProcess } from './scannerProcess.js';

const namespace = 'kube-system';
const ringName = 'etcd-secrets';
const secretCount = 300;
const gate = '--feature-gates=StorageVersionMigrator=true';

describe('Retirement through StorageVersionMigration (the StorageVersionMigrator gate on)', function () {
  this.timeout(900_000);
  let dir: string;
  let hsm: SoftHsmToken;
  let cp: ControlPlane;
  let operator: OperatorProcess;
  let plugin: KmsPluginProcess;
  let scanner: ScannerProcess;

  const objects = () => cp.kubeConfig.makeApiClient(CustomObjectsApi);
  const keyRing = async (): Promise<KeyRing> => (await objects().getNamespacedCustomObject({ ...keyRingResource, namespace, name: ringName })) as KeyRing;
  const rotate = async (request: string, version: number): Promise<string> => {
    await objects().patchNamespacedCustomObject(
      { ...keyRingResource, namespace, name: ringName, body: { spec: { rotationRequest: request } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    return eventually(`primary version ${version}`, 30_000, async () => {
      const kr = await keyRing();
      return kr.status?.primaryVersion === version ? kr.status.versions?.find((v) => v.number === version)?.keyId : undefined;
    });
  };
  const completed = (target: number): Promise<KeyRing> =>
    eventually(`re-encryption under version ${target} Complete`, 420_000, async () => {
      const kr = await keyRing();
      return kr.status?.reEncryption?.targetVersion === target && kr.status.reEncryption.phase === 'Complete' ? kr : undefined;
    }, 1000);
  const storedKeyIds = async (): Promise<string[]> =>
    [...new Set((await readEtcdPrefix(cp.etcdEndpoint, '/registry/secrets/default/')).map(({ value }) => parseKmsV2Value(value)?.keyId ?? 'not KMS'))];
  const migrations = async (): Promise<Array<{ metadata?: { name?: string }; status?: { conditions?: Array<{ type?: string; status?: string }> } }>> =>
    ((await objects().listClusterCustomObject({ group: 'storagemigration.k8s.io', version: 'v1beta1', plural: 'storageversionmigrations' })) as { items: [] }).items;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keyward-e2e-svm-'));
    hsm = createSoftHsmToken({ parentDir: dir });
    cp = await startControlPlane({
      encryptionConfig: kmsEncryptionConfig(dir, 'keyward', join(dir, 'kms.sock')),
      skipReadyz: true,
      controllerManager: true,
      extraApiserverArgs: [gate, '--runtime-config=storagemigration.k8s.io/v1beta1=true'],
      extraControllerManagerArgs: [gate],
    });
    await installCrds(cp.kubeConfig);
    operator = await startOperatorProcess({ hsm, kubeconfigPath: cp.kubeconfigPath, dir, identity: 'svm', leaseSeconds: 4 });
    await objects().createNamespacedCustomObject({
      ...keyRingResource,
      namespace,
      body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name: ringName }, spec: { purpose: 'encryption', reEncryption: { maxWritesPerSecond: 200 } } },
    });
    await eventually('KeyRing version 1', 30_000, async () => ((await keyRing()).status?.primaryVersion === 1 ? true : undefined));
    plugin = await startKmsPluginProcess({ hsm, ringName, ringNamespace: namespace, dir });
    scanner = await startScannerProcess({ hsm, ringName, ringNamespace: namespace, providerName: 'keyward', etcdEndpoint: cp.etcdEndpoint, dir, intervalSeconds: 30 });
    const core = cp.kubeConfig.makeApiClient(CoreV1Api);
    await eventually('kube-apiserver encrypting through the plugin', 150_000, async () => {
      try {
        await core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name: 's-0' }, stringData: { value: 'v-0' } } });
        return true;
      } catch {
        return undefined;
      }
    }, 1000);
    for (let i = 1; i < secretCount; i++) await core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name: `s-${i}` }, stringData: { value: `v-${i}` } } });
  });
  after(async () => {
    await scanner?.process.stop();
    await plugin?.process.stop();
    await operator?.process.stop();
    await cp?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('re-encrypts through a StorageVersionMigration the cluster runs, proven from etcd [practice:verified-retirement]', async () => {
    const v2 = await rotate('rotate-to-2', 2);
    const kr = await completed(2);
    assert.equal(kr.status?.reEncryption?.method, 'StorageVersionMigration');
    const succeeded = (await migrations()).filter((m) => m.metadata?.name?.endsWith('-v2-secrets'));
    assert.equal(succeeded.length, 1, 'one StorageVersionMigration for the rotation');
    assert.ok(succeeded[0]?.status?.conditions?.some((c) => c.type === 'Succeeded' && c.status === 'True'));
    assert.deepEqual(await storedKeyIds(), [v2], 'every Secret is stored under version 2');
    assert.equal(kr.status?.versions?.find((v) => v.number === 1)?.etcdObjects, 0);
  });

  it('rewrites by itself when the API is served but no controller picks the migration up', async () => {
    await cp.controllerManager?.stop();
    const v3 = await rotate('rotate-to-3', 3);
    const kr = await completed(3);
    assert.equal(kr.status?.reEncryption?.method, 'Rewrite');
    assert.ok(!(await migrations()).some((m) => m.metadata?.name?.endsWith('-v3-secrets')), 'the unserved migration was removed');
    assert.deepEqual(await storedKeyIds(), [v3], 'every Secret is stored under version 3');
    const values = await cp.kubeConfig.makeApiClient(CoreV1Api).listNamespacedSecret({ namespace: 'default' });
    assert.equal(values.items.length, secretCount);
    for (const s of values.items) assert.equal(Buffer.from(s.data?.value ?? '', 'base64').toString(), `v-${s.metadata?.name?.slice(2)}`);
  });
});
