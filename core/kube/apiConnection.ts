// A small apiserver client for the node-side components, which run within the CSI driver's
// 100 MiB memory budget per provider: @kubernetes/client-node loads every generated API and model
// (about 70 MiB resident) to make the two kinds of call the CSI provider needs, a POST of a
// TokenReview and a list and watch of KeyPolicies. This speaks JSON over HTTPS on keep-alive
// connections, with the credentials of the in-cluster ServiceAccount or of a kubeconfig file
// (client certificates or a bearer token; exec and auth-provider plugins are not supported).
// Every call has a deadline and is cancelled when it passes, so a hung apiserver fails a call
// instead of holding it (and every caller that shares it) forever.
import { readFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { Agent, request as httpsRequest } from 'node:https';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join } from 'node:path';
import { load } from 'js-yaml';
import { setupError } from '../errors.js';

/** An answer the apiserver gave with a status other than 2xx. */
export class ApiStatusError extends Error {
  constructor(
    readonly statusCode: number,
    message: string,
  ) {
    super(message);
  }
}

/** The apiserver did not answer, or a watch fell silent, within its deadline; the HTTP request was cancelled. */
export class ApiTimeoutError extends Error {
  override readonly name = 'ApiTimeoutError';
  constructor(
    readonly timeoutMs: number,
    message: string,
  ) {
    super(message);
  }
}

export interface ApiConnectionOptions {
  /** Deadline for a whole request(), and for a watch to begin answering; 10 s by default. */
  requestTimeoutMs?: number;
  /**
   * A watch that sends nothing, not even a bookmark, for this long is cancelled, so the informer
   * watches again from where it was; 2 min by default. A quiet but healthy watch restarted costs
   * one request; a frozen connection is otherwise never noticed.
   */
  watchIdleMs?: number;
}

export const defaultRequestTimeoutMs = 10_000;
export const defaultWatchIdleMs = 120_000;

export interface ApiConnection {
  readonly server: string;
  /** One JSON request; rejects with ApiStatusError for a non-2xx answer, ApiTimeoutError past its deadline. */
  request<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T>;
  /**
   * A streamed GET (a watch): `onLine` gets each line of the body; resolves when the stream ends,
   * rejects with ApiTimeoutError when it does not begin in time or falls silent.
   */
  stream(path: string, onLine: (line: string) => void, signal: AbortSignal): Promise<void>;
  close(): void;
}

interface Credentials {
  server: string;
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  /** Read again at most once a minute: projected ServiceAccount tokens are rotated. */
  tokenFile?: string;
  token?: string;
}

const serviceAccountDir = '/var/run/secrets/kubernetes.io/serviceaccount';
const tokenRereadMs = 60_000;

/** KUBECONFIG (its first file), else ~/.kube/config, else the in-cluster ServiceAccount. */
export function loadApiConnection(kubeconfigPath = process.env.KUBECONFIG?.split(':')[0], options: ApiConnectionOptions = {}): ApiConnection {
  const defaultPath = join(homedir(), '.kube', 'config');
  if (kubeconfigPath) return apiConnection(fromKubeconfig(kubeconfigPath), options);
  if (process.env.KUBERNETES_SERVICE_HOST) return apiConnection(inCluster(), options);
  return apiConnection(fromKubeconfig(defaultPath), options);
}

function inCluster(): Credentials {
  const host = process.env.KUBERNETES_SERVICE_HOST ?? '';
  const port = process.env.KUBERNETES_SERVICE_PORT ?? '443';
  return {
    server: `https://${host.includes(':') ? `[${host}]` : host}:${port}`,
    ca: readFileSync(join(serviceAccountDir, 'ca.crt')),
    tokenFile: join(serviceAccountDir, 'token'),
  };
}

type Named<T> = { name: string } & T;
interface Kubeconfig {
  'current-context'?: string;
  contexts?: Named<{ context: { cluster: string; user: string } }>[];
  clusters?: Named<{ cluster: { server: string; 'certificate-authority'?: string; 'certificate-authority-data'?: string } }>[];
  users?: Named<{ user: Record<string, unknown> }>[];
}

function fromKubeconfig(path: string): Credentials {
  let config: Kubeconfig;
  try {
    config = load(readFileSync(path, 'utf8')) as Kubeconfig;
  } catch (err) {
    throw setupError(`cannot read kubeconfig ${path}: ${(err as Error).message.split('\n')[0]}`);
  }
  const context = config.contexts?.find((c) => c.name === config['current-context'])?.context;
  const cluster = config.clusters?.find((c) => c.name === context?.cluster)?.cluster;
  const user = config.users?.find((u) => u.name === context?.user)?.user ?? {};
  if (!context || !cluster?.server) throw setupError(`kubeconfig ${path} has no current context with a cluster server`);
  if (!cluster.server.startsWith('https://')) throw setupError(`kubeconfig ${path}: the server must be https, not ${cluster.server}`);
  if (user.exec || user['auth-provider']) throw setupError(`kubeconfig ${path}: exec and auth-provider credentials are not supported here; use a client certificate or a token`);
  const base = dirname(path);
  const file = (name: unknown): Buffer | undefined => (typeof name === 'string' ? readFileSync(isAbsolute(name) ? name : join(base, name)) : undefined);
  const data = (value: unknown): Buffer | undefined => (typeof value === 'string' ? Buffer.from(value, 'base64') : undefined);
  return {
    server: cluster.server.replace(/\/$/, ''),
    ca: data(cluster['certificate-authority-data']) ?? file(cluster['certificate-authority']),
    cert: data(user['client-certificate-data']) ?? file(user['client-certificate']),
    key: data(user['client-key-data']) ?? file(user['client-key']),
    token: typeof user.token === 'string' ? user.token : undefined,
    tokenFile: typeof user.tokenFile === 'string' ? user.tokenFile : undefined,
  };
}

/**
 * A cancellable request: `arm` (again) starts its deadline, `outer` (a watch's stop) cancels it too.
 * `explain` turns whatever error the cancelled request ended with into the ApiTimeoutError.
 */
function deadline(outer?: AbortSignal) {
  const controller = new AbortController();
  const cancel = (): void => controller.abort(outer?.reason);
  if (outer?.aborted) cancel();
  outer?.addEventListener('abort', cancel, { once: true });
  let timer: NodeJS.Timeout | undefined;
  return {
    signal: controller.signal,
    arm(ms: number, message: string): void {
      clearTimeout(timer);
      timer = setTimeout(() => controller.abort(new ApiTimeoutError(ms, message)), ms);
    },
    clear(): void {
      clearTimeout(timer);
      outer?.removeEventListener('abort', cancel);
    },
    explain(err: unknown): unknown {
      const reason: unknown = controller.signal.reason;
      return reason instanceof ApiTimeoutError ? reason : err;
    },
  };
}

function apiConnection(credentials: Credentials, options: ApiConnectionOptions): ApiConnection {
  const requestTimeoutMs = options.requestTimeoutMs ?? defaultRequestTimeoutMs;
  const watchIdleMs = options.watchIdleMs ?? defaultWatchIdleMs;
  const agent = new Agent({ keepAlive: true, ca: credentials.ca, cert: credentials.cert, key: credentials.key });
  let token = credentials.token;
  let tokenReadAt = -Infinity;
  const authorization = (): Record<string, string> => {
    if (credentials.tokenFile && Date.now() - tokenReadAt > tokenRereadMs) {
      token = readFileSync(credentials.tokenFile, 'utf8').trim();
      tokenReadAt = Date.now();
    }
    return token ? { authorization: `Bearer ${token}` } : {};
  };

  const readBody = async (res: IncomingMessage): Promise<string> => {
    res.setEncoding('utf8');
    let text = '';
    for await (const chunk of res) text += chunk as string;
    return text;
  };

  const send = (method: string, path: string, body: string | undefined, signal?: AbortSignal) =>
    new Promise<IncomingMessage>((resolve, reject) => {
      const headers: Record<string, string> = { accept: 'application/json', ...authorization() };
      if (body !== undefined) Object.assign(headers, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) });
      const req = httpsRequest(`${credentials.server}${path}`, { method, agent, headers, signal }, resolve);
      req.once('error', reject);
      req.end(body);
    });

  const failure = async (res: IncomingMessage, method: string, path: string): Promise<ApiStatusError> => {
    const text = await readBody(res);
    let message = text.slice(0, 300);
    try {
      message = (JSON.parse(text) as { message?: string }).message ?? message;
    } catch {
      // Not a Status object; the text says enough.
    }
    return new ApiStatusError(res.statusCode ?? 0, `${method} ${path.split('?')[0]}: HTTP ${res.statusCode}: ${message}`);
  };

  return {
    server: credentials.server,
    async request<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
      const call = deadline();
      call.arm(requestTimeoutMs, `${method} ${path.split('?')[0]}: the apiserver did not answer within ${requestTimeoutMs} ms`);
      try {
        const res = await send(method, path, body === undefined ? undefined : JSON.stringify(body), call.signal);
        if ((res.statusCode ?? 0) >= 300) throw await failure(res, method, path);
        const text = await readBody(res);
        call.signal.throwIfAborted();
        return JSON.parse(text) as T;
      } catch (err) {
        throw call.explain(err);
      } finally {
        call.clear();
      }
    },
    async stream(path, onLine, signal) {
      const watch = deadline(signal);
      const what = `watch ${path.split('?')[0]}`;
      watch.arm(requestTimeoutMs, `${what}: the apiserver did not answer within ${requestTimeoutMs} ms`);
      try {
        const res = await send('GET', path, undefined, watch.signal);
        if ((res.statusCode ?? 0) >= 300) throw await failure(res, 'GET', path);
        const idle = `${what}: nothing for ${watchIdleMs} ms`;
        watch.arm(watchIdleMs, idle);
        let pending = '';
        res.setEncoding('utf8');
        for await (const chunk of res) {
          watch.arm(watchIdleMs, idle);
          pending += chunk as string;
          let end: number;
          while ((end = pending.indexOf('\n')) >= 0) {
            const line = pending.slice(0, end);
            pending = pending.slice(end + 1);
            if (line.trim()) onLine(line);
          }
        }
        watch.signal.throwIfAborted();
      } catch (err) {
        throw watch.explain(err);
      } finally {
        watch.clear();
      }
    },
    close: () => agent.destroy(),
  };
}
