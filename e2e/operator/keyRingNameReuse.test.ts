// A KeyRing deleted and created again under the same name, with the operator process on a real
// control plane and SoftHSM2: the KMS plugin (running, and restarted), `keyward encrypt` and the
// CSI provider's key material all take the name to the new KeyRing's ring, and no component uses a
// ring nobody manages; what the old ring sealed stays readable while its keys are kept. Also: a
// corrupt ring state object surfaces on its KeyRing, in the log and metrics.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CustomObjectsApi, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import pkcs11js from 'pkcs11js';
import { HsmToken } from '../../core/hsm/hsmToken.js';
import { ringObjectLabel } from '../../core/hsm/ringState.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { keyRingResource, type KeyRing, type KeyRingSpec } from '../../core/api/keyRing.js';
import { KeyMaterial } from '../../provider/csi/keyMaterial.js';
import { eventually } from '../../testbed/eventually.js';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { KeyManagementService } from '../../proto/gen/kms/v2/api_pb.js';
import { grpcClient, type UnaryClient } from '../../testbed/grpcClient.js';
import { keywardCli, kmsStatus, startKmsPluginProcess, type KmsPluginProcess } from '../kms/kmsPluginProcess.js';
import { approvedDestruction } from './approvedDestruction.js';
import { installCrds } from './crds.js';
import { startOperatorProcess, type OperatorProcess } from './operatorProcess.js';

const namespace = 'default';

describe('KeyRing name reuse: every component takes a re-created KeyRing name to the new ring', function () {
  this.timeout(600_000);
  let dir: string;
  let hsm: SoftHsmToken;
  let cp: ControlPlane;
  let operator: OperatorProcess;
  let admin: HsmToken;
  let objects: CustomObjectsApi;
  let plugin: KmsPluginProcess | undefined;

  before(async function () {
    this.timeout(300_000);
    dir = mkdtempSync(join(tmpdir(), 'keyward-e2e-reuse-'));
    hsm = createSoftHsmToken({ parentDir: dir });
    process.env.SOFTHSM2_CONF = hsm.configPath;
    writeFileSync(join(dir, 'cli.pin'), hsm.pin, { mode: 0o600 });
    cp = await startControlPlane();
    await installCrds(cp.kubeConfig);
    objects = cp.kubeConfig.makeApiClient(CustomObjectsApi);
    operator = await startOperatorProcess({ hsm, kubeconfigPath: cp.kubeconfigPath, dir, identity: 'reuse', leaseSeconds: 4 });
    admin = HsmToken.open({ modulePath: hsm.modulePath, tokenLabel: hsm.label, pin: hsm.pin });
  });
  afterEach(async () => {
    await plugin?.process.stop();
    plugin = undefined;
  });
  after(async () => {
    await operator?.process.stop();
    admin?.close();
    await cp?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const getKeyRing = async (name: string): Promise<KeyRing | undefined> =>
    ((await objects.getNamespacedCustomObject({ ...keyRingResource, namespace, name }).catch(() => undefined)) as KeyRing | undefined);
  const createKeyRing = async (name: string, spec: Partial<KeyRingSpec>): Promise<KeyRing> =>
    (await objects.createNamespacedCustomObject({
      ...keyRingResource,
      namespace,
      body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name }, spec: { purpose: 'encryption', ...spec } },
    })) as KeyRing;
  /** The primary key id once the operator made the KeyRing Ready. */
  const readyKeyId = (name: string, uid: string): Promise<string> =>
    eventually(`KeyRing ${name} (${uid}) Ready`, 30_000, async () => {
      const kr = await getKeyRing(name);
      const ready = kr?.metadata.uid === uid && kr.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True');
      return ready ? kr.status?.versions?.find((v) => v.number === kr.status?.primaryVersion)?.keyId : undefined;
    });
  const deleteKeyRing = async (name: string): Promise<void> => {
    await objects.deleteNamespacedCustomObject({ ...keyRingResource, namespace, name });
    await eventually(`KeyRing ${name} gone`, 30_000, async () => ((await getKeyRing(name)) ? undefined : true));
  };

  const hsmArgs = (): string[] => [`--pkcs11-module=${hsm.modulePath}`, `--token-label=${hsm.label}`, `--pin-file=${join(dir, 'cli.pin')}`, '--audit-log=/dev/null'];
  /** `keyward encrypt` as an admin runs it: the sealed value, or the CLI's error message. */
  const keywardEncrypt = (name: string, plaintext: string): { sealed?: Buffer; error?: string } => {
    const run = spawnSync(process.execPath, [keywardCli, 'encrypt', `--ring=${name}`, `--namespace=${namespace}`, ...hsmArgs()], { env: { ...process.env, ...hsm.env }, input: plaintext, encoding: 'utf8' });
    return run.status === 0 ? { sealed: Buffer.from(run.stdout, 'base64') } : { error: run.stderr.trim() };
  };
  /** What the CSI provider makes of a name and a sealed value, with a fresh listing. */
  const providerOpens = async (name: string, sealed: Buffer): Promise<{ ringId?: string; plaintext?: string }> => {
    const material = new KeyMaterial(admin, new RingStore(admin), { ringRefreshMs: 0 });
    const calls = { hsmCalls: 0 };
    const ring = await material.ring(namespace, name, calls);
    if (!ring) return {};
    return { ringId: ring.ringId, plaintext: (await material.secret(ring, sealed, calls)).plaintext.toString() };
  };
  const status = () => kmsStatus(join(dir, 'kms.sock'));
  /** A call to the plugin, as kube-apiserver makes it. */
  const kms = async <T>(call: (client: UnaryClient<(typeof KeyManagementService)['method']>) => Promise<T>): Promise<T> => {
    const client = grpcClient(KeyManagementService, `unix:${join(dir, 'kms.sock')}`);
    try {
      return await call(client);
    } finally {
      client.close();
    }
  };

  for (const deletionPolicy of ['Retain', 'Destroy'] as const) {
    it(`with deletionPolicy ${deletionPolicy}: the old ring is served by nothing, the new one by all`, async () => {
      const name = `etcd-${deletionPolicy.toLowerCase()}`;
      const spec = deletionPolicy === 'Destroy' ? { deletionPolicy, deletionDestroyRequest: approvedDestruction(new Date()) } : { deletionPolicy };
      const first = await createKeyRing(name, spec);
      const firstUid = first.metadata.uid ?? '';
      const firstKeyId = await readyKeyId(name, firstUid);
      plugin = await startKmsPluginProcess({ hsm, ringName: name, ringNamespace: namespace, dir });
      assert.equal((await status()).keyId, firstKeyId);
      const sealedFirst = keywardEncrypt(name, 'first').sealed;
      assert.ok(sealedFirst);
      // A DEK seed kube-apiserver stored in etcd under the first KeyRing.
      const seed = Buffer.from('a DEK seed written before the re-create');
      const stored = await kms((c) => c.encrypt({ plaintext: seed, uid: 'before' }));
      assert.equal(stored.keyId, firstKeyId);
      assert.deepEqual(await providerOpens(name, sealedFirst), { ringId: firstUid, plaintext: 'first' });

      await deleteKeyRing(name);
      // Nobody manages the old ring now: the running plugin stops serving it (etcd is never encrypted under it).
      await eventually('the running plugin drops the deleted KeyRing ring', 15_000, async () => ((await status()).keyId === '' ? true : undefined));
      assert.notEqual((await status()).healthz, 'ok');
      assert.match(keywardEncrypt(name, 'orphan').error ?? '', new RegExp(`ring '${namespace}/${name}' does not exist in the HSM`));
      assert.deepEqual(await providerOpens(name, sealedFirst), {}, 'the provider knows no ring of that name');

      const second = await createKeyRing(name, spec);
      const secondUid = second.metadata.uid ?? '';
      const secondKeyId = await readyKeyId(name, secondUid);
      assert.notEqual(secondKeyId, firstKeyId);
      await eventually('the running plugin serves the new KeyRing ring', 15_000, async () => ((await status()).keyId === secondKeyId ? true : undefined));
      await plugin.process.stop();
      plugin = await startKmsPluginProcess({ hsm, ringName: name, ringNamespace: namespace, dir });
      assert.deepEqual([(await status()).healthz, (await status()).keyId], ['ok', secondKeyId], 'a restarted plugin serves the new ring');
      assert.equal((await kms((c) => c.encrypt({ plaintext: seed, uid: 'after' }))).keyId, secondKeyId, 'new data is sealed under the new ring');
      const reading = kms((c) => c.decrypt({ ciphertext: stored.ciphertext, keyId: stored.keyId, uid: 'read', annotations: stored.annotations }));
      if (deletionPolicy === 'Retain') {
        // What the old ring sealed stays readable while its keys are kept: the etcd data is not lost.
        assert.deepEqual(Buffer.from((await reading).plaintext), seed);
      } else {
        await assert.rejects(reading, (err: { code: number; details: string }) => err.code === 9 && /DestroyScheduled; it may not decrypt/.test(err.details));
      }
      const sealedSecond = keywardEncrypt(name, 'second').sealed;
      assert.ok(sealedSecond);
      assert.deepEqual(await providerOpens(name, sealedSecond), { ringId: secondUid, plaintext: 'second' }, 'keyward encrypt seals under the ring the provider opens with');
      const listed = execFileSync(process.execPath, [keywardCli, 'ring', 'list', ...hsmArgs().slice(0, 3)], { env: { ...process.env, ...hsm.env }, encoding: 'utf8' });
      assert.equal(listed.match(new RegExp(`^${namespace}/${name}  primary=1  released from its name `, 'gm'))?.length, 1, 'keyward ring list marks the old ring');
    });
  }

  it('reports a corrupt ring state as Ready=False RingStateCorrupt, in the log and in a metric', async () => {
    const created = await createKeyRing('damaged', {});
    const uid = created.metadata.uid ?? '';
    await readyKeyId('damaged', uid);
    // A newer revision that does not parse, as a torn write or a bad restore could leave it.
    await admin.withSession((s) =>
      admin.pkcs11.C_CreateObject(s, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_PRIVATE, value: true },
        { type: pkcs11js.CKA_APPLICATION, value: 'keyward.dev/ring-state' },
        { type: pkcs11js.CKA_LABEL, value: ringObjectLabel(uid) },
        { type: pkcs11js.CKA_VALUE, value: Buffer.from('{"schema":1,"ringId":"') },
      ]),
    );
    await objects.patchNamespacedCustomObject(
      { ...keyRingResource, namespace, name: 'damaged', body: { spec: { rotationRequest: 'after-corruption' } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    const condition = await eventually('Ready=False RingStateCorrupt', 30_000, async () =>
      (await getKeyRing('damaged'))?.status?.conditions?.find((c) => c.type === 'Ready' && c.status === 'False' && c.reason === 'RingStateCorrupt'),
    );
    assert.match(condition.message, new RegExp(`the state of ring id ${uid} in the HSM is corrupt \\(not JSON\\)`));
    const metrics = await (await fetch(`${operator.metricsUrl}/metrics`)).text();
    const counted = /^keyward_hsm_ring_state_corrupt_total (\d+)/m.exec(metrics);
    assert.ok(Number(counted?.[1]) >= 1, 'counted');
    assert.match(readFileSync(operator.logFile, 'utf8'), new RegExp(`"ringId":"${uid}".*ring state in the HSM is corrupt`));
    assert.throws(() => execFileSync(process.execPath, [keywardCli, 'ring', 'list', ...hsmArgs().slice(0, 3)], { env: { ...process.env, ...hsm.env }, stdio: 'pipe' }), /is corrupt/);
  });
});
