// The CSI provider end to end: a real kube-apiserver reviews the pods' tokens (TokenRequest bound
// to pods that exist as API objects; no kubelet runs them) and serves the KeyPolicies, a real
// SoftHSM2 token holds the rings, and every Mount is a gRPC call over the provider's unix socket
// shaped as the Secrets Store CSI driver sends it. One control plane and one provider for the file.
import assert from 'node:assert/strict';
import { createHash, createPublicKey, randomBytes, verify } from 'node:crypto';
import { mkdtempSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { CoreV1Api, CustomObjectsApi, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { signDigest } from '../../core/hsm/ecdsaSigning.js';
import { grpcClient, type UnaryClient } from '../../testbed/grpcClient.js';
import { HsmToken } from '../../core/hsm/hsmToken.js';
import { loadApiConnection } from '../../core/kube/apiConnection.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { sealSecret } from '../../core/formats/sealedSecret.js';
import { keyPolicyResource, type KeyPolicyRule } from '../../core/api/keyPolicy.js';
import { CSIDriverProvider, type MountResponse } from '../../proto/gen/csi/v1alpha1/service_pb.js';
import { Health, HealthCheckResponse_ServingStatus } from '../../proto/gen/grpc/health/v1/health_pb.js';
import type { CsiProvider } from '../../provider/csi/csiProvider.js';
import { eventually } from '../../testbed/eventually.js';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { installCrds } from '../operator/crds.js';
import { startCsiProviderProcess, type CsiProviderProcess } from './csiProviderProcess.js';
import { createKeyPolicy, startInProcessProvider, type InProcessProvider } from './inProcessProvider.js';
import { createPod, driverMountRequest, podToken, type PodTokenEntry, type TestPod } from './driverRequest.js';

const audience = 'keyward';
const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
const dbPassword = 'correct horse battery staple';

interface AuditLine {
  operation: string;
  result: string;
  code?: string;
  actor: string;
  pod?: string;
  object?: string;
  ring?: string;
  keyVersion?: number;
}

describe('CSI provider: HSM-backed objects in pod volumes, end to end', function () {
  this.timeout(120_000);
  let cp: ControlPlane;
  let softhsm: SoftHsmToken;
  let hsm: HsmToken;
  let store: RingStore;
  let inProcess: InProcessProvider;
  let provider: CsiProvider;
  let client: UnaryClient<(typeof CSIDriverProvider)['method']>;
  let core: CoreV1Api;
  let objects: CustomObjectsApi;
  let workDir: string;
  let auditFile: string;
  let sealed: string;
  let web: TestPod;
  let webToken: PodTokenEntry;
  const pods = new Map<string, { pod: TestPod; token: PodTokenEntry }>();

  const dataKeyObject = (extra = ''): string => `- type: dataKey\n  name: db-volume\n  keyRing: volume-keys\n  path: luks/db.key\n  mode: "0400"\n${extra}`;
  const secretObject = (ciphertext = sealed, ring = 'app-secrets'): string => `- type: secret\n  name: db-password\n  keyRing: ${ring}\n  path: db/password\n  ciphertext: ${ciphertext}\n`;
  const publicKeyObject = '- type: publicKey\n  name: release-signing\n  keyRing: release\n  path: release.pub\n';
  /** Named like the data key, so the two can be compared: same workload, ring and name. */
  const volumeKeyObject = (extra = ''): string => `- type: volumeKey\n  name: db-volume\n  keyRing: volume-keys\n  path: fscrypt/db.key\n${extra}`;

  const mount = (pod: TestPod, token: PodTokenEntry, objectsYaml: string, options: Partial<Parameters<typeof driverMountRequest>[1]> = {}): Promise<MountResponse> =>
    client.mount(driverMountRequest(pod, { objects: objectsYaml, tokens: { [audience]: token }, ...options }));

  const file = (response: MountResponse, path: string): Buffer => {
    assert.equal(response.error?.code ?? '', '', `mount refused: ${response.error?.code}`);
    const found = response.files.find((f) => f.path === path) ?? assert.fail(`no file ${path}`);
    return Buffer.from(found.contents);
  };
  const version = (response: MountResponse, id: string): string => response.objectVersion.find((v) => v.id === id)?.version ?? assert.fail(`no version for ${id}`);

  const auditLines = async (): Promise<AuditLine[]> => {
    await new Promise((resolve) => setTimeout(resolve, 50));
    return readFileSync(auditFile, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as AuditLine);
  };

  async function setPolicy(namespace: string, name: string, rules: KeyPolicyRule[]): Promise<void> {
    try {
      await createKeyPolicy(objects, namespace, name, rules);
    } catch (err) {
      if ((err as { code?: number }).code !== 409) throw err;
      await objects.patchNamespacedCustomObject({ ...keyPolicyResource, namespace, name, body: { spec: { rules } } }, mergePatch);
    }
  }

  const workloadRule = (namespace: string, serviceAccounts: string[]): KeyPolicyRule => ({
    name: 'workload-keys',
    subjects: serviceAccounts.map((name) => ({ kind: 'ServiceAccount', name, namespace })),
    keyRings: ['volume-keys', 'app-secrets', 'release', 'other-secrets'],
    operations: ['deriveKey', 'decrypt', 'getPublicKey'],
  });

  async function addPod(namespace: string, name: string, serviceAccount: string): Promise<{ pod: TestPod; token: PodTokenEntry }> {
    const pod = await createPod(core, namespace, name, serviceAccount);
    const entry = { pod, token: await podToken(core, pod, audience) };
    pods.set(`${namespace}/${name}`, entry);
    return entry;
  }

  before(async function () {
    this.timeout(300_000);
    cp = await startControlPlane();
    await installCrds(cp.kubeConfig);
    core = cp.kubeConfig.makeApiClient(CoreV1Api);
    objects = cp.kubeConfig.makeApiClient(CustomObjectsApi);
    softhsm = createSoftHsmToken();
    process.env.SOFTHSM2_CONF = softhsm.configPath;
    hsm = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.pin });
    store = new RingStore(hsm);
    for (const namespace of ['shop', 'other']) {
      await core.createNamespace({ body: { metadata: { name: namespace } } });
      await store.create({ namespace, name: 'volume-keys', algorithm: 'HMAC_SHA_384' });
      await store.create({ namespace, name: 'app-secrets', algorithm: 'AES_256_GCM' });
    }
    await store.create({ namespace: 'shop', name: 'other-secrets', algorithm: 'AES_256_GCM' });
    await store.create({ namespace: 'shop', name: 'release', algorithm: 'ECDSA_P384' });
    sealed = (await sealSecret(hsm, store, { namespace: 'shop', name: 'app-secrets' }, Buffer.from(dbPassword))).toString('base64');

    ({ pod: web, token: webToken } = await addPod('shop', 'web', 'app'));
    await addPod('shop', 'web-2', 'app');
    await addPod('shop', 'batch', 'batch');
    await addPod('shop', 'intruder', 'intruder');
    await addPod('other', 'web', 'app');
    await setPolicy('shop', 'workloads', [workloadRule('shop', ['app', 'batch'])]);
    await setPolicy('other', 'workloads', [workloadRule('other', ['app'])]);

    inProcess = await startInProcessProvider(cp, softhsm, {
      workDirPrefix: 'keyward-csi-e2e-',
      audience,
      ringRefreshMs: 100,
      // The request limits keep real responses far below 1 MiB; a lower limit reaches the guard.
      maxResponseBytes: 128 * 1024,
    });
    ({ provider, client, workDir, auditFile } = inProcess);
    // The informer's first list may predate the policies: wait until the provider serves.
    await eventually('the provider authorises the workload', 30_000, async () => ((await mount(web, webToken, dataKeyObject())).error ? undefined : true));
  });

  after(async () => {
    await inProcess?.stop();
    hsm?.close();
    softhsm?.remove();
    await cp?.stop();
  });

  it('listens on <dir>/keyward.sock with mode 0600, answers Version and the gRPC health check [practice:secure-transport]', async () => {
    assert.equal(provider.socketPath, join(workDir, 'providers', 'keyward.sock'));
    assert.equal(statSync(provider.socketPath).mode & 0o777, 0o600);
    const version = await client.version({ version: 'v1alpha1' });
    assert.equal(version.version, 'v1alpha1');
    assert.equal(version.runtimeName, 'keyward');
    assert.match(version.runtimeVersion, /^\d+\.\d+\.\d+/);
    const health = grpcClient(Health, `unix:${provider.socketPath}`);
    try {
      assert.equal((await health.check({ service: '' })).status, HealthCheckResponse_ServingStatus.SERVING);
    } finally {
      health.close();
    }
  });

  it('serves each object type to an authorised pod: a data key, a sealed secret opened, a public key', async () => {
    const response = await mount(web, webToken, dataKeyObject() + secretObject() + publicKeyObject);
    assert.equal(response.error, undefined);
    assert.deepEqual(
      response.files.map((f) => [f.path, f.mode]),
      [
        ['luks/db.key', 0o400],
        ['db/password', 0o644],
        ['release.pub', 0o644],
      ],
    );
    assert.equal(file(response, 'luks/db.key').length, 32);
    assert.equal(file(response, 'db/password').toString(), dbPassword);
    // The public key is the HSM's: it verifies a signature the HSM made with the private half.
    const ring = (await store.get({ namespace: 'shop', name: 'release' })) ?? assert.fail('no release ring');
    const data = Buffer.from('release 1.2.3');
    const signature = await signDigest(hsm, (await store.keyHandle(ring.ringId, 1)) ?? assert.fail('no key'), createHash('sha384').update(data).digest());
    const publicKey = createPublicKey(file(response, 'release.pub').toString());
    assert.equal(publicKey.asymmetricKeyDetails?.namedCurve, 'secp384r1');
    assert.ok(verify('sha384', data, { key: publicKey, dsaEncoding: 'ieee-p1363' }, signature));
    assert.deepEqual(
      response.objectVersion.map((v) => v.id),
      ['db-volume', 'db-password', 'release-signing'],
    );
    for (const v of response.objectVersion) assert.match(v.version, /^[A-Za-z0-9_-]{43}$/);
    // The versions are HMACs: no file content shows in them.
    assert.ok(!response.objectVersion.some((v) => v.version.includes(Buffer.from(dbPassword).toString('base64url'))));
  });

  it('gives a workload the same data key on every mount and every pod, and another ServiceAccount or namespace a different one', async () => {
    const first = file(await mount(web, webToken, dataKeyObject()), 'luks/db.key');
    const again = file(await mount(web, webToken, dataKeyObject()), 'luks/db.key');
    const web2 = pods.get('shop/web-2') ?? assert.fail();
    const sibling = file(await mount(web2.pod, web2.token, dataKeyObject()), 'luks/db.key');
    const batch = pods.get('shop/batch') ?? assert.fail();
    const otherAccount = file(await mount(batch.pod, batch.token, dataKeyObject()), 'luks/db.key');
    const otherNs = pods.get('other/web') ?? assert.fail();
    const otherNamespace = file(await mount(otherNs.pod, otherNs.token, dataKeyObject()), 'luks/db.key');
    const renamed = file(await mount(web, webToken, dataKeyObject().replace('name: db-volume', 'name: db-volume-2')), 'luks/db.key');
    assert.deepEqual(again, first);
    assert.deepEqual(sibling, first);
    assert.notDeepEqual(otherAccount, first);
    assert.notDeepEqual(otherNamespace, first);
    assert.notDeepEqual(renamed, first);
  });

  describe('volumeKey: a 64-byte fscrypt key per workload', () => {
    it('serves 64 bytes with mode 0400 by default, the same on every mount and pod of the workload, another for another ServiceAccount, namespace or name', async () => {
      const response = await mount(web, webToken, volumeKeyObject());
      assert.deepEqual(
        response.files.map((f) => [f.path, f.mode]),
        [['fscrypt/db.key', 0o400]],
        'not world-readable although the driver asks for 0644',
      );
      const key = file(response, 'fscrypt/db.key');
      assert.equal(key.length, 64);
      assert.deepEqual(file(await mount(web, webToken, volumeKeyObject('  mode: "0440"\n')), 'fscrypt/db.key'), key, 'a mode of its own changes only the mode');
      assert.equal((await mount(web, webToken, volumeKeyObject('  mode: "0440"\n'))).files[0]?.mode, 0o440);
      assert.deepEqual(file(await mount(web, webToken, volumeKeyObject()), 'fscrypt/db.key'), key);
      const web2 = pods.get('shop/web-2') ?? assert.fail();
      assert.deepEqual(file(await mount(web2.pod, web2.token, volumeKeyObject()), 'fscrypt/db.key'), key, 'another pod of the workload');
      const batch = pods.get('shop/batch') ?? assert.fail();
      const otherNs = pods.get('other/web') ?? assert.fail();
      const others = {
        'another ServiceAccount': file(await mount(batch.pod, batch.token, volumeKeyObject()), 'fscrypt/db.key'),
        'another namespace': file(await mount(otherNs.pod, otherNs.token, volumeKeyObject()), 'fscrypt/db.key'),
        'another name': file(await mount(web, webToken, volumeKeyObject().replace('name: db-volume', 'name: db-volume-2')), 'fscrypt/db.key'),
      };
      for (const [what, other] of Object.entries(others)) {
        assert.equal(other.length, 64, what);
        assert.ok(!other.subarray(0, 32).equals(key.subarray(0, 32)) && !other.subarray(32).equals(key.subarray(32)), what);
      }
      const metrics = await (await fetch(`http://${provider.metricsAddress}/metrics`)).text();
      assert.match(metrics, /keyward_csi_objects_total\{type="volumeKey",result="served"\} [1-9]/);
    });

    it('is unrelated to the data key of the same workload and name: not equal, no common prefix', async () => {
      const response = await mount(web, webToken, dataKeyObject() + volumeKeyObject().replace('name: db-volume', 'name: db-volume-fs'));
      const dataKey = file(response, 'luks/db.key');
      const sameName = file(await mount(web, webToken, volumeKeyObject()), 'fscrypt/db.key');
      assert.equal(dataKey.length, 32);
      assert.ok(!sameName.subarray(0, 32).equals(dataKey) && !sameName.subarray(32).equals(dataKey), 'neither half is the data key');
      assert.notDeepEqual(sameName.subarray(0, 4), dataKey.subarray(0, 4), 'not even 4 leading bytes in common');
      const lines = await auditLines();
      const served = lines.findLast((l) => l.object === 'db-volume' && l.code === 'Served' && l.operation === 'deriveKey');
      assert.equal(served?.ring, 'shop/volume-keys');
      assert.ok(!readFileSync(auditFile, 'utf8').includes(sameName.toString('base64')) && !readFileSync(auditFile, 'utf8').includes(sameName.toString('hex')), 'no key in the audit');
    });

    it('delivers previous versions as <path>.v<N>: after a rotation, the primary and the key served before it', async () => {
      const before = file(await mount(web, webToken, volumeKeyObject()), 'fscrypt/db.key');
      const rotated = await store.rotate({ namespace: 'shop', name: 'volume-keys' });
      const after = await eventually('the rotation reaches the provider', 10_000, async () => {
        const response = await mount(web, webToken, volumeKeyObject('  versions: "1"\n'));
        return file(response, 'fscrypt/db.key').equals(before) ? undefined : response;
      });
      assert.deepEqual(
        after.files.map((f) => [f.path, f.mode, f.contents.length]),
        [
          ['fscrypt/db.key', 0o400, 64],
          [`fscrypt/db.key.v${rotated.primary}`, 0o400, 64],
          [`fscrypt/db.key.v${rotated.primary - 1}`, 0o400, 64],
        ],
      );
      assert.deepEqual(file(after, `fscrypt/db.key.v${rotated.primary}`), file(after, 'fscrypt/db.key'));
      assert.deepEqual(file(after, `fscrypt/db.key.v${rotated.primary - 1}`), before, 'the previous version, to re-key with');
      // The version files are reserved for it.
      const clash = await mount(web, webToken, volumeKeyObject('  versions: "1"\n') + publicKeyObject.replace('path: release.pub', `path: fscrypt/db.key.v${rotated.primary}`));
      assert.equal(clash.error?.code, 'DuplicateObjectPath');
    });

    it('is refused to a ServiceAccount granted other operations on the ring but not deriveKey [practice:operations-by-name]', async () => {
      await setPolicy('shop', 'workloads', [{ ...workloadRule('shop', ['app', 'batch']), operations: ['decrypt', 'getPublicKey'] }]);
      try {
        const refused = await eventually('the grant without deriveKey is enforced', 5_000, async () => {
          const response = await mount(web, webToken, volumeKeyObject());
          return response.error ? response : undefined;
        });
        assert.equal(refused.error?.code, 'NotAuthorized');
        assert.equal(refused.files.length, 0);
        assert.equal((await mount(web, webToken, secretObject())).error, undefined, 'decrypt is still granted');
        const line = (await auditLines()).findLast((l) => l.object === 'db-volume');
        assert.equal(line?.operation, 'deriveKey');
        assert.equal(line?.code, 'NotAuthorized');
      } finally {
        await setPolicy('shop', 'workloads', [workloadRule('shop', ['app', 'batch'])]);
        await eventually('the grant restored', 5_000, async () => ((await mount(web, webToken, volumeKeyObject())).error ? undefined : true));
      }
    });
  });

  it('after a rotation serves the new key with a new object_version, and the previous one when asked', async () => {
    const before = await mount(web, webToken, dataKeyObject('  versions: "1"\n') + secretObject());
    const oldKey = file(before, 'luks/db.key');
    const rotated = await store.rotate({ namespace: 'shop', name: 'volume-keys' });
    const after = await eventually('the rotation reaches the provider', 10_000, async () => {
      const response = await mount(web, webToken, dataKeyObject('  versions: "1"\n') + secretObject());
      return file(response, 'luks/db.key').equals(oldKey) ? undefined : response;
    });
    assert.notEqual(version(after, 'db-volume'), version(before, 'db-volume'));
    assert.equal(version(after, 'db-password'), version(before, 'db-password'), 'an object that did not change keeps its version');
    assert.deepEqual(file(after, `luks/db.key.v${rotated.primary}`), file(after, 'luks/db.key'));
    assert.deepEqual(file(after, `luks/db.key.v${rotated.primary - 1}`), oldKey, 'the previous version, to re-key with');
    // A sealed secret made before the rotation of its own ring still opens after it.
    await store.rotate({ namespace: 'shop', name: 'app-secrets' });
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(file(await mount(web, webToken, secretObject()), 'db/password').toString(), dbPassword);
  });

  it('enforces a KeyPolicy change on the next mount [practice:policy-lag]', async () => {
    await setPolicy('shop', 'workloads', [{ ...workloadRule('shop', ['app', 'batch']), operations: ['deriveKey', 'getPublicKey'] }]);
    const refused = await eventually('the revoked grant is enforced', 5_000, async () => {
      const response = await mount(web, webToken, secretObject());
      return response.error ? response : undefined;
    });
    assert.equal(refused.error?.code, 'NotAuthorized');
    assert.equal(refused.files.length, 0);
    await setPolicy('shop', 'workloads', [workloadRule('shop', ['app', 'batch'])]);
    await eventually('the restored grant is enforced', 5_000, async () => ((await mount(web, webToken, secretObject())).error ? undefined : true));
  });

  it('refuses the whole mount when one object is refused, and audits every object [practice:audit]', async () => {
    const response = await mount(web, webToken, dataKeyObject() + '- type: dataKey\n  name: not-granted\n  keyRing: ungranted-ring\n  path: x.key\n');
    assert.equal(response.error?.code, 'NotAuthorized');
    assert.equal(response.files.length, 0);
    assert.equal(response.objectVersion.length, 0);
    const lines = await auditLines();
    const refusedObject = lines.findLast((l) => l.object === 'not-granted');
    assert.equal(refusedObject?.code, 'NotAuthorized');
    assert.equal(refusedObject?.actor, 'system:serviceaccount:shop:app');
    assert.equal(lines.findLast((l) => l.object === 'db-volume')?.code, 'Withheld');
    const served = lines.find((l) => l.object === 'db-password' && l.code === 'Served');
    assert.equal(served?.operation, 'decrypt');
    assert.equal(served?.ring, 'shop/app-secrets');
    assert.equal(served?.pod, 'shop/web');
    assert.ok(!readFileSync(auditFile, 'utf8').includes(dbPassword), 'no plaintext in the audit');
    assert.ok(!readFileSync(auditFile, 'utf8').includes(webToken.token.split('.')[2] ?? '-'), 'no token in the audit');
  });

  describe('refuses bad input with a short code, audits it, and keeps serving', () => {
    let otherRingSecret: string;
    before(async () => {
      otherRingSecret = (await sealSecret(hsm, store, { namespace: 'shop', name: 'other-secrets' }, Buffer.from('elsewhere'))).toString('base64');
    });

    const raw = (attributes: string, extra: Partial<{ secrets: string; targetPath: string }> = {}) =>
      client.mount({ attributes, secrets: extra.secrets ?? 'null', permission: '420', targetPath: extra.targetPath ?? `/var/lib/kubelet/pods/${web.uid}/volumes/kubernetes.io~csi/keys/mount`, currentObjectVersion: [] });
    const withAttributes = (attributes: Record<string, string>, objectsYaml = dataKeyObject()) => mount(web, webToken, objectsYaml, { attributes });

    const cases: [string, string, () => Promise<MountResponse>][] = [
      ['malformed attributes JSON', 'InvalidAttributes', () => raw('{"objects": ')],
      ['secrets that are not a JSON object', 'InvalidSecrets', () => mount(web, webToken, dataKeyObject(), { secrets: '[1]' })],
      ['no objects', 'MissingObjects', () => withAttributes({ objects: '' })],
      ['malformed objects YAML', 'InvalidObjects', () => mount(web, webToken, '- type: [dataKey\n')],
      ['an unknown object type', 'UnknownObjectType', () => mount(web, webToken, '- type: privateKey\n  name: k\n  keyRing: release\n  path: k\n')],
      ['a path with ..', 'InvalidObjectPath', () => mount(web, webToken, dataKeyObject().replace('luks/db.key', '../../etc/passwd'))],
      ['an absolute path', 'InvalidObjectPath', () => mount(web, webToken, dataKeyObject().replace('luks/db.key', '/etc/passwd'))],
      ['two objects with one path', 'DuplicateObjectPath', () => mount(web, webToken, dataKeyObject() + secretObject().replace('db/password', 'luks/db.key'))],
      ['a ring in another namespace', 'InvalidObjects', () => mount(web, webToken, dataKeyObject().replace('keyRing: volume-keys', 'keyRing: other/volume-keys'))],
      ['no token for the audience', 'MissingToken', () => client.mount(driverMountRequest(web, { objects: dataKeyObject(), tokens: {} }))],
      ['a forged token', 'TokenNotAuthenticated', () => mount(web, { ...webToken, token: forge(webToken.token) }, dataKeyObject())],
      ['an expired token', 'TokenExpired', () => mount(web, { ...webToken, expirationTimestamp: new Date(Date.now() - 60_000).toISOString() }, dataKeyObject())],
      ['attributes claiming another ServiceAccount', 'IdentityMismatch', () => withAttributes({ 'csi.storage.k8s.io/serviceAccount.name': 'batch' })],
      ['attributes claiming another namespace', 'IdentityMismatch', () => withAttributes({ 'csi.storage.k8s.io/pod.namespace': 'other' })],
      ['a target path of another pod', 'InvalidPodAttribute', () => mount(web, webToken, dataKeyObject(), { targetPath: `/var/lib/kubelet/pods/${pods.get('shop/web-2')?.pod.uid}/volumes/kubernetes.io~csi/keys/mount` })],
      // Another pod's volume (or a parent of it) spelled so that its text does not look like one.
      ["a target path of another pod, with a trailing '/.'", 'InvalidTargetPath', () => mount(web, webToken, dataKeyObject(), { targetPath: `${otherVolume()}/.` })],
      ["a target path of another pod, with '..'", 'InvalidTargetPath', () => mount(web, webToken, dataKeyObject(), { targetPath: `${otherVolume()}/..` })],
      ["a target path of another pod, with '//'", 'InvalidTargetPath', () => mount(web, webToken, dataKeyObject(), { targetPath: otherVolume().replace('/pods/', '/pods//') })],
      ["a target path of another pod, with '/./'", 'InvalidTargetPath', () => mount(web, webToken, dataKeyObject(), { targetPath: otherVolume().replace('/pods/', '/pods/./') })],
      ['a ServiceAccount without a grant', 'NotAuthorized', () => mount(pods.get('shop/intruder')!.pod, pods.get('shop/intruder')!.token, dataKeyObject())],
      ['a ring the policy does not name', 'NotAuthorized', () => mount(web, webToken, dataKeyObject().replace('keyRing: volume-keys', 'keyRing: payroll'))],
      ['a granted ring that does not exist', 'KeyRingNotFound', () => mountMissingRing()],
      ['a data key from an encryption ring', 'WrongRingPurpose', () => mount(web, webToken, dataKeyObject().replace('keyRing: volume-keys', 'keyRing: app-secrets'))],
      ['a volume key for a ServiceAccount without a grant', 'NotAuthorized', () => mount(pods.get('shop/intruder')!.pod, pods.get('shop/intruder')!.token, volumeKeyObject())],
      ['a volume key from an encryption ring', 'WrongRingPurpose', () => mount(web, webToken, volumeKeyObject().replace('keyRing: volume-keys', 'keyRing: app-secrets'))],
      ['a volume key from a signing ring', 'WrongRingPurpose', () => mount(web, webToken, volumeKeyObject().replace('keyRing: volume-keys', 'keyRing: release'))],
      ['a public key of a ring without one', 'WrongRingPurpose', () => mount(web, webToken, publicKeyObject.replace('keyRing: release', 'keyRing: app-secrets'))],
      ['a secret sealed under another ring', 'SealedForAnotherRing', () => mount(web, webToken, secretObject(otherRingSecret))],
      ['a tampered secret', 'SealedSecretTampered', () => mount(web, webToken, secretObject(tamper(sealed)))],
      ['a secret that is not a sealed value', 'InvalidSealedSecret', () => mount(web, webToken, secretObject(Buffer.from('not sealed at all').toString('base64')))],
      ['a response over the limit', 'ResponseTooLarge', () => mountTooLarge()],
    ];

    function otherVolume(): string {
      return `/var/lib/kubelet/pods/${pods.get('shop/web-2')?.pod.uid}/volumes/kubernetes.io~csi/keys/mount`;
    }

    async function mountMissingRing(): Promise<MountResponse> {
      // Granted by the policy (other-secrets is named), but no such ring in namespace "other".
      const otherNs = pods.get('other/web') ?? assert.fail();
      return mount(otherNs.pod, otherNs.token, '- type: secret\n  name: s\n  keyRing: other-secrets\n  path: s\n  ciphertext: ' + otherRingSecret + '\n');
    }

    async function mountTooLarge(): Promise<MountResponse> {
      const big = (await sealSecret(hsm, store, { namespace: 'shop', name: 'app-secrets' }, Buffer.alloc(60 * 1024, 1))).toString('base64');
      const yaml = Array.from({ length: 3 }, (_, i) => `- type: secret\n  name: big-${i}\n  keyRing: app-secrets\n  path: big/${i}\n  ciphertext: ${big}\n`).join('');
      return mount(web, webToken, yaml);
    }

    for (const [what, code, request] of cases) {
      it(`${what}: ${code}`, async () => {
        const response = await request();
        assert.equal(response.error?.code, code);
        assert.equal(response.files.length, 0);
        const lines = await auditLines();
        assert.ok(
          lines.some((l) => l.code === code && l.result !== 'allowed'),
          `an audit record with code ${code}`,
        );
        assert.equal((await mount(web, webToken, dataKeyObject())).error, undefined, 'still serving');
      });
    }

    it('a token for another audience: TokenWrongAudience', async () => {
      const wrong = await podToken(core, web, 'https://kubernetes.default.svc');
      const response = await client.mount(driverMountRequest(web, { objects: dataKeyObject(), tokens: { [audience]: wrong } }));
      assert.equal(response.error?.code, 'TokenWrongAudience');
    });

    it("another pod's token: TokenForAnotherPod", async () => {
      const response = await mount(web, pods.get('shop/web-2')?.token ?? assert.fail(), dataKeyObject());
      assert.equal(response.error?.code, 'TokenForAnotherPod');
    });

    it('a token bound to no pod: TokenNotPodBound', async () => {
      const unbound = await podToken(core, web, audience, { bound: false });
      const response = await mount(web, unbound, dataKeyObject());
      assert.equal(response.error?.code, 'TokenNotPodBound');
    });

    it("a deleted pod's token: TokenNotAuthenticated", async () => {
      const gone = await addPod('shop', 'short-lived', 'app');
      await core.deleteNamespacedPod({ namespace: 'shop', name: 'short-lived', gracePeriodSeconds: 0 });
      await eventually('the pod is gone', 10_000, async () => ((await core.listNamespacedPod({ namespace: 'shop' })).items.some((p) => p.metadata?.name === 'short-lived') ? undefined : true));
      const response = await mount(gone.pod, gone.token, dataKeyObject());
      assert.equal(response.error?.code, 'TokenNotAuthenticated');
    });
  });

  describe("the provider's own process, with the chart's Node flags, under hostile load", function () {
    // The DaemonSet's memory limit (charts/keyward: the driver's 100 MiB per provider).
    const rssLimitMiB = 100;
    let child: CsiProviderProcess;
    let childClient: UnaryClient<(typeof CSIDriverProvider)['method']>;
    let webKey: Buffer;
    /** Over the process's life, and in the current test. */
    let peakRssMiB = 0;
    let testPeakRssMiB = 0;

    const rssMiB = (): number => {
      const status = readFileSync(`/proc/${child.process.pid}/status`, 'utf8');
      const mib = Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1]) / 1024;
      peakRssMiB = Math.max(peakRssMiB, mib);
      testPeakRssMiB = Math.max(testPeakRssMiB, mib);
      return mib;
    };
    /** web's own small Mount, as the driver sends it: served, with web's data key. */
    const legitimateMount = async (): Promise<void> => {
      const response = await childClient.mount(driverMountRequest(web, { objects: dataKeyObject(), tokens: { [audience]: webToken } }));
      assert.deepEqual(file(response, 'luks/db.key'), webKey, "web's data key");
    };
    /** Base64 of random bytes, `bytes` characters: distinct in every request. */
    const noise = (bytes: number): string => randomBytes((bytes * 3) / 4).toString('base64');
    /** Runs `count` calls `concurrency` at a time. */
    const flood = async (count: number, concurrency: number, call: (i: number) => Promise<void>): Promise<void> => {
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < count) await call(next++);
      };
      await Promise.all(Array.from({ length: concurrency }, worker));
    };

    before(async function () {
      this.timeout(60_000);
      child = await startCsiProviderProcess({ hsm: softhsm, kubeconfigPath: cp.kubeconfigPath, dir: mkdtempSync(join(workDir, 'process-')) });
      childClient = grpcClient(CSIDriverProvider, `unix:${child.socketPath}`);
      webKey = file(await mount(web, webToken, dataKeyObject()), 'luks/db.key');
      await eventually('the provider process serves web', 30_000, async () => ((await legitimateMount().then(() => true, () => undefined)) ? true : undefined));
      console.error(`      provider process serving: RSS ${rssMiB().toFixed(1)} MiB`);
    });

    after(async () => {
      childClient?.close();
      await child?.process.stop();
      console.error(`      provider process: peak RSS ${peakRssMiB.toFixed(1)} MiB`);
    });

    beforeEach(() => {
      testPeakRssMiB = 0;
    });

    it('costs a caller without a valid token only its bytes: 400 distinct 200 KiB objects lists with made-up tokens leave nothing behind', async function () {
      this.timeout(60_000);
      const started = Date.now();
      const [header, payload] = webToken.token.split('.');
      const codes = new Map<string, number>();
      await flood(400, 8, async (i) => {
        // A well-formed list whose YAML is large and distinct: a comment after one small object.
        const objects = `${publicKeyObject}# ${noise(200 * 1024)}\n`;
        const madeUp = { token: `${header}.${payload}.${randomBytes(256).toString('base64url')}`, expirationTimestamp: webToken.expirationTimestamp };
        const response = await childClient.mount(driverMountRequest(web, { objects, tokens: { [audience]: madeUp } }));
        const code = response.error?.code ?? 'served';
        codes.set(code, (codes.get(code) ?? 0) + 1);
        rssMiB();
        if (i % 50 === 0) await legitimateMount();
      });
      console.error(`      400 unauthenticated 200 KiB requests in ${((Date.now() - started) / 1000).toFixed(1)} s; RSS now ${rssMiB().toFixed(1)} MiB, peak ${testPeakRssMiB.toFixed(1)} MiB`);
      assert.deepEqual(Object.fromEntries(codes), { TokenNotAuthenticated: 400 });
      assert.ok(child.process.running, 'the provider is up');
      assert.ok(testPeakRssMiB < rssLimitMiB, `peak RSS ${testPeakRssMiB.toFixed(1)} MiB is under ${rssLimitMiB} MiB`);
      await legitimateMount();
    });

    it('bounds the request bytes in flight: 3 bursts of 40 concurrent Mounts of near 1 MiB each, refused with RESOURCE_EXHAUSTED "Overloaded" past the budget', async function () {
      this.timeout(60_000);
      const started = Date.now();
      const codes = new Map<string, number>();
      let probes = 0;
      for (let burst = 0; burst < 3; burst++) {
        let done = false;
        // web's small Mounts keep coming during the burst, and fit in what the big ones leave.
        const probing = (async () => {
          while (!done) {
            await legitimateMount();
            probes++;
            rssMiB();
          }
        })();
        await flood(40, 40, async () => {
          // Every attribute within its limit (256 KiB), about 985 KiB in all (the limit is 1 MiB).
          const attributes = { 'pad-1': noise(245 * 1024), 'pad-2': noise(245 * 1024), 'pad-3': noise(245 * 1024) };
          const request = driverMountRequest(web, { objects: `${dataKeyObject()}# ${noise(245 * 1024)}\n`, tokens: { [audience]: webToken }, attributes });
          const outcome = await childClient.mount(request).then(
            (response) => {
              assert.deepEqual(file(response, 'luks/db.key'), webKey);
              return 'served';
            },
            (err: { code?: number; details?: string }) => {
              assert.equal(err.code, 8, `RESOURCE_EXHAUSTED, not ${err.code}: ${err.details}`);
              assert.match(err.details ?? '', /^Overloaded: the provider holds \d+ request bytes/);
              return 'Overloaded';
            },
          );
          codes.set(outcome, (codes.get(outcome) ?? 0) + 1);
          rssMiB();
        });
        done = true;
        await probing;
      }
      console.error(
        `      120 near-1 MiB Mounts in 3 bursts of 40: ${JSON.stringify(Object.fromEntries(codes))}, ${probes} small Mounts served meanwhile, in ${((Date.now() - started) / 1000).toFixed(1)} s; peak RSS ${testPeakRssMiB.toFixed(1)} MiB`,
      );
      assert.deepEqual([...codes.keys()].sort(), ['Overloaded', 'served'], 'served within the budget, Overloaded past it');
      assert.ok(probes > 0, "web's small Mounts were served during the bursts");
      assert.ok(child.process.running, 'the provider is up');
      assert.ok(testPeakRssMiB < rssLimitMiB, `peak RSS ${testPeakRssMiB.toFixed(1)} MiB is under ${rssLimitMiB} MiB`);
      const text = await (await fetch(`${child.metricsUrl}/metrics`)).text();
      assert.match(text, /keyward_csi_mounts_total\{result="failed",code="Overloaded"\} [1-9]/);
      assert.match(text, /keyward_csi_in_flight_request_bytes 0$/m, 'every admitted byte released');
      assert.ok(readFileSync(child.auditFile, 'utf8').includes('"code":"Overloaded"'), 'Overloaded is audited');
      await legitimateMount();
    });
  });

  it('serves cached pods through an apiserver outage, refuses unreviewed tokens, and follows policy changes after it [practice:continuity] [practice:policy-lag]', async () => {
    assert.equal((await mount(web, webToken, secretObject())).error, undefined, 'the review of this token is cached');
    const web2 = pods.get('shop/web-2') ?? assert.fail();
    const unreviewed = await podToken(core, web2.pod, audience);
    const api = loadApiConnection(cp.kubeconfigPath);
    try {
      const restarted = cp.restartApiserver();
      await eventually('the apiserver is down', 30_000, () => api.request('GET', '/version').then(() => undefined, () => true), 20);
      const fresh = await mount(web2.pod, unreviewed, secretObject());
      const cached = await mount(web, webToken, secretObject());
      await restarted;
      assert.equal(fresh.error?.code, 'TokenReviewUnavailable');
      assert.equal(cached.error, undefined, 'served from the cached review and policies');
    } finally {
      api.close();
    }
    // The KeyPolicy watch resumes by itself.
    await setPolicy('shop', 'workloads', [{ ...workloadRule('shop', ['app', 'batch']), operations: ['deriveKey', 'getPublicKey'] }]);
    await eventually('a change after the outage is enforced', 15_000, async () => ((await mount(web, webToken, secretObject())).error?.code === 'NotAuthorized' ? true : undefined));
    await setPolicy('shop', 'workloads', [workloadRule('shop', ['app', 'batch'])]);
    await eventually('the grant restored', 15_000, async () => ((await mount(web, webToken, secretObject())).error ? undefined : true));
  });

  it('counts mounts by result and code, cache hits and HSM calls per mount in its metrics', async () => {
    const text = await (await fetch(`http://${provider.metricsAddress}/metrics`)).text();
    assert.match(text, /keyward_csi_mounts_total\{result="served",code=""\} [1-9]/);
    assert.match(text, /keyward_csi_mounts_total\{result="refused",code="NotAuthorized"\} [1-9]/);
    assert.match(text, /keyward_csi_cache_lookups_total\{cache="tokenReview",outcome="hit"\} [1-9]/);
    assert.match(text, /keyward_csi_cache_lookups_total\{cache="material",outcome="hit"\} [1-9]/);
    assert.match(text, /keyward_csi_hsm_calls_per_mount_count [1-9]/);
    assert.match(text, /keyward_csi_token_reviews_total\{outcome="authenticated"\} [1-9]/);
    assert.match(text, /^process_cpu_user_seconds_total\{component="csi-provider"\} /m, "Node's standard metrics, unprefixed");
  });
});

/** The token with its signature's first character changed. */
function forge(jwt: string): string {
  const [header, payload, signature = ''] = jwt.split('.');
  const first = signature[0] === 'A' ? 'B' : 'A';
  return `${header}.${payload}.${first}${signature.slice(1)}`;
}

/** The sealed value with one ciphertext bit flipped. */
function tamper(base64: string): string {
  const bytes = Buffer.from(base64, 'base64');
  const at = bytes.length - 20;
  bytes[at] = (bytes[at] ?? 0) ^ 1;
  return bytes.toString('base64');
}
