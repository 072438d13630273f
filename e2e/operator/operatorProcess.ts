// The operator run as its own process through the CLI, the way its Deployment runs it: for crash,
// leader-election and end-to-end tests and the benchmark. Its log goes to a file in `dir`.
import { writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import type { SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { ComponentProcess } from '../../testbed/control-plane/componentProcess.js';
import { freePort } from '../../testbed/control-plane/network.js';
import { keywardCli } from '../kms/kmsPluginProcess.js';

/** How the operator's Node runs in production (the chart): a small young generation keeps its resident set low. */
export const operatorNodeFlags = ['--max-semi-space-size=4'];

export interface OperatorProcessOptions {
  hsm: Pick<SoftHsmToken, 'modulePath' | 'label' | 'pin' | 'env'>;
  kubeconfigPath: string;
  /** Holds the PIN file and the log; the caller owns it. */
  dir: string;
  identity: string;
  leaseNamespace?: string;
  leaseSeconds?: number;
  workers?: number;
  readyTimeoutMs?: number;
  /** Serve the admission webhook at `address` (host:port) from `certDir` (tls.crt, tls.key). */
  webhook?: { address: string; certDir: string };
  /** --audit-log: a file, or '-' (the default) for standard output, which goes to the log file. */
  auditLog?: string;
}

export interface OperatorProcess {
  readonly identity: string;
  readonly metricsUrl: string;
  readonly logFile: string;
  readonly process: ComponentProcess;
  /** host:port of the admission webhook, when asked for. */
  readonly webhookAddress: string | undefined;
}

/** Whether an HTTPS server answers GET /healthz with 200; its certificate is not checked (readiness only). */
function httpsHealthy(address: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request(`https://${address}/healthz`, { rejectUnauthorized: false, timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}

export async function startOperatorProcess(options: OperatorProcessOptions): Promise<OperatorProcess> {
  const { hsm, dir, identity } = options;
  const pinFile = join(dir, 'operator.pin');
  writeFileSync(pinFile, hsm.pin, { mode: 0o600 });
  const metricsAddress = `127.0.0.1:${await freePort()}`;
  const logFile = join(dir, `operator-${identity}.log`);
  const operator = new ComponentProcess(
    `keyward operator (${identity})`,
    process.execPath,
    [
      ...operatorNodeFlags,
      keywardCli,
      'operator',
      `--pkcs11-module=${hsm.modulePath}`,
      `--token-label=${hsm.label}`,
      `--pin-file=${pinFile}`,
      `--metrics-address=${metricsAddress}`,
      `--lease-namespace=${options.leaseNamespace ?? 'default'}`,
      `--identity=${identity}`,
      `--lease-duration=${options.leaseSeconds ?? 15}`,
      `--workers=${options.workers ?? 4}`,
      ...(options.webhook ? [`--webhook-address=${options.webhook.address}`, `--webhook-cert-dir=${options.webhook.certDir}`] : []),
      ...(options.auditLog ? [`--audit-log=${options.auditLog}`] : []),
    ],
    logFile,
    { ...process.env, ...hsm.env, KUBECONFIG: options.kubeconfigPath },
  );
  const metricsUrl = `http://${metricsAddress}`;
  await operator.waitReady(async () => (await fetch(`${metricsUrl}/livez`)).ok, options.readyTimeoutMs ?? 30_000, 'serving (/livez)');
  const webhookAddress = options.webhook?.address;
  // The webhook listens once the first list of KeyPolicies is in, a moment after /livez.
  if (webhookAddress) await operator.waitReady(() => httpsHealthy(webhookAddress), options.readyTimeoutMs ?? 30_000, `serving the webhook on ${webhookAddress}`);
  return { identity, metricsUrl, logFile, process: operator, webhookAddress };
}
