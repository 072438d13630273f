// The metrics and health listener, separate from the gRPC socket: /metrics (Prometheus text),
// /livez (the process answers) and /healthz (the component's own check, with its reason).
// Optionally a second listener serves /metrics only over HTTPS to clients holding a certificate
// from one CA: for the KMS static pod, whose plain listener stays on loopback for the kubelet's
// probes while Prometheus scrapes the node address (see kms-plugin-static-pod.yaml).
import { readFileSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
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
  return listen(createServer(handler(registry, health)), address);
}

export interface TlsMetricsConfig {
  /** host:port, e.g. the node's address. */
  address: string;
  certFile: string;
  keyFile: string;
  /** Only clients with a certificate this CA signed may connect. */
  clientCaFile: string;
}

const certReloadMs = 60_000;

/**
 * /metrics only (no health: probes use the plain listener), over HTTPS with a required client
 * certificate. Renewed files are picked up within a minute, without a restart.
 */
export async function startTlsMetricsServer(config: TlsMetricsConfig, registry: Registry): Promise<MetricsServer> {
  const credentials = (): { cert: Buffer; key: Buffer; ca: Buffer } => ({
    cert: readFileSync(config.certFile),
    key: readFileSync(config.keyFile),
    ca: readFileSync(config.clientCaFile),
  });
  let loaded: ReturnType<typeof credentials>;
  try {
    loaded = credentials();
  } catch (err) {
    throw setupError(`cannot read the metrics TLS files: ${(err as Error).message}`);
  }
  const server = createTlsServer({ ...loaded, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' }, handler(registry));
  const files = [config.certFile, config.keyFile, config.clientCaFile];
  const mtimes = (): string => files.map((file) => statSync(file).mtimeMs).join();
  let seen = mtimes();
  const reload = setInterval(() => {
    try {
      const now = mtimes();
      if (now !== seen) {
        server.setSecureContext({ ...credentials() });
        seen = now;
      }
    } catch {
      // Mid-rotation or gone: keep serving with what was loaded.
    }
  }, certReloadMs);
  reload.unref();
  try {
    const listening = await listen(server, config.address);
    return {
      address: listening.address,
      close: () => {
        clearInterval(reload);
        server.closeAllConnections();
        return listening.close();
      },
    };
  } catch (err) {
    clearInterval(reload);
    throw err;
  }
}

/** GET /metrics, and with a health check /livez, /healthz and /readyz. */
function handler(registry: Registry, health?: () => HealthCheck): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET') {
      res.writeHead(405).end();
    } else if (path === '/metrics') {
      registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
        () => res.writeHead(500).end('metrics unavailable\n'),
      );
    } else if (health && path === '/livez') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (health && (path === '/healthz' || path === '/readyz')) {
      const check = health();
      res.writeHead(check.ok ? 200 : 503, { 'content-type': 'text/plain' }).end(`${check.ok ? 'ok' : check.reason}\n`);
    } else {
      res.writeHead(404).end();
    }
  };
}

async function listen(server: Server, address: string): Promise<MetricsServer> {
  const { host, port } = parseListenAddress(address);
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
