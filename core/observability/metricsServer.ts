// The metrics and health listener, separate from the gRPC socket: /metrics (Prometheus text),
// /livez (the process answers) and /healthz (the component's own check, with its reason).
import { createServer, type Server } from 'node:http';
import type { Registry } from 'prom-client';
import { setupError } from '../errors.js';

export interface HealthCheck {
  ok: boolean;
  reason: string;
}

export interface MetricsServer {
  /** host:port actually bound (port 0 picks a free one). */
  readonly address: string;
  close(): Promise<void>;
}

/** `what` names the listener in the error, e.g. 'metrics' or 'webhook'. */
export function parseListenAddress(address: string, what = 'metrics'): { host: string; port: number } {
  const match = /^(.*):(\d{1,5})$/.exec(address);
  const port = Number(match?.[2]);
  if (!match || port > 65535) throw setupError(`${what} address '${address}' is not host:port`);
  return { host: match[1]?.replace(/^\[|\]$/g, '') || '127.0.0.1', port };
}

export async function startMetricsServer(address: string, registry: Registry, health: () => HealthCheck): Promise<MetricsServer> {
  const { host, port } = parseListenAddress(address);
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET') {
      res.writeHead(405).end();
    } else if (path === '/metrics') {
      registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
        () => res.writeHead(500).end('metrics unavailable\n'),
      );
    } else if (path === '/livez') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (path === '/healthz' || path === '/readyz') {
      const check = health();
      res.writeHead(check.ok ? 200 : 503, { 'content-type': 'text/plain' }).end(`${check.ok ? 'ok' : check.reason}\n`);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(setupError(`cannot listen for metrics on ${address}: ${err.code === 'EADDRINUSE' ? 'the port is in use' : err.message}`)),
    );
    server.listen(port, host, resolve);
  });
  const bound = server.address();
  const boundPort = typeof bound === 'object' && bound ? bound.port : port;
  return {
    address: `${host.includes(':') ? `[${host}]` : host}:${boundPort}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
