// Reads etcd directly through its JSON gateway (/v3/kv/range), so tests can check what the
// apiserver really stored, bypassing the apiserver and its decryption.
export interface EtcdValue {
  key: string;
  value: Buffer;
}

interface RangeResponse {
  kvs?: Array<{ key: string; value?: string }>;
}

async function range(endpoint: string, body: Record<string, string>): Promise<EtcdValue[]> {
  const res = await fetch(`${endpoint}/v3/kv/range`, { method: 'POST', body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`etcd range at ${endpoint} failed: HTTP ${res.status} ${await res.text()}`);
  const json = (await res.json()) as RangeResponse;
  return (json.kvs ?? []).map((kv) => ({
    key: Buffer.from(kv.key, 'base64').toString('utf8'),
    value: Buffer.from(kv.value ?? '', 'base64'),
  }));
}

const b64 = (s: string | Buffer): string => Buffer.from(s).toString('base64');

/** The raw bytes stored under one key, or undefined. */
export async function readEtcdKey(endpoint: string, key: string): Promise<Buffer | undefined> {
  return (await range(endpoint, { key: b64(key) }))[0]?.value;
}

/** Every key and value under a prefix, e.g. `/registry/secrets/<namespace>/`. */
export function readEtcdPrefix(endpoint: string, prefix: string): Promise<EtcdValue[]> {
  const end = Buffer.from(prefix);
  end[end.length - 1] = (end[end.length - 1] ?? 0) + 1;
  return range(endpoint, { key: b64(prefix), range_end: b64(end) });
}

/** The etcd key the apiserver uses for a Secret. */
export const secretEtcdKey = (namespace: string, name: string): string => `/registry/secrets/${namespace}/${name}`;
