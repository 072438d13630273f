// The KMS v2 ciphertext: what the plugin returns to kube-apiserver for a DEK seed, stored in etcd.
// Every ciphertext names its format version, its algorithm and the key version it was made under,
// so new algorithms (post-quantum ones among them) can be added without breaking what is stored.
// Sealed secrets have their own format (sealedSecret.ts), told apart by the first byte.
//
//   byte 0      format version (1)
//   byte 1      algorithm id (1 = AES-256-GCM)
//   bytes 2-5   key version number, big-endian
//   bytes 6-17  IV (96 bits, from the HSM's generator)
//   bytes 18-   ciphertext, then the 16-byte GCM tag
//
// The header and the caller's key id are bound as additional authenticated data, so a ciphertext
// cannot be replayed under another key id or have its header edited.
import { KeywardError } from '../errors.js';
import { gcmIvBytes, gcmTagBytes, type GcmSealed } from '../hsm/aesGcm.js';

export const ciphertextFormatV1 = 1;
export const algorithmAes256Gcm = 1;
const headerBytes = 6;
export const ciphertextOverhead = headerBytes + gcmIvBytes + gcmTagBytes;
/** kube-apiserver refuses longer ciphertexts. */
export const maxCiphertextBytes = 1024;
export const maxPlaintextBytes = maxCiphertextBytes - ciphertextOverhead;

export interface ParsedCiphertext extends GcmSealed {
  header: Buffer;
  keyVersion: number;
}

export function ciphertextHeader(keyVersion: number): Buffer {
  const header = Buffer.alloc(headerBytes);
  header[0] = ciphertextFormatV1;
  header[1] = algorithmAes256Gcm;
  header.writeUInt32BE(keyVersion, 2);
  return header;
}

export function encodeCiphertext(header: Buffer, { iv, sealed }: GcmSealed): Buffer {
  return Buffer.concat([header, iv, sealed]);
}

export function additionalData(header: Buffer, keyId: string): Buffer {
  return Buffer.concat([header, Buffer.from(keyId, 'ascii')]);
}

const invalid = (message: string): KeywardError => new KeywardError('InvalidArgument', message);

export function parseCiphertext(ciphertext: Uint8Array): ParsedCiphertext {
  if (ciphertext.length === 0) throw invalid('ciphertext is empty');
  if (ciphertext.length > maxCiphertextBytes) {
    throw invalid(`ciphertext is ${ciphertext.length} bytes; the limit is ${maxCiphertextBytes}`);
  }
  const bytes = Buffer.from(ciphertext.buffer, ciphertext.byteOffset, ciphertext.length);
  if (bytes[0] !== ciphertextFormatV1) throw invalid(`unknown ciphertext format version ${bytes[0]}`);
  if (bytes.length < 2 || bytes[1] !== algorithmAes256Gcm) {
    throw invalid(bytes.length < 2 ? 'ciphertext is truncated: no algorithm id' : `unknown ciphertext algorithm id ${bytes[1]}`);
  }
  if (bytes.length < ciphertextOverhead + 1) {
    throw invalid(`ciphertext is truncated: ${bytes.length} bytes, a format 1 ciphertext has at least ${ciphertextOverhead + 1}`);
  }
  return {
    header: bytes.subarray(0, headerBytes),
    keyVersion: bytes.readUInt32BE(2),
    iv: bytes.subarray(headerBytes, headerBytes + gcmIvBytes),
    sealed: bytes.subarray(headerBytes + gcmIvBytes),
  };
}
