// The etcd scanner run as its own process through the CLI, the way it runs beside the KMS plugin
// in its static pod: for e2e tests and the benchmark. Its log goes to a file in `dir`.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { ComponentProcess } from '../../testbed/control-plane/componentProcess.js';
import { freePort } from '../../testbed/control-plane/network.js';
import { keywardCli } from '../kms/kmsPluginProcess.js';

export interface ScannerProcessOptions {
  hsm: Pick<SoftHsmToken, 'modulePath' | 'label' | 'pin' | 'env'>;
  ringName: string;
  ringNamespace?: string;
  providerName: string;
  etcdEndpoint: string;
  /** Holds the PIN file and the log; the caller owns it. */
  dir: string;
  intervalSeconds?: number;
  pagesPerSecond?: number;
  extraArgs?: string[];
}

export interface ScannerProcess {
  readonly metricsUrl: string;
  readonly logFile: string;
  readonly process: ComponentProcess;
}

export async function startScannerProcess(options: ScannerProcessOptions): Promise<ScannerProcess> {
  const { hsm, dir } = options;
  const pinFile = join(dir, 'scanner.pin');
  writeFileSync(pinFile, hsm.pin, { mode: 0o600 });
  const metricsAddress = `127.0.0.1:${await freePort()}`;
  const logFile = join(dir, 'etcd-scanner.log');
  const scanner = new ComponentProcess(
    'keyward etcd-scanner',
    process.execPath,
    [
      keywardCli,
      'etcd-scanner',
      `--ring=${options.ringName}`,
      ...(options.ringNamespace ? [`--namespace=${options.ringNamespace}`] : []),
      `--provider-name=${options.providerName}`,
      `--etcd-endpoints=${options.etcdEndpoint}`,
      `--interval=${options.intervalSeconds ?? 300}`,
      ...(options.pagesPerSecond ? [`--pages-per-second=${options.pagesPerSecond}`] : []),
      `--pkcs11-module=${hsm.modulePath}`,
      `--token-label=${hsm.label}`,
      `--pin-file=${pinFile}`,
      `--metrics-address=${metricsAddress}`,
      `--audit-log=${join(dir, 'scanner-audit.log')}`,
      ...(options.extraArgs ?? []),
    ],
    logFile,
    { ...process.env, ...hsm.env },
  );
  const metricsUrl = `http://${metricsAddress}`;
  await scanner.waitReady(async () => (await fetch(`${metricsUrl}/healthz`)).ok, 30_000, 'healthy (/healthz)');
  return { metricsUrl, logFile, process: scanner };
}
