import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseMountRequest } from '../../provider/csi/mountRequest.js';
import { additionalData, ciphertextHeader, encodeCiphertext, parseCiphertext } from './kmsCiphertext.js';
import { KeywardError } from '../errors.js';
import { aesGcmDecrypt, aesGcmEncrypt } from '../hsm/aesGcm.js';
import type { HsmToken } from '../hsm/hsmToken.js';
import { keyIdFor, type RingState } from '../hsm/ringState.js';
import { RingStore } from '../hsm/ringStore.js';
import {
  maxSealedPlaintextBytes,
  maxSealedSecretBytes,
  openSealedSecret,
  SealedSecretError,
  sealedSecretFormatV1,
  sealSecret,
  type SealedSecretReason,
} from './sealedSecret.js';
import { useSoftHsmToken } from '../../testbed/hsm/softHsmFixture.js';

const keywardCli = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'cli', 'keyward.js');

describe('Sealed secrets in a real SoftHSM2 token', () => {
  const hsm = useSoftHsmToken();
  let token: HsmToken;
  let store: RingStore;
  before(() => {
    token = hsm.token;
    store = new RingStore(token);
  });

  const secret = (): Buffer => Buffer.from(`db-password-${randomBytes(12).toString('hex')}`);
  let rings = 0;
  /** A fresh encryption ring; names are unique per test so tests do not see each other's rings. */
  const newRing = (namespace = 'shop', name = `app-secrets-${++rings}`): Promise<RingState> => store.create({ name, namespace });

  const rejectsWith = async (promise: Promise<unknown>, reason: SealedSecretReason, message: RegExp): Promise<void> => {
    await assert.rejects(promise, (err) => {
      assert.ok(err instanceof SealedSecretError, `a SealedSecretError, not ${String(err)}`);
      assert.ok(err instanceof KeywardError);
      assert.equal(err.reason, reason, err.message);
      assert.equal(err.code, reason === 'VersionUnavailable' ? 'FailedPrecondition' : 'InvalidArgument');
      assert.match(err.message, message);
      return true;
    });
  };

  it('seals under the primary and opens again, in format 2 with the key id in the header [practice:cnsa]', async () => {
    const ring = await newRing();
    const plaintext = secret();
    const sealed = await sealSecret(token, store, ring, plaintext);
    const keyId = keyIdFor(ring.ringId, 1);
    assert.equal(sealed[0], sealedSecretFormatV1);
    assert.equal(sealed[0], 2, 'format 2: never confused with a KMS ciphertext (format 1)');
    assert.equal(sealed[1], 1, 'AES-256-GCM');
    assert.equal(sealed.readUInt32BE(2), 1, 'key version 1');
    assert.equal(sealed[6], keyId.length);
    assert.equal(sealed.subarray(7, 7 + keyId.length).toString('ascii'), keyId);
    assert.equal(sealed.length, 7 + keyId.length + 12 + plaintext.length + 16);
    assert.ok(!sealed.includes(plaintext), 'no plaintext in the sealed value');
    assert.deepEqual(await openSealedSecret(token, store, ring, sealed), plaintext);
    // Two seals of the same value differ (a fresh IV each time).
    assert.notDeepEqual(await sealSecret(token, store, ring, plaintext), sealed);
  });

  it('opens what the CSI provider parses out of a SecretProviderClass', async () => {
    const ring = await newRing();
    const plaintext = secret();
    const text = (await sealSecret(token, store, ring, plaintext)).toString('base64');
    const uid = '6f1c1b7e-3c2a-4a59-9a3e-2f0d4c1b9e77';
    const objects = `- type: secret\n  name: db-password\n  keyRing: ${ring.name}\n  path: db/password\n  ciphertext: |\n    ${text.slice(0, 30)}\n    ${text.slice(30)}\n`;
    const attributes = {
      'csi.storage.k8s.io/pod.name': 'api-0',
      'csi.storage.k8s.io/pod.namespace': 'shop',
      'csi.storage.k8s.io/pod.uid': uid,
      'csi.storage.k8s.io/serviceAccount.name': 'api',
      'csi.storage.k8s.io/serviceAccount.tokens': JSON.stringify({ 'keyward.dev/csi': { token: 'aGVhZA.Ym9keQ.c2ln', expirationTimestamp: '2030-01-02T03:04:05Z' } }),
      objects,
    };
    const result = parseMountRequest(
      {
        attributes: JSON.stringify(attributes),
        secrets: '',
        permission: '420',
        targetPath: `/var/lib/kubelet/pods/${uid}/volumes/kubernetes.io~csi/keys/mount`,
      },
      { audience: 'keyward.dev/csi' },
    );
    assert.ok(result.ok, result.ok ? '' : result.refusal.message);
    const [object] = result.request.objects;
    assert.equal(object?.type, 'secret');
    assert.deepEqual(await openSealedSecret(token, store, ring, object.ciphertext), plaintext);
  });

  it('opens a secret sealed before a rotation and seals new ones under the new primary [practice:rotation]', async () => {
    const ring = await newRing();
    const old = secret();
    const sealedOld = await sealSecret(token, store, ring, old);
    const rotated = await store.rotate({ ringId: ring.ringId });
    assert.equal(rotated.primary, 2);
    const fresh = secret();
    const sealedNew = await sealSecret(token, store, ring, fresh);
    assert.equal(sealedNew.readUInt32BE(2), 2, 'new secrets use version 2');
    assert.equal(sealedNew.subarray(7, 7 + sealedNew[6]!).toString('ascii'), keyIdFor(ring.ringId, 2));
    assert.deepEqual(await openSealedSecret(token, store, rotated, sealedOld), old);
    assert.deepEqual(await openSealedSecret(token, store, rotated, sealedNew), fresh);
    // A state read before the rotation (a provider's cache) still opens a version-2 secret.
    assert.deepEqual(await openSealedSecret(token, store, ring, sealedNew), fresh);
  });

  it('refuses a secret sealed under another ring as WrongRing, the same name in another namespace included', async () => {
    const ring = await newRing('shop', 'payments');
    const sealed = await sealSecret(token, store, ring, secret());
    const sibling = await newRing('shop');
    const sameNameElsewhere = await newRing('billing', 'payments');
    const sameNameNoNamespace = await newRing('', 'payments');
    await rejectsWith(openSealedSecret(token, store, sibling, sealed), 'WrongRing', new RegExp(`no version of ring 'shop/${sibling.name}'`));
    await rejectsWith(openSealedSecret(token, store, sameNameElsewhere, sealed), 'WrongRing', /no version of ring 'billing\/payments': sealed under another ring/);
    await rejectsWith(openSealedSecret(token, store, sameNameNoNamespace, sealed), 'WrongRing', /no version of ring 'payments'/);
    // And the other way round: the other ring's secret under this ring.
    await rejectsWith(openSealedSecret(token, store, ring, await sealSecret(token, store, sameNameElsewhere, secret())), 'WrongRing', /'shop\/payments'/);
  });

  it('binds the ring namespace and name into the authenticated data', async () => {
    const ring = await newRing();
    const sealed = await sealSecret(token, store, ring, secret());
    // The same ring id (so the same key) under another name cannot open it.
    await rejectsWith(openSealedSecret(token, store, { ...ring, name: `${ring.name}-x` }, sealed), 'Tampered', /failed authentication/);
    await rejectsWith(openSealedSecret(token, store, { ...ring, namespace: 'billing' }, sealed), 'Tampered', /failed authentication/);
  });

  it('refuses a flipped bit in the IV, ciphertext, tag or header key version as Tampered', async () => {
    const ring = await newRing();
    const plaintext = Buffer.from('a 32-byte secret value for tests');
    const sealed = await sealSecret(token, store, ring, plaintext);
    const headerBytes = 7 + sealed[6]!;
    const flip = (offset: number, bit = 0x01): Buffer => {
      const copy = Buffer.from(sealed);
      copy[offset]! ^= bit;
      return copy;
    };
    const cases: Array<[string, Buffer]> = [
      ['IV', flip(headerBytes + 5)],
      ['ciphertext', flip(headerBytes + 12 + 3)],
      ['tag', flip(sealed.length - 1, 0x80)],
    ];
    for (const [where, tampered] of cases) {
      await assert.rejects(openSealedSecret(token, store, ring, tampered), (err) => {
        assert.ok(err instanceof SealedSecretError && err.reason === 'Tampered', `${where}: ${String(err)}`);
        assert.match(err.message, new RegExp(`failed authentication with ring 'shop/${ring.name}' version 1`));
        assert.ok(!err.message.includes(tampered.toString('base64')) && !err.message.includes(plaintext.toString()), 'no data in the message');
        return true;
      });
    }
    await rejectsWith(openSealedSecret(token, store, ring, flip(5, 0x02)), 'Tampered', /header says key version 3, but its key id is version 1/);
    // Even with version 3 present, the key id still names version 1.
    await store.rotate({ ringId: ring.ringId });
    const three = await store.rotate({ ringId: ring.ringId });
    await rejectsWith(openSealedSecret(token, store, three, flip(5, 0x02)), 'Tampered', /key version 3, but its key id is version 1/);
    assert.deepEqual(await openSealedSecret(token, store, three, sealed), plaintext, 'the untouched value still opens');
  });

  it('refuses truncated, garbage and KMS-format input as Malformed, and a KMS parser refuses a sealed secret', async () => {
    const ring = await newRing();
    const sealed = await sealSecret(token, store, ring, secret());
    const headerBytes = 7 + sealed[6]!;
    const malformed = (input: Uint8Array, message: RegExp) => rejectsWith(openSealedSecret(token, store, ring, input), 'Malformed', message);
    await malformed(Buffer.alloc(0), /is empty/);
    await malformed(sealed.subarray(0, 1), /truncated: 1 bytes/);
    await malformed(sealed.subarray(0, 5), /truncated: 5 bytes/);
    await malformed(sealed.subarray(0, headerBytes + 12 + 16), /truncated/);
    await malformed(sealed.subarray(0, headerBytes - 3), /truncated/);
    await malformed(Buffer.from([9, ...randomBytes(80)]), /unknown format 9/);
    await malformed(Buffer.from([0, ...randomBytes(80)]), /unknown format 0/);
    const edit = (offset: number, value: number): Buffer => {
      const copy = Buffer.from(sealed);
      copy[offset] = value;
      return copy;
    };
    await malformed(edit(1, 2), /unknown algorithm id 2/);
    await malformed(edit(6, 0), /key id length 0/);
    await malformed(edit(6, 200), /key id length 200/);
    await malformed(Buffer.concat([sealed.subarray(0, 2), Buffer.alloc(4), sealed.subarray(6)]), /key version 0/);
    await malformed(edit(8, 0x0a), /not printable ASCII/);
    await malformed(Buffer.concat([sealed, Buffer.alloc(maxSealedSecretBytes)]), new RegExp(`the limit is ${maxSealedSecretBytes}`));

    // A KMS ciphertext (etcd's DEK seeds) made under this very ring's key is refused by format.
    const key = await store.keyHandle(ring.ringId, 1);
    assert.ok(key !== undefined);
    const kmsHeader = ciphertextHeader(1);
    const kms = encodeCiphertext(kmsHeader, await aesGcmEncrypt(token, key, randomBytes(32), additionalData(kmsHeader, keyIdFor(ring.ringId, 1))));
    await malformed(kms, /a KMS ciphertext \(format 1\), not a sealed secret/);
    // The other way round: the KMS parser refuses a sealed secret.
    assert.throws(() => parseCiphertext(sealed), /unknown ciphertext format version 2/);
    // And below the formats, the AADs differ: a sealed secret's IV and ciphertext fail under the KMS AAD.
    const iv = sealed.subarray(headerBytes, headerBytes + 12);
    await assert.rejects(aesGcmDecrypt(token, key, { iv, sealed: sealed.subarray(headerBytes + 12) }, additionalData(kmsHeader, keyIdFor(ring.ringId, 1))));
  });

  it('refuses a version that is disabled, scheduled for destruction, destroyed or without its key', async () => {
    const ring = await newRing();
    const plaintext = secret();
    const sealed = await sealSecret(token, store, ring, plaintext);
    const ref = { ringId: ring.ringId };
    await store.rotate(ref);
    let state = await store.setVersionState(ref, 1, 'Disabled');
    const name = `ring 'shop/${ring.name}'`;
    await rejectsWith(openSealedSecret(token, store, state, sealed), 'VersionUnavailable', new RegExp(`${name} version 1 is Disabled; it may not decrypt`));
    state = await store.setVersionState(ref, 1, 'Enabled');
    assert.deepEqual(await openSealedSecret(token, store, state, sealed), plaintext, 'opens again once re-enabled');
    await store.setVersionState(ref, 1, 'Disabled');
    state = await store.setVersionState(ref, 1, 'DestroyScheduled', { destroyAt: new Date(Date.now() + 1000) });
    await rejectsWith(openSealedSecret(token, store, state, sealed), 'VersionUnavailable', /version 1 is DestroyScheduled/);
    await store.destroyDue(new Date(Date.now() + 2000), ring.ringId);
    state = await store.require(ref);
    await rejectsWith(openSealedSecret(token, store, state, sealed), 'VersionUnavailable', /version 1 is Destroyed/);

    // An Enabled version whose key object is gone (removed behind Keyward's back).
    const other = await newRing();
    const lost = await sealSecret(token, store, other, secret());
    const key = await store.keyHandle(other.ringId, 1);
    assert.ok(key !== undefined);
    await token.withSession((s) => token.pkcs11.C_DestroyObject(s, key));
    await rejectsWith(openSealedSecret(token, store, other, lost), 'VersionUnavailable', /version 1 has no key object in the HSM/);
    await assert.rejects(sealSecret(token, store, other, secret()), (err) => err instanceof KeywardError && err.code === 'FailedPrecondition' && /primary version 1 has no key object/.test(err.message));
  });

  it('refuses a derivation ring, a missing ring and a secret that is empty or over 64 KiB', async () => {
    const derivation = await store.create({ name: 'volume-keys', namespace: 'shop', algorithm: 'HMAC_SHA_384' });
    await assert.rejects(
      sealSecret(token, store, derivation, secret()),
      (err) => err instanceof KeywardError && err.code === 'FailedPrecondition' && /'shop\/volume-keys' has purpose derivation .*sealing a secret needs purpose encryption/.test(err.message),
    );
    const ring = await newRing();
    const sealed = await sealSecret(token, store, ring, secret());
    await assert.rejects(
      openSealedSecret(token, store, derivation, sealed),
      (err) => err instanceof KeywardError && err.code === 'FailedPrecondition' && /opening a sealed secret needs purpose encryption/.test(err.message),
    );
    await assert.rejects(
      sealSecret(token, store, { namespace: 'shop', name: 'no-such-ring' }, secret()),
      (err) => err instanceof KeywardError && err.code === 'NotFound' && /ring 'shop\/no-such-ring' does not exist/.test(err.message),
    );
    await assert.rejects(sealSecret(token, store, ring, new Uint8Array(0)), (err) => err instanceof KeywardError && err.code === 'InvalidArgument' && /empty/.test(err.message));
    await assert.rejects(
      sealSecret(token, store, ring, Buffer.alloc(maxSealedPlaintextBytes + 1)),
      (err) => err instanceof KeywardError && err.code === 'InvalidArgument' && /65537 bytes; the limit is 65536 \(64 KiB\)/.test(err.message),
    );
    const largest = randomBytes(maxSealedPlaintextBytes);
    const big = await sealSecret(token, store, ring, largest);
    assert.ok(big.length <= maxSealedSecretBytes);
    assert.deepEqual(await openSealedSecret(token, store, ring, big), largest);
    const smallest = await sealSecret(token, store, ring, Buffer.from([0]));
    assert.deepEqual(await openSealedSecret(token, store, ring, smallest), Buffer.from([0]));
  });

  describe('keyward encrypt', () => {
    let dir: string;
    before(() => {
      dir = mkdtempSync(join(tmpdir(), 'keyward-encrypt-'));
      writeFileSync(join(dir, 'user.pin'), hsm.softhsm.pin, { mode: 0o600 });
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    const hsmArgs = (): string[] => [`--pkcs11-module=${hsm.softhsm.modulePath}`, `--token-label=${hsm.softhsm.label}`, `--pin-file=${join(dir, 'user.pin')}`];
    const env = (): NodeJS.ProcessEnv => ({ ...process.env, ...hsm.softhsm.env });

    it('seals standard input or a file into one line of base64 that openSealedSecret opens', async () => {
      const ring = await newRing('shop', 'cli-secrets');
      const fromStdin = randomBytes(300);
      const auditFile = join(dir, 'audit.log');
      const out = execFileSync(process.execPath, [keywardCli, 'encrypt', '--ring=cli-secrets', '--namespace=shop', `--audit-log=${auditFile}`, ...hsmArgs()], { env: env(), input: fromStdin, encoding: 'utf8' });
      assert.match(out, /^[A-Za-z0-9+/]+=*\n$/, 'one line of standard base64');
      const record = JSON.parse(readFileSync(auditFile, 'utf8')) as Record<string, unknown>;
      assert.deepEqual([record.operation, record.ring, record.result, record.keyVersion], ['encrypt', 'shop/cli-secrets', 'allowed', 1]);
      assert.deepEqual(await openSealedSecret(token, store, ring, Buffer.from(out, 'base64')), fromStdin);

      const file = join(dir, 'secret.txt');
      writeFileSync(file, 'hunter2\n');
      const fromFile = execFileSync(process.execPath, [keywardCli, 'encrypt', '--ring', 'cli-secrets', '--namespace', 'shop', '--in', file, ...hsmArgs()], { env: env(), encoding: 'utf8' });
      assert.deepEqual(await openSealedSecret(token, store, ring, Buffer.from(fromFile, 'base64')), Buffer.from('hunter2\n'), 'bytes as given');
    });

    it('reports a missing ring, a missing --ring and an oversize input through the error path', () => {
      const run = (args: string[], input?: Buffer) => spawnSync(process.execPath, [keywardCli, 'encrypt', ...args, ...hsmArgs()], { env: env(), input: input ?? Buffer.from('x'), encoding: 'utf8' });
      const missing = run(['--ring=nope', '--namespace=shop']);
      assert.equal(missing.status, 1);
      assert.equal(missing.stdout, '');
      const [auditLine = '', message] = missing.stderr.split('\n');
      assert.equal(message, "keyward encrypt: ring 'shop/nope' does not exist in the HSM");
      const record = JSON.parse(auditLine) as Record<string, unknown>;
      assert.deepEqual([record.stream, record.operation, record.ring, record.result, record.code], ['audit', 'encrypt', 'shop/nope', 'failed', 'NotFound'], 'the refusal is audited');
      const noRing = run([]);
      assert.equal(noRing.status, 2);
      assert.match(noRing.stderr, /encrypt needs --ring NAME/);
      const big = run(['--ring=cli-secrets', '--namespace=shop'], Buffer.alloc(maxSealedPlaintextBytes + 1, 0x61));
      assert.equal(big.status, 2);
      assert.match(big.stderr, /over 65536 bytes; the limit is 64 KiB/);
      assert.ok(!big.stderr.includes('aaaa'), 'no plaintext in the message');
      const noFile = run(['--ring=cli-secrets', '--namespace=shop', `--in=${join(dir, 'absent')}`]);
      assert.equal(noFile.status, 2);
      assert.match(noFile.stderr, /cannot read .*absent: ENOENT/);
    });
  });
});
