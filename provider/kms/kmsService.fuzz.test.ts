// The KMS service's input, fuzzed with a fixed seed: key ids, annotations, and Encrypt and Decrypt
// requests decoded from arbitrary bytes as the gRPC server decodes them, then checked as the
// handlers check them. Anything accepted is valid; anything else is a KeywardError.
import fc from 'fast-check';
import { annotationsProperty, keyIdProperty, kmsRequestProperty } from '../../testbed/fuzz/decoderProperties.js';

describe('KMS service input, fuzzed', function () {
  this.timeout(10_000);
  const seed = 20261207;

  it('accepts only well-formed key ids', () => {
    fc.assert(keyIdProperty, { seed, numRuns: 5000 });
  });

  it('accepts only annotations the apiserver would store, with a known ciphertext format', () => {
    fc.assert(annotationsProperty, { seed, numRuns: 3000 });
  });

  it('decodes any bytes to a request no larger than them, or refuses them', () => {
    fc.assert(kmsRequestProperty, { seed, numRuns: 3000 });
  });
});
