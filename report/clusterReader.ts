// Reads from the apiserver for the compliance report: GETs only, with the credentials of a
// kubeconfig (any context, exec and token plugins included, as kubectl would use them) or of the
// in-cluster ServiceAccount. Each read ends as a Readout: the value, or why it could not be had
// (not installed, forbidden, failed), so the report can say `unknown` instead of guessing.
import { request } from 'node:https';
import { KubeConfig } from '@kubernetes/client-node';
import { setupError } from '../core/errors.js';

export type Readout<T> =
  | { state: 'read'; value: T }
  /** The API (a CRD, an API group) is not served: 404. */
  | { state: 'absent'; reason: string }
  /** 401 or 403: the report's identity may not read it. */
  | { state: 'forbidden'; reason: string }
  | { state: 'failed'; reason: string };

export interface ClusterReader {
  /** The apiserver's URL, shown in the report. */
  readonly server: string;
  /** The kubeconfig context used, if any. */
  readonly context: string | undefined;
  json<T>(path: string): Promise<Readout<T>>;
  text(path: string): Promise<Readout<string>>;
}

export interface ClusterReaderOptions {
  kubeconfig?: string;
  context?: string;
  timeoutMs?: number;
}

/** A reader from --kubeconfig (else KUBECONFIG, ~/.kube/config or in-cluster) and --context. */
export function clusterReader(options: ClusterReaderOptions = {}): ClusterReader {
  const kubeConfig = new KubeConfig();
  try {
    if (options.kubeconfig) kubeConfig.loadFromFile(options.kubeconfig);
    else kubeConfig.loadFromDefault();
  } catch (err) {
    throw setupError(`cannot read the kubeconfig: ${(err as Error).message.split('\n')[0]}`);
  }
  if (options.context) {
    if (!kubeConfig.getContextObject(options.context)) throw setupError(`the kubeconfig has no context '${options.context}'`);
    kubeConfig.setCurrentContext(options.context);
  }
  const cluster = kubeConfig.getCurrentCluster();
  if (!cluster) throw setupError('the kubeconfig has no current cluster');
  return readerFor(kubeConfig, cluster.server.replace(/\/$/, ''), options.context ?? (kubeConfig.getCurrentContext() || undefined), options.timeoutMs ?? 15_000);
}

function readerFor(kubeConfig: KubeConfig, server: string, context: string | undefined, timeoutMs: number): ClusterReader {
  const get = async (path: string, accept: string): Promise<Readout<string>> => {
    const options: Parameters<typeof request>[1] = { method: 'GET', headers: { accept }, timeout: timeoutMs };
    await kubeConfig.applyToHTTPSOptions(options);
    return new Promise((resolve) => {
      const req = request(`${server}${path}`, options, (res) => {
        res.setEncoding('utf8');
        let body = '';
        res.on('data', (chunk: string) => (body += chunk));
        res.on('error', (err) => resolve({ state: 'failed', reason: `GET ${path}: ${err.message}` }));
        res.on('end', () => resolve(readout(path, res.statusCode ?? 0, body)));
      });
      req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
      req.on('error', (err) => resolve({ state: 'failed', reason: `GET ${path}: ${err.message}` }));
      req.end();
    });
  };
  return {
    server,
    context,
    async json<T>(path: string): Promise<Readout<T>> {
      const answer = await get(path, 'application/json');
      if (answer.state !== 'read') return answer;
      try {
        return { state: 'read', value: JSON.parse(answer.value) as T };
      } catch {
        return { state: 'failed', reason: `GET ${path}: the answer is not JSON` };
      }
    },
    text: (path) => get(path, 'text/plain'),
  };
}

function readout(path: string, status: number, body: string): Readout<string> {
  if (status >= 200 && status < 300) return { state: 'read', value: body };
  let message = body.slice(0, 200);
  try {
    message = (JSON.parse(body) as { message?: string }).message ?? message;
  } catch {
    // Not a Status object.
  }
  const reason = `GET ${path.split('?')[0]}: HTTP ${status}${message ? `: ${message}` : ''}`;
  if (status === 404) return { state: 'absent', reason };
  if (status === 401 || status === 403) return { state: 'forbidden', reason };
  return { state: 'failed', reason };
}
