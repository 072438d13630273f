// An object kube-apiserver will not let the operator rewrite (here a ValidatingAdmissionPolicy
// refuses updates of labelled Secrets): the run reports it by name and count, the older version
// stays protected at admission, and the run completes once a scan finds the object gone.
import assert from 'node:assert/strict';
import { AdmissionregistrationV1Api, CoreV1Api, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { eventually } from '../../testbed/eventually.js';
import { apiRefusal } from '../../testbed/apiRefusal.js';
import { RetirementCluster, ringName } from './retirementCluster.js';

const merge = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

describe('Retirement with an object that cannot be rewritten', function () {
  this.timeout(600_000);
  let cluster: RetirementCluster;

  before(async () => {
    cluster = await RetirementCluster.start({
      name: 'unrewritable',
      // The control plane's admin user, as KeyPolicy names it (testbed/control-plane/pki.ts).
      admission: { rules: [{ name: 'admin', subjects: [{ kind: 'User', name: 'keyward-admin' }], keyRings: [ringName], roles: ['Administrator'] }] },
      keyRingSpec: { reEncryption: { enabled: true, maxWritesPerSecond: 200, method: 'Auto' } },
    });
    const core = cluster.cp.kubeConfig.makeApiClient(CoreV1Api);
    for (let i = 1; i < 100; i++) await core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name: `s-${i}` }, stringData: { value: `v-${i}` } } });
  });
  after(() => cluster?.stop());

  it('names and counts it, keeps the older version protected, and completes once it is gone [practice:verified-retirement]', async () => {
    const admission = cluster.cp.kubeConfig.makeApiClient(AdmissionregistrationV1Api);
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
    const core = cluster.cp.kubeConfig.makeApiClient(CoreV1Api);
    await core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name: 'frozen-1', labels: { frozen: 'true' } }, stringData: { value: 'ice' } } });
    // A new policy can refuse every update until it is compiled: wait until it refuses frozen-1 with
    // its own message and lets the others through.
    const touch = (name: string): Promise<string> =>
      core.patchNamespacedSecret({ namespace: 'default', name, body: { metadata: { annotations: { probe: String(Date.now()) } } } }, merge).then(() => 'allowed', (err: Error) => err.message);
    await eventually('the policy refusing frozen-1 alone', 60_000, async () => ((await touch('frozen-1')).includes('frozen Secrets cannot be changed') && (await touch('s-1')) === 'allowed' ? true : undefined), 500);

    await cluster.rotate('rotate-to-2', 2);
    const failed = await cluster.phase(2, 'Failed', 300_000);
    assert.equal(failed.status?.reEncryption?.failedObjects, 1, JSON.stringify(failed.status?.reEncryption));
    assert.match(failed.status?.reEncryption?.message ?? '', /secrets default\/frozen-1: .*frozen Secrets cannot be changed/);
    const counted = await eventually('a scan counting what version 1 still protects', 120_000, async () => {
      const ring = await cluster.keyRing();
      const v1 = ring.status?.versions?.find((v) => v.number === 1);
      const switched = ring.status?.reEncryption?.apiserverSwitchedAt;
      return v1?.etcdObjectsProvenAt && switched && Date.parse(v1.etcdObjectsProvenAt) >= Date.parse(switched) ? ring : undefined;
    }, 1000);
    assert.equal(counted.status?.versions?.find((v) => v.number === 1)?.etcdObjects, 1);
    assert.equal(counted.status?.conditions?.find((c) => c.type === 'RetirementComplete')?.reason, 'ReEncryptionFailed');
    const refusal = await apiRefusal(cluster.patchRing({ versions: [{ number: 1, state: 'Disabled' }] }));
    assert.match(refusal.message, /version 1 still protects 1 object in etcd/);

    await core.deleteNamespacedSecret({ namespace: 'default', name: 'frozen-1' });
    const done = await cluster.phase(2, 'Complete', 120_000);
    assert.equal(done.status?.conditions?.find((c) => c.type === 'RetirementComplete')?.status, 'True');
  });
});
