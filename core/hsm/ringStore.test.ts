import assert from 'node:assert/strict';
import { createHash, createPublicKey, randomUUID, verify } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { KeywardError } from '../errors.js';
import { aesGcmDecrypt, aesGcmEncrypt, generateAesKey } from './aesGcm.js';
import { generateEcdsaKeyPair, signDigest } from './ecdsaSigning.js';
import { deriveKey, generateHmacKey } from './hmacDerivation.js';
import { HsmToken, pkcs11Code, type Handle } from './hsmToken.js';
import { assertRingAlgorithm, keyIdFor, keyObjectId, keyObjectLabel, parseRingState, ringObjectLabel, type RingState } from './ringState.js';
import { RingStore } from './ringStore.js';
import { keyAttribute, useSoftHsmToken } from '../../testbed/hsm/softHsmFixture.js';

describe('Ring lifecycle in a real SoftHSM2 token', () => {
  const hsm = useSoftHsmToken();
  let token: HsmToken;
  let store: RingStore;
  before(() => {
    token = hsm.token;
    store = new RingStore(token);
  });

  /** How many key objects carry one version's deterministic id. */
  const keyCount = (ringId: string, version: number): Promise<number> =>
    token.withSession((s) => {
      token.pkcs11.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_ID, value: keyObjectId(ringId, version) }]);
      try {
        return token.pkcs11.C_FindObjects(s, 10).length;
      } finally {
        token.pkcs11.C_FindObjectsFinal(s);
      }
    });

  const stateOf = (ring: RingState, number: number): string | undefined => ring.versions.find((v) => v.number === number)?.state;

  it('creates version 1 once per ring id, even when asked again', async () => {
    const ringId = randomUUID();
    const ring = await store.create({ name: 'orders', namespace: 'shop', ringId });
    assert.equal(ring.primary, 1);
    assert.equal(stateOf(ring, 1), 'Enabled');
    assert.equal(ring.versions[0]?.keyId, keyIdFor(ringId, 1));
    const again = await store.create({ name: 'orders', namespace: 'shop', ringId });
    assert.deepEqual(again, ring);
    assert.equal(await keyCount(ringId, 1), 1);
    await assert.rejects(store.create({ name: 'orders', namespace: 'shop' }), /already exists/);
  });

  it('rotates once per request and reuses a key an interrupted rotation left behind [practice:rotation]', async () => {
    const ring = await store.create({ name: 'payments', ringId: randomUUID() });
    // As if a rotation died after generating version 2's key but before recording it.
    await generateAesKey(token, { label: keyObjectLabel(ring.ringId, 2), id: keyObjectId(ring.ringId, 2) });
    const rotated = await store.rotate({ ringId: ring.ringId }, { request: 'r-1' });
    assert.equal(rotated.primary, 2);
    assert.equal(await keyCount(ring.ringId, 2), 1, 'no second key for version 2');
    const retried = await store.rotate({ ringId: ring.ringId }, { request: 'r-1' });
    assert.equal(retried.primary, 2, 'the same request does not rotate again');
    assert.equal((await store.rotate({ ringId: ring.ringId }, { request: 'r-2' })).primary, 3);
    assert.equal((await store.rotate({ ringId: ring.ringId })).primary, 4);
  });

  it('moves versions only along the lifecycle and destroys material only when the time has come [practice:soft-delete]', async () => {
    const { ringId } = await store.create({ name: 'audit', ringId: randomUUID() });
    const ref = { ringId };
    await store.rotate(ref);
    await assert.rejects(store.setVersionState(ref, 2, 'Disabled'), /primary/);
    await assert.rejects(store.setVersionState(ref, 1, 'DestroyScheduled', { destroyAt: new Date() }), /Enabled; it cannot become DestroyScheduled/);
    await store.setVersionState(ref, 1, 'Disabled');
    await assert.rejects(store.setVersionState(ref, 1, 'DestroyScheduled'), /needs the time/);
    await assert.rejects(store.setVersionState(ref, 1, 'Destroyed'), /cannot become Destroyed/);
    await assert.rejects(store.setVersionState(ref, 9, 'Enabled'), /no version 9/);

    const later = new Date(Date.now() + 60_000);
    let ring = await store.setVersionState(ref, 1, 'DestroyScheduled', { destroyAt: later });
    assert.equal(ring.versions[0]?.destroyAt, later.toISOString());
    ring = await store.setVersionState(ref, 1, 'Disabled');
    assert.equal(stateOf(ring, 1), 'Disabled', 'destruction cancelled');
    assert.equal(ring.versions[0]?.destroyAt, undefined);

    await store.setVersionState(ref, 1, 'DestroyScheduled', { destroyAt: later });
    assert.deepEqual(await store.destroyDue(new Date()), [], 'not before its time');
    assert.equal(await keyCount(ringId, 1), 1);
    assert.deepEqual(await store.destroyDue(new Date(later.getTime() + 1)), [{ ringId, version: 1 }]);
    assert.equal(await keyCount(ringId, 1), 0, 'the key object is gone');
    ring = await store.require(ref);
    assert.equal(stateOf(ring, 1), 'Destroyed');
    assert.ok(ring.versions[0]?.destroyAt);
    await assert.rejects(store.setVersionState(ref, 1, 'Enabled'), /Destroyed; it cannot become Enabled/);
  });

  it('schedules every version of a deleted ring, the primary included, without destroying any yet [practice:soft-delete]', async () => {
    const { ringId } = await store.create({ name: 'gone', ringId: randomUUID() });
    await store.rotate({ ringId });
    const at = new Date(Date.now() + 3_600_000);
    const ring = await store.scheduleRingDestruction({ ringId }, at);
    assert.deepEqual(ring.versions.map((v) => [v.state, v.destroyAt]), [['DestroyScheduled', at.toISOString()], ['DestroyScheduled', at.toISOString()]]);
    assert.equal(await keyCount(ringId, 1), 1);
    assert.equal(await keyCount(ringId, 2), 1);
  });

  it('reports Keyward keys that no ring accounts for, and leaves them in place', async () => {
    const strayRing = randomUUID();
    await generateAesKey(token, { label: keyObjectLabel(strayRing, 1), id: keyObjectId(strayRing, 1) });
    // The rings of the tests above hold many keys; only the stray one is unaccounted for.
    assert.deepEqual(await store.orphanKeys(), [{ ringId: strayRing, version: 1 }]);
    assert.equal(await keyCount(strayRing, 1), 1, 'never deleted');
  });
});

describe('Derivation rings in a real SoftHSM2 token', () => {
  const hsm = useSoftHsmToken();
  let token: HsmToken;
  let store: RingStore;
  before(() => {
    token = hsm.token;
    store = new RingStore(token);
  });

  const keyOf = async (ringId: string, version: number): Promise<Handle> => {
    const handle = await store.keyHandle(ringId, version);
    assert.ok(handle, `version ${version} has a key`);
    return handle;
  };
  const attribute = (key: Handle, type: number): Promise<Buffer | undefined> => keyAttribute(token, key, type);
  const refused = (pattern: RegExp) => (err: unknown) =>
    err instanceof KeywardError && err.code === 'FailedPrecondition' && pattern.test(err.message);
  const context = (text: string): Uint8Array => new TextEncoder().encode(text);

  it('creates and rotates a derivation ring whose versions are HMAC-SHA-384 keys kept in the HSM', async () => {
    const ringId = randomUUID();
    const ring = await store.create({ name: 'workloads', namespace: 'shop', ringId, algorithm: 'HMAC_SHA_384' });
    assert.equal(ring.algorithm, 'HMAC_SHA_384');
    assert.equal(ring.purpose, 'derivation');
    assert.equal(ring.primary, 1);
    assert.equal(ring.versions[0]?.state, 'Enabled');
    assert.deepEqual((await store.require({ ringId })).algorithm, 'HMAC_SHA_384', 'recorded in the HSM');

    const rotated = await store.rotate({ ringId });
    assert.equal(rotated.primary, 2);
    assert.equal(rotated.algorithm, 'HMAC_SHA_384');
    for (const version of [1, 2]) {
      const key = await keyOf(ringId, version);
      assert.equal((await attribute(key, pkcs11js.CKA_KEY_TYPE))?.readUInt32LE(0), pkcs11js.CKK_GENERIC_SECRET);
      assert.equal((await attribute(key, pkcs11js.CKA_VALUE_LEN))?.readUInt32LE(0), 48);
      assert.equal((await attribute(key, pkcs11js.CKA_LABEL))?.toString('utf8'), keyObjectLabel(ringId, version));
      assert.deepEqual(await attribute(key, pkcs11js.CKA_ID), keyObjectId(ringId, version));
      assert.equal((await attribute(key, pkcs11js.CKA_EXTRACTABLE))?.readUInt8(0), 0, 'CKA_EXTRACTABLE is false');
      await assert.rejects(attribute(key, pkcs11js.CKA_VALUE), (err) => pkcs11Code(err) === pkcs11js.CKR_ATTRIBUTE_SENSITIVE);
    }

    const [v1, v2] = [await keyOf(ringId, 1), await keyOf(ringId, 2)];
    const derived = await deriveKey(token, v1, context('orders'));
    assert.deepEqual(await deriveKey(token, v1, context('orders')), derived, 'same version and context: same key');
    assert.notDeepEqual(await deriveKey(token, v1, context('payments')), derived, 'another context: another key');
    assert.notDeepEqual(await deriveKey(token, v2, context('orders')), derived, 'another version: another key');
  });

  it('reuses an HMAC key an interrupted rotation left behind', async () => {
    const { ringId } = await store.create({ name: 'resumed', algorithm: 'HMAC_SHA_384' });
    await generateHmacKey(token, { label: keyObjectLabel(ringId, 2), id: keyObjectId(ringId, 2) });
    const left = await keyOf(ringId, 2);
    assert.equal((await store.rotate({ ringId })).primary, 2);
    assert.deepEqual(await keyOf(ringId, 2), left, 'no second key for version 2');
  });

  it('keeps encryption and derivation rings apart', async () => {
    const aes = await store.create({ name: 'secrets', namespace: 'shop' });
    const hmac = await store.create({ name: 'derive', namespace: 'shop', algorithm: 'HMAC_SHA_384' });
    assert.equal(aes.algorithm, 'AES_256_GCM', 'encryption when no algorithm is given');
    assert.equal(aes.purpose, 'encryption');

    assert.throws(
      () => assertRingAlgorithm(aes, 'HMAC_SHA_384', 'deriveKey'),
      refused(/ring 'shop\/secrets' has purpose encryption \(AES_256_GCM\); deriveKey needs purpose derivation \(HMAC_SHA_384\)/),
    );
    assert.throws(
      () => assertRingAlgorithm(hmac, 'AES_256_GCM', 'encrypt'),
      refused(/ring 'shop\/derive' has purpose derivation \(HMAC_SHA_384\); encrypt needs purpose encryption \(AES_256_GCM\)/),
    );
    assertRingAlgorithm(hmac, 'HMAC_SHA_384', 'deriveKey');

    // The HSM refuses as well, should a caller skip the check.
    const [aesKey, hmacKey] = [await keyOf(aes.ringId, 1), await keyOf(hmac.ringId, 1)];
    await assert.rejects(deriveKey(token, aesKey, context('x')), refused(/not an HMAC-SHA-384 derivation key/));
    await assert.rejects(aesGcmEncrypt(token, hmacKey, Buffer.from('x'), Buffer.alloc(0)), refused(/not an AES-256-GCM encryption key/));

    const again = { name: 'derive', namespace: 'shop', ringId: hmac.ringId };
    await assert.rejects(store.ensure({ ...again, algorithm: 'AES_256_GCM' }), refused(/exists with algorithm HMAC_SHA_384, not AES_256_GCM/));
    assert.equal((await store.ensure(again)).created, false, 'no algorithm asked: the ring as it is');
  });

  it('refuses an unknown algorithm before recording anything', async () => {
    const ringId = randomUUID();
    const bogus = { name: 'bogus', ringId, algorithm: 'DES' } as unknown as Parameters<RingStore['create']>[0];
    await assert.rejects(
      store.create(bogus),
      (err) => err instanceof KeywardError && err.code === 'InvalidArgument' && /algorithm DES is not one of AES_256_GCM, HMAC_SHA_384/.test(err.message),
    );
    assert.equal(await store.get({ ringId }), undefined);
  });

  it('reads a ring state written before rings had an algorithm as AES-256-GCM, and rotates it with AES keys', async () => {
    const ringId = randomUUID();
    const now = new Date().toISOString();
    // As an older Keyward wrote it, minus the fields this one added.
    const old = { schema: 1, ringId, revision: 1, name: 'legacy', namespace: '', createdAt: now, primary: 1, versions: [] };
    assert.equal(parseRingState(Buffer.from(JSON.stringify(old)), old.ringId).algorithm, 'AES_256_GCM');
    await generateAesKey(token, { label: keyObjectLabel(ringId, 1), id: keyObjectId(ringId, 1) });
    const version1 = { number: 1, state: 'Enabled', keyId: keyIdFor(ringId, 1), createdAt: now, stateChangedAt: now };
    await token.withSession((s) =>
      token.pkcs11.C_CreateObject(s, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_PRIVATE, value: true },
        { type: pkcs11js.CKA_APPLICATION, value: 'keyward.dev/ring-state' },
        { type: pkcs11js.CKA_LABEL, value: ringObjectLabel(ringId) },
        { type: pkcs11js.CKA_VALUE, value: Buffer.from(JSON.stringify({ ...old, versions: [version1] })) },
      ]),
    );
    const read = await store.require({ name: 'legacy' });
    assert.equal(read.algorithm, 'AES_256_GCM');
    assert.equal(read.purpose, 'encryption');

    const rotated = await store.rotate({ ringId });
    assert.equal(rotated.primary, 2);
    assert.equal(rotated.algorithm, 'AES_256_GCM', 'written down from now on');
    const key = await keyOf(ringId, 2);
    assert.equal((await attribute(key, pkcs11js.CKA_KEY_TYPE))?.readUInt32LE(0), pkcs11js.CKK_AES);
    const sealed = await aesGcmEncrypt(token, key, Buffer.from('still encrypts'), Buffer.alloc(0));
    assert.deepEqual(await aesGcmDecrypt(token, key, sealed, Buffer.alloc(0)), Buffer.from('still encrypts'));
  });
});

describe('Signing rings in a real SoftHSM2 token', () => {
  const hsm = useSoftHsmToken();
  let token: HsmToken;
  let store: RingStore;
  before(() => {
    token = hsm.token;
    store = new RingStore(token);
  });

  /** The classes of the objects that carry one version's deterministic id. */
  const classesOf = (ringId: string, version: number): Promise<number[]> =>
    token.withSession((s) => {
      token.pkcs11.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_ID, value: keyObjectId(ringId, version) }]);
      try {
        return token.pkcs11
          .C_FindObjects(s, 10)
          .map((h) => token.pkcs11.C_GetAttributeValue(s, h, [{ type: pkcs11js.CKA_CLASS }])[0]?.value?.readUInt32LE(0) ?? -1)
          .sort();
      } finally {
        token.pkcs11.C_FindObjectsFinal(s);
      }
    });
  const pair = [pkcs11js.CKO_PUBLIC_KEY, pkcs11js.CKO_PRIVATE_KEY].sort();
  const keyOf = async (ringId: string, version: number): Promise<Handle> => {
    const handle = await store.keyHandle(ringId, version);
    assert.ok(handle, `version ${version} has a private key`);
    return handle;
  };
  const publicKeyOf = async (ringId: string, version: number): Promise<Buffer> => {
    const der = await store.publicKey(ringId, version);
    assert.ok(der, `version ${version} has a public key`);
    return der;
  };
  /** Signs in the HSM with the version's private key; verifies with node:crypto and its public key. */
  const signsAndVerifies = async (ringId: string, version: number, publicKeyDer: Buffer): Promise<boolean> => {
    const message = Buffer.from(`signed by ${ringId}/${version}`);
    const signature = await signDigest(token, await keyOf(ringId, version), createHash('sha384').update(message).digest());
    const key = createPublicKey({ key: publicKeyDer, format: 'der', type: 'spki' });
    return verify('sha384', message, { key, dsaEncoding: 'ieee-p1363' }, signature);
  };
  const refused = (pattern: RegExp) => (err: unknown) =>
    err instanceof KeywardError && err.code === 'FailedPrecondition' && pattern.test(err.message);

  it('creates and rotates a signing ring whose versions are ECDSA P-384 key pairs, the private keys kept in the HSM', async () => {
    const ringId = randomUUID();
    const ring = await store.create({ name: 'releases', namespace: 'ci', ringId, algorithm: 'ECDSA_P384' });
    assert.deepEqual([ring.algorithm, ring.purpose, ring.primary, ring.versions[0]?.state], ['ECDSA_P384', 'signing', 1, 'Enabled']);
    assert.deepEqual(await classesOf(ringId, 1), pair, 'a private and a public key object under the version id');

    const key = await keyOf(ringId, 1);
    const attribute = (type: number): Promise<Buffer | undefined> => keyAttribute(token, key, type);
    assert.equal((await attribute(pkcs11js.CKA_CLASS))?.readUInt32LE(0), pkcs11js.CKO_PRIVATE_KEY, 'keyHandle is the private key');
    assert.equal((await attribute(pkcs11js.CKA_LABEL))?.toString('utf8'), keyObjectLabel(ringId, 1));
    assert.equal((await attribute(pkcs11js.CKA_EXTRACTABLE))?.readUInt8(0), 0);
    await assert.rejects(attribute(pkcs11js.CKA_VALUE), (err) => pkcs11Code(err) === pkcs11js.CKR_ATTRIBUTE_SENSITIVE);

    const first = await publicKeyOf(ringId, 1);
    assert.equal(createPublicKey({ key: first, format: 'der', type: 'spki' }).asymmetricKeyDetails?.namedCurve, 'secp384r1');
    assert.equal(await signsAndVerifies(ringId, 1, first), true);

    const rotated = await store.rotate({ ringId });
    assert.deepEqual([rotated.primary, rotated.algorithm], [2, 'ECDSA_P384']);
    assert.deepEqual(await classesOf(ringId, 2), pair);
    const second = await publicKeyOf(ringId, 2);
    assert.notDeepEqual(second, first, 'a new version, a new public key');
    assert.equal(await signsAndVerifies(ringId, 2, second), true);
    assert.deepEqual(await publicKeyOf(ringId, 1), first, 'the old version keeps its public key');
    // A store that has seen nothing finds both halves by searching.
    assert.deepEqual(await new RingStore(token).publicKey(ringId, 2), second);

    assert.equal(await store.publicKey(ringId, 9), undefined, 'no such version');
    assert.equal(await store.publicKey(randomUUID(), 1), undefined, 'no such ring');
  });

  it('reuses a key pair an interrupted rotation left behind, and replaces a public key left without its private key', async () => {
    const { ringId } = await store.create({ name: 'resumed', algorithm: 'ECDSA_P384' });
    await generateEcdsaKeyPair(token, { label: keyObjectLabel(ringId, 2), id: keyObjectId(ringId, 2) });
    assert.equal((await store.rotate({ ringId })).primary, 2);
    assert.deepEqual(await classesOf(ringId, 2), pair, 'no second pair for version 2');
    assert.equal(await signsAndVerifies(ringId, 2, await publicKeyOf(ringId, 2)), true);

    // A public half alone, as a module that does not make pairs in one step might leave it.
    const lone = await generateEcdsaKeyPair(token, { label: keyObjectLabel(ringId, 3), id: keyObjectId(ringId, 3) });
    await token.withSession((s) => token.pkcs11.C_DestroyObject(s, lone.privateKey));
    assert.equal((await store.rotate({ ringId })).primary, 3);
    assert.deepEqual(await classesOf(ringId, 3), pair, 'one pair for version 3');
    assert.equal(await signsAndVerifies(ringId, 3, await publicKeyOf(ringId, 3)), true, 'the public key is the new private key\'s');
  });

  it('destroys both objects of a version, also when a pass died between the two', async () => {
    const { ringId } = await store.create({ name: 'retired', algorithm: 'ECDSA_P384' });
    const ref = { ringId };
    await store.rotate(ref);
    await store.rotate(ref);
    const later = new Date(Date.now() + 60_000);
    for (const version of [1, 2]) {
      await store.setVersionState(ref, version, 'Disabled');
      await store.setVersionState(ref, version, 'DestroyScheduled', { destroyAt: later });
    }
    assert.ok(await store.publicKey(ringId, 1), 'a scheduled version still has its public key');
    // As if a pass destroyed version 2's private key and died before its public key.
    await token.withSession(async (s) => token.pkcs11.C_DestroyObject(s, await keyOf(ringId, 2)));

    // A store without handles seen before, as after a restart.
    const destroyed = await new RingStore(token).destroyDue(new Date(later.getTime() + 1), ringId);
    assert.deepEqual(destroyed, [{ ringId, version: 1 }, { ringId, version: 2 }]);
    assert.deepEqual(await classesOf(ringId, 1), [], 'private and public key gone');
    assert.deepEqual(await classesOf(ringId, 2), [], 'the leftover public key gone');
    assert.equal(await store.keyHandle(ringId, 1), undefined);
    assert.equal(await store.publicKey(ringId, 1), undefined, 'a destroyed version has no public key');
    assert.deepEqual(await classesOf(ringId, 3), pair, 'the primary is untouched');
  });

  it('refuses to give a public key of an encryption or derivation ring, naming the problem', async () => {
    const aes = await store.create({ name: 'secrets', namespace: 'shop' });
    const hmac = await store.create({ name: 'derive', namespace: 'shop', algorithm: 'HMAC_SHA_384' });
    await assert.rejects(
      store.publicKey(aes.ringId, 1),
      refused(/ring 'shop\/secrets' has purpose encryption \(AES_256_GCM\): its keys are secret keys without a public key; signing rings \(ECDSA_P384\) have one/),
    );
    await assert.rejects(store.publicKey(hmac.ringId, 1), refused(/ring 'shop\/derive' has purpose derivation \(HMAC_SHA_384\)/));
    assert.throws(() => assertRingAlgorithm(aes, 'ECDSA_P384', 'sign'), refused(/sign needs purpose signing \(ECDSA_P384\)/));
  });

  it('counts a key pair without a ring once among the orphans, and the public keys of live versions not at all', async () => {
    // The rings above hold live and destroyed pairs: none is an orphan.
    assert.deepEqual(await store.orphanKeys(), []);
    const strayRing = randomUUID();
    await generateEcdsaKeyPair(token, { label: keyObjectLabel(strayRing, 1), id: keyObjectId(strayRing, 1) });
    assert.deepEqual(await store.orphanKeys(), [{ ringId: strayRing, version: 1 }]);
    assert.deepEqual(await classesOf(strayRing, 1), pair, 'never deleted');
  });
});
