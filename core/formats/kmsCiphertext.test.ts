import assert from 'node:assert/strict';
import { ciphertextHeader, ciphertextOverhead, encodeCiphertext, maxCiphertextBytes, maxPlaintextBytes, parseCiphertext } from './kmsCiphertext.js';

describe('ciphertext format', () => {
  const sample = encodeCiphertext(ciphertextHeader(7), { iv: Buffer.alloc(12, 1), sealed: Buffer.alloc(48, 2) });

  it('round-trips the header, version, IV and sealed bytes', () => {
    const parsed = parseCiphertext(sample);
    assert.equal(parsed.keyVersion, 7);
    assert.deepEqual(parsed.iv, Buffer.alloc(12, 1));
    assert.deepEqual(parsed.sealed, Buffer.alloc(48, 2));
    assert.equal(sample.length, 32 + ciphertextOverhead);
  });

  it('keeps the largest plaintext within the apiserver limit', () => {
    assert.equal(maxPlaintextBytes + ciphertextOverhead, maxCiphertextBytes);
  });

  it('names each defect', () => {
    assert.throws(() => parseCiphertext(Buffer.alloc(0)), /ciphertext is empty/);
    assert.throws(() => parseCiphertext(Buffer.alloc(1025, 1)), /1025 bytes; the limit is 1024/);
    assert.throws(() => parseCiphertext(Buffer.from([9, 1, 0, 0])), /unknown ciphertext format version 9/);
    assert.throws(() => parseCiphertext(Buffer.from([1, 5, 0, 0])), /unknown ciphertext algorithm id 5/);
    assert.throws(() => parseCiphertext(Buffer.from([1])), /truncated/);
    assert.throws(() => parseCiphertext(sample.subarray(0, 30)), /truncated: 30 bytes/);
  });
});
