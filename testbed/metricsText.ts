// Prometheus text exposition as series, for tests that check what a /metrics page says: the
// samples of a metric, and whether label values stay within bounded sets and carry no secret.

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const samplePattern = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: -?\d+)?$/;
const labelPattern = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/y;

const unescape = (value: string): string => value.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));

/** Every sample of a text exposition; a line that does not parse is an error, never skipped. */
export function parseMetrics(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '' || line.startsWith('#')) continue;
    const match = samplePattern.exec(line);
    if (!match) throw new Error(`not a sample line: ${line}`);
    const [, name = '', body = '', value = ''] = match;
    const labels: Record<string, string> = {};
    labelPattern.lastIndex = 0;
    while (labelPattern.lastIndex < body.length) {
      const label = labelPattern.exec(body);
      if (!label) throw new Error(`labels that do not parse: ${line}`);
      labels[label[1] ?? ''] = unescape(label[2] ?? '');
    }
    samples.push({ name, labels, value: Number(value) });
  }
  return samples;
}

export async function scrape(address: string): Promise<Sample[]> {
  const response = await fetch(`http://${address}/metrics`);
  if (!response.ok) throw new Error(`GET http://${address}/metrics: HTTP ${response.status}`);
  return parseMetrics(await response.text());
}

/** The sum of a metric's samples whose labels include `labels` (0 when there is none). */
export function total(samples: readonly Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

/** What each label of a keyward_* series may hold. `le` (histogram buckets) is always allowed a number. */
export type AllowedLabelValues = Record<string, (value: string) => boolean>;

export const oneOf =
  (...values: readonly string[]) =>
  (value: string): boolean =>
    values.includes(value);

const bucketBound = (value: string): boolean => value === '+Inf' || Number.isFinite(Number(value));

/**
 * One line per keyward_* label whose name has no bounded set in `allowed`, or whose value is not
 * in its set: empty when every label value is accounted for.
 */
export function unboundedLabels(samples: readonly Sample[], allowed: AllowedLabelValues): string[] {
  const problems = new Set<string>();
  for (const { name, labels } of samples) {
    if (!name.startsWith('keyward_')) continue;
    for (const [label, value] of Object.entries(labels)) {
      const check = label === 'le' ? bucketBound : allowed[label];
      if (!check) problems.add(`${name}: label ${label} has no bounded set of values`);
      else if (!check(value)) problems.add(`${name}: ${label}=${JSON.stringify(value)} is not one of its bounded values`);
    }
  }
  return [...problems];
}

/** Which of `secrets` (by what they are) appear in a label value of any series, keyward_* or not. */
export function secretsInLabels(samples: readonly Sample[], secrets: Record<string, string>): string[] {
  const found = new Set<string>();
  for (const { name, labels } of samples) {
    for (const value of Object.values(labels)) {
      for (const [what, secret] of Object.entries(secrets)) {
        if (secret.length > 0 && value.includes(secret)) found.add(`${what} in a label of ${name}`);
      }
    }
  }
  return [...found];
}
