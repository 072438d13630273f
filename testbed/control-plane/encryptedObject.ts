// Reads what kube-apiserver stores for a KMS v2 encrypted object:
// `k8s:enc:kms:v2:<provider>:` then a protobuf EncryptedObject whose field 2 is the key id.
export interface StoredKmsValue {
  provider: string;
  keyId: string;
}

function readVarint(bytes: Buffer, offset: number): [number, number] {
  let value = 0;
  let shift = 0;
  for (;;) {
    const byte = bytes[offset++];
    if (byte === undefined) throw new Error('truncated varint');
    value += (byte & 0x7f) * 2 ** shift;
    if (byte < 0x80) return [value, offset];
    shift += 7;
  }
}

/** Undefined when the value is not KMS v2 encrypted. */
export function parseKmsV2Value(raw: Buffer): StoredKmsValue | undefined {
  const prefix = /^k8s:enc:kms:v2:([^:]+):/.exec(raw.subarray(0, 300).toString('latin1'));
  if (!prefix?.[1]) return undefined;
  const body = raw.subarray(prefix[0].length);
  let offset = 0;
  while (offset < body.length) {
    const [tag, afterTag] = readVarint(body, offset);
    const field = Math.floor(tag / 8);
    const wireType = tag & 7;
    if (wireType === 0) {
      offset = readVarint(body, afterTag)[1];
      continue;
    }
    if (wireType !== 2) throw new Error(`unexpected wire type ${wireType}`);
    const [length, start] = readVarint(body, afterTag);
    if (field === 2) return { provider: prefix[1], keyId: body.subarray(start, start + length).toString('utf8') };
    offset = start + length;
  }
  return { provider: prefix[1], keyId: '' };
}
