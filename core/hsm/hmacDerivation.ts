// HMAC-SHA-384 keys that live in the HSM, for deriving per-workload keys: a derived key is
// HMAC-SHA-384(version key, context), computed inside the HSM; a key longer than its 48 bytes is
// made of several such HMACs in SP 800-108 counter mode (counterModeKey). Keys are generated
// sensitive and non-extractable like the AES keys (aesGcm.ts): no function here can read a key value.
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

/** The longest key counterModeKey makes: a 32-bit counter could go further, but no caller needs more. */
const maxCounterModeBytes = 1024;

/**
 * `length` bytes from the KDF in counter mode of NIST SP 800-108r1 (section 4.1), with
 * HMAC-SHA-384 in the HSM as the PRF: the first `length` bytes of K(1) || K(2) || ..., where
 * K(i) = HMAC(key, counterModeInput(i, label, context, 8 * length)). For keys longer than one
 * HMAC output (48 bytes); each block is one deriveKey call. Key material, like deriveKey's.
 */
export async function counterModeKey(token: HsmToken, key: Handle, label: string, context: Uint8Array, length: number): Promise<Buffer> {
  if (!Number.isInteger(length) || length < 1 || length > maxCounterModeBytes) {
    throw new KeywardError('InvalidArgument', `a counter-mode key is 1 to ${maxCounterModeBytes} bytes; asked for ${length}`);
  }
  const out = Buffer.alloc(length);
  try {
    for (let i = 1, offset = 0; offset < length; i++, offset += derivedKeyBytes) {
      const block = await deriveKey(token, key, counterModeInput(i, label, context, 8 * length));
      block.copy(out, offset, 0, Math.min(derivedKeyBytes, length - offset));
      block.fill(0);
    }
    return out;
  } catch (err) {
    out.fill(0); // no half-made key left behind
    throw err;
  }
}

/**
 * SP 800-108's PRF input for block `i`: [i]_32 || Label || 0x00 || Context || [L]_32, with i and
 * L (the key's length in bits) big-endian. The 0x00 ends the label, so it may hold no NUL.
 */
export function counterModeInput(i: number, label: string, context: Uint8Array, lengthBits: number): Buffer {
  const labelBytes = Buffer.from(label, 'utf8');
  if (labelBytes.length === 0 || labelBytes.includes(0)) throw new KeywardError('InvalidArgument', 'a counter-mode label is non-empty and holds no NUL byte');
  const counter = Buffer.alloc(4);
  counter.writeUInt32BE(i);
  const bits = Buffer.alloc(4);
  bits.writeUInt32BE(lengthBits);
  return Buffer.concat([counter, labelBytes, Buffer.of(0), context, bits]);
}
