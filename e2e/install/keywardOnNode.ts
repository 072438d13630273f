// Keyward installed on a test node the way a cluster admin installs it: a SoftHSM2 token on the
// node, the PIN as a Secret, `helm install` of the chart with the built image, and the KMS plugin
// as the chart's static pod (charts/keyward/files/), its etcd scanner beside it, with kube-apiserver's
// EncryptionConfiguration pointing at its socket. Used by the install tests, the benchmark and the quickstart.
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { dump, load } from 'js-yaml';
import { findSoftHsmModule } from '../../core/hsm/pkcs11Module.js';
import { softHsmConfig } from '../../core/hsm/softHsmToken.js';
import { eventually } from '../../testbed/eventually.js';
import { keywardCli, kmsEncryptionConfig } from '../kms/kmsPluginProcess.js';
import { freePort } from '../../testbed/control-plane/network.js';
import { chartDir, helmIn, type Helm } from '../helm/helm.js';
import type { TestNode } from '../../testbed/node/testNode.js';
import type { EtcdPki } from '../../testbed/control-plane/pki.js';
import { waitWebhookServing } from './clusterChecks.js';

/** The image's user: every Keyward container runs as it, so it owns the token files. */
export const imageUid = 65532;
export const releaseName = 'keyward';
export const releaseNamespace = 'keyward-system';
const tokenLabel = 'keyward';

/** A development SoftHSM2 token on the node, as the host sees it (the host's CLI seals with it). */
export interface NodeToken {
  dir: string;
  /** Mounted into every Keyward pod at /var/lib/softhsm/tokens. */
  tokenDir: string;
  pinFile: string;
  pin: string;
  modulePath: string;
  label: string;
  /** SOFTHSM2_CONF for host processes. */
  env: { SOFTHSM2_CONF: string };
}

/** `keyward hsm init` on the host, then the token given to the image's uid. */
export function createNodeToken(dir: string): NodeToken {
  execFileSync(process.execPath, [keywardCli, 'hsm', 'init', `--dir=${dir}`, `--label=${tokenLabel}`], { stdio: 'ignore' });
  const tokenDir = join(dir, 'tokens');
  execFileSync('chown', ['-R', `${imageUid}:${imageUid}`, tokenDir]);
  const pinFile = join(dir, 'user.pin');
  return {
    dir,
    tokenDir,
    pinFile,
    pin: readFileSync(pinFile, 'utf8'),
    modulePath: findSoftHsmModule(),
    label: tokenLabel,
    env: { SOFTHSM2_CONF: join(dir, 'softhsm2.conf') },
  };
}

export interface KeywardRelease {
  helm: Helm;
  /** helm arguments that reach the node's cluster. */
  kubeArgs: string[];
  /** The values given to `helm install`, for an upgrade with the same ones. */
  values: string[];
}

/** The values for this node: the local image, the token's hostPath, the driver's provider directory. */
export function nodeValues(node: TestNode, image: string, token: NodeToken): string[] {
  const [repository, tag] = splitImage(image);
  return [
    '--set', `image.repository=${repository}`,
    '--set', `image.tag=${tag}`,
    // Imported into containerd, not in any registry.
    '--set', 'image.pullPolicy=Never',
    '--set', `hsm.softhsm.hostPath=${token.tokenDir}`,
    '--set', 'csiProvider.enabled=true',
    '--set', `csiProvider.providerDir=${node.providerDir}`,
  ];
}

/** Creates the PIN Secret, runs `helm install --wait` and waits for waitKeywardReady; rejects with helm's message. */
export async function installKeyward(node: TestNode, image: string, token: NodeToken, helmHome: string, extraValues: string[] = []): Promise<KeywardRelease> {
  const helm = helmIn(helmHome);
  const kubeArgs = ['--kubeconfig', node.kubeconfigPath, '--namespace', releaseNamespace];
  await node.kubectl(['create', 'namespace', releaseNamespace]).catch(() => undefined);
  await node.kubectl(['-n', releaseNamespace, 'create', 'secret', 'generic', 'keyward-hsm-pin', `--from-file=pin=${token.pinFile}`]);
  const values = [...nodeValues(node, image, token), ...extraValues];
  await helm(['install', releaseName, chartDir, ...kubeArgs, ...values, '--wait', '--timeout', '120s']);
  await waitKeywardReady(node);
  return { helm, kubeArgs, values };
}

/** The release's operator and CSI provider pods Ready, and the webhook answering through its Service. */
export async function waitKeywardReady(node: TestNode): Promise<void> {
  await waitPodReady(node, releaseNamespace, 'app.kubernetes.io/component=operator');
  await waitPodReady(node, releaseNamespace, 'app.kubernetes.io/component=csi-provider');
  await waitWebhookServing(node, releaseNamespace);
}


export interface KmsStaticPod {
  /** The socket on the host, named by the EncryptionConfiguration. */
  socketPath: string;
  metricsPort: number;
  /** The etcd scanner's /livez and /metrics (127.0.0.1). */
  scannerMetricsPort: number;
  manifestPath: string;
}

/**
 * The chart's static-pod manifest, as an admin installs it on a control-plane node: the image
 * set, the host directories made (owned by the image's uid, 0700), the PIN and SoftHSM2
 * configuration files written, and the file dropped into kubelet's manifest directory. Only the
 * host paths and the ports differ from the file (everything of this node lives under its own
 * directory, and ports are chosen free), and the etcd the scanner reads: with a control plane
 * whose etcd serves TLS (etcdTls), the scanner gets a client certificate issued from etcd's CA
 * exactly as the file's header says, and etcd's CA file mounted; with plain-http etcd, the
 * node's http endpoint and no CA mount or TLS flags.
 */
export async function installKmsStaticPod(node: TestNode, image: string, token: NodeToken, ring: { namespace: string; name: string }): Promise<KmsStaticPod> {
  const base = join(node.dir, 'keyward-kms');
  const socketDir = join(base, 'run');
  const configDir = join(base, 'etc');
  for (const dir of [socketDir, configDir]) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    chownSync(dir, imageUid, imageUid);
    chmodSync(dir, 0o700);
  }
  writeFileSync(join(configDir, 'user.pin'), token.pin, { mode: 0o600 });
  writeFileSync(join(configDir, 'softhsm2.conf'), softHsmConfig('/var/lib/softhsm/tokens'), { mode: 0o600 });
  for (const file of ['user.pin', 'softhsm2.conf']) chownSync(join(configDir, file), imageUid, imageUid);
  const etcdPki = node.controlPlane.etcdPki;
  if (etcdPki) issueScannerEtcdCertificate(join(configDir, 'etcd'), etcdPki);

  const metricsPort = await freePort();
  const scannerMetricsPort = await freePort();
  const pod = load(readFileSync(join(chartDir, 'files', 'kms-plugin-static-pod.yaml'), 'utf8')) as StaticPod;
  const withRing = (arg: string): string => (arg.startsWith('--ring=') ? `--ring=${ring.name}` : arg.startsWith('--namespace=') ? `--namespace=${ring.namespace}` : arg);
  const plugin = pod.spec.containers.find((c) => c.name === 'kms-plugin')!;
  plugin.args = plugin.args.map((arg) => (arg.startsWith('--metrics-address=') ? `--metrics-address=127.0.0.1:${metricsPort}` : arg)).map(withRing);
  for (const probe of [plugin.livenessProbe, plugin.readinessProbe]) probe!.httpGet.port = metricsPort;

  const scanner = pod.spec.containers.find((c) => c.name === 'etcd-scanner')!;
  const tlsFlag = /^--etcd-(cafile|certfile|keyfile)=/;
  scanner.args = scanner.args
    .filter((arg) => etcdPki !== undefined || !tlsFlag.test(arg))
    .map((arg) => (arg.startsWith('--etcd-endpoints=') ? `--etcd-endpoints=${node.controlPlane.etcdEndpoint}` : arg))
    .map((arg) => (arg.startsWith('--metrics-address=') ? `--metrics-address=127.0.0.1:${scannerMetricsPort}` : arg))
    .map(withRing);
  scanner.livenessProbe!.httpGet.port = scannerMetricsPort;
  if (!etcdPki) {
    scanner.volumeMounts = scanner.volumeMounts.filter((m) => m.name !== 'etcd-ca');
    pod.spec.volumes = pod.spec.volumes.filter((v) => v.name !== 'etcd-ca');
  }
  for (const container of pod.spec.containers) {
    container.image = image;
    container.imagePullPolicy = 'Never';
  }
  const hostPaths: Record<string, string | undefined> = { 'socket-dir': socketDir, config: configDir, 'softhsm-tokens': token.tokenDir, 'etcd-ca': etcdPki?.caCert };
  for (const volume of pod.spec.volumes) volume.hostPath.path = hostPaths[volume.name] ?? volume.hostPath.path;
  const manifestPath = join(node.staticPodDir, 'keyward-kms-plugin.yaml');
  writeFileSync(manifestPath, dump(pod));
  return { socketPath: join(socketDir, 'kms.sock'), metricsPort, scannerMetricsPort, manifestPath };
}

/**
 * The scanner's etcd client certificate, made as the static pod file's header tells an admin:
 * a P-384 key, CN=keyward-etcd-scanner, clientAuth, signed by etcd's CA, in a 0700 directory
 * owned by the image's uid, the key 0600. Mounted in the pod as /etc/keyward/etcd/.
 */
function issueScannerEtcdCertificate(dir: string, etcdPki: EtcdPki): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const caKey = join(dirname(etcdPki.caCert), `${basename(etcdPki.caCert, '.crt')}.key`);
  const openssl = (args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  };
  openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384', '-nodes', '-keyout', 'scanner.key', '-out', 'scanner.csr', '-subj', '/CN=keyward-etcd-scanner']);
  writeFileSync(join(dir, 'ext'), 'extendedKeyUsage=clientAuth\n');
  openssl(['x509', '-req', '-in', 'scanner.csr', '-days', '2', '-CA', etcdPki.caCert, '-CAkey', caKey, '-out', 'scanner.crt', '-extfile', 'ext']);
  for (const file of ['scanner.key', 'scanner.crt']) chownSync(join(dir, file), imageUid, imageUid);
  chmodSync(join(dir, 'scanner.key'), 0o600);
  chownSync(dir, imageUid, imageUid);
  chmodSync(dir, 0o700);
}

interface StaticPodContainer {
  name: string;
  image: string;
  imagePullPolicy?: string;
  args: string[];
  livenessProbe?: { httpGet: { port: number } };
  readinessProbe?: { httpGet: { port: number } };
  volumeMounts: { name: string; mountPath: string }[];
}

interface StaticPod {
  spec: {
    containers: StaticPodContainer[];
    volumes: { name: string; hostPath: { path: string } }[];
  };
}

/**
 * Turns on KMS encryption the way an admin does on a running cluster: the EncryptionConfiguration
 * gets the plugin first (identity stays second, so Secrets written before still read), kube-apiserver
 * restarts with it, and every existing Secret is rewritten so it is stored under the KMS key.
 * Then it waits for Keyward to serve again: an operator that could not renew its Lease while
 * kube-apiserver was away has stepped down and is restarted by kubelet, webhook and all.
 */
export async function enableKmsEncryption(node: TestNode, configDir: string, socketPath: string): Promise<number> {
  // The same file the apiserver was started with (identityEncryptionConfig(configDir)).
  kmsEncryptionConfig(configDir, 'keyward', socketPath);
  await node.controlPlane.restartApiserver();
  const secrets = JSON.parse(await node.kubectl(['get', 'secrets', '-A', '-o', 'json'])) as { items: unknown[] };
  if (secrets.items.length > 0) await node.kubectl(['replace', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: secrets.items }));
  await waitKeywardReady(node);
  return secrets.items.length;
}

/** Waits until a pod matching `selector` in `namespace` is Ready. */
export async function waitPodReady(node: TestNode, namespace: string, selector: string, timeoutMs = 60_000): Promise<string> {
  return eventually(`a Ready pod ${selector} in ${namespace}`, timeoutMs, async () => {
    const out = await node.kubectl(['get', 'pods', '-n', namespace, '-l', selector, '-o', 'jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}']);
    return out.split('\n').find((line) => line.endsWith(' True'))?.split(' ')[0];
  }, 500);
}

function splitImage(image: string): [string, string] {
  const at = image.lastIndexOf(':');
  return [image.slice(0, at), image.slice(at + 1)];
}
