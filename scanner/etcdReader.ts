// Paged, read-only range reads through etcd's JSON gateway (POST /v3/kv/range), over plain http
// or https with a client certificate (kubeadm: /etc/kubernetes/pki/etcd/ca.crt and
// apiserver-etcd-client.{crt,key}). Bounded so a scan never hurts etcd: a page size that halves
// when a response is too large, a byte cap per response, a timeout per request and a pause
// between pages. Serializable reads: answered by the local member, no quorum round trip.
import { readFileSync } from 'node:fs';
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { setTimeout as sleep } from 'node:timers/promises';
import { KeywardError } from '../core/errors.js';

export interface EtcdTlsFiles {
  caFile?: string;
  certFile?: string;
  keyFile?: string;
}

export interface EtcdReaderConfig {
  /** http(s)://host:port, tried in order until one answers. */
  endpoints: string[];
  tls?: EtcdTlsFiles;
  /** Keys per page at most (default 500); halved for the rest of a scan when a page is over maxResponseBytes. */
  pageSize?: number;
  /** A response over this is refused (default 64 MiB). */
  maxResponseBytes?: number;
  requestTimeoutMs?: number;
  /** Pages read per second at most (default 10). */
  pagesPerSecond?: number;
}

export interface EtcdKeyValue {
  key: string;
  value: Buffer;
}

export interface EtcdPage {
  kvs: EtcdKeyValue[];
  /** The revision the page was read at. */
  revision: number;
  /** Where the next page starts; undefined after the last page. */
  nextKey: Buffer | undefined;
  /** Response bytes received. */
  bytes: number;
}

/** The revision asked for was compacted away: the scan must start again at a newer one. */
export class EtcdCompactedError extends KeywardError {
  constructor(message: string) {
    super('FailedPrecondition', message);
  }
}

/** A response over the byte cap: the page is read again, smaller. */
class TooLargeError extends Error {}

interface RangeJson {
  header?: { revision?: string };
  kvs?: Array<{ key?: string; value?: string }>;
  more?: boolean;
}

const b64 = (bytes: Buffer): string => bytes.toString('base64');

/** The first key after every key starting with `prefix`. */
export function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]! += 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]); // etcd: every key
}

/** Node's network and TLS error codes in a few words, naming who refused what. */
function describeFailure(endpoint: string, err: NodeJS.ErrnoException): KeywardError {
  const code = err.code ?? '';
  const reason = err.message.slice(0, 160);
  if (/^(ECONNREFUSED|ENOTFOUND|EHOSTUNREACH|ENETUNREACH|EAI_AGAIN)$/.test(code)) {
    return new KeywardError('Unavailable', `etcd at ${endpoint} is unreachable (${code})`, { cause: err });
  }
  if (/^(ECONNRESET|EPIPE)$/.test(code) && !/alert/i.test(reason)) {
    // What a TLS-only etcd does to a plain http request.
    const hint = endpoint.startsWith('http:') ? '; if etcd serves TLS, use https:// and the --etcd-* certificate files' : '';
    return new KeywardError('Unavailable', `etcd at ${endpoint} closed the connection (${code})${hint}`, { cause: err });
  }
  if (/ALERT|alert/.test(code + reason)) {
    // The server ended the handshake: it did not accept our client certificate (or we sent none).
    return new KeywardError('PermissionDenied', `etcd at ${endpoint} refused the client credentials (TLS ${code || reason})`, { cause: err });
  }
  if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS|ERR_SSL/.test(code)) {
    return new KeywardError('PermissionDenied', `TLS with etcd at ${endpoint} failed: its certificate is not trusted (${code})`, { cause: err });
  }
  if (code === 'EPROTO') return new KeywardError('Unavailable', `TLS with etcd at ${endpoint} failed (${reason})`, { cause: err });
  return new KeywardError('Unavailable', `etcd at ${endpoint} failed: ${code || reason}`, { cause: err });
}

export class EtcdReader {
  readonly pageSize: number;
  private readonly maxResponseBytes: number;
  private readonly timeoutMs: number;
  private readonly pageIntervalMs: number;
  private lastPageAt = 0;
  /** The page size now: halved for the rest of a scan once a page was too large. */
  private limit: number;
  /** The endpoint that answered last: tried first. */
  private preferred = 0;
  private readonly httpAgent = new HttpAgent({ keepAlive: true, maxSockets: 1 });
  private httpsAgent: HttpsAgent | undefined;

  constructor(private readonly config: EtcdReaderConfig) {
    if (config.endpoints.length === 0) throw new KeywardError('InvalidArgument', 'at least one etcd endpoint is needed');
    for (const endpoint of config.endpoints) {
      if (!/^https?:\/\/[^/\s]+\/?$/.test(endpoint)) throw new KeywardError('InvalidArgument', `etcd endpoint '${endpoint.slice(0, 80)}' is not http(s)://host:port`);
    }
    this.pageSize = config.pageSize ?? 500;
    if (!(Number.isInteger(this.pageSize) && this.pageSize >= 1 && this.pageSize <= 10_000)) throw new KeywardError('InvalidArgument', 'the etcd page size must be 1 to 10000 keys');
    this.limit = this.pageSize;
    this.maxResponseBytes = config.maxResponseBytes ?? 64 * 1024 * 1024;
    this.timeoutMs = config.requestTimeoutMs ?? 30_000;
    const pps = config.pagesPerSecond ?? 10;
    if (!(pps > 0 && pps <= 1000)) throw new KeywardError('InvalidArgument', 'pages per second must be above 0 and at most 1000');
    this.pageIntervalMs = 1000 / pps;
  }

  /**
   * Before each scan: the full page size again, and the certificate files read again (renewed ones
   * are picked up). A file that cannot be read fails here, naming it.
   */
  startScan(): void {
    this.limit = this.pageSize;
    this.loadCredentials();
  }

  private loadCredentials(): void {
    const tls = this.config.tls;
    if (!tls || !this.config.endpoints.some((e) => e.startsWith('https:'))) return;
    const read = (file: string | undefined, what: string): Buffer | undefined => {
      if (!file) return undefined;
      try {
        return readFileSync(file);
      } catch (err) {
        throw new KeywardError('FailedPrecondition', `cannot read the etcd ${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
    };
    this.httpsAgent?.destroy();
    this.httpsAgent = new HttpsAgent({
      keepAlive: true,
      maxSockets: 1,
      ca: read(tls.caFile, 'CA file'),
      cert: read(tls.certFile, 'client certificate'),
      key: read(tls.keyFile, 'client key'),
      minVersion: 'TLSv1.2',
    });
  }

  close(): void {
    this.httpAgent.destroy();
    this.httpsAgent?.destroy();
  }

  /**
   * One page of keys in [from, end), at `revision` (0: the latest, whose number the page reports).
   * Waits first so pages are at most pagesPerSecond; halves the page while responses are too large.
   */
  async page(from: Buffer, end: Buffer, revision: number, signal?: AbortSignal): Promise<EtcdPage> {
    for (;;) {
      const wait = this.lastPageAt + this.pageIntervalMs - Date.now();
      if (wait > 0) await sleep(wait, undefined, { signal });
      this.lastPageAt = Date.now();
      try {
        // The first page is linearizable: a serializable read from a lagging member could start the
        // snapshot before the operator's last rewrite. Later pages read at that revision; a member
        // still behind it refuses, and the scan is reported incomplete.
        return await this.rangeAnyEndpoint({ key: b64(from), range_end: b64(end), limit: this.limit, revision, serializable: revision !== 0 }, signal);
      } catch (err) {
        if (!(err instanceof TooLargeError)) throw err;
        if (this.limit === 1) throw new KeywardError('FailedPrecondition', `one etcd value is over the ${this.maxResponseBytes}-byte response limit`);
        this.limit = Math.max(1, Math.floor(this.limit / 2));
      }
    }
  }

  private async rangeAnyEndpoint(body: Record<string, unknown>, signal?: AbortSignal): Promise<EtcdPage> {
    const { endpoints } = this.config;
    let lastError: unknown;
    for (let i = 0; i < endpoints.length; i++) {
      const index = (this.preferred + i) % endpoints.length;
      try {
        const page = await this.range(endpoints[index]!.replace(/\/$/, ''), body, signal);
        this.preferred = index;
        return page;
      } catch (err) {
        // Only an endpoint that could not be reached is worth trying the next for.
        if (!(err instanceof KeywardError && err.code === 'Unavailable')) throw err;
        lastError = err;
      }
    }
    throw lastError;
  }

  private range(endpoint: string, body: Record<string, unknown>, signal?: AbortSignal): Promise<EtcdPage> {
    const https = endpoint.startsWith('https:');
    if (https && !this.httpsAgent) this.loadCredentials();
    const payload = JSON.stringify(body);
    return new Promise<EtcdPage>((resolve, reject) => {
      const options = {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
        timeout: this.timeoutMs,
        signal,
      };
      const onResponse = (res: IncomingMessage): void => {
        const declared = Number(res.headers['content-length']);
        if (declared > this.maxResponseBytes) {
          res.destroy();
          reject(new TooLargeError());
          return;
        }
        const chunks: Buffer[] = [];
        let bytes = 0;
        res.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          if (bytes > this.maxResponseBytes) {
            res.destroy();
            reject(new TooLargeError());
            return;
          }
          chunks.push(chunk);
        });
        res.on('error', (err) => reject(describeFailure(endpoint, err)));
        res.on('end', () => {
          try {
            resolve(this.parse(endpoint, res.statusCode ?? 0, Buffer.concat(chunks, bytes), body));
          } catch (err) {
            reject(err instanceof Error ? err : new Error(String(err)));
          }
        });
      };
      const req = https
        ? httpsRequest(`${endpoint}/v3/kv/range`, { ...options, agent: this.httpsAgent }, onResponse)
        : httpRequest(`${endpoint}/v3/kv/range`, { ...options, agent: this.httpAgent }, onResponse);
      req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })));
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (signal?.aborted) reject(new KeywardError('Unavailable', 'the scan was stopped'));
        else if (err.code === 'ETIMEDOUT') reject(new KeywardError('Unavailable', `etcd at ${endpoint} did not answer within ${this.timeoutMs / 1000} s`));
        else reject(describeFailure(endpoint, err));
      });
      req.end(payload);
    });
  }

  private parse(endpoint: string, status: number, raw: Buffer, body: Record<string, unknown>): EtcdPage {
    let json: RangeJson & { error?: string; message?: string; code?: number };
    try {
      json = JSON.parse(raw.toString('utf8')) as typeof json;
    } catch {
      throw new KeywardError('Unavailable', `etcd at ${endpoint} answered HTTP ${status} with a body that is not JSON`);
    }
    if (status !== 200) {
      const message = String(json.message ?? json.error ?? '').slice(0, 160);
      if (/compacted/.test(message)) throw new EtcdCompactedError(`etcd at ${endpoint}: revision ${String(body.revision)} was compacted`);
      // grpc-gateway: ResourceExhausted (8) when the page is over etcd's own message limit.
      if (json.code === 8 || /larger than max|too large/i.test(message)) throw new TooLargeError();
      if (status === 401 || status === 403 || json.code === 7 || json.code === 16) {
        throw new KeywardError('PermissionDenied', `etcd at ${endpoint} refused the read: ${message}`);
      }
      throw new KeywardError('Unavailable', `etcd at ${endpoint} answered HTTP ${status}: ${message}`);
    }
    const revision = Number(json.header?.revision);
    if (!Number.isSafeInteger(revision) || revision < 1) throw new KeywardError('Unavailable', `etcd at ${endpoint} answered without a revision`);
    const kvs = (json.kvs ?? []).map((kv) => ({ key: Buffer.from(kv.key ?? '', 'base64'), value: Buffer.from(kv.value ?? '', 'base64') }));
    const last = kvs.at(-1)?.key;
    return {
      kvs: kvs.map((kv) => ({ key: kv.key.toString('utf8'), value: kv.value })),
      revision,
      // The smallest key after the last one read.
      nextKey: json.more && last ? Buffer.concat([last, Buffer.from([0])]) : undefined,
      bytes: raw.length,
    };
  }
}
