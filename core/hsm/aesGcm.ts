// AES-256-GCM keys that live in the HSM. Keys are generated sensitive and non-extractable, and
// every cipher operation runs inside the HSM: no function here can read a key value.
import pkcs11js from 'pkcs11js';
import { initOperation, type Handle, type HsmToken } from './hsmToken.js';

export const gcmIvBytes = 12;
export const gcmTagBytes = 16;

/**
 * Codes with which a module says a GCM tag did not verify: the input's fault. SoftHSM2 says
 * CKR_GENERAL_ERROR instead, which an HSM fault also gives; callers tell those apart with a probe.
 */
export const gcmAuthenticationFailures: ReadonlySet<number> = new Set([pkcs11js.CKR_ENCRYPTED_DATA_INVALID, pkcs11js.CKR_ENCRYPTED_DATA_LEN_RANGE, pkcs11js.CKR_DATA_INVALID]);

export interface AesKeyIdentity {
  /** CKA_LABEL: opaque, never a ring name or other sensitive metadata. */
  label: string;
  /** CKA_ID: opaque bytes. */
  id: Buffer;
}

export function generateAesKey(token: HsmToken, identity: AesKeyIdentity): Promise<Handle> {
  return token.withSession((session) =>
    token.pkcs11.C_GenerateKey(session, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
      { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
      { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_SENSITIVE, value: true },
      { type: pkcs11js.CKA_EXTRACTABLE, value: false },
      // Modifiable only so that SoftHSM2 lets us make in-memory working copies (workingKeys.ts).
      // PKCS#11 lets CKA_SENSITIVE only become true and CKA_EXTRACTABLE only become false.
      { type: pkcs11js.CKA_MODIFIABLE, value: true },
      { type: pkcs11js.CKA_ENCRYPT, value: true },
      { type: pkcs11js.CKA_DECRYPT, value: true },
      { type: pkcs11js.CKA_WRAP, value: false },
      { type: pkcs11js.CKA_UNWRAP, value: false },
      { type: pkcs11js.CKA_DERIVE, value: false },
      { type: pkcs11js.CKA_LABEL, value: identity.label },
      { type: pkcs11js.CKA_ID, value: identity.id },
    ]),
  );
}

export interface GcmSealed {
  iv: Buffer;
  /** Ciphertext followed by the 16-byte tag. */
  sealed: Buffer;
}

/** Encrypts with a fresh 96-bit IV from the HSM's generator; aad is authenticated, not encrypted. */
export function aesGcmEncrypt(token: HsmToken, key: Handle, plaintext: Buffer, aad: Buffer): Promise<GcmSealed> {
  return token.withSession((session) => {
    const iv = token.pkcs11.C_GenerateRandom(session, Buffer.alloc(gcmIvBytes));
    const params: pkcs11js.GcmParams = { type: pkcs11js.CK_PARAMS_GCM, iv, ivBits: gcmIvBytes * 8, aad, tagBits: gcmTagBytes * 8 };
    initOperation(() => token.pkcs11.C_EncryptInit(session, { mechanism: pkcs11js.CKM_AES_GCM, parameter: params }, key), 'an AES-256-GCM encryption key');
    const sealed = token.pkcs11.C_Encrypt(session, plaintext, Buffer.alloc(plaintext.length + gcmTagBytes));
    return { iv, sealed: Buffer.from(sealed) };
  });
}

/** Decrypts and verifies; a wrong key, IV, AAD or a tampered input fails with CKR_ENCRYPTED_DATA_INVALID. */
export function aesGcmDecrypt(token: HsmToken, key: Handle, { iv, sealed }: GcmSealed, aad: Buffer): Promise<Buffer> {
  return token.withSession((session) => {
    const params: pkcs11js.GcmParams = { type: pkcs11js.CK_PARAMS_GCM, iv, ivBits: gcmIvBytes * 8, aad, tagBits: gcmTagBytes * 8 };
    initOperation(() => token.pkcs11.C_DecryptInit(session, { mechanism: pkcs11js.CKM_AES_GCM, parameter: params }, key), 'an AES-256-GCM encryption key');
    return Buffer.from(token.pkcs11.C_Decrypt(session, sealed, Buffer.alloc(sealed.length)));
  });
}
