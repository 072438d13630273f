// What an installed Keyward must do on any cluster, through kubectl alone, so the real-node tests,
// the quickstart and the kind script (e2e/kind/) run the same checks: a workload's KeyRings and
// KeyPolicy, a value sealed through the operator's pod, a SecretProviderClass, pods whose volumes
// the real Secrets Store CSI driver fills through the provider, and pods it refuses.
import { eventually } from '../../testbed/eventually.js';

export interface Cluster {
  kubectl(args: string[], input?: string): Promise<string>;
}

export const shop = {
  namespace: 'shop',
  serviceAccount: 'web',
  secretRing: 'app-secrets',
  volumeRing: 'volume-keys',
  providerClass: 'shop-keys',
  /** Where the pods mount their Keyward volume. */
  mountPath: '/mnt/keyward',
};

/** Runs the CLI in the operator's container (it holds the module, the token and the PIN file). */
export async function keywardInOperator(cluster: Cluster, releaseNamespace: string, args: string[], input?: string): Promise<string> {
  const pod = (await cluster.kubectl(['-n', releaseNamespace, 'get', 'pods', '-l', 'app.kubernetes.io/component=operator', '-o', 'jsonpath={.items[0].metadata.name}'])).trim();
  return cluster.kubectl(['-n', releaseNamespace, 'exec', '-i', pod, '-c', 'operator', '--', 'node', '/app/dist/cli/keyward.js', ...args], input);
}

/**
 * Until kube-proxy has the webhook Service's endpoints, kube-apiserver's calls are refused (the
 * webhook fails closed): wait until a server-side dry run of a KeyRing gets through it.
 */
export async function waitWebhookServing(cluster: Cluster, releaseNamespace: string, timeoutMs = 60_000): Promise<void> {
  const probe = `apiVersion: keyward.dev/v1alpha1\nkind: KeyRing\nmetadata: { name: webhook-probe, namespace: ${releaseNamespace} }\nspec: { purpose: encryption }\n`;
  await eventually('the admission webhook answering through its Service', timeoutMs, () => cluster.kubectl(['create', '--dry-run=server', '-f', '-'], probe).then(() => true), 500);
}

export async function waitKeyRingReady(cluster: Cluster, namespace: string, name: string, timeoutMs = 60_000): Promise<void> {
  await eventually(`KeyRing ${namespace}/${name} Ready`, timeoutMs, async () => {
    const ready = await cluster.kubectl(['-n', namespace, 'get', 'keyring', name, '-o', 'jsonpath={.status.conditions[?(@.type=="Ready")].status}']);
    return ready === 'True' ? true : undefined;
  }, 500);
}

/** Applies a KeyRing and waits until the operator reports it Ready. */
export async function applyKeyRing(cluster: Cluster, namespace: string, name: string, spec: Record<string, string>): Promise<void> {
  await cluster.kubectl(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name, namespace }, spec }));
  await waitKeyRingReady(cluster, namespace, name);
}

export async function primaryVersion(cluster: Cluster, namespace: string, name: string): Promise<number> {
  return Number(await cluster.kubectl(['-n', namespace, 'get', 'keyring', name, '-o', 'jsonpath={.status.primaryVersion}']));
}

/**
 * Namespace `shop`: an encryption ring for sealed secrets, a derivation ring for volume keys, a
 * KeyPolicy granting ServiceAccount `web` decrypt and deriveKey on them and the cluster admin
 * (`admin`) their management, and a SecretProviderClass holding `secretValue` sealed.
 */
export async function applyShopWorkload(cluster: Cluster, releaseNamespace: string, admin: string, secretValue: string): Promise<void> {
  const ns = shop.namespace;
  await cluster.kubectl(['apply', '-f', '-'], `apiVersion: v1
kind: Namespace
metadata: { name: ${ns} }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: ${shop.serviceAccount}, namespace: ${ns} }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: intruder, namespace: ${ns} }
---
apiVersion: keyward.dev/v1alpha1
kind: KeyRing
metadata: { name: ${shop.secretRing}, namespace: ${ns} }
spec: { purpose: encryption }
---
apiVersion: keyward.dev/v1alpha1
kind: KeyRing
metadata: { name: ${shop.volumeRing}, namespace: ${ns} }
spec: { purpose: derivation }
---
apiVersion: keyward.dev/v1alpha1
kind: KeyPolicy
metadata: { name: web-keys, namespace: ${ns} }
spec:
  rules:
    - name: web-secrets
      subjects: [{ kind: ServiceAccount, namespace: ${ns}, name: ${shop.serviceAccount} }]
      keyRings: [${shop.secretRing}]
      operations: [decrypt]
    - name: web-volume
      subjects: [{ kind: ServiceAccount, namespace: ${ns}, name: ${shop.serviceAccount} }]
      keyRings: [${shop.volumeRing}]
      operations: [deriveKey]
    - name: admins
      subjects: [{ kind: User, name: ${admin} }]
      keyRings: [${shop.secretRing}, ${shop.volumeRing}]
      roles: [Administrator]
`);
  for (const ring of [shop.secretRing, shop.volumeRing]) await waitKeyRingReady(cluster, ns, ring);
  await applyProviderClass(cluster, releaseNamespace, secretValue);
}

/** (Re)writes the SecretProviderClass with `secretValue` freshly sealed under the secret ring. */
export async function applyProviderClass(cluster: Cluster, releaseNamespace: string, secretValue: string, syncSecret = false): Promise<void> {
  const sealed = (await keywardInOperator(cluster, releaseNamespace, ['encrypt', `--ring=${shop.secretRing}`, `--namespace=${shop.namespace}`, '--pin-file=/run/keyward/pin/pin', '--audit-log=/dev/null'], secretValue)).trim();
  const secretObjects = syncSecret
    ? `  secretObjects:
    - secretName: shop-synced
      type: Opaque
      data: [{ objectName: db/password, key: password }]
`
    : '';
  await cluster.kubectl(['apply', '-f', '-'], `apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata: { name: ${shop.providerClass}, namespace: ${shop.namespace} }
spec:
  provider: keyward
${secretObjects}  parameters:
    objects: |
      - { type: secret, name: db-password, keyRing: ${shop.secretRing}, path: db/password, mode: "0440", ciphertext: ${sealed} }
      - { type: dataKey, name: db-volume, keyRing: ${shop.volumeRing}, path: luks/db.key, mode: "0400" }
`);
}

/** A pod of `serviceAccount` with the shop's Keyward volume, running busybox (as root: the files are 0440 and 0400). */
export function keywardPod(name: string, serviceAccount: string, busyboxImage: string, pullPolicy = 'Never'): string {
  return `apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: ${shop.namespace}, labels: { app: ${name} } }
spec:
  serviceAccountName: ${serviceAccount}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: ${busyboxImage}
      imagePullPolicy: ${pullPolicy}
      command: [sleep, '36000']
      volumeMounts: [{ name: keys, mountPath: ${shop.mountPath}, readOnly: true }]
  volumes:
    - name: keys
      csi:
        driver: secrets-store.csi.k8s.io
        readOnly: true
        volumeAttributes: { secretProviderClass: ${shop.providerClass} }
`;
}

/** A file of the pod's Keyward volume, as its own process reads it. */
export async function readPodFile(cluster: Cluster, pod: string, path: string): Promise<Buffer> {
  const base64 = await cluster.kubectl(['-n', shop.namespace, 'exec', pod, '--', 'base64', `${shop.mountPath}/${path}`]);
  return Buffer.from(base64.replace(/\s+/g, ''), 'base64');
}

export async function waitPodRunning(cluster: Cluster, pod: string, timeoutMs = 60_000): Promise<void> {
  await cluster.kubectl(['-n', shop.namespace, 'wait', '--for=condition=Ready', `pod/${pod}`, `--timeout=${Math.round(timeoutMs / 1000)}s`]);
}

/** The messages of the pod's FailedMount Events (the driver reports the provider's refusal code there). */
export async function failedMountMessages(cluster: Cluster, pod: string, namespace = shop.namespace): Promise<string[]> {
  // By uid: Events of an earlier pod of the same name do not count.
  const uid = (await cluster.kubectl(['-n', namespace, 'get', 'pod', pod, '-o', 'jsonpath={.metadata.uid}'])).trim();
  const out = await cluster.kubectl(['-n', namespace, 'get', 'events', '--field-selector', `involvedObject.uid=${uid},reason=FailedMount`, '-o', 'jsonpath={range .items[*]}{.message}{"\\n"}{end}']);
  return out.split('\n').filter(Boolean);
}

/** Waits for a FailedMount Event naming `code`, and checks the pod is still not running. */
export async function expectMountRefused(cluster: Cluster, pod: string, code: string, timeoutMs = 60_000, namespace = shop.namespace): Promise<string> {
  const message = await eventually(`a FailedMount Event naming ${code} for pod ${pod}`, timeoutMs, async () => (await failedMountMessages(cluster, pod, namespace)).find((m) => m.includes(code)), 1000);
  const phase = await cluster.kubectl(['-n', namespace, 'get', 'pod', pod, '-o', 'jsonpath={.status.phase}']);
  if (phase !== 'Pending') throw new Error(`pod ${pod} is ${phase}, though its volume was refused`);
  return message;
}

/** Polls `read` until it returns something other than `before` (a remount changed the file). */
export function waitFileChange(what: string, before: Buffer, read: () => Promise<Buffer>, timeoutMs: number): Promise<Buffer> {
  return eventually(`${what} changing`, timeoutMs, async () => {
    const now = await read();
    return now.equals(before) ? undefined : now;
  }, 1000);
}
