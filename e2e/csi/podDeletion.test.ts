// A pod's identity ends with the pod: the provider watches its node's pods, so the token of a
// deleted pod, whose review it has cached, stops mounting as soon as the watch reports the
// deletion (not when the review's lifetime runs out), and so does the old token of a pod created
// again under the same name. Real control plane, SoftHSM2 and TokenReview.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { CoreV1Api, CustomObjectsApi } from '@kubernetes/client-node';
import { HsmToken } from '../../core/hsm/hsmToken.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { eventually } from '../../testbed/eventually.js';
import { installCrds } from '../operator/crds.js';
import { createPod, driverMountRequest, podToken, type PodTokenEntry, type TestPod } from './driverRequest.js';
import { createKeyPolicy, startInProcessProvider, type InProcessProvider } from './inProcessProvider.js';

const audience = 'keyward';
const nodeName = 'node-a';
const objects = '- type: dataKey\n  name: db-volume\n  keyRing: volume-keys\n  path: luks/db.key\n';
/** The bound on how long a deleted pod's token may still mount. */
const refusedWithinMs = 1000;

describe('CSI provider: a deleted pod’s token stops mounting', function () {
  this.timeout(60_000);
  let cp: ControlPlane;
  let core: CoreV1Api;
  let softhsm: SoftHsmToken;
  let inProcess: InProcessProvider;
  let client: InProcessProvider['client'];

  const mount = async (pod: TestPod, token: PodTokenEntry): Promise<string> =>
    (await client.mount(driverMountRequest(pod, { objects, tokens: { [audience]: token } }))).error?.code ?? '';

  async function podOnNode(name: string): Promise<{ pod: TestPod; token: PodTokenEntry }> {
    const pod = await createPod(core, 'shop', name, 'app', nodeName);
    const token = await podToken(core, pod, audience);
    // Served once, so its review is cached, as on a node where the pod runs.
    await eventually(`pod ${name} mounts`, 10_000, async () => ((await mount(pod, token)) === '' ? true : undefined));
    return { pod, token };
  }

  before(async function () {
    this.timeout(300_000);
    cp = await startControlPlane();
    await installCrds(cp.kubeConfig);
    core = cp.kubeConfig.makeApiClient(CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: 'shop' } } });
    await createKeyPolicy(cp.kubeConfig.makeApiClient(CustomObjectsApi), 'shop', 'app', [
      { name: 'app', subjects: [{ kind: 'ServiceAccount', namespace: 'shop', name: 'app' }], keyRings: ['volume-keys'], operations: ['deriveKey'] },
    ]);
    softhsm = createSoftHsmToken();
    process.env.SOFTHSM2_CONF = softhsm.configPath;
    const admin = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.pin });
    try {
      await new RingStore(admin).create({ namespace: 'shop', name: 'volume-keys', algorithm: 'HMAC_SHA_384' });
    } finally {
      admin.close();
    }
    inProcess = await startInProcessProvider(cp, softhsm, { workDirPrefix: 'keyward-csi-pods-', audience, nodeName });
    ({ client } = inProcess);
  });

  after(async () => {
    await inProcess?.stop();
    softhsm?.remove();
    await cp?.stop();
  });

  it(`refuses a deleted pod's cached token with PodDeleted within ${refusedWithinMs} ms, and keeps serving the other pods`, async () => {
    const web = await podOnNode('web');
    const neighbour = await podOnNode('web-2');
    await core.deleteNamespacedPod({ name: 'web', namespace: 'shop', gracePeriodSeconds: 0 });
    const deleted = performance.now();
    let code = await mount(web.pod, web.token);
    while (code === '' && performance.now() - deleted < 5_000) {
      await sleep(10);
      code = await mount(web.pod, web.token);
    }
    const tookMs = Math.round(performance.now() - deleted);
    assert.equal(code, 'PodDeleted', `the deleted pod's token got ${code || 'its files'} after ${tookMs} ms`);
    assert.ok(tookMs < refusedWithinMs, `refused ${tookMs} ms after the deletion; the bound is ${refusedWithinMs} ms`);
    console.error(`      (a deleted pod's token was refused ${tookMs} ms after the deletion)`);
    assert.equal(await mount(neighbour.pod, neighbour.token), '', 'the pod beside it still mounts');
  });

  it('refuses the old token of a pod created again under its name, and serves the new pod', async () => {
    const first = await podOnNode('batch');
    await core.deleteNamespacedPod({ name: 'batch', namespace: 'shop', gracePeriodSeconds: 0 });
    const again = await podOnNode('batch');
    assert.notEqual(again.pod.uid, first.pod.uid);
    await eventually('the old token is refused', 5_000, async () => ((await mount(first.pod, first.token)) === 'PodDeleted' ? true : undefined));
    assert.equal(await mount(again.pod, again.token), '', 'the new pod mounts');
  });
});
