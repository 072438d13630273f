// The reporting path of the latency figures (README, Performance): benchmarks sort their
// latencies, take nearest-rank percentiles and print one JSON line per figure.
import assert from 'node:assert/strict';
import { emit, percentile, round } from './report.js';

describe('Benchmark reporting: nearest-rank percentiles and JSON lines', () => {
  const ascending = (n: number): number[] => Array.from({ length: n }, (_, i) => i + 1);

  it('gives the nearest-rank p50 and p99 of known lists: the smallest value with at least p% of the list at or below it', () => {
    // For 1..n the value at rank k is k, so each answer is the rank ceil(p/100 * n).
    const cases: [n: number, p50: number, p99: number][] = [
      [1, 1, 1],
      [2, 1, 2],
      [3, 2, 3],
      [10, 5, 10],
      [99, 50, 99],
      [100, 50, 99],
      [101, 51, 100],
      [200, 100, 198],
      [1000, 500, 990],
      [1001, 501, 991],
    ];
    for (const [n, p50, p99] of cases) {
      assert.deepEqual([percentile(ascending(n), 50), percentile(ascending(n), 99)], [p50, p99], `1..${n}`);
    }
  });

  it('takes the ranked value itself, not an interpolation, and one slow outlier moves p99 but not p50', () => {
    const latenciesMs = [...Array<number>(98).fill(2), 3, 40].sort((a, b) => a - b);
    assert.equal(percentile(latenciesMs, 50), 2);
    assert.equal(percentile(latenciesMs, 99), 3);
    assert.equal(percentile(latenciesMs, 100), 40);
    assert.equal(percentile([0.4, 1.7, 9.25], 50), 1.7);
  });

  it('gives NaN, not a number, for an empty list', () => {
    assert.ok(Number.isNaN(percentile([], 50)));
    assert.ok(Number.isNaN(percentile([], 99)));
  });

  it('prints one JSON line per figure, rounded as asked', () => {
    const written: string[] = [];
    const original = process.stdout.write.bind(process.stdout);
    process.stdout.write = (chunk: string | Uint8Array): boolean => written.push(String(chunk)) > 0;
    try {
      emit({ bench: 'kms', op: 'encrypt', p50_ms: round(1.23456, 2), p99_ms: round(2.0049, 2) });
    } finally {
      process.stdout.write = original;
    }
    assert.deepEqual(written, ['{"bench":"kms","op":"encrypt","p50_ms":1.23,"p99_ms":2}\n']);
  });
});
