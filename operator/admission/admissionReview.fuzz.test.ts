// parseReview fuzzed with a fixed seed: any JSON body posted to the webhook is an AdmissionReview
// request whose every field Keyward reads has the right type, or is refused with a KeywardError.
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { KeywardError } from '../../core/errors.js';
import { admissionReviewProperty } from '../../testbed/fuzz/decoderProperties.js';
import { parseReview } from './admissionReview.js';

describe('AdmissionReview decoder, fuzzed', function () {
  this.timeout(10_000);

  it('parses any JSON body to a well-typed request, or refuses it with a KeywardError', () => {
    fc.assert(admissionReviewProperty, { seed: 20261207, numRuns: 5000 });
  });

  it('refuses what the fuzzing found it accepted: a null userInfo, an unknown operation, fields of the wrong type', () => {
    const review = (request: Record<string, unknown>) => ({ request: { uid: 'c7a1', operation: 'CREATE', userInfo: { username: 'alice' }, ...request } });
    for (const body of [
      review({ userInfo: null }),
      review({ userInfo: { username: 7 } }),
      review({ userInfo: { groups: 'system:masters' } }),
      review({ operation: 'PATCH' }),
      review({ namespace: ['shop'] }),
      review({ dryRun: 'false' }),
      review({ uid: 'u'.repeat(129) }),
      null,
      [],
    ]) {
      assert.throws(() => parseReview(body), (err: unknown) => err instanceof KeywardError && err.code === 'InvalidArgument', JSON.stringify(body).slice(0, 80));
    }
    assert.equal(parseReview(review({ namespace: 'shop', dryRun: true })).userInfo.username, 'alice');
  });
});
