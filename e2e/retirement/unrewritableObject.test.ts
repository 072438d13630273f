// An object kube-apiserver will not let the operator rewrite (here a ValidatingAdmissionPolicy
// refuses updates of labelled Secrets): the run reports it by name and count, the older version
// stays protected at admission, and the run completes once a scan finds the object gone.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AdmissionregistrationV1Api, CoreV1Api, CustomObjectsApi, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { keyPolicyResource } from '../../core/api/keyPolicy.js';
import { keyRingResource, type KeyRing } from '../../core/api/keyRing.js';
import { eventually } from '../../testbed/eventually.js';
import { apiRefusal } from '../../testbed/apiRefusal.js';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { freePort } from '../../testbed/control-plane/network.js';
import { kmsEncryptionConfig, startKmsPluginProcess, type KmsPluginProcess } from '../kms/kmsPluginProcess.js';
import { installCrds } from '../operator/crds.js';
import { registerAdmissionWebhooks, webhookCertDir } from '../operator/admissionWebhooks.js';
import { startOperatorProcess, type OperatorProcess } from '../operator/operatorProcess.js';
import { startScannerProcess, type ScannerProcess } from './scannerProcess.js';

const namespace = 'kube-system';
const ringName = 'etcd-secrets';
const merge = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

describe('Retirement with an object that cannot be rewritten', function () {
  this.timeout(600_000);
  let dir: string;
  let hsm: SoftHsmToken;
  let cp: ControlPlane;
  let operator: OperatorProcess;
  let plugin: KmsPluginProcess;
  let scanner: ScannerProcess;

  const objects = () => cp.kubeConfig.makeApiClient(CustomObjectsApi);
  const keyRing = async (): Promise<KeyRing> => (await objects().getNamespacedCustomObject({ ...keyRingResource, namespace, name: ringName })) as KeyRing;
  const patchRing = (spec: Record<string, unknown>): Promise<unknown> => objects().patchNamespacedCustomObject({ ...keyRingResource, namespace, name: ringName, body: { spec } }, merge);
  /** What to look at when a wait fails: the run and the operator's last words. */
  const diagnosis = async (): Promise<string> =>
    `${JSON.stringify((await keyRing()).status?.reEncryption)}\n${readFileSync(operator.logFile, 'utf8').split('\n').slice(-15).join('\n')}`;
  const phase = async (target: number, wanted: string, timeoutMs: number): Promise<KeyRing> => {
    try {
      return await eventually(`re-encryption under version ${target} ${wanted}`, timeoutMs, async () => {
        const kr = await keyRing();
        return kr.status?.reEncryption?.targetVersion === target && kr.status.reEncryption.phase === wanted ? kr : undefined;
      }, 1000);
    } catch (err) {
      throw new Error(`${(err as Error).message}\n${await diagnosis()}`, { cause: err });
    }
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keyward-e2e-unrewritable-'));
    hsm = createSoftHsmToken({ parentDir: dir });
    cp = await startControlPlane({ encryptionConfig: kmsEncryptionConfig(dir, 'keyward', join(dir, 'kms.sock')), skipReadyz: true });
    await installCrds(cp.kubeConfig);
    const webhook = { address: `127.0.0.1:${await freePort()}`, certDir: webhookCertDir(cp, join(dir, 'webhook')) };
    operator = await startOperatorProcess({ hsm, kubeconfigPath: cp.kubeconfigPath, dir, identity: 'unrewritable', leaseSeconds: 4, webhook });
    await registerAdmissionWebhooks(cp, webhook.address);
    await objects().createNamespacedCustomObject({
      ...keyPolicyResource,
      namespace,
      body: {
        apiVersion: 'keyward.dev/v1alpha1',
        kind: 'KeyPolicy',
        metadata: { name: 'etcd-custody' },
        spec: { rules: [{ name: 'admin', subjects: [{ kind: 'User', name: 'keyward-admin' }], keyRings: [ringName], roles: ['Administrator'] }] },
      },
    });
    await objects().createNamespacedCustomObject({
      ...keyRingResource,
      namespace,
      body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name: ringName }, spec: { purpose: 'encryption', reEncryption: { maxWritesPerSecond: 200 } } },
    });
    await eventually('KeyRing version 1', 30_000, async () => ((await keyRing()).status?.primaryVersion === 1 ? true : undefined));
    plugin = await startKmsPluginProcess({ hsm, ringName, ringNamespace: namespace, dir });
    scanner = await startScannerProcess({ hsm, ringName, ringNamespace: namespace, providerName: 'keyward', etcdEndpoint: cp.etcdEndpoint, dir, intervalSeconds: 10 });
    const core = cp.kubeConfig.makeApiClient(CoreV1Api);
    await eventually('kube-apiserver encrypting through the plugin', 150_000, async () => {
      try {
        await core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name: 's-0' }, stringData: { value: 'v-0' } } });
        return true;
      } catch {
        return undefined;
      }
    }, 1000);
    for (let i = 1; i < 100; i++) await core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name: `s-${i}` }, stringData: { value: `v-${i}` } } });
  });
  after(async () => {
    await scanner?.process.stop();
    await plugin?.process.stop();
    await operator?.process.stop();
    await cp?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('names and counts it, keeps the older version protected, and completes once it is gone [practice:verified-retirement]', async () => {
    const admission = cp.kubeConfig.makeApiClient(AdmissionregistrationV1Api);
    await admission.createValidatingAdmissionPolicy({
      body: {
        metadata: { name: 'freeze-secrets' },
        spec: {
          failurePolicy: 'Fail',
          matchConstraints: { resourceRules: [{ apiGroups: [''], apiVersions: ['v1'], operations: ['UPDATE'], resources: ['secrets'] }] },
          validations: [{ expression: "!has(object.metadata.labels) || !('frozen' in object.metadata.labels)", message: 'frozen Secrets cannot be changed' }],
        },
      },
    });
    await admission.createValidatingAdmissionPolicyBinding({ body: { metadata: { name: 'freeze-secrets' }, spec: { policyName: 'freeze-secrets', validationActions: ['Deny'] } } });
    const core = cp.kubeConfig.makeApiClient(CoreV1Api);
    await core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name: 'frozen-1', labels: { frozen: 'true' } }, stringData: { value: 'ice' } } });
    await eventually('the policy refusing updates of frozen-1', 30_000, async () => {
      try {
        await core.patchNamespacedSecret({ namespace: 'default', name: 'frozen-1', body: { metadata: { annotations: { probe: String(Date.now()) } } } }, merge);
        return undefined;
      } catch {
        return true;
      }
    }, 500);

    await patchRing({ rotationRequest: 'rotate-to-2' });
    const failed = await phase(2, 'Failed', 300_000);
    assert.equal(failed.status?.reEncryption?.failedObjects, 1, await diagnosis());
    assert.match(failed.status?.reEncryption?.message ?? '', /secrets default\/frozen-1: .*frozen Secrets cannot be changed/);
    const counted = await eventually('a scan counting what version 1 still protects', 120_000, async () => {
      const ring = await keyRing();
      const v1 = ring.status?.versions?.find((v) => v.number === 1);
      const switched = ring.status?.reEncryption?.apiserverSwitchedAt;
      return v1?.etcdObjectsProvenAt && switched && Date.parse(v1.etcdObjectsProvenAt) >= Date.parse(switched) ? ring : undefined;
    }, 1000);
    assert.equal(counted.status?.versions?.find((v) => v.number === 1)?.etcdObjects, 1);
    assert.equal(counted.status?.conditions?.find((c) => c.type === 'RetirementComplete')?.reason, 'ReEncryptionFailed');
    const refusal = await apiRefusal(patchRing({ versions: [{ number: 1, state: 'Disabled' }] }));
    assert.match(refusal.message, /version 1 still protects 1 object in etcd/);

    await core.deleteNamespacedSecret({ namespace: 'default', name: 'frozen-1' });
    const done = await phase(2, 'Complete', 120_000);
    assert.equal(done.status?.conditions?.find((c) => c.type === 'RetirementComplete')?.status, 'True');
  });
});
