// Reads etcd directly through its JSON gateway (/v3/kv/range), so tests can check what the
// apiserver really stored, bypassing the apiserver and its decryption. Plain http, or https with
// a client certificate from etcd's CA when the control plane runs etcd with TLS (etcdTls).
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import type { EtcdPki } from './pki.js';

/** etcd's CA and a client certificate it accepts (a ControlPlane's etcdPki). */
export type EtcdClientTls = Pick<EtcdPki, 'caCert' | 'clientCert' | 'clientKey'>;

export interface EtcdValue {
  key: string;
  value: Buffer;
}

interface RangeResponse {
  kvs?: Array<{ key: string; value?: string }>;
}

async function range(endpoint: string, body: Record<string, string>, tls?: EtcdClientTls): Promise<EtcdValue[]> {
  const url = `${endpoint}/v3/kv/range`;
  const { status, text } = tls ? await httpsPost(url, JSON.stringify(body), tls) : await fetch(url, { method: 'POST', body: JSON.stringify(body) }).then(async (res) => ({ status: res.status, text: await res.text() }));
  if (status !== 200) throw new Error(`etcd range at ${endpoint} failed: HTTP ${status} ${text}`);
  const json = JSON.parse(text) as RangeResponse;
  return (json.kvs ?? []).map((kv) => ({
    key: Buffer.from(kv.key, 'base64').toString('utf8'),
    value: Buffer.from(kv.value ?? '', 'base64'),
  }));
}

function httpsPost(url: string, body: string, tls: EtcdClientTls): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', ca: readFileSync(tls.caCert), cert: readFileSync(tls.clientCert), key: readFileSync(tls.clientKey) }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

const b64 = (s: string | Buffer): string => Buffer.from(s).toString('base64');

/** The raw bytes stored under one key, or undefined. `tls` for an etcd that serves https only. */
export async function readEtcdKey(endpoint: string, key: string, tls?: EtcdClientTls): Promise<Buffer | undefined> {
  return (await range(endpoint, { key: b64(key) }, tls))[0]?.value;
}

/** Every key and value under a prefix, e.g. `/registry/secrets/<namespace>/`. */
export function readEtcdPrefix(endpoint: string, prefix: string, tls?: EtcdClientTls): Promise<EtcdValue[]> {
  const end = Buffer.from(prefix);
  end[end.length - 1] = (end[end.length - 1] ?? 0) + 1;
  return range(endpoint, { key: b64(prefix), range_end: b64(end) }, tls);
}

/** The etcd key the apiserver uses for a Secret. */
export const secretEtcdKey = (namespace: string, name: string): string => `/registry/secrets/${namespace}/${name}`;
