import assert from 'node:assert/strict';
import { createHash, createPublicKey, randomBytes, verify } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { KeywardError } from '../errors.js';
import { generateAesKey } from './aesGcm.js';
import { ecdsaP384SignatureBytes, generateEcdsaKeyPair, publicKeyDer, secp384r1Params, signDigest } from './ecdsaSigning.js';
import { pkcs11Code, type Handle, type HsmToken } from './hsmToken.js';
import { keyAttribute, keyFlag, useSoftHsmToken } from '../../testbed/hsm/softHsmFixture.js';

describe('ECDSA P-384 signing keys in a real SoftHSM2 token', () => {
  const hsm = useSoftHsmToken();
  let token: HsmToken;
  before(() => (token = hsm.token));

  const attribute = (key: Handle, type: number): Promise<Buffer | undefined> => keyAttribute(token, key, type);
  const flag = (key: Handle, type: number): Promise<boolean> => keyFlag(token, key, type);
  const refused = (code: KeywardError['code'], pattern: RegExp) => (err: unknown) =>
    err instanceof KeywardError && err.code === code && pattern.test(err.message);
  const sha384 = (data: Buffer): Buffer => createHash('sha384').update(data).digest();

  it('generates a private key for signing only, sensitive and non-extractable, and a public key with the same label and id [practice:no-plaintext-export] [practice:approved-generation]', async () => {
    const id = randomBytes(16);
    const { privateKey, publicKey } = await generateEcdsaKeyPair(token, { label: 'k-ec', id });
    assert.equal((await attribute(privateKey, pkcs11js.CKA_CLASS))?.readUInt32LE(0), pkcs11js.CKO_PRIVATE_KEY);
    assert.equal((await attribute(privateKey, pkcs11js.CKA_KEY_TYPE))?.readUInt32LE(0), pkcs11js.CKK_EC);
    assert.deepEqual(await attribute(privateKey, pkcs11js.CKA_EC_PARAMS), secp384r1Params, 'P-384');
    for (const key of [privateKey, publicKey]) {
      assert.equal((await attribute(key, pkcs11js.CKA_LABEL))?.toString('utf8'), 'k-ec');
      assert.deepEqual(await attribute(key, pkcs11js.CKA_ID), id);
      assert.equal(await flag(key, pkcs11js.CKA_TOKEN), true, 'a token object');
      assert.equal(await flag(key, pkcs11js.CKA_PRIVATE), true, 'readable only after login');
    }
    for (const type of [pkcs11js.CKA_SENSITIVE, pkcs11js.CKA_ALWAYS_SENSITIVE, pkcs11js.CKA_NEVER_EXTRACTABLE, pkcs11js.CKA_SIGN]) {
      assert.equal(await flag(privateKey, type), true, `private key attribute 0x${type.toString(16)} is true`);
    }
    for (const type of [pkcs11js.CKA_EXTRACTABLE, pkcs11js.CKA_DECRYPT, pkcs11js.CKA_UNWRAP, pkcs11js.CKA_DERIVE, pkcs11js.CKA_MODIFIABLE]) {
      assert.equal(await flag(privateKey, type), false, `private key attribute 0x${type.toString(16)} is false`);
    }
    await assert.rejects(
      attribute(privateKey, pkcs11js.CKA_VALUE),
      (err) => pkcs11Code(err) === pkcs11js.CKR_ATTRIBUTE_SENSITIVE,
      'the HSM refuses to reveal the private value',
    );
    assert.equal((await attribute(publicKey, pkcs11js.CKA_CLASS))?.readUInt32LE(0), pkcs11js.CKO_PUBLIC_KEY);
    assert.equal(await flag(publicKey, pkcs11js.CKA_VERIFY), true);
    for (const type of [pkcs11js.CKA_ENCRYPT, pkcs11js.CKA_WRAP, pkcs11js.CKA_DERIVE]) {
      assert.equal(await flag(publicKey, type), false, `public key attribute 0x${type.toString(16)} is false`);
    }
  });

  it('gives the public key as SubjectPublicKeyInfo DER that verifies a signature made in the HSM', async () => {
    const { privateKey, publicKey } = await generateEcdsaKeyPair(token, { label: 'k-ec-sign', id: randomBytes(16) });
    const der = await publicKeyDer(token, publicKey);
    const key = createPublicKey({ key: der, format: 'der', type: 'spki' });
    assert.equal(key.asymmetricKeyType, 'ec');
    assert.equal(key.asymmetricKeyDetails?.namedCurve, 'secp384r1');
    assert.deepEqual(key.export({ format: 'der', type: 'spki' }), der, 'as OpenSSL writes it');

    const message = Buffer.from('release 1.2.3 manifest');
    const signature = await signDigest(token, privateKey, sha384(message));
    assert.equal(signature.length, ecdsaP384SignatureBytes);
    assert.equal(verify('sha384', message, { key, dsaEncoding: 'ieee-p1363' }, signature), true);
    assert.equal(verify('sha384', Buffer.from('release 1.2.4 manifest'), { key, dsaEncoding: 'ieee-p1363' }, signature), false, 'another message');

    const other = await generateEcdsaKeyPair(token, { label: 'k-ec-other', id: randomBytes(16) });
    const otherKey = createPublicKey({ key: await publicKeyDer(token, other.publicKey), format: 'der', type: 'spki' });
    assert.notDeepEqual(otherKey.export({ format: 'der', type: 'spki' }), der, 'a fresh pair, a different public key');
    assert.equal(verify('sha384', message, { key: otherKey, dsaEncoding: 'ieee-p1363' }, signature), false, 'another key');
  });

  it('refuses what is not a P-384 key or not a SHA-384 digest, naming it, and the session stays usable [practice:cnsa]', async () => {
    const aes = await generateAesKey(token, { label: 'k-aes', id: randomBytes(16) });
    const { privateKey, publicKey } = await generateEcdsaKeyPair(token, { label: 'k-ec-misuse', id: randomBytes(16) });
    await assert.rejects(publicKeyDer(token, aes), refused('FailedPrecondition', /not an ECDSA P-384 public key/));
    await assert.rejects(publicKeyDer(token, privateKey), refused('FailedPrecondition', /not an ECDSA P-384 public key/));
    await assert.rejects(signDigest(token, aes, sha384(Buffer.from('x'))), refused('FailedPrecondition', /not an ECDSA P-384 signing key/));
    await assert.rejects(signDigest(token, privateKey, Buffer.from('a message, not a digest')), refused('InvalidArgument', /digest is 23 bytes; a SHA-384 digest is 48/));
    const key = createPublicKey({ key: await publicKeyDer(token, publicKey), format: 'der', type: 'spki' });
    const signature = await signDigest(token, privateKey, sha384(Buffer.from('still signs')));
    assert.equal(verify('sha384', Buffer.from('still signs'), { key, dsaEncoding: 'ieee-p1363' }, signature), true);
  });
});
