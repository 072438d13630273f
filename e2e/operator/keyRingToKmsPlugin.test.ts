// The handoff from the operator to the node side: a KeyRing reconciled by the operator process is
// the ring the KMS plugin process encrypts Secrets with, and a rotation made through the KeyRing
// reaches the plugin through the HSM alone, also when the plugin starts while the apiserver is down.
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
import { readEtcdKey, secretEtcdKey } from '../../testbed/control-plane/etcdClient.js';
import { apiserverKmsHealthStatus, kmsEncryptionConfig, kmsStatus, startKmsPluginProcess, type KmsPluginProcess } from '../kms/kmsPluginProcess.js';
import { installCrds } from './crds.js';
import { startOperatorProcess, type OperatorProcess } from './operatorProcess.js';

const ringNamespace = 'kube-system';
const ringName = 'etcd-secrets';

describe('KeyRing to KMS plugin: rotations made through Kubernetes reach the plugin through the HSM', function () {
  this.timeout(600_000);
  let dir: string;
  let hsm: SoftHsmToken;
  let cp: ControlPlane;
  let operator: OperatorProcess;
  let plugin: KmsPluginProcess | undefined;
  const secrets = new Map<string, string>();

  const objects = () => cp.kubeConfig.makeApiClient(CustomObjectsApi);
  const keyRing = async (): Promise<KeyRing> => (await objects().getNamespacedCustomObject({ ...keyRingResource, namespace: ringNamespace, name: ringName })) as KeyRing;
  const primaryKeyId = (kr: KeyRing): string | undefined => kr.status?.versions?.find((v) => v.number === kr.status?.primaryVersion)?.keyId;
  const requestRotation = (request: string): Promise<unknown> =>
    objects().patchNamespacedCustomObject(
      { ...keyRingResource, namespace: ringNamespace, name: ringName, body: { spec: { rotationRequest: request } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
  const primaryAfter = (version: number): Promise<string> =>
    eventually(`KeyRing primary version ${version}`, 30_000, async () => {
      const kr = await keyRing();
      return kr.status?.primaryVersion === version ? primaryKeyId(kr) : undefined;
    });
  const startPlugin = async (): Promise<KmsPluginProcess> =>
    (plugin = await startKmsPluginProcess({ hsm, ringName, ringNamespace, dir }));

  /** Writes a Secret and returns the key id etcd says it is stored under. */
  const writeSecret = async (name: string): Promise<string | undefined> => {
    const value = `v-${name}`;
    await cp.kubeConfig.makeApiClient(CoreV1Api).createNamespacedSecret({ namespace: 'default', body: { metadata: { name }, stringData: { value } } });
    secrets.set(name, value);
    const raw = await readEtcdKey(cp.etcdEndpoint, secretEtcdKey('default', name));
    assert.ok(raw && !raw.includes(Buffer.from(value)), `${name} holds no plaintext in etcd`);
    return parseKmsV2Value(raw)?.keyId;
  };
  /** Keeps writing until a new Secret lands under `keyId` (the apiserver asks Status about once a minute). */
  const writesCarry = (keyId: string, what: string): Promise<true> => {
    let n = 0;
    return eventually(`new Secrets stored under ${what}`, 150_000, async () => {
      await apiserverKmsHealthStatus(cp);
      return (await writeSecret(`${what.replace(/\W/g, '')}-${n++}`)) === keyId ? true : undefined;
    }, 1000);
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keyward-e2e-handoff-'));
    hsm = createSoftHsmToken({ parentDir: dir });
    // The plugin does not exist yet, so the apiserver's KMS check fails: wait only for the API.
    cp = await startControlPlane({ encryptionConfig: kmsEncryptionConfig(dir, 'keyward', join(dir, 'kms.sock')), skipReadyz: true });
    await installCrds(cp.kubeConfig);
    operator = await startOperatorProcess({ hsm, kubeconfigPath: cp.kubeconfigPath, dir, identity: 'handoff', leaseSeconds: 4 });
  });
  after(async () => {
    await plugin?.process.stop();
    await operator?.process.stop();
    await cp?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('encrypts Secrets under the key of a KeyRing the operator created', async () => {
    await objects().createNamespacedCustomObject({
      ...keyRingResource,
      namespace: ringNamespace,
      body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name: ringName }, spec: { purpose: 'encryption' } },
    });
    const keyId = await primaryAfter(1);
    await startPlugin();
    assert.equal((await kmsStatus(join(dir, 'kms.sock'))).keyId, keyId, 'the plugin serves the KeyRing primary');
    await writesCarry(keyId, 'version 1');
  });

  it('carries a rotation made through the KeyRing to the plugin and to new writes while the apiserver is up [practice:rotation]', async () => {
    await requestRotation('rotate-1');
    const keyId = await primaryAfter(2);
    await eventually('the plugin reporting version 2', 10_000, async () => ((await kmsStatus(join(dir, 'kms.sock'))).keyId === keyId ? true : undefined));
    await writesCarry(keyId, 'version 2');
  });

  it('gives a plugin that starts while the apiserver is down the rotation from the HSM alone [practice:rotation] [practice:continuity]', async () => {
    await plugin?.process.stop();
    await requestRotation('rotate-2');
    const keyId = await primaryAfter(3);
    await cp.apiserver.stop();
    await startPlugin();
    const status = await kmsStatus(join(dir, 'kms.sock'));
    assert.deepEqual([status.healthz, status.keyId], ['ok', keyId], 'version 3 served with no apiserver running');
    await cp.restartApiserver();
    await writesCarry(keyId, 'version 3');

    const listed = await cp.kubeConfig.makeApiClient(CoreV1Api).listNamespacedSecret({ namespace: 'default' });
    const values = new Map(listed.items.map((s) => [s.metadata?.name, Buffer.from(s.data?.value ?? '', 'base64').toString()]));
    for (const [name, value] of secrets) assert.equal(values.get(name), value, `${name} written under an earlier version reads back`);
  });
});
