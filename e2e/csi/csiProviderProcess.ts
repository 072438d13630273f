// The CSI provider run as its own process through the CLI, the way its DaemonSet runs it: for the
// quickstart and benchmarks. Its log and audit output go to files in `dir`.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { ComponentProcess } from '../../testbed/control-plane/componentProcess.js';
import { freePort } from '../../testbed/control-plane/network.js';
import { keywardCli } from '../kms/kmsPluginProcess.js';

/** How the chart runs the provider's Node (csi-provider-daemonset.yaml): within the driver's 100 MiB. */
export const csiProviderNodeFlags = ['--max-semi-space-size=2', '--max-old-space-size=64'];

export interface CsiProviderProcessOptions {
  hsm: Pick<SoftHsmToken, 'modulePath' | 'label' | 'pin' | 'env'>;
  kubeconfigPath: string;
  /** Holds the providers directory, PIN file, log and audit files; the caller owns it. */
  dir: string;
  audience?: string;
  /** The node whose pods the provider watches; pods on no node (as tests create them) are not seen. */
  nodeName?: string;
  /** Extra CLI flags, e.g. --ring-refresh=0.5. */
  flags?: string[];
  /** Node flags; by default the chart's. */
  nodeFlags?: string[];
  readyTimeoutMs?: number;
}

export interface CsiProviderProcess {
  readonly socketPath: string;
  readonly metricsUrl: string;
  readonly logFile: string;
  readonly auditFile: string;
  readonly process: ComponentProcess;
}

export async function startCsiProviderProcess(options: CsiProviderProcessOptions): Promise<CsiProviderProcess> {
  const { hsm, dir } = options;
  const pinFile = join(dir, 'csi-provider.pin');
  writeFileSync(pinFile, hsm.pin, { mode: 0o600 });
  const socketDir = join(dir, 'providers');
  const metricsAddress = `127.0.0.1:${await freePort()}`;
  const auditFile = join(dir, 'csi-audit.log');
  const logFile = join(dir, 'csi-provider.log');
  const provider = new ComponentProcess(
    'keyward csi-provider',
    process.execPath,
    [
      ...(options.nodeFlags ?? csiProviderNodeFlags),
      keywardCli,
      'csi-provider',
      `--socket-dir=${socketDir}`,
      `--audience=${options.audience ?? 'keyward'}`,
      `--node-name=${options.nodeName ?? 'keyward-test-node'}`,
      `--pkcs11-module=${hsm.modulePath}`,
      `--token-label=${hsm.label}`,
      `--pin-file=${pinFile}`,
      `--metrics-address=${metricsAddress}`,
      `--audit-log=${auditFile}`,
      ...(options.flags ?? []),
    ],
    logFile,
    { ...process.env, ...hsm.env, KUBECONFIG: options.kubeconfigPath },
  );
  const metricsUrl = `http://${metricsAddress}`;
  await provider.waitReady(async () => (await fetch(`${metricsUrl}/healthz`)).ok, options.readyTimeoutMs ?? 30_000, 'healthy (/healthz)');
  return { socketPath: join(socketDir, 'keyward.sock'), metricsUrl, logFile, auditFile, process: provider };
}
