// The stored-value parser on values shaped as kube-apiserver writes them (encoded here with
// protobuf-es's own writer, not the parser's logic) and on hostile bytes.
import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import fc from 'fast-check';
import assert from 'node:assert/strict';
import { classifyStoredValue, encryptedObjectKeyId, maxKeyIdBytes, readKmsV2Envelope } from './etcdEnvelope.js';

/** An EncryptedObject as kube-apiserver writes it: data, key id, DEK source, annotations, source type. */
function encryptedObject(keyId: string, options: { annotations?: Record<string, Buffer>; sourceType?: number } = {}): Uint8Array {
  const w = new BinaryWriter();
  w.tag(1, WireType.LengthDelimited).bytes(Buffer.alloc(80, 7));
  w.tag(2, WireType.LengthDelimited).string(keyId);
  w.tag(3, WireType.LengthDelimited).bytes(Buffer.alloc(60, 9));
  for (const [k, v] of Object.entries(options.annotations ?? {})) {
    w.tag(4, WireType.LengthDelimited).fork().tag(1, WireType.LengthDelimited).string(k).tag(2, WireType.LengthDelimited).bytes(v).join();
  }
  if (options.sourceType !== undefined) w.tag(5, WireType.Varint).int32(options.sourceType);
  return w.finish();
}

const stored = (provider: string, body: Uint8Array): Buffer => Buffer.concat([Buffer.from(`k8s:enc:kms:v2:${provider}:`), body]);

describe('etcd stored-value parser', () => {
  it('reads the key id of a KMS v2 envelope of the scanned provider, with annotations and a DEK source type', () => {
    const keyId = 'kw1-0123456789abcdef';
    const value = stored('keyward', encryptedObject(keyId, { annotations: { 'version.encryption.keyward.dev': Buffer.from('1') }, sourceType: 1 }));
    assert.deepEqual(classifyStoredValue(value, 'keyward'), { kind: 'kmsV2', provider: 'keyward', keyId });
  });

  it('counts another KMS provider, aescbc and KMS v1 envelopes as another provider', () => {
    assert.deepEqual(classifyStoredValue(stored('other', encryptedObject('k')), 'keyward'), { kind: 'otherProvider', provider: 'other' });
    assert.equal(classifyStoredValue(Buffer.from('k8s:enc:aescbc:v1:key1:\x01\x02'), 'keyward').kind, 'otherProvider');
    assert.equal(classifyStoredValue(Buffer.from('k8s:enc:kms:v1:keyward:\x00\x20abc'), 'keyward').kind, 'otherProvider');
  });

  it('counts protobuf and JSON objects as unencrypted', () => {
    assert.equal(classifyStoredValue(Buffer.from('k8s\x00\x0a\x0c\x0a\x02v1\x12\x06Secret'), 'keyward').kind, 'unencrypted');
    assert.equal(classifyStoredValue(Buffer.from('{"kind":"Secret"}'), 'keyward').kind, 'unencrypted');
    assert.equal(classifyStoredValue(Buffer.alloc(0), 'keyward').kind, 'unencrypted');
  });

  it('flags malformed envelopes of the scanned provider, naming why, without a key id', () => {
    const good = encryptedObject('kw1-abc');
    const cases: Array<[Uint8Array, RegExp]> = [
      [good.subarray(0, good.length - 10), /runs past the end/],
      [encryptedObject('').subarray(0), /empty key id/],
      [Buffer.from([0x0a, 0x02, 0x01, 0x02]), /no key id/],
      [Buffer.from([0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), /truncated length/],
      [Buffer.from([0x12, 0x02, 0xc3, 0x28]), /not UTF-8/],
      [Buffer.from([0x0b]), /wire type 3/],
      [Buffer.from([0x00, 0x00]), /field number 0/],
      [Buffer.concat([Buffer.from([0x12, 0x81, 0x08]), Buffer.alloc(maxKeyIdBytes + 1, 0x61)]), /over 1024 bytes/],
    ];
    for (const [body, reason] of cases) {
      const result = classifyStoredValue(stored('keyward', body), 'keyward');
      assert.equal(result.kind, 'otherProvider');
      assert.match((result as { malformed?: string }).malformed ?? '', reason);
    }
    assert.deepEqual(readKmsV2Envelope(Buffer.from('k8s:enc:kms:v2:')), { malformed: 'no provider name' });
    assert.deepEqual(readKmsV2Envelope(Buffer.from('k8s:enc:kms:v2::x')), { malformed: 'no provider name' });
  });

  it('takes the last key id when field 2 repeats, as protobuf does', () => {
    const body = Buffer.concat([encryptedObject('first'), Buffer.from([0x12, 0x04]), Buffer.from('last')]);
    assert.deepEqual(encryptedObjectKeyId(body), { keyId: 'last' });
  });

  it('never throws on any bytes, and a key id it reads is within the apiserver limit (fuzzed)', () => {
    const prefixes = fc.constantFrom('', 'k8s:enc:', 'k8s:enc:kms:v2:', 'k8s:enc:kms:v2:keyward:', 'k8s:enc:kms:v2:other:');
    fc.assert(
      fc.property(prefixes, fc.uint8Array({ maxLength: 2048 }), (prefix, tail) => {
        const result = classifyStoredValue(Buffer.concat([Buffer.from(prefix), tail]), 'keyward');
        if (result.kind === 'kmsV2') assert.ok(result.keyId.length > 0 && Buffer.byteLength(result.keyId) <= maxKeyIdBytes);
      }),
      { seed: 20261207, numRuns: 5000 },
    );
  });

  it('reads back any key id written into a real-shaped envelope (fuzzed)', () => {
    fc.assert(
      fc.property(fc.string({ minLength: 1, maxLength: 300, unit: 'grapheme' }), (keyId) => {
        assert.deepEqual(classifyStoredValue(stored('keyward', encryptedObject(keyId, { sourceType: 0 })), 'keyward'), { kind: 'kmsV2', provider: 'keyward', keyId });
      }),
      { seed: 20261207, numRuns: 2000 },
    );
  });
});
