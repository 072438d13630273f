// parseSealedSecret fuzzed with a fixed seed: any bytes a SecretProviderClass could carry as a
// sealed secret parse to the input's own parts or are refused with a KeywardError.
import fc from 'fast-check';
import { sealedSecretProperty } from '../../testbed/fuzz/decoderProperties.js';

describe('sealed secret decoder, fuzzed', function () {
  this.timeout(10_000);

  it('parses any bytes to a valid sealed secret, or refuses them with a KeywardError', () => {
    fc.assert(sealedSecretProperty, { seed: 20261207, numRuns: 3000 });
  });
});
