// What kube-apiserver stored under one etcd key, read without decrypting: a KMS v2 envelope
// (`k8s:enc:kms:v2:<provider>:` + protobuf EncryptedObject, whose field 2 is the key id in clear),
// another provider's envelope (`k8s:enc:...`), or the object unencrypted. Values come from etcd,
// which anyone with its credentials can write: every read is bounds-checked and nothing throws.

export type StoredValue =
  | { kind: 'kmsV2'; provider: string; keyId: string }
  /** `malformed` says why a KMS v2 envelope could not be read; its key id is then unknown. */
  | { kind: 'otherProvider'; provider?: string; malformed?: string }
  | { kind: 'unencrypted' };

const encryptedPrefix = Buffer.from('k8s:enc:');
const kmsV2Prefix = Buffer.from('k8s:enc:kms:v2:');
/** kube-apiserver refuses key ids over 1 KiB; a longer one did not come from it. */
export const maxKeyIdBytes = 1024;
/** Provider names are short config strings; past this the prefix is not one. */
const maxProviderBytes = 256;
const colon = 0x3a;
const utf8 = new TextDecoder('utf-8', { fatal: true });

const startsWith = (bytes: Uint8Array, prefix: Buffer): boolean => bytes.length >= prefix.length && prefix.equals(bytes.subarray(0, prefix.length));

/** A protobuf varint at `offset`: [value, next offset], or undefined if truncated or over 64 bits. */
function readVarint(bytes: Uint8Array, offset: number): [number, number] | undefined {
  let value = 0;
  for (let i = 0; i < 10; i++) {
    const byte = bytes[offset + i];
    if (byte === undefined) return undefined;
    value += (byte & 0x7f) * 2 ** (7 * i);
    if (byte < 0x80) return [value, offset + i + 1];
  }
  return undefined;
}

/** The key id (field 2) of a protobuf EncryptedObject, or why it cannot be read. */
export function encryptedObjectKeyId(body: Uint8Array): { keyId: string } | { malformed: string } {
  let offset = 0;
  let keyId: string | undefined;
  while (offset < body.length) {
    const tag = readVarint(body, offset);
    if (!tag) return { malformed: 'truncated field tag' };
    const [tagValue, afterTag] = tag;
    const field = Math.floor(tagValue / 8);
    const wireType = tagValue % 8;
    if (field === 0) return { malformed: 'field number 0' };
    let next: number;
    if (wireType === 0) {
      const v = readVarint(body, afterTag);
      if (!v) return { malformed: 'truncated varint' };
      next = v[1];
    } else if (wireType === 1 || wireType === 5) {
      next = afterTag + (wireType === 1 ? 8 : 4);
    } else if (wireType === 2) {
      const length = readVarint(body, afterTag);
      if (!length) return { malformed: 'truncated length' };
      const [size, start] = length;
      next = start + size;
      if (next > body.length) return { malformed: `field ${field} runs past the end` };
      if (field === 2) {
        if (size === 0) return { malformed: 'empty key id' };
        if (size > maxKeyIdBytes) return { malformed: `key id over ${maxKeyIdBytes} bytes` };
        try {
          // Protobuf semantics: the last occurrence wins.
          keyId = utf8.decode(body.subarray(start, next));
        } catch {
          return { malformed: 'key id is not UTF-8' };
        }
      }
    } else {
      return { malformed: `wire type ${wireType}` };
    }
    if (next > body.length) return { malformed: `field ${field} runs past the end` };
    offset = next;
  }
  return keyId === undefined ? { malformed: 'no key id' } : { keyId };
}

/** Reads a KMS v2 envelope of any provider: its provider name and key id, or why it is malformed. */
export function readKmsV2Envelope(raw: Uint8Array): { provider: string; keyId: string } | { provider?: string; malformed: string } | undefined {
  if (!startsWith(raw, kmsV2Prefix)) return undefined;
  const end = raw.subarray(kmsV2Prefix.length, kmsV2Prefix.length + maxProviderBytes + 1).indexOf(colon);
  if (end <= 0) return { malformed: 'no provider name' };
  const provider = Buffer.from(raw.subarray(kmsV2Prefix.length, kmsV2Prefix.length + end)).toString('latin1');
  const parsed = encryptedObjectKeyId(raw.subarray(kmsV2Prefix.length + end + 1));
  return 'keyId' in parsed ? { provider, keyId: parsed.keyId } : { provider, malformed: parsed.malformed };
}

/** How one stored value is kept, as seen by the scanner of `provider`'s envelopes. */
export function classifyStoredValue(raw: Uint8Array, provider: string): StoredValue {
  if (!startsWith(raw, encryptedPrefix)) return { kind: 'unencrypted' };
  const envelope = readKmsV2Envelope(raw);
  if (!envelope) return { kind: 'otherProvider' };
  if ('malformed' in envelope) return { kind: 'otherProvider', provider: envelope.provider, malformed: envelope.malformed };
  if (envelope.provider !== provider) return { kind: 'otherProvider', provider: envelope.provider };
  return { kind: 'kmsV2', provider, keyId: envelope.keyId };
}
