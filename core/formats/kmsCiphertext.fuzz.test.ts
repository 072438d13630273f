// parseCiphertext fuzzed with a fixed seed: any bytes kube-apiserver could send as a KMS v2
// ciphertext parse to the input's own parts or are refused with a KeywardError.
import fc from 'fast-check';
import { kmsCiphertextProperty } from '../../testbed/fuzz/decoderProperties.js';

describe('KMS ciphertext decoder, fuzzed', function () {
  this.timeout(10_000);

  it('parses any bytes to a valid ciphertext, or refuses them with a KeywardError', () => {
    fc.assert(kmsCiphertextProperty, { seed: 20261207, numRuns: 5000 });
  });
});
