// Keyward against a token reached over a socket (p11-kit server + p11-kit-client.so), with nothing
// changed but the module path and that module's environment: the stand-in for a network HSM.
// Debian 12's p11-kit 0.24 carries no CK_GCM_PARAMS over its RPC, so AES-256-GCM (the KMS path)
// is pinned here as the known gap; every other operation must work as on SoftHSM2 directly.
import { status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, createPublicKey, verify } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import pkcs11js from 'pkcs11js';
import { KeywardError } from '../../core/errors.js';
import { grpcClient } from '../../testbed/grpcClient.js';
import { aesGcmEncrypt } from '../../core/hsm/aesGcm.js';
import { signDigest } from '../../core/hsm/ecdsaSigning.js';
import { deriveKey } from '../../core/hsm/hmacDerivation.js';
import { HsmToken } from '../../core/hsm/hsmToken.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import type { RingState } from '../../core/hsm/ringState.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { startKmsPlugin } from '../../provider/kms/kmsPlugin.js';
import { KeyManagementService } from '../../proto/gen/kms/v2/api_pb.js';
import { keyAttribute, keyFlag } from '../../testbed/hsm/softHsmFixture.js';
import { keywardCli } from '../kms/kmsPluginProcess.js';
import { findP11KitClient, startNetworkHsm, type NetworkHsm } from '../../testbed/hsm/networkHsm.js';

interface CliResult {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

describe('Keyward through a network HSM client module (p11-kit server exporting SoftHSM2)', function () {
  this.timeout(120_000);
  let softhsm: SoftHsmToken;
  let hsm: NetworkHsm;
  let token: HsmToken;
  let store: RingStore;
  let dir: string;
  let pinFile: string;
  const savedAddress = process.env.P11_KIT_SERVER_ADDRESS;

  /** `keyward ring …` as a second client process, through the same client module and socket. */
  const cli = (args: string[]): Promise<CliResult> =>
    new Promise((resolve) => {
      const hsmArgs = [`--pkcs11-module=${hsm.modulePath}`, `--token-label=${softhsm.label}`, `--pin-file=${pinFile}`];
      // Without SOFTHSM2_CONF: the second process must reach the token only through the socket.
      const env = { ...process.env, ...hsm.env, SOFTHSM2_CONF: '/nonexistent' };
      execFile(process.execPath, [keywardCli, ...args, ...hsmArgs], { env, timeout: 60_000 }, (err, stdout, stderr) => {
        const e = err as (Error & { code?: number; signal?: string }) | null;
        resolve({ code: e ? (e.code ?? null) : 0, signal: e?.signal ?? null, stdout, stderr });
      });
    });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keyward-network-hsm-test-'));
    softhsm = createSoftHsmToken({ parentDir: dir });
    pinFile = join(dir, 'user.pin');
    writeFileSync(pinFile, softhsm.pin, { mode: 0o600 });
    hsm = await startNetworkHsm({ token: softhsm, parentDir: dir });
    // The client module reads the address when it is initialised, so this comes first.
    process.env.P11_KIT_SERVER_ADDRESS = hsm.env.P11_KIT_SERVER_ADDRESS;
    token = HsmToken.open({ modulePath: hsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.pin });
    store = new RingStore(token);
  });

  after(async () => {
    token?.close();
    await hsm?.stop();
    softhsm?.remove();
    if (savedAddress === undefined) delete process.env.P11_KIT_SERVER_ADDRESS;
    else process.env.P11_KIT_SERVER_ADDRESS = savedAddress;
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('opens and logs in to the exported token through p11-kit-client.so, not SoftHSM2', () => {
    const info = token.pkcs11.C_GetInfo();
    assert.match(info.manufacturerID, /PKCS#11 Kit/);
    assert.notEqual(hsm.modulePath, softhsm.modulePath);
  });

  let aes: RingState;
  let hmac: RingState;
  let ecdsa: RingState;

  it('creates rings of every algorithm and rotates one (key generation, data objects, search by label and id)', async () => {
    aes = await store.create({ name: 'apps', namespace: 'kube-system' });
    hmac = await store.create({ name: 'workloads', algorithm: 'HMAC_SHA_384' });
    ecdsa = await store.create({ name: 'releases', algorithm: 'ECDSA_P384' });
    aes = await store.rotate({ ringId: aes.ringId });
    assert.equal(aes.primary, 2);
    const listed = new Map((await store.list()).map((r) => [r.ringId, r]));
    assert.deepEqual([...listed.keys()].sort(), [aes.ringId, hmac.ringId, ecdsa.ringId].sort());
    assert.deepEqual(listed.get(aes.ringId)?.versions.map((v) => v.state), ['Enabled', 'Enabled']);
    for (const [ring, version] of [[aes, 1], [aes, 2], [hmac, 1], [ecdsa, 1]] as const) {
      assert.ok(await store.keyHandle(ring.ringId, version), `${ring.name} v${version} found by its CKA_ID`);
    }
    assert.deepEqual(await store.orphanKeys(), []);
  });

  it('keeps keys sensitive and non-extractable across the socket [practice:no-plaintext-export]', async () => {
    const key = (await store.keyHandle(aes.ringId, 2))!;
    assert.equal(await keyFlag(token, key, pkcs11js.CKA_SENSITIVE), true);
    assert.equal(await keyFlag(token, key, pkcs11js.CKA_EXTRACTABLE), false);
    await assert.rejects(keyAttribute(token, key, pkcs11js.CKA_VALUE), /CKR_ATTRIBUTE_SENSITIVE/);
  });

  it('derives with HMAC-SHA-384 in the HSM', async () => {
    const key = (await store.keyHandle(hmac.ringId, 1))!;
    const a = await deriveKey(token, key, Buffer.from('ns/app/secret'));
    assert.equal(a.length, 48);
    assert.deepEqual(await deriveKey(token, key, Buffer.from('ns/app/secret')), a, 'deterministic');
    assert.notDeepEqual(await deriveKey(token, key, Buffer.from('ns/other/secret')), a, 'bound to its context');
  });

  it('signs with ECDSA P-384; the signature verifies against the exported public key', async () => {
    const key = (await store.keyHandle(ecdsa.ringId, 1))!;
    const message = Buffer.from('release manifest');
    const signature = await signDigest(token, key, createHash('sha384').update(message).digest());
    const spki = (await store.publicKey(ecdsa.ringId, 1))!;
    const publicKey = createPublicKey({ key: spki, format: 'der', type: 'spki' });
    assert.equal(verify('sha384', message, { key: publicKey, dsaEncoding: 'ieee-p1363' }, signature), true);
  });

  it('AES-256-GCM (KMS Encrypt): carried only when the client module offers CKM_AES_GCM; Debian 12 p11-kit 0.24 refuses it', async () => {
    const offered = await token.withSession(() => {
      const slot = token.pkcs11.C_GetSlotList(true)[0]!;
      return token.pkcs11.C_GetMechanismList(slot).includes(pkcs11js.CKM_AES_GCM);
    });
    const key = (await store.keyHandle(aes.ringId, 2))!;
    const plugin = await startKmsPlugin(
      {
        socketPath: join(dir, 'kms.sock'),
        modulePath: hsm.modulePath,
        tokenLabel: softhsm.label,
        pin: softhsm.pin,
        ring: { name: 'apps', namespace: 'kube-system' },
        auditLog: join(dir, 'audit.log'),
      },
      pino(pino.destination({ dest: join(dir, 'plugin.log'), sync: true })),
    );
    const kms = grpcClient(KeyManagementService, `unix:${plugin.socketPath}`);
    try {
      const s = await kms.status({});
      if (offered) {
        assert.equal(s.healthz, 'ok', 'the plugin reads its ring and probes its key through the socket');
        assert.equal(s.keyId, aes.versions[1]?.keyId);
        const enc = await kms.encrypt({ plaintext: Buffer.from('dek-seed'), uid: 'n-1' });
        const dec = await kms.decrypt({ ciphertext: enc.ciphertext, keyId: enc.keyId, annotations: enc.annotations, uid: 'n-2' });
        assert.deepEqual(Buffer.from(dec.plaintext), Buffer.from('dek-seed'));
      } else {
        // The client refuses before anything is sent: its RPC has no serialiser for CK_GCM_PARAMS.
        await assert.rejects(aesGcmEncrypt(token, key, Buffer.from('x'), Buffer.alloc(0)), /CKR_MECHANISM_INVALID/);
        // The plugin starts but reports why it cannot serve, from its own GCM health probe.
        assert.equal(s.healthz, 'HSM check failed: CKR_MECHANISM_INVALID');
        await assert.rejects(kms.encrypt({ plaintext: Buffer.from('dek-seed'), uid: 'n-1' }), (err: { code: number; details: string }) => {
          assert.equal(err.code, status.UNAVAILABLE);
          assert.match(err.details, /HSM check failed: CKR_MECHANISM_INVALID/);
          return true;
        });
      }
    } finally {
      kms.close();
      await plugin.stop();
    }
  });

  it('keyward hsm check (the chart pre-install check) names the mechanisms the client module cannot carry', async () => {
    const offersGcm = token.mechanisms().includes(pkcs11js.CKM_AES_GCM);
    const check = await cli(['hsm', 'check']);
    if (offersGcm) {
      assert.equal(check.code, 0, check.stderr);
    } else {
      assert.equal(check.code, 1);
      assert.match(check.stderr, /does not offer.*encryption \(KMS plugin, sealed secrets\): CKM_AES_GCM/);
      assert.doesNotMatch(check.stderr, /derivation|signing/, 'HMAC and ECDSA do cross the socket');
    }
  });

  it('a second client process sees a rotation made by this one, and this one sees the second one’s', async () => {
    const before = await cli(['ring', 'list']);
    assert.equal(before.code, 0, before.stderr);
    const rotated = await store.rotate({ ringId: hmac.ringId });
    const newKeyId = rotated.versions.find((v) => v.number === 2)!.keyId;
    assert.doesNotMatch(before.stdout, new RegExp(newKeyId));
    const after = await cli(['ring', 'list']);
    assert.equal(after.code, 0, after.stderr);
    assert.match(after.stdout, new RegExp(`workloads {2}primary=2[\\s\\S]*v2 +Enabled +${newKeyId}`));

    const theirs = await cli(['ring', 'rotate', 'releases']);
    assert.equal(theirs.code, 0, theirs.stderr);
    // Our sessions stayed open: the new version shows on the next read, without reconnecting.
    const seen = await store.get({ ringId: ecdsa.ringId });
    assert.equal(seen?.primary, 2);
    assert.ok(await store.publicKey(ecdsa.ringId, 2), 'the key pair made by the other client is usable here');
  });

  it('a stopped server gives Unavailable errors, and the CLI exits with a message, not a crash', async () => {
    await hsm.stop();
    await assert.rejects(store.list(), (err: unknown) => {
      assert.ok(err instanceof KeywardError, `a KeywardError, not ${String(err)}`);
      assert.equal(err.code, 'Unavailable');
      return true;
    });
    // After re-initialising, the client module shows no slot at all while the server is gone.
    token.recover();
    await assert.rejects(store.list(), (err: unknown) => err instanceof KeywardError && err.code === 'Unavailable' && /shows no token at all/.test(err.message));
    await assert.rejects(
      Promise.resolve().then(() => HsmToken.open({ modulePath: hsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.pin })),
      (err: unknown) => err instanceof KeywardError && err.code === 'Unavailable',
    );
    const result = await cli(['ring', 'list']);
    assert.equal(result.signal, null, 'no crash');
    assert.notEqual(result.code, 0);
    assert.match(result.stderr, /shows no token at all/);
    assert.doesNotMatch(result.stderr, /^\s+at /m, 'a message, not a stack trace');
  });
});

describe('network HSM fixture', () => {
  it('names what is missing when p11-kit or its client module is not installed', async () => {
    const token = { modulePath: '/usr/lib/softhsm/libsofthsm2.so', label: 'absent', env: { SOFTHSM2_CONF: '/nonexistent' } };
    await assert.rejects(startNetworkHsm({ token, p11Kit: '/nonexistent/p11-kit', clientModulePath: '/dev/null' }), (err: unknown) => {
      assert.ok(err instanceof KeywardError && err.code === 'SetupError');
      assert.match(err.message, /p11-kit is not installed.*apt-get install p11-kit p11-kit-modules/);
      return true;
    });
    assert.throws(() => findP11KitClient(['/nonexistent/p11-kit-client.so']), /client module is not installed.*apt-get install p11-kit-modules/);
  });
});
