// The KMS plugin run as its own process through the CLI, the way a static pod runs it: for e2e
// tests, benchmarks and the quickstart. Its log and audit output go to files in `dir`.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { grpcClient } from '../../testbed/grpcClient.js';
import type { SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { KeyManagementService } from '../../proto/gen/kms/v2/api_pb.js';
import { ComponentProcess } from '../../testbed/control-plane/componentProcess.js';
import type { ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { freePort, httpsGet } from '../../testbed/control-plane/network.js';

export const keywardCli = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'cli', 'keyward.js');

/**
 * How the plugin's Node runs in production (static pod, chart). Its live heap is about 20 MiB;
 * without limits V8 lets garbage pile up to 150 MiB resident under load before collecting.
 */
export const kmsPluginNodeFlags = ['--max-semi-space-size=2', '--max-old-space-size=48'];

export interface KmsPluginProcessOptions {
  hsm: Pick<SoftHsmToken, 'modulePath' | 'label' | 'pin' | 'env'>;
  ringName: string;
  /** The ring's namespace: a KeyRing's, or none for rings made with the CLI. */
  ringNamespace?: string;
  /** Holds the socket, PIN file, log and audit files; the caller owns it. */
  dir: string;
  refreshSeconds?: number;
  readyTimeoutMs?: number;
  /** Another build's CLI (a benchmark's baseline); this tree's by default. */
  cli?: string;
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
      options.cli ?? keywardCli,
      'kms-plugin',
      `--socket=${socketPath}`,
      `--ring=${options.ringName}`,
      ...(options.ringNamespace ? [`--namespace=${options.ringNamespace}`] : []),
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

/** The plugin's own Status answer, over its socket. */
export async function kmsStatus(socketPath: string): Promise<{ version: string; healthz: string; keyId: string }> {
  const kms = grpcClient(KeyManagementService, `unix:${socketPath}`);
  try {
    return await kms.status({});
  } finally {
    kms.close();
  }
}

/** The apiserver's KMS health check; asking it also makes the apiserver call Status and notice a new key id. */
export async function apiserverKmsHealthStatus(cp: ControlPlane): Promise<number> {
  const pki = (file: string): Buffer => readFileSync(join(cp.dir, 'pki', file));
  const tls = { ca: pki('ca.crt'), cert: pki('admin.crt'), key: pki('admin.key') };
  // One check per provider (kms-provider-0) or one for all (kms-providers), by release and configuration.
  const verbose = await httpsGet(`${cp.apiserverUrl}/healthz?verbose`, tls);
  const check = /\[[+-]\](kms-provider\S*)/.exec(verbose.body)?.[1] ?? 'kms-provider-0';
  return (await httpsGet(`${cp.apiserverUrl}/healthz/${check}`, tls)).status;
}

/** An EncryptionConfiguration that encrypts Secrets through the plugin, keeping identity for old data. */
export function kmsEncryptionConfig(dir: string, providerName: string, socketPath: string): string {
  return writeEncryptionConfig(join(dir, 'encryption-config.yaml'), kmsProviderYaml(providerName, socketPath));
}

export function aesgcmEncryptionConfig(dir: string): string {
  return writeEncryptionConfig(join(dir, 'aesgcm-config.yaml'), aesgcmProviderYaml());
}

/** One KMS v2 provider entry of an EncryptionConfiguration, for writeEncryptionConfig. */
export function kmsProviderYaml(providerName: string, socketPath: string): string {
  return `      - kms:
          apiVersion: v2
          name: ${providerName}
          endpoint: unix://${socketPath}
          timeout: 3s
`;
}

/** One aesgcm provider entry with a fresh random key, for writeEncryptionConfig. */
export function aesgcmProviderYaml(): string {
  const key = Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString('base64');
  return `      - aesgcm:
          keys:
            - name: key1
              secret: ${key}
`;
}

/** Secrets through `provider` (YAML list items), with identity after it so older data stays readable. */
/** Secrets stored as they are: the configuration a cluster has before encryption is turned on. */
export function identityEncryptionConfig(dir: string): string {
  return writeEncryptionConfig(join(dir, 'encryption-config.yaml'), '');
}

/** An EncryptionConfiguration for Secrets: `providers` (YAML list items, indented six spaces), then identity. */
export function writeEncryptionConfig(path: string, provider: string): string {
  const config = `apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
${provider}      - identity: {}
`;
  writeFileSync(path, config, { mode: 0o600 });
  return path;
}
