// What every benchmark shares in how it reports: one JSON line per figure on stdout, rounding,
// nearest-rank percentiles, and the machine's load, which decides whether figures can be trusted.
import { loadavg } from 'node:os';

export const round = (value: number, places: number): number => Number(value.toFixed(places));

/** The one-minute load average, to two places. */
export const load1m = (): number => round(loadavg()[0] ?? 0, 2);

export function emit(line: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

/** Nearest rank of an ascending list. */
export const percentile = (sorted: readonly number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;

export function warnIfBusy(log: (line: string) => void): void {
  const [oneMinute = 0] = loadavg();
  if (oneMinute > 0.5) log(`WARNING: load average is ${oneMinute.toFixed(2)} before starting; other work will skew the figures`);
}
