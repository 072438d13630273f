// ECDSA P-384 key pairs that live in the HSM, for signing rings. The private key is generated
// sensitive and non-extractable like the AES and HMAC keys (aesGcm.ts); its public half is a token
// object of its own with the same label and id, so a version's two objects are found, counted and
// destroyed together. Only the public key ever leaves the HSM, as SubjectPublicKeyInfo DER.
import pkcs11js from 'pkcs11js';
import { KeywardError } from '../errors.js';
import type { AesKeyIdentity as KeyObjectIdentity } from './aesGcm.js';
import { initOperation, signOnce, type Handle, type HsmToken } from './hsmToken.js';

/** DER of the named curve secp384r1 (OID 1.3.132.0.34): CKA_EC_PARAMS of every P-384 key. */
export const secp384r1Params = Buffer.from('06052b81040022', 'hex');
/** An uncompressed P-384 point: 0x04, then X and Y of 48 bytes each. */
const p384PointBytes = 97;
/** CKM_ECDSA's output for P-384: r and s of 48 bytes each (IEEE P1363 form). */
export const ecdsaP384SignatureBytes = 96;
/** SHA-384, the digest CNSA 1.0 pairs with P-384. */
const sha384Bytes = 48;
/**
 * Everything of a P-384 SubjectPublicKeyInfo before the point: SEQUENCE { SEQUENCE { id-ecPublicKey
 * (1.2.840.10045.2.1), secp384r1 }, BIT STRING of 98 bytes (no unused bits, then the point) }.
 */
const p384SpkiPrefix = Buffer.from('3076301006072a8648ce3d020106052b81040022036200', 'hex');

export interface EcdsaKeyPair {
  privateKey: Handle;
  publicKey: Handle;
}

export function generateEcdsaKeyPair(token: HsmToken, identity: KeyObjectIdentity): Promise<EcdsaKeyPair> {
  return token.withSession((session) =>
    token.pkcs11.C_GenerateKeyPair(
      session,
      { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN },
      [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC },
        { type: pkcs11js.CKA_EC_PARAMS, value: secp384r1Params },
        { type: pkcs11js.CKA_TOKEN, value: true },
        // Not secret, but kept behind login like every Keyward object: labels name ring ids.
        { type: pkcs11js.CKA_PRIVATE, value: true },
        { type: pkcs11js.CKA_MODIFIABLE, value: false },
        { type: pkcs11js.CKA_VERIFY, value: true },
        { type: pkcs11js.CKA_ENCRYPT, value: false },
        { type: pkcs11js.CKA_WRAP, value: false },
        { type: pkcs11js.CKA_DERIVE, value: false },
        { type: pkcs11js.CKA_LABEL, value: identity.label },
        { type: pkcs11js.CKA_ID, value: identity.id },
      ],
      [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_EC },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_PRIVATE, value: true },
        { type: pkcs11js.CKA_SENSITIVE, value: true },
        { type: pkcs11js.CKA_EXTRACTABLE, value: false },
        // Unlike AES and HMAC keys, no working copies are made of signing keys yet: nothing may
        // later widen what this key can do (CKA_DERIVE would allow ECDH with it).
        { type: pkcs11js.CKA_MODIFIABLE, value: false },
        { type: pkcs11js.CKA_SIGN, value: true },
        { type: pkcs11js.CKA_DECRYPT, value: false },
        { type: pkcs11js.CKA_UNWRAP, value: false },
        { type: pkcs11js.CKA_DERIVE, value: false },
        { type: pkcs11js.CKA_LABEL, value: identity.label },
        { type: pkcs11js.CKA_ID, value: identity.id },
      ],
    ),
  );
}

/** SubjectPublicKeyInfo DER of a P-384 public key object, as node:crypto and OpenSSL read it. */
export function publicKeyDer(token: HsmToken, publicKey: Handle): Promise<Buffer> {
  return token.withSession((session) => {
    if (!isP384Key(token, session, publicKey, pkcs11js.CKO_PUBLIC_KEY)) {
      throw new KeywardError('FailedPrecondition', 'the object is not an ECDSA P-384 public key');
    }
    const [point] = token.pkcs11.C_GetAttributeValue(session, publicKey, [{ type: pkcs11js.CKA_EC_POINT }]);
    return Buffer.concat([p384SpkiPrefix, uncompressedPoint(point?.value ?? Buffer.alloc(0))]);
  });
}

/** Whether a key object is of this class and an EC key on P-384. */
function isP384Key(token: HsmToken, session: Handle, key: Handle, keyClass: number): boolean {
  // Class and type first: asking another kind of key for CKA_EC_PARAMS fails the whole call.
  const [actualClass, keyType] = token.pkcs11.C_GetAttributeValue(session, key, [{ type: pkcs11js.CKA_CLASS }, { type: pkcs11js.CKA_KEY_TYPE }]);
  if (actualClass?.value?.readUInt32LE(0) !== keyClass || keyType?.value?.readUInt32LE(0) !== pkcs11js.CKK_EC) return false;
  const [params] = token.pkcs11.C_GetAttributeValue(session, key, [{ type: pkcs11js.CKA_EC_PARAMS }]);
  return params?.value?.equals(secp384r1Params) === true;
}

/**
 * The point of CKA_EC_POINT. PKCS#11 says it is DER, an OCTET STRING holding the point (SoftHSM2
 * does so); some modules return the bare point. The two differ in length, so neither is mistaken.
 */
function uncompressedPoint(value: Buffer): Buffer {
  if (value.length === p384PointBytes + 2 && value[0] === 0x04 && value[1] === p384PointBytes) return value.subarray(2);
  if (value.length === p384PointBytes && value[0] === 0x04) return value;
  throw new KeywardError('Internal', `CKA_EC_POINT of a P-384 key is ${value.length} bytes and not an uncompressed point`);
}

/**
 * ECDSA over a SHA-384 digest computed by the caller (CKM_ECDSA), in the HSM. The signature is
 * r||s, 96 bytes (IEEE P1363); node:crypto verifies it with dsaEncoding 'ieee-p1363'.
 */
export function signDigest(token: HsmToken, privateKey: Handle, digest: Buffer): Promise<Buffer> {
  // CKM_ECDSA signs whatever it is given: refusing other lengths catches a message passed by mistake.
  if (digest.length !== sha384Bytes) {
    return Promise.reject(new KeywardError('InvalidArgument', `the digest is ${digest.length} bytes; a SHA-384 digest is ${sha384Bytes}`));
  }
  return token.withSession((session) => {
    // SoftHSM2 starts CKM_ECDSA with an AES key and fails only in C_Sign, with CKR_GENERAL_ERROR:
    // look at the key first, so a wrong one is refused by name.
    if (!isP384Key(token, session, privateKey, pkcs11js.CKO_PRIVATE_KEY)) {
      throw new KeywardError('FailedPrecondition', 'the key is not an ECDSA P-384 signing key');
    }
    initOperation(() => token.pkcs11.C_SignInit(session, { mechanism: pkcs11js.CKM_ECDSA }, privateKey), 'an ECDSA P-384 signing key');
    return signOnce(token.pkcs11, session, digest, ecdsaP384SignatureBytes);
  });
}
