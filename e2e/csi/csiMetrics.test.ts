// The CSI provider's /metrics after real Mounts (a real kube-apiserver reviews the pod tokens, a
// real SoftHSM2 token holds the rings): every Mount is measured, served or refused, and no label
// carries what a Mount handled (a secret, a sealed secret, a key, a token). How fast Mounts are is
// for `npm run bench:csi`, not for a test.
import assert from 'node:assert/strict';
import { CoreV1Api, CustomObjectsApi } from '@kubernetes/client-node';
import { sealSecret } from '../../core/formats/sealedSecret.js';
import { HsmToken } from '../../core/hsm/hsmToken.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import type { MountResponse } from '../../proto/gen/csi/v1alpha1/service_pb.js';
import type { CsiProvider } from '../../provider/csi/csiProvider.js';
import { mountRefusalCodes } from '../../provider/csi/mountRequest.js';
import { admissionRefusalCodes, objectRefusalCodes } from '../../provider/csi/mountService.js';
import { identityRefusalCodes } from '../../provider/csi/podIdentity.js';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { eventually } from '../../testbed/eventually.js';
import { oneOf, scrape, secretsInLabels, total, unboundedLabels } from '../../testbed/metricsText.js';
import { installCrds } from '../operator/crds.js';
import { createPod, driverMountRequest, podToken, type PodTokenEntry, type TestPod } from './driverRequest.js';
import { createKeyPolicy, startInProcessProvider, type InProcessProvider } from './inProcessProvider.js';

const audience = 'keyward';
const namespace = 'ledger-emea-f3';
const password = 'vault-root-password-Qm7x-plaintext';

describe('CSI provider metrics, end to end', function () {
  this.timeout(120_000);
  let cp: ControlPlane;
  let softhsm: SoftHsmToken;
  let hsm: HsmToken;
  let inProcess: InProcessProvider;
  let provider: CsiProvider;
  let client: InProcessProvider['client'];
  let sealed: string;
  let web: TestPod;
  let webToken: PodTokenEntry;
  let intruder: TestPod;
  let intruderToken: PodTokenEntry;

  const objects = (): string =>
    `- type: secret\n  name: db-password\n  keyRing: card-vault-q2\n  path: db/password\n  ciphertext: ${sealed}\n` +
    '- type: dataKey\n  name: db-volume\n  keyRing: volume-keys-b7\n  path: luks/db.key\n';
  const mount = (pod: TestPod, token: PodTokenEntry, tokenAudience = audience): Promise<MountResponse> =>
    client.mount(driverMountRequest(pod, { objects: objects(), tokens: { [tokenAudience]: token } }));

  before(async function () {
    this.timeout(300_000);
    cp = await startControlPlane();
    await installCrds(cp.kubeConfig);
    const core = cp.kubeConfig.makeApiClient(CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: namespace } } });
    softhsm = createSoftHsmToken();
    process.env.SOFTHSM2_CONF = softhsm.configPath;
    hsm = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.pin });
    const store = new RingStore(hsm);
    await store.create({ namespace, name: 'card-vault-q2', algorithm: 'AES_256_GCM' });
    await store.create({ namespace, name: 'volume-keys-b7', algorithm: 'HMAC_SHA_384' });
    sealed = (await sealSecret(hsm, store, { namespace, name: 'card-vault-q2' }, Buffer.from(password))).toString('base64');
    web = await createPod(core, namespace, 'web', 'app');
    webToken = await podToken(core, web, audience);
    intruder = await createPod(core, namespace, 'intruder', 'intruder');
    intruderToken = await podToken(core, intruder, audience);
    await createKeyPolicy(cp.kubeConfig.makeApiClient(CustomObjectsApi), namespace, 'workloads', [
      { name: 'app', subjects: [{ kind: 'ServiceAccount', name: 'app', namespace }], keyRings: ['card-vault-q2', 'volume-keys-b7'], operations: ['decrypt', 'deriveKey'] },
    ]);

    inProcess = await startInProcessProvider(cp, softhsm, { workDirPrefix: 'keyward-csi-metrics-', audience, ringRefreshMs: 100 });
    ({ provider, client } = inProcess);
    // The informer's first list may predate the policy: wait until the provider serves.
    await eventually('the provider authorises the workload', 30_000, async () => ((await mount(web, webToken)).error ? undefined : true));
  });

  after(async () => {
    await inProcess?.stop();
    hsm?.close();
    softhsm?.remove();
    await cp?.stop();
  });

  it('observes keyward_csi_mount_duration_seconds once per Mount, served or refused [practice:latency]', async () => {
    const before = await scrape(provider.metricsAddress);
    const served = [await mount(web, webToken), await mount(web, webToken)];
    const refused = [await mount(intruder, intruderToken), await mount(web, webToken, 'another-audience')];
    assert.deepEqual(served.map((r) => r.error?.code ?? ''), ['', '']);
    assert.deepEqual(refused.map((r) => r.error?.code), ['NotAuthorized', 'MissingToken']);

    const after = await scrape(provider.metricsAddress);
    const grew = (name: string, labels: Record<string, string> = {}): number => total(after, name, labels) - total(before, name, labels);
    assert.equal(grew('keyward_csi_mount_duration_seconds_count'), 4);
    assert.equal(grew('keyward_csi_mount_duration_seconds_bucket', { le: '+Inf' }), 4);
    assert.equal(grew('keyward_csi_mounts_total'), 4, 'as many Mounts counted as measured');
    assert.ok(grew('keyward_csi_mount_duration_seconds_sum') > 0);
  });

  it('puts no secret, sealed secret, key or token in any label; every keyward_* label value is from a bounded set [practice:no-sensitive-metadata]', async () => {
    const response = await mount(web, webToken);
    const file = (path: string): Buffer => Buffer.from(response.files.find((f) => f.path === path)?.contents ?? assert.fail(`no ${path}`));
    assert.equal(file('db/password').toString(), password);
    const dataKey = file('luks/db.key');
    await mount(intruder, intruderToken);

    const samples = await scrape(provider.metricsAddress);
    assert.deepEqual(
      secretsInLabels(samples, {
        'the secret': password,
        'the sealed secret': sealed.slice(0, 40),
        'the data key (hex)': dataKey.toString('hex'),
        'the data key (base64)': dataKey.toString('base64'),
        'a pod token': webToken.token,
        "a pod token's signature": webToken.token.split('.')[2] ?? '',
        "another pod's token signature": intruderToken.token.split('.')[2] ?? '',
        'a pod uid': web.uid,
      }),
      [],
    );
    const codes = ['', ...mountRefusalCodes, ...identityRefusalCodes, ...objectRefusalCodes, ...admissionRefusalCodes];
    assert.deepEqual(
      unboundedLabels(samples, {
        result: oneOf('served', 'refused', 'failed', 'withheld'),
        code: oneOf(...codes),
        type: oneOf('dataKey', 'volumeKey', 'secret', 'publicKey'),
        cache: oneOf('tokenReview', 'material'),
        outcome: oneOf('hit', 'miss', 'authenticated', 'unauthenticated', 'error'),
      }),
      [],
    );
    assert.ok(total(samples, 'keyward_csi_mounts_total', { result: 'refused', code: 'NotAuthorized' }) >= 1, 'a refusal is counted by its code');
  });
});
