// Rewrites every object of one resource unchanged, so kube-apiserver stores it again under the
// KMS key it now encrypts with. An unchanged PUT of an object read under an older key id is written
// (the apiserver marks such data stale); one already under the current key is a no-op in etcd.
// Paged, rate-limited and cancellable; conflicts and deletions mean someone else wrote the object
// meanwhile, which re-encrypted it too.
import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { Agent, request as httpsRequest, type RequestOptions } from 'node:https';
import type { KubeConfig } from '@kubernetes/client-node';

export interface RewriteProgress {
  rewritten: number;
  failed: number;
  /** Up to maxNamedFailures objects that could not be rewritten, with why. */
  failures: string[];
}

export interface RewriteOptions {
  maxWritesPerSecond: number;
  signal: AbortSignal;
  /** Called after each page with the totals so far. */
  onProgress?: (progress: RewriteProgress) => void;
  pageSize?: number;
  concurrency?: number;
}

const maxNamedFailures = 20;
/** An apiserver restarting or overloaded is waited for this long before a request counts as failed. */
const transientRetryMs = 120_000;
const requestTimeoutMs = 30_000;
/** The list response is read whole: 500 Secrets of at most 1 MiB each is the worst case. */
const maxResponseBytes = 600 * 1024 * 1024;

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

interface KubeObject {
  metadata?: { name?: string; namespace?: string; resourceVersion?: string };
}

/** The apiserver path of a resource named as the EncryptionConfiguration names it (`secrets`, `widgets.example.com`). */
export async function resourcePath(kubeConfig: KubeConfig, resource: string): Promise<string> {
  const dot = resource.indexOf('.');
  if (dot < 0) return `/api/v1/${resource}`;
  const plural = resource.slice(0, dot);
  const group = resource.slice(dot + 1);
  const info = await apiRequest<{ preferredVersion?: { groupVersion?: string } }>(kubeConfig, 'GET', `/apis/${group}`);
  const groupVersion = info.preferredVersion?.groupVersion;
  if (!groupVersion) throw new Error(`the apiserver serves no version of API group ${group}`);
  return `/apis/${groupVersion}/${plural}`;
}

/** Rewrites every object of `resource`, across all namespaces; resolves with the totals. */
export async function rewriteResource(kubeConfig: KubeConfig, resource: string, options: RewriteOptions): Promise<RewriteProgress> {
  const progress: RewriteProgress = { rewritten: 0, failed: 0, failures: [] };
  const base = await resourcePath(kubeConfig, resource);
  const pace = pacer(options.maxWritesPerSecond);
  const concurrency = options.concurrency ?? 4;
  let continueToken: string | undefined;
  do {
    options.signal.throwIfAborted();
    const query = new URLSearchParams({ limit: String(options.pageSize ?? 500) });
    if (continueToken) query.set('continue', continueToken);
    const page = await retryTransient(options.signal, () => apiRequest<{ items?: KubeObject[]; metadata?: { continue?: string } }>(kubeConfig, 'GET', `${base}?${query.toString()}`));
    const items = page.items ?? [];
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < items.length) {
        const item = items[next++]!;
        await pace(options.signal);
        const failure = await rewriteObject(kubeConfig, base, item, resource, options.signal);
        if (failure === undefined) progress.rewritten++;
        else {
          progress.failed++;
          if (progress.failures.length < maxNamedFailures) progress.failures.push(failure);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
    options.onProgress?.({ ...progress, failures: [...progress.failures] });
    continueToken = page.metadata?.continue || undefined;
  } while (continueToken);
  return progress;
}

/** Undefined when rewritten (or written meanwhile by someone else), else what went wrong. */
async function rewriteObject(kubeConfig: KubeConfig, base: string, item: KubeObject, resource: string, signal: AbortSignal): Promise<string | undefined> {
  const { name = '', namespace } = item.metadata ?? {};
  const path = namespace ? base.replace(/\/([^/]+)$/, `/namespaces/${encodeURIComponent(namespace)}/$1`) : base;
  try {
    await retryTransient(signal, () => apiRequest(kubeConfig, 'PUT', `${path}/${encodeURIComponent(name)}`, item));
    return undefined;
  } catch (err) {
    signal.throwIfAborted();
    // 409: changed since listed; 404: deleted since listed. Either way written or gone.
    if (err instanceof HttpError && (err.status === 409 || err.status === 404)) return undefined;
    return `${resource} ${namespace ? `${namespace}/` : ''}${name}: ${(err as Error).message.slice(0, 200)}`;
  }
}

/**
 * Tries again while the failure may pass (no answer, 429, 5xx: an apiserver restarting or busy),
 * for up to transientRetryMs; a refusal (a webhook, validation, a conflict) is final.
 */
export async function retryTransient<T>(signal: AbortSignal, attempt: () => Promise<T>): Promise<T> {
  const giveUpAt = Date.now() + transientRetryMs;
  for (let delay = 200; ; delay = Math.min(delay * 2, 5000)) {
    try {
      return await attempt();
    } catch (err) {
      const transient = !(err instanceof HttpError) || err.status === 429 || err.status >= 500;
      if (!transient || Date.now() + delay > giveUpAt) throw err;
      signal.throwIfAborted();
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
}

/** A token bucket shared by the workers: at most `perSecond` starts per second, bursts of one second. */
function pacer(perSecond: number): (signal: AbortSignal) => Promise<void> {
  let tokens = perSecond;
  let refilledAt = Date.now();
  return async (signal) => {
    for (;;) {
      signal.throwIfAborted();
      const now = Date.now();
      tokens = Math.min(perSecond, tokens + ((now - refilledAt) / 1000) * perSecond);
      refilledAt = now;
      if (tokens >= 1) {
        tokens -= 1;
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, Math.ceil(((1 - tokens) / perSecond) * 1000)));
    }
  };
}

/** One JSON request with the kubeconfig's credentials and a deadline. */
export async function apiRequest<T>(kubeConfig: KubeConfig, method: 'GET' | 'PUT' | 'POST' | 'DELETE', path: string, body?: unknown): Promise<T> {
  const cluster = kubeConfig.getCurrentCluster();
  if (!cluster) throw new Error('the kubeconfig has no current cluster');
  const options: RequestOptions = { method, headers: { accept: 'application/json' }, timeout: requestTimeoutMs };
  await kubeConfig.applyToHTTPSOptions(options);
  options.agent = keepAliveAgent(options.agent);
  const payload = body === undefined ? undefined : JSON.stringify(body);
  if (payload !== undefined) Object.assign(options.headers ?? {}, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(payload)) });
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    const req = httpsRequest(`${cluster.server.replace(/\/$/, '')}${path}`, options, resolve);
    req.once('timeout', () => req.destroy(new Error(`${method} ${path.split('?')[0]}: no answer within ${requestTimeoutMs / 1000} s`)));
    req.once('error', reject);
    req.end(payload);
  });
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res) {
    size += (chunk as Buffer).length;
    if (size > maxResponseBytes) {
      res.destroy();
      throw new Error(`${method} ${path.split('?')[0]}: answer larger than ${maxResponseBytes} bytes`);
    }
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  const status = res.statusCode ?? 0;
  if (status < 200 || status >= 300) {
    let message = text.slice(0, 300);
    try {
      message = (JSON.parse(text) as { message?: string }).message ?? message;
    } catch {
      // Not a Status object: the text says enough.
    }
    throw new HttpError(status, `HTTP ${status}: ${message}`);
  }
  return (text ? JSON.parse(text) : {}) as T;
}

let shared: { identity: string; agent: Agent } | undefined;

/**
 * One keep-alive agent for as long as the TLS identity stays the same, instead of the new agent
 * client-node makes for every request: without it each rewrite opened a TCP connection, parsed
 * the CA, certificate and key again and did a full TLS handshake (with a client certificate to
 * verify on the apiserver's side), which made the operator's and the apiserver's CPU, not the rate
 * limit, what bounded the rewrite. A rotated certificate or CA gets a new pool; the old one drains.
 */
function keepAliveAgent(made: RequestOptions['agent']): RequestOptions['agent'] {
  // Proxy agents (subclasses) and anything else stay as client-node made them.
  if (!(made instanceof Agent) || made.constructor !== Agent) return made;
  const hash = createHash('sha256');
  const { ca, cert, key, pfx, passphrase, servername, rejectUnauthorized } = made.options;
  for (const part of [ca, cert, key, pfx, passphrase, servername, rejectUnauthorized].flat()) {
    hash.update(Buffer.isBuffer(part) ? part : (JSON.stringify(part) ?? 'undefined')).update('\0');
  }
  const identity = hash.digest('hex');
  if (shared?.identity !== identity) {
    shared = { identity, agent: new Agent({ ...made.options, keepAlive: true }) };
  }
  return shared.agent;
}

export const isHttpStatus = (err: unknown, status: number): boolean => err instanceof HttpError && err.status === status;
