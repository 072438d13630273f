// Sealed secrets: a value an admin encrypts with `keyward encrypt --ring NAME` under a ring's
// primary AES-256-GCM key, kept as base64 in a SecretProviderClass (safe in Git), and opened in
// the HSM by the CSI provider only for a pod allowed to decrypt with that ring.
//
//   byte 0        format (2: sealed secret v1; 1 is the KMS ciphertext of core/formats/kmsCiphertext.ts)
//   byte 1        algorithm id (1 = AES-256-GCM)
//   bytes 2-5     key version number, big-endian
//   byte 6        key id length L (1-64)
//   bytes 7-      key id, ASCII (keyIdFor(ringId, version): kw1-...)
//   next 12       IV (96 bits, from the HSM's generator)
//   rest          ciphertext, then the 16-byte GCM tag
//
// The additional authenticated data is, each with a 2-byte big-endian length prefix: the label
// 'keyward.dev/sealed-secret/v1', the whole header (bytes 0 to 7+L), the ring's namespace and its
// name. A KMS ciphertext's AAD starts with its format byte 1, this one with the label's length
// prefix 0x00: neither can ever authenticate as the other, whatever bytes an attacker swaps.
import pkcs11js from 'pkcs11js';
import { algorithmAes256Gcm } from './kmsCiphertext.js';
import { KeywardError, type KeywardErrorCode } from '../errors.js';
import { aesGcmDecrypt, aesGcmEncrypt, gcmAuthenticationFailures, gcmIvBytes, gcmTagBytes, type GcmSealed } from '../hsm/aesGcm.js';
import { hsmError, pkcs11Code, type Handle, type HsmToken } from '../hsm/hsmToken.js';
import { assertRingAlgorithm, primaryVersion, type RingState } from '../hsm/ringState.js';
import type { RingStore } from '../hsm/ringStore.js';

/** Format ids share one space across Keyward's encrypted formats; 1 is the KMS ciphertext. */
export const sealedSecretFormatV1 = 2;
export const maxSealedPlaintextBytes = 64 * 1024;
/** Key ids are 36 characters today (kw1-...); the bound leaves room and keeps the total tight. */
const maxKeyIdBytes = 64;
const fixedHeaderBytes = 7;
/** The largest well-formed sealed secret: what a consumer must accept. */
export const maxSealedSecretBytes = fixedHeaderBytes + maxKeyIdBytes + gcmIvBytes + maxSealedPlaintextBytes + gcmTagBytes;
const domainLabel = 'keyward.dev/sealed-secret/v1';

export type SealedSecretReason = 'Malformed' | 'WrongRing' | 'VersionUnavailable' | 'Tampered';

const reasonCodes: Record<SealedSecretReason, KeywardErrorCode> = {
  Malformed: 'InvalidArgument',
  WrongRing: 'InvalidArgument',
  VersionUnavailable: 'FailedPrecondition',
  Tampered: 'InvalidArgument',
};

/** Why a sealed secret could not be opened; `reason` is a fixed set, fit for metric labels. */
export class SealedSecretError extends KeywardError {
  constructor(
    readonly reason: SealedSecretReason,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(reasonCodes[reason], message, options);
    this.name = 'SealedSecretError';
  }
}

export interface RingName {
  namespace: string;
  name: string;
}

export interface ParsedSealedSecret extends GcmSealed {
  header: Buffer;
  keyVersion: number;
  keyId: string;
}

const ringLabel = ({ namespace, name }: RingName): string => `ring '${namespace ? `${namespace}/` : ''}${name}'`;

function header(keyVersion: number, keyId: string): Buffer {
  const id = Buffer.from(keyId, 'ascii');
  const bytes = Buffer.alloc(fixedHeaderBytes + id.length);
  bytes[0] = sealedSecretFormatV1;
  bytes[1] = algorithmAes256Gcm;
  bytes.writeUInt32BE(keyVersion, 2);
  bytes[6] = id.length;
  id.copy(bytes, fixedHeaderBytes);
  return bytes;
}

function lengthPrefixed(...parts: Buffer[]): Buffer {
  return Buffer.concat(
    parts.flatMap((part) => {
      const length = Buffer.alloc(2);
      length.writeUInt16BE(part.length);
      return [length, part];
    }),
  );
}

function additionalData(headerBytes: Buffer, ring: RingName): Buffer {
  return lengthPrefixed(Buffer.from(domainLabel, 'ascii'), headerBytes, Buffer.from(ring.namespace, 'utf8'), Buffer.from(ring.name, 'utf8'));
}

const malformed = (message: string): SealedSecretError => new SealedSecretError('Malformed', `sealed secret is malformed: ${message}`);

/** The parts of a sealed secret, its form checked (not its authenticity); refuses with a Malformed SealedSecretError. */
export function parseSealedSecret(sealed: Uint8Array): ParsedSealedSecret {
  const bytes = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.length);
  if (bytes.length === 0) throw malformed('it is empty');
  if (bytes.length > maxSealedSecretBytes) throw malformed(`it is ${bytes.length} bytes; the limit is ${maxSealedSecretBytes}`);
  if (bytes[0] === 1) throw malformed('it is a KMS ciphertext (format 1), not a sealed secret (format 2, from keyward encrypt)');
  if (bytes[0] !== sealedSecretFormatV1) throw malformed(`unknown format ${bytes[0]}; a sealed secret is format ${sealedSecretFormatV1}`);
  if (bytes.length < fixedHeaderBytes) throw malformed(`truncated: ${bytes.length} bytes, shorter than the header`);
  if (bytes[1] !== algorithmAes256Gcm) throw malformed(`unknown algorithm id ${bytes[1]}`);
  const keyVersion = bytes.readUInt32BE(2);
  if (keyVersion === 0) throw malformed('key version 0 (versions start at 1)');
  const keyIdLength = bytes[6] ?? 0;
  if (keyIdLength === 0 || keyIdLength > maxKeyIdBytes) throw malformed(`key id length ${keyIdLength}; it must be 1-${maxKeyIdBytes}`);
  const headerBytes = fixedHeaderBytes + keyIdLength;
  const minimum = headerBytes + gcmIvBytes + 1 + gcmTagBytes;
  if (bytes.length < minimum) throw malformed(`truncated: ${bytes.length} bytes, this header needs at least ${minimum}`);
  const keyIdBytes = bytes.subarray(fixedHeaderBytes, headerBytes);
  // Printable ASCII only, so the key id is safe to quote in messages.
  if (!keyIdBytes.every((b) => b > 0x20 && b < 0x7f)) throw malformed('the key id is not printable ASCII');
  return {
    header: bytes.subarray(0, headerBytes),
    keyVersion,
    keyId: keyIdBytes.toString('ascii'),
    iv: bytes.subarray(headerBytes, headerBytes + gcmIvBytes),
    sealed: bytes.subarray(headerBytes + gcmIvBytes),
  };
}

/** Non-Keyward HSM failures as Keyward errors; messages carry PKCS#11 codes, never data. */
/**
 * Seals `plaintext` (1 byte to 64 KiB) under the primary version of an AES-256-GCM ring. Returns
 * the binary sealed secret; the CLI prints it as base64.
 */
export async function sealSecret(token: HsmToken, store: RingStore, ring: RingName, plaintext: Uint8Array): Promise<Buffer> {
  if (plaintext.length === 0) throw new KeywardError('InvalidArgument', 'the secret is empty; there is nothing to seal');
  if (plaintext.length > maxSealedPlaintextBytes) {
    throw new KeywardError('InvalidArgument', `the secret is ${plaintext.length} bytes; the limit is ${maxSealedPlaintextBytes} (64 KiB)`);
  }
  const state = await store.require(ring);
  assertRingAlgorithm(state, 'AES_256_GCM', 'sealing a secret');
  const primary = primaryVersion(state);
  if (primary.state !== 'Enabled') {
    throw new KeywardError('FailedPrecondition', `${ringLabel(state)} primary version ${primary.number} is ${primary.state}; it may not encrypt`);
  }
  const key = await store.keyHandle(state.ringId, primary.number);
  if (key === undefined) {
    throw new KeywardError('FailedPrecondition', `${ringLabel(state)} primary version ${primary.number} has no key object in the HSM`);
  }
  const headerBytes = header(primary.number, primary.keyId);
  let sealed: GcmSealed;
  try {
    sealed = await aesGcmEncrypt(token, key, Buffer.from(plaintext), additionalData(headerBytes, state));
  } catch (err) {
    throw hsmError(err);
  }
  return Buffer.concat([headerBytes, sealed.iv, sealed.sealed]);
}

/**
 * Opens a sealed secret with `ring`, the KeyRing the SecretProviderClass names. A key id this
 * state does not know makes one fresh read of the ring (a version newer than a cached state)
 * before the secret is refused as WrongRing. Refusals of the input are SealedSecretErrors; a ring
 * of another purpose is assertRingAlgorithm's FailedPrecondition, and an HSM problem is
 * Unavailable or Internal, as everywhere else.
 */
export async function openSealedSecret(token: HsmToken, store: RingStore, ring: RingState, sealed: Uint8Array): Promise<Buffer> {
  const parsed = parseSealedSecret(sealed);
  assertRingAlgorithm(ring, 'AES_256_GCM', 'opening a sealed secret');
  const name = ringLabel(ring);
  let version = ring.versions.find((v) => v.keyId === parsed.keyId);
  if (version === undefined) {
    const fresh = await store.get({ ringId: ring.ringId });
    version = fresh?.versions.find((v) => v.keyId === parsed.keyId);
  }
  if (version === undefined) {
    throw new SealedSecretError('WrongRing', `sealed secret was made under key id ${parsed.keyId}, which is no version of ${name}: sealed under another ring`);
  }
  // The key id already names the version; a header that disagrees has been edited.
  if (version.number !== parsed.keyVersion) {
    throw new SealedSecretError('Tampered', `sealed secret header says key version ${parsed.keyVersion}, but its key id is version ${version.number} of ${name}`);
  }
  if (version.state !== 'Enabled') {
    throw new SealedSecretError('VersionUnavailable', `${name} version ${version.number} is ${version.state}; it may not decrypt`);
  }
  const key = await store.keyHandle(ring.ringId, version.number);
  if (key === undefined) {
    throw new SealedSecretError('VersionUnavailable', `${name} version ${version.number} has no key object in the HSM`);
  }
  try {
    return await aesGcmDecrypt(token, key, parsed, additionalData(parsed.header, ring));
  } catch (err) {
    if (await isAuthenticationFailure(token, key, err)) {
      throw new SealedSecretError('Tampered', `sealed secret failed authentication with ${name} version ${version.number}: tampered, or sealed for another ring`);
    }
    throw hsmError(err);
  }
}

/**
 * Whether a failed decryption was the input's fault. SoftHSM2 reports a bad GCM tag as
 * CKR_GENERAL_ERROR, which could also be the HSM failing: a round trip with the same key tells them
 * apart (it only runs on the failure path).
 */
async function isAuthenticationFailure(token: HsmToken, key: Handle, err: unknown): Promise<boolean> {
  if (err instanceof KeywardError) return false;
  const code = pkcs11Code(err);
  if (gcmAuthenticationFailures.has(code ?? -1)) return true;
  if (code !== pkcs11js.CKR_GENERAL_ERROR) return false;
  try {
    const probe = Buffer.from('keyward.dev/sealed-secret/probe');
    const aad = Buffer.alloc(0);
    return (await aesGcmDecrypt(token, key, await aesGcmEncrypt(token, key, probe, aad), aad)).equals(probe);
  } catch {
    return false;
  }
}
