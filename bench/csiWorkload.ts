// The workload of the CSI provider benchmarks, on a real control plane and SoftHSM2 token: the
// three rings and sealed secrets, KeyPolicies granting exactly a Mount's operations, pods with
// their own pod-bound tokens turned into the MountRequests the driver would send, the provider's
// least-privilege kubeconfig, and the provider process itself.
import { RbacAuthorizationV1Api, type CoreV1Api, type CustomObjectsApi } from '@kubernetes/client-node';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { keyPolicyResource, type KeyPolicyRule } from '../core/api/keyPolicy.js';
import { sealSecret } from '../core/formats/sealedSecret.js';
import { HsmToken } from '../core/hsm/hsmToken.js';
import { RingStore } from '../core/hsm/ringStore.js';
import type { SoftHsmToken } from '../core/hsm/softHsmToken.js';
import { startCsiProviderProcess } from '../e2e/csi/csiProviderProcess.js';
import { createPod, driverMountRequest, podToken, type TestPod } from '../e2e/csi/driverRequest.js';
import { userKubeConfig } from '../e2e/operator/admissionWebhooks.js';
import type { ComponentProcess } from '../testbed/control-plane/componentProcess.js';
import type { ControlPlane } from '../testbed/control-plane/controlPlane.js';
import { round } from './report.js';

export const namespace = 'bench';
export const audience = 'keyward';
export const appServiceAccount = 'app';
export const rings = {
  derivation: { name: 'volume-keys', algorithm: 'HMAC_SHA_384' },
  encryption: { name: 'app-secrets', algorithm: 'AES_256_GCM' },
  signing: { name: 'release', algorithm: 'ECDSA_P384' },
} as const;
const providerUser = 'keyward-csi-provider';

/** The provider's TTLs and ring refresh, in seconds (its command-line flags). */
export interface ProviderSettings {
  tokenReviewTtlS: number;
  materialTtlS: number;
  ringRefreshS: number;
}

/** The SecretProviderClass `objects` every Mount asks for; `ciphertext` is the pod's sealed secret. */
export function objectsYaml(ciphertext: Buffer): string {
  return `- type: dataKey
  name: db-volume
  keyRing: ${rings.derivation.name}
  path: luks/db.key
  mode: "0400"
- type: secret
  name: db-password
  keyRing: ${rings.encryption.name}
  path: db/password
  ciphertext: ${ciphertext.toString('base64')}
- type: publicKey
  name: release-signing
  keyRing: ${rings.signing.name}
  path: release.pub
`;
}
export const objectsPerMount = 3;

/** The three rings in the HSM, and sealed secrets: one for the app workload, one per cold workload. */
export async function createRings(hsm: SoftHsmToken, coldSecrets: number): Promise<{ app: Buffer; cold: Buffer[] }> {
  // SoftHSM2 reads its config when the module initialises, so this must come first.
  process.env.SOFTHSM2_CONF = hsm.configPath;
  const token = HsmToken.open({ modulePath: hsm.modulePath, tokenLabel: hsm.label, pin: hsm.pin });
  try {
    const store = new RingStore(token);
    for (const ring of Object.values(rings)) await store.create({ namespace, name: ring.name, algorithm: ring.algorithm });
    const seal = (text: string): Promise<Buffer> => sealSecret(token, store, { namespace, name: rings.encryption.name }, Buffer.from(text));
    const app = await seal('app-db-password-0123456789abcdef');
    const cold: Buffer[] = [];
    for (let i = 0; i < coldSecrets; i++) cold.push(await seal(`cold-db-password-${i}-0123456789abcdef`));
    return { app, cold };
  } finally {
    token.close();
  }
}


/**
 * KeyPolicies granting exactly what a Mount needs on the three rings: to bench/app, and to each
 * cold workload's ServiceAccount (32 subjects a rule, 32 rules a policy: the CRD's limits).
 */
export async function createPolicies(api: CustomObjectsApi, coldWorkloads: string[]): Promise<void> {
  const rule = (name: string, serviceAccounts: string[]): KeyPolicyRule => ({
    name,
    subjects: serviceAccounts.map((sa) => ({ kind: 'ServiceAccount' as const, namespace, name: sa })),
    keyRings: Object.values(rings).map((r) => r.name),
    operations: ['deriveKey', 'decrypt', 'getPublicKey'],
  });
  const policies: KeyPolicyRule[][] = [[rule('app', [appServiceAccount])]];
  const cold = coldWorkloads;
  const chunks: string[][] = [];
  for (let i = 0; i < cold.length; i += 32) chunks.push(cold.slice(i, i + 32));
  for (let i = 0; i < chunks.length; i += 32) policies.push(chunks.slice(i, i + 32).map((chunk, j) => rule(`cold-${i + j}`, chunk)));
  for (const [i, rules] of policies.entries()) {
    await api.createNamespacedCustomObject({
      ...keyPolicyResource,
      namespace,
      body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyPolicy', metadata: { name: `bench-${i}` }, spec: { rules } },
    });
  }
}

export interface DriverRequest {
  attributes: string;
  secrets: string;
  target_path: string;
  permission: string;
}

/** Creates the pods (and their ServiceAccounts) with `concurrency` in flight, each with its own pod-bound token. */
export async function createPods(
  core: CoreV1Api,
  specs: { name: string; serviceAccount: string; ciphertext: Buffer }[],
  what: string,
  options: { concurrency: number; progress: (line: string) => void; nodeName?: string },
): Promise<DriverRequest[]> {
  const { progress } = options;
  const requests: DriverRequest[] = new Array<DriverRequest>(specs.length);
  const started = performance.now();
  let next = 0;
  let done = 0;
  const worker = async (): Promise<void> => {
    while (next < specs.length) {
      const index = next++;
      const spec = specs[index]!;
      const pod: TestPod = await createPod(core, namespace, spec.name, spec.serviceAccount, options.nodeName);
      const token = await podToken(core, pod, audience);
      const request = driverMountRequest(pod, { objects: objectsYaml(spec.ciphertext), tokens: { [audience]: token } });
      requests[index] = { attributes: request.attributes ?? '', secrets: request.secrets ?? 'null', target_path: request.targetPath ?? '', permission: request.permission ?? '420' };
      if (++done % 250 === 0) progress(`${what}: ${done}/${specs.length} pods with tokens`);
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, worker));
  progress(`${what}: ${specs.length} pods with tokens in ${round((performance.now() - started) / 1000, 1)} s`);
  return requests;
}

/**
 * A client certificate for the provider with only what the chart gives its DaemonSet's
 * ServiceAccount: create TokenReviews, list and watch KeyPolicies and pods. Written as a kubeconfig file for KUBECONFIG.
 */
export async function providerKubeconfig(cp: ControlPlane, dir: string): Promise<string> {
  const rbac = cp.kubeConfig.makeApiClient(RbacAuthorizationV1Api);
  await rbac.createClusterRole({
    body: {
      metadata: { name: providerUser },
      rules: [
        { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
        { apiGroups: ['keyward.dev'], resources: ['keypolicies'], verbs: ['list', 'watch'] },
        { apiGroups: [''], resources: ['pods'], verbs: ['list', 'watch'] },
      ],
    },
  });
  await rbac.createClusterRoleBinding({
    body: {
      metadata: { name: providerUser },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: providerUser },
      subjects: [{ kind: 'User', apiGroup: 'rbac.authorization.k8s.io', name: providerUser }],
    },
  });
  const path = join(dir, 'provider.kubeconfig');
  writeFileSync(path, userKubeConfig(cp, providerUser).exportConfig(), { mode: 0o600 });
  return path;
}

// ---------------------------------------------------------------- the provider under test

export interface ProviderProcess {
  process: ComponentProcess;
  pid: number;
  socketPath: string;
  metricsUrl: string;
  logFile: string;
  nodeFlags: string;
}

/** The provider through the CLI (e2e/csi/csiProviderProcess.ts), in its own directory `<dir>/<name>`. */
export async function startProvider(options: {
  hsm: SoftHsmToken;
  kubeconfigPath: string;
  dir: string;
  name: string;
  settings: ProviderSettings;
  nodeFlags: string[];
  /** The node whose pods the provider watches (pods created with this nodeName). */
  nodeName?: string;
}): Promise<ProviderProcess> {
  const { settings, name } = options;
  const dir = join(options.dir, name);
  mkdirSync(dir);
  const started = await startCsiProviderProcess({
    hsm: options.hsm,
    kubeconfigPath: options.kubeconfigPath,
    dir,
    audience,
    nodeFlags: options.nodeFlags,
    nodeName: options.nodeName,
    flags: [`--token-review-ttl=${settings.tokenReviewTtlS}`, `--material-ttl=${settings.materialTtlS}`, `--ring-refresh=${settings.ringRefreshS}`],
    readyTimeoutMs: 60_000,
  });
  const pid = started.process.pid;
  if (pid === undefined) throw new Error('the provider process has no pid');
  return { ...started, pid, nodeFlags: options.nodeFlags.join(' ') };
}

