// The long fuzzing run of the decoders of outside input (testbed/fuzz/decoderProperties.ts; the
// tests run the same properties briefly with a fixed seed). One JSON line per decoder on stdout:
// cases run, accepted and refused, failures with the seed and counterexample to replay, seconds.
// KEYWARD_FUZZ_RUNS sets the cases per decoder (100,000 by default), KEYWARD_FUZZ_SEED the seed.
import fc from 'fast-check';
import { decoderProperties, outcomes } from '../testbed/fuzz/decoderProperties.js';
import { emit, load1m, round } from './report.js';

const runs = Number(process.env.KEYWARD_FUZZ_RUNS ?? 100_000);
const seed = Number(process.env.KEYWARD_FUZZ_SEED ?? Date.now() % 2 ** 31);
/** The decoders whose counts each property fills. */
const counted: Record<keyof typeof decoderProperties, string[]> = {
  kmsCiphertext: ['kmsCiphertext'],
  sealedSecret: ['sealedSecret'],
  keyId: ['keyId'],
  annotations: ['annotations'],
  kmsRequest: ['kmsDecryptRequest', 'kmsEncryptRequest', 'kmsStatusRequest'],
  admissionReview: ['admissionReview'],
};

let failures = 0;
for (const [decoder, property] of Object.entries(decoderProperties)) {
  const started = process.hrtime.bigint();
  // Each property has its own input type; the run does not need it.
  const details = fc.check(property as fc.IProperty<[unknown]>, { seed, numRuns: runs });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  if (details.failed) failures++;
  const counts = Object.fromEntries(counted[decoder as keyof typeof decoderProperties].map((name) => [name, outcomes[name]]));
  emit({
    bench: 'fuzzDecoders',
    decoder,
    seed,
    cases: details.numRuns,
    failures: details.failed ? 1 : 0,
    ...(details.failed ? { counterexample: fc.stringify(details.counterexample).slice(0, 2000), path: details.counterexamplePath, error: String(details.errorInstance).slice(0, 500) } : {}),
    outcomes: counts,
    seconds: round(seconds, 2),
    casesPerSecond: Math.round(details.numRuns / seconds),
    load1m: load1m(),
  });
}
process.exitCode = failures ? 1 : 0;
