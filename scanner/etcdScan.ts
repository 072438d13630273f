// One scan of etcd: for each encrypted resource, every stored object read at one revision and
// counted by how it is kept (per key id of the scanned KMS provider, another provider, or
// unencrypted). Nothing is decrypted and no value is kept or logged: only keys and key ids.
import { KeywardError } from '../core/errors.js';
import type { EtcdScanReport, ResourceCount } from '../core/keyUse/keyUseRecords.js';
import { classifyStoredValue } from './etcdEnvelope.js';
import { EtcdCompactedError, prefixEnd, type EtcdReader } from './etcdReader.js';

/** etcd keys named per key id in a report. */
export const samplesPerKeyId = 5;
/** Key ids given samples, at most: a report must fit one HSM record. */
const maxSampledKeyIds = 32;

const resourcePattern = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/;

/** Built-in resources kube-apiserver keeps under a prefix other than its resource name. */
const specialPrefixes: Record<string, string> = {
  services: '/registry/services/specs/',
  endpoints: '/registry/services/endpoints/',
  'ingresses.networking.k8s.io': '/registry/ingress/',
  'ingresses.extensions': '/registry/ingress/',
};

/**
 * Where kube-apiserver keeps a resource named as the EncryptionConfiguration names it: core and
 * built-in groups (`apps`, `*.k8s.io`) under `/registry/<resource>/`, other groups (custom
 * resources) under `/registry/<group>/<resource>/`.
 */
export function etcdPrefix(resource: string): string {
  if (resource.length > 253 || !resourcePattern.test(resource)) {
    throw new KeywardError('InvalidArgument', `resource '${resource.slice(0, 80)}' is not a resource name like secrets or widgets.example.com`);
  }
  const special = specialPrefixes[resource];
  if (special) return special;
  const dot = resource.indexOf('.');
  if (dot < 0) return `/registry/${resource}/`;
  const name = resource.slice(0, dot);
  const group = resource.slice(dot + 1);
  const builtIn = !group.includes('.') || group.endsWith('.k8s.io');
  return builtIn && group !== 'apiextensions.k8s.io' && group !== 'apiregistration.k8s.io' ? `/registry/${name}/` : `/registry/${group}/${name}/`;
}

export interface ScanProgress {
  objects: number;
  bytes: number;
}

export interface EtcdScanOptions {
  reader: EtcdReader;
  ringId: string;
  /** The KMS provider name in the EncryptionConfiguration: its envelopes are counted by key id. */
  provider: string;
  resources: string[];
  /** The scan request this scan answers. */
  request?: string;
  signal?: AbortSignal;
  /** After each page: for metrics. */
  onPage?: (progress: ScanProgress) => void;
  now?: () => Date;
}

const emptyCount = (resource: string): ResourceCount => ({ resource, objects: 0, byKeyId: {}, otherProvider: 0, unencrypted: 0 });

/**
 * Scans every resource at the revision of the first page. A revision compacted mid-scan starts
 * the scan again once at a newer one. Never throws: a scan that cannot finish is reported with
 * complete=false and the reason.
 */
export async function scanEtcd(options: EtcdScanOptions): Promise<EtcdScanReport> {
  const now = options.now ?? (() => new Date());
  const startedAt = now().toISOString();
  const base = { schema: 1 as const, ringId: options.ringId, provider: options.provider, ...(options.request ? { request: options.request } : {}), startedAt };
  let attempt = await scanOnce(options);
  if (attempt.error instanceof EtcdCompactedError) attempt = await scanOnce(options);
  const { tallies, samples, revision, error } = attempt;
  // Object.fromEntries defines own properties: safe for any key id.
  const resources = tallies.map(({ count, byKeyId }) => ({ ...count, byKeyId: Object.fromEntries(byKeyId) }));
  return {
    ...base,
    finishedAt: now().toISOString(),
    ...(revision ? { revision } : {}),
    complete: error === undefined,
    ...(error !== undefined ? { error: errorText(error) } : {}),
    resources,
    samples: Object.fromEntries(samples),
  };
}

function errorText(err: unknown): string {
  if (err instanceof KeywardError) return err.message;
  return `internal error: ${err instanceof Error ? err.message.slice(0, 160) : 'unknown'}`;
}

interface Tally {
  count: ResourceCount;
  /** Key ids come from etcd: a Map, so an id like `__proto__` is only a string. */
  byKeyId: Map<string, number>;
}

interface Attempt {
  tallies: Tally[];
  samples: Map<string, string[]>;
  revision: number;
  error?: unknown;
}

async function scanOnce(options: EtcdScanOptions): Promise<Attempt> {
  const attempt: Attempt = { tallies: [], samples: new Map(), revision: 0 };
  try {
    options.reader.startScan();
    for (const resource of options.resources) {
      const tally = { count: emptyCount(resource), byKeyId: new Map<string, number>() };
      attempt.tallies.push(tally);
      const prefix = Buffer.from(etcdPrefix(resource));
      const end = prefixEnd(prefix);
      let from: Buffer | undefined = prefix;
      while (from) {
        const page = await options.reader.page(from, end, attempt.revision, options.signal);
        attempt.revision ||= page.revision;
        for (const { key, value } of page.kvs) countValue(tally, attempt.samples, key, value, options.provider);
        options.onPage?.({ objects: page.kvs.length, bytes: page.bytes });
        from = page.nextKey;
      }
    }
  } catch (err) {
    attempt.error = err;
  }
  return attempt;
}

function countValue({ count, byKeyId }: Tally, samples: Map<string, string[]>, key: string, value: Buffer, provider: string): void {
  count.objects++;
  const stored = classifyStoredValue(value, provider);
  if (stored.kind === 'unencrypted') {
    count.unencrypted++;
  } else if (stored.kind === 'otherProvider') {
    count.otherProvider++;
    if (stored.malformed) count.malformed = (count.malformed ?? 0) + 1;
  } else {
    byKeyId.set(stored.keyId, (byKeyId.get(stored.keyId) ?? 0) + 1);
    let keys = samples.get(stored.keyId);
    if (!keys && samples.size < maxSampledKeyIds) samples.set(stored.keyId, (keys = []));
    if (keys && keys.length < samplesPerKeyId) keys.push(key.slice(0, 256));
  }
}
