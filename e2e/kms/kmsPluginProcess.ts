// The KMS plugin run as its own process through the CLI, the way a static pod runs it: for e2e
// tests, benchmarks and the quickstart. Its log and audit output go to files in `dir`.
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { ComponentProcess } from '../control-plane/componentProcess.js';
import { freePort } from '../control-plane/network.js';

export const keywardCli = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'cli', 'keyward.js');

/**
 * How the plugin's Node runs in production (static pod, chart). Its live heap is about 20 MiB;
 * without limits V8 lets garbage pile up to 150 MiB resident under load before collecting.
 */
export const kmsPluginNodeFlags = ['--max-semi-space-size=4', '--max-old-space-size=48'];

export interface KmsPluginProcessOptions {
  hsm: Pick<SoftHsmToken, 'modulePath' | 'label' | 'pin' | 'env'>;
  ringName: string;
  /** Holds the socket, PIN file, log and audit files; the caller owns it. */
  dir: string;
  refreshSeconds?: number;
  readyTimeoutMs?: number;
}

export interface KmsPluginProcess {
  readonly socketPath: string;
  readonly metricsUrl: string;
  readonly logFile: string;
  readonly auditFile: string;
  readonly process: ComponentProcess;
}

export async function startKmsPluginProcess(options: KmsPluginProcessOptions): Promise<KmsPluginProcess> {
  const { hsm, dir } = options;
  const pinFile = join(dir, 'plugin.pin');
  writeFileSync(pinFile, hsm.pin, { mode: 0o600 });
  const socketPath = join(dir, 'kms.sock');
  const metricsAddress = `127.0.0.1:${await freePort()}`;
  const auditFile = join(dir, 'kms-audit.log');
  const logFile = join(dir, 'kms-plugin.log');
  const plugin = new ComponentProcess(
    'keyward kms-plugin',
    process.execPath,
    [
      ...kmsPluginNodeFlags,
      keywardCli,
      'kms-plugin',
      `--socket=${socketPath}`,
      `--ring=${options.ringName}`,
      `--pkcs11-module=${hsm.modulePath}`,
      `--token-label=${hsm.label}`,
      `--pin-file=${pinFile}`,
      `--metrics-address=${metricsAddress}`,
      `--audit-log=${auditFile}`,
      `--refresh=${options.refreshSeconds ?? 1}`,
    ],
    logFile,
    { ...process.env, ...hsm.env },
  );
  const metricsUrl = `http://${metricsAddress}`;
  await plugin.waitReady(async () => (await fetch(`${metricsUrl}/healthz`)).ok, options.readyTimeoutMs ?? 30_000, 'healthy (/healthz)');
  return { socketPath, metricsUrl, logFile, auditFile, process: plugin };
}

/** An EncryptionConfiguration that encrypts Secrets through the plugin, keeping identity for old data. */
export function kmsEncryptionConfig(dir: string, providerName: string, socketPath: string): string {
  const path = join(dir, 'encryption-config.yaml');
  writeFileSync(
    path,
    `apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - kms:
          apiVersion: v2
          name: ${providerName}
          endpoint: unix://${socketPath}
          timeout: 3s
      - identity: {}
`,
    { mode: 0o600 },
  );
  return path;
}

/** The built-in aesgcm provider, for comparing write cost against the plugin. */
export function aesgcmEncryptionConfig(dir: string): string {
  const path = join(dir, 'aesgcm-config.yaml');
  const key = Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString('base64');
  writeFileSync(
    path,
    `apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - aesgcm:
          keys:
            - name: key1
              secret: ${key}
      - identity: {}
`,
    { mode: 0o600 },
  );
  return path;
}
