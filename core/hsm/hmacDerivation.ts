// HMAC-SHA-384 keys that live in the HSM, for deriving per-workload keys: a derived key is
// HMAC-SHA-384(version key, context), computed inside the HSM. Keys are generated sensitive and
// non-extractable like the AES keys (aesGcm.ts): no function here can read a key value.
import pkcs11js from 'pkcs11js';
import { KeywardError } from '../errors.js';
import type { AesKeyIdentity as KeyObjectIdentity } from './aesGcm.js';
import { initOperation, signOnce, type Handle, type HsmToken } from './hsmToken.js';

/** HMAC-SHA-384's output; callers that need an AES-256 key take the first 32 bytes. */
export const derivedKeyBytes = 48;
/** A key as long as the hash output, as NIST SP 800-107 recommends for HMAC. */
const hmacKeyBytes = 48;


export function generateHmacKey(token: HsmToken, identity: KeyObjectIdentity): Promise<Handle> {
  return token.withSession((session) =>
    token.pkcs11.C_GenerateKey(session, { mechanism: pkcs11js.CKM_GENERIC_SECRET_KEY_GEN }, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
      { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_GENERIC_SECRET },
      { type: pkcs11js.CKA_VALUE_LEN, value: hmacKeyBytes },
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_SENSITIVE, value: true },
      { type: pkcs11js.CKA_EXTRACTABLE, value: false },
      // Modifiable only so that SoftHSM2 lets us make in-memory working copies (workingKeys.ts).
      { type: pkcs11js.CKA_MODIFIABLE, value: true },
      { type: pkcs11js.CKA_SIGN, value: true },
      { type: pkcs11js.CKA_VERIFY, value: true },
      { type: pkcs11js.CKA_ENCRYPT, value: false },
      { type: pkcs11js.CKA_DECRYPT, value: false },
      { type: pkcs11js.CKA_WRAP, value: false },
      { type: pkcs11js.CKA_UNWRAP, value: false },
      { type: pkcs11js.CKA_DERIVE, value: false },
      { type: pkcs11js.CKA_LABEL, value: identity.label },
      { type: pkcs11js.CKA_ID, value: identity.id },
    ]),
  );
}

/**
 * HMAC-SHA-384(key, context) computed in the HSM (CKM_SHA384_HMAC). The result is key material:
 * callers must treat it like a key, never log it or return it beyond the workload it is for.
 */
export async function deriveKey(token: HsmToken, key: Handle, context: Uint8Array): Promise<Buffer> {
  // An empty context would hand every such caller the same key (and SoftHSM2 refuses it anyway).
  if (context.byteLength === 0) {
    throw new KeywardError('InvalidArgument', 'context is empty; a derivation needs a context that names what the key is for');
  }
  const message = Buffer.from(context.buffer, context.byteOffset, context.byteLength);
  return token.withSession((session) => {
    initOperation(() => token.pkcs11.C_SignInit(session, { mechanism: pkcs11js.CKM_SHA384_HMAC }, key), 'an HMAC-SHA-384 derivation key');
    return signOnce(token.pkcs11, session, message, derivedKeyBytes);
  });
}
