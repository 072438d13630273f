// A real single-node Kubernetes for tests, benchmarks and the quickstart: the control plane of
// testbed/control-plane serving a node made of Debian's containerd, runc and CNI bridge, the kubelet,
// kube-proxy, and the Secrets Store CSI driver with its registration, all as child processes.
// Every host change is recorded first (hostChanges.ts) and undone by stop(), by the exit hooks,
// or by the next start after a killed run. Needs root; one node per machine.
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CoreV1Api, KubeConfig, loadAllYaml, type KubernetesObject, KubernetesObjectApi } from '@kubernetes/client-node';
import { setupError } from '../../core/errors.js';
import { controlPlaneBinaries } from '../control-plane/binaries.js';
import { ComponentProcess, onExitCleanup } from '../control-plane/componentProcess.js';
import { kubectlRunner, type Kubectl } from '../control-plane/kubectl.js';
import { startControlPlane, type ControlPlane, type ControlPlaneOptions } from '../control-plane/controlPlane.js';
import { freePort } from '../control-plane/network.js';
import { clientKubeconfigYaml, issueClientCertificate } from '../control-plane/pki.js';
import { HostChanges } from './hostChanges.js';
import { nodeArtifacts, type NodeArtifacts } from './nodeArtifacts.js';
import { bridgeName, cniConflist, containerdConfig, csiDriverObject, kubeletConfig, kubeProxyConfig, paths, type NodeLayout } from './nodeConfig.js';

export interface TestNodeOptions {
  /** Progress lines, e.g. console.error for the quickstart. */
  progress?: (line: string) => void;
  /** Passed to the control plane (an EncryptionConfiguration, skipReadyz, etcd over TLS as kubeadm runs it, ...). */
  controlPlane?: Pick<ControlPlaneOptions, 'encryptionConfig' | 'skipReadyz' | 'extraApiserverArgs' | 'etcdTls'>;
  /** docker-archives imported into containerd before the node registers (pause and busybox always are). */
  images?: string[];
  /** The audience of the pod tokens the CSIDriver asks kubelet for. */
  csiAudience?: string;
  /** The driver polls providers this often for rotation (driver flag --rotation-poll-interval). */
  rotationPollInterval?: string;
  readyTimeoutMs?: number;
}

export interface TestNode {
  readonly name: string;
  /** The host address pods and the apiserver reach the node at. */
  readonly address: string;
  readonly dir: string;
  readonly controlPlane: ControlPlane;
  readonly kubeconfigPath: string;
  readonly kubeConfig: KubeConfig;
  /** Where kubelet reads static pod manifests. */
  readonly staticPodDir: string;
  /** The driver's provider directory (its --provider-volume): providers listen on <dir>/<name>.sock. */
  readonly providerDir: string;
  readonly kubeletRootDir: string;
  readonly images: NodeArtifacts['images'];
  readonly processes: { containerd: ComponentProcess; kubelet: ComponentProcess; kubeProxy: ComponentProcess; driver: ComponentProcess; registrar: ComponentProcess };
  importImage(archive: string): Promise<void>;
  /** kubectl against this cluster as the admin; rejects with kubectl's message. */
  kubectl(args: string[], input?: string): Promise<string>;
  /** Server-side applies a YAML stream (several documents) as the admin. */
  apply(yaml: string): Promise<void>;
  /** Deletes workloads, then stops everything and undoes every host change. Safe to call twice. */
  stop(): Promise<void>;
}

const nodeName = 'keyward-node';
const network = 'keyward';
const podSubnet = '10.88.0.0/24';

/** Why this machine cannot run a node, or undefined when it can. */
export function nodeUnsupportedReason(): string | undefined {
  if (process.getuid?.() !== 0) return 'a test node needs root (mounts, cgroups, network namespaces, iptables)';
  if (!readFileSync('/proc/filesystems', 'utf8').includes('overlay')) return 'the kernel has no overlay filesystem (containerd snapshotter)';
  const missing = ['containerd', 'ctr', 'runc', 'iptables', 'ip'].filter((c) => spawnSync('sh', ['-c', `command -v ${c}`]).status !== 0);
  if (!existsSync('/usr/lib/cni/bridge')) missing.push('/usr/lib/cni/bridge (containernetworking-plugins)');
  if (missing.length > 0) return `missing: ${missing.join(', ')} (run testbed/setup.sh)`;
  return undefined;
}

/** The host's first non-loopback IPv4 address: kubelet's node IP and the apiserver's advertised one. */
function hostAddress(): string {
  const out = execFileSync('ip', ['-4', '-o', 'route', 'get', '1.1.1.1'], { encoding: 'utf8' });
  const match = / src (\d+\.\d+\.\d+\.\d+)/.exec(out);
  if (!match) throw setupError(`no non-loopback IPv4 address for the node (ip route get: ${out.trim()})`);
  return match[1]!;
}

export async function startTestNode(options: TestNodeOptions = {}): Promise<TestNode> {
  const progress = options.progress ?? (() => undefined);
  const timeoutMs = options.readyTimeoutMs ?? 120_000;
  const unsupported = nodeUnsupportedReason();
  if (unsupported) throw setupError(unsupported);
  const artifacts = nodeArtifacts();
  const kubectlBinary = controlPlaneBinaries().kubectl;
  const dir = mkdtempSync('/tmp/keyward-node-');
  let host: HostChanges;
  try {
    host = HostChanges.take(dir, bridgeName(network));
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  // Interrupted or exiting without stop(): the processes die with the exit hooks, then this.
  const unregister = onExitCleanup(() => host.undo());
  const p = paths(dir);
  const started: ComponentProcess[] = [];
  let controlPlane: ControlPlane | undefined;
  // A start that failed has no workloads to delete.
  let startFailed = false;
  const start = (name: string, binary: string, args: string[], env?: NodeJS.ProcessEnv): ComponentProcess => {
    const component = new ComponentProcess(name, binary, args, join(dir, `${name.replace(/\W+/g, '-')}.log`), env);
    started.push(component);
    host.started(name, component.pid);
    return component;
  };
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    const phase = timedPhases(progress);
    if (controlPlane && !startFailed) {
      phase('deleting workloads through the API');
      await deleteWorkloads(kubectl, p.staticPods).catch((err: Error) => progress(`deleting workloads: ${err.message}`));
    }
    phase('stopping the driver, kube-proxy and kubelet');
    for (const name of ['registrar', 'secrets-store-csi-driver', 'kube-proxy', 'kubelet']) {
      await started.find((c) => c.name === name)?.stop(5000);
    }
    spawnSync(artifacts.kubeProxy, ['--cleanup'], { stdio: 'ignore' });
    phase('stopping the control plane');
    if (controlPlane) await controlPlane.stop();
    phase('stopping containerd');
    const containerd = started.find((c) => c.name === 'containerd');
    if (containerd?.running) {
      removeContainers(p.containerdSocket);
      await containerd.stop(5000);
    }
    phase('undoing host changes');
    const problems = host.undo();
    phase();
    unregister();
    if (problems.length > 0) throw setupError(`the node could not undo every host change: ${problems.join('; ')}`);
  };
  // The control plane's admin kubeconfig; it exists before any call (stop() calls only with a control plane).
  const kubectl: Kubectl = (args, input) => kubectlRunner(kubectlBinary, controlPlane!.kubeconfigPath)(args, input);

  try {
    const address = hostAddress();
    const layout: NodeLayout = {
      dir,
      name: nodeName,
      address,
      network,
      podSubnet,
      sandboxImage: artifacts.images.pause.ref,
      ports: { kubelet: await freePort(), kubeletHealthz: await freePort(), proxyHealthz: await freePort(), proxyMetrics: await freePort() },
    };
    for (const d of [p.cniConfDir, p.staticPods, p.podLogs, p.providers, p.pki, p.kubeletRoot, join(dir, 'containerd')]) mkdirSync(d, { recursive: true });

    progress('starting containerd');
    writeFileSync(p.containerdConfig, containerdConfig(layout));
    writeFileSync(join(p.cniConfDir, `10-${network}.conflist`), cniConflist(layout));
    host.containerdSocket(p.containerdSocket);
    const containerd = start('containerd', 'containerd', ['--config', p.containerdConfig]);
    await containerd.waitReady(() => Promise.resolve(spawnSync('ctr', ['--address', p.containerdSocket, 'version'], { stdio: 'ignore' }).status === 0), timeoutMs, 'ready (ctr version)');
    const importImage = async (archive: string): Promise<void> => {
      await new Promise<void>((resolve, reject) =>
        execFile('ctr', ['--address', p.containerdSocket, '-n', 'k8s.io', 'images', 'import', archive], (err, _out, stderr) =>
          err ? reject(setupError(`ctr images import ${archive}: ${stderr.trim() || err.message}`)) : resolve(),
        ),
      );
    };
    progress('importing images into containerd');
    const imports = Promise.all([artifacts.images.pause.archive, artifacts.images.busybox.archive, ...(options.images ?? [])].map(importImage));

    // Inside the node's directory, so the undo after a killed run removes it too.
    controlPlane = await startControlPlane({ ...options.controlPlane, node: { address }, parentDir: dir, progress, readyTimeoutMs: timeoutMs });
    for (const c of [controlPlane.etcd, controlPlane.apiserver, controlPlane.controllerManager, controlPlane.scheduler]) if (c) host.started(c.name, c.pid);
    const pkiDir = controlPlane.pki.dir;
    writeFileSync(join(p.pki, 'ca.crt'), readFileSync(controlPlane.pki.caCert));
    const kubeconfigFor = (file: string, user: string, groups: string[]): string => {
      const client = issueClientCertificate(pkiDir, file, user, groups);
      const path = join(dir, `${file}.kubeconfig`);
      writeFileSync(path, clientKubeconfigYaml(controlPlane!.apiserverUrl, controlPlane!.pki.caCert, client, user), { mode: 0o600 });
      return path;
    };
    await imports;

    progress(`starting kubelet (node ${nodeName} at ${address})`);
    writeFileSync(p.kubeletConfig, kubeletConfig(layout));
    const kubelet = start('kubelet', artifacts.kubelet, [
      `--config=${p.kubeletConfig}`,
      `--kubeconfig=${kubeconfigFor('kubelet', `system:node:${nodeName}`, ['system:nodes'])}`,
      `--root-dir=${p.kubeletRoot}`,
      `--cert-dir=${join(p.kubeletRoot, 'pki')}`,
      `--hostname-override=${nodeName}`,
      `--node-ip=${address}`,
      '--v=2',
    ]);
    await kubelet.waitReady(async () => (await fetch(`http://127.0.0.1:${layout.ports.kubeletHealthz}/healthz`)).ok, timeoutMs, 'healthy');
    const core = controlPlane.kubeConfig.makeApiClient(CoreV1Api);
    await kubelet.waitReady(async () => {
      const node = await core.readNode({ name: nodeName });
      return node.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;
    }, timeoutMs, 'Ready (Node condition)');

    progress('starting kube-proxy');
    writeFileSync(p.kubeProxyConfig, kubeProxyConfig(layout, kubeconfigFor('kube-proxy', 'system:kube-proxy', [])));
    const kubeProxy = start('kube-proxy', artifacts.kubeProxy, [`--config=${p.kubeProxyConfig}`, '--v=2']);
    await kubeProxy.waitReady(async () => {
      if (!(await fetch(`http://127.0.0.1:${layout.ports.proxyHealthz}/healthz`)).ok) return false;
      return execFileSync('iptables-save', ['-t', 'nat'], { encoding: 'utf8' }).includes('default/kubernetes:https');
    }, timeoutMs, 'ready (the kubernetes Service in iptables)');

    progress('starting the Secrets Store CSI driver and registering it with kubelet');
    const apply = async (yaml: string): Promise<void> => applyYaml(controlPlane!.kubeConfig, yaml);
    for (const file of artifacts.driverCrds) await apply(readFileSync(file, 'utf8'));
    for (const file of artifacts.driverRbac) await apply(readFileSync(file, 'utf8'));
    await apply(JSON.stringify(csiDriverObject(options.csiAudience ?? 'keyward')));
    await kubectl(['wait', '--for=condition=Established', '--timeout=60s', 'crd/secretproviderclasses.secrets-store.csi.x-k8s.io', 'crd/secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io']);
    const driverSocket = join(p.kubeletRoot, 'plugins', 'csi-secrets-store', 'csi.sock');
    mkdirSync(join(p.kubeletRoot, 'plugins', 'csi-secrets-store'), { recursive: true });
    // The driver acts as its ServiceAccount (the RBAC applied above names it): a certificate with that user name.
    const driverKubeconfig = kubeconfigFor('secrets-store-csi-driver', 'system:serviceaccount:kube-system:secrets-store-csi-driver', []);
    const driver = start('secrets-store-csi-driver', artifacts.driver, [
      `--endpoint=unix://${driverSocket}`,
      `--nodeid=${nodeName}`,
      `--provider-volume=${p.providers}`,
      `--additional-provider-volume-paths=${p.providers}`,
      `--metrics-addr=127.0.0.1:${await freePort()}`,
      '--enable-secret-rotation=true',
      `--rotation-poll-interval=${options.rotationPollInterval ?? '2m'}`,
      '--provider-health-check=false',
      '-v=2',
    ], { ...process.env, KUBECONFIG: driverKubeconfig });
    await driver.waitReady(() => Promise.resolve(existsSync(driverSocket)), timeoutMs, 'listening');
    const registrar = start('registrar', artifacts.registrar, [
      `--csi-address=${driverSocket}`,
      `--registration-socket=${join(p.kubeletRoot, 'plugins_registry', 'secrets-store.csi.k8s.io-reg.sock')}`,
    ]);
    await registrar.waitReady(async () => {
      const csiNode = await kubectl(['get', 'csinode', nodeName, '-o', 'jsonpath={.spec.drivers[*].name}']);
      return csiNode.includes('secrets-store.csi.k8s.io');
    }, timeoutMs, 'done (CSINode lists the driver)');
    // Pods need their namespace's ServiceAccount; kube-controller-manager makes `default` a few seconds in.
    await controlPlane.controllerManager!.waitReady(async () => (await core.readNamespacedServiceAccount({ namespace: 'default', name: 'default' })) !== undefined, timeoutMs, 'ready (ServiceAccount default/default exists)');
    progress('node ready');

    return {
      name: nodeName,
      address,
      dir,
      controlPlane,
      kubeconfigPath: controlPlane.kubeconfigPath,
      kubeConfig: controlPlane.kubeConfig,
      staticPodDir: p.staticPods,
      providerDir: p.providers,
      kubeletRootDir: p.kubeletRoot,
      images: artifacts.images,
      processes: { containerd, kubelet, kubeProxy, driver, registrar },
      importImage,
      kubectl,
      apply,
      stop,
    };
  } catch (err) {
    startFailed = true;
    await stop().catch((stopErr: Error) => progress(stopErr.message));
    throw err;
  }
}

/** Progress of a sequence of phases, each line saying how long the previous one took. */
function timedPhases(progress: (line: string) => void): (next?: string) => void {
  let current: { name: string; started: number } | undefined;
  return (next) => {
    if (current) progress(`${current.name}: ${((performance.now() - current.started) / 1000).toFixed(1)} s`);
    current = next === undefined ? undefined : { name: next, started: performance.now() };
  };
}

async function applyYaml(kubeConfig: KubeConfig, yaml: string): Promise<void> {
  const client = KubernetesObjectApi.makeApiClient(kubeConfig);
  for (const doc of loadAllYaml(yaml) as (KubernetesObject | null)[]) {
    if (!doc?.kind) continue;
    doc.metadata = { namespace: 'default', ...doc.metadata };
    if (doc.kind.startsWith('Cluster') || ['CustomResourceDefinition', 'CSIDriver', 'Namespace'].includes(doc.kind)) delete doc.metadata.namespace;
    await client.patch(doc, undefined, undefined, 'keyward-test-node', true, 'application/apply-patch+yaml');
  }
}

/**
 * Workloads go through the API while kubelet and the driver still run, so kubelet unmounts the
 * volumes, CNI frees the addresses and containerd removes the network namespaces.
 */
async function deleteWorkloads(kubectl: (args: string[]) => Promise<string>, staticPodDir: string): Promise<void> {
  spawnSync('sh', ['-c', `rm -f '${staticPodDir}'/*`]);
  const namespaces = (await kubectl(['get', 'namespaces', '-o', 'jsonpath={.items[*].metadata.name}'])).split(' ').filter(Boolean);
  const own = namespaces.filter((n) => !['default', 'kube-system', 'kube-public', 'kube-node-lease'].includes(n));
  for (const ns of ['default', 'kube-system', ...own]) {
    await kubectl(['delete', 'deployments,daemonsets,statefulsets,jobs', '--all', '-n', ns, '--wait=false']);
  }
  // A test's pods need no graceful shutdown; their volumes are still unmounted properly.
  await kubectl(['delete', 'pods', '--all', '-A', '--grace-period=1', '--wait=false']);
  if (own.length > 0) await kubectl(['delete', 'namespace', '--wait=false', ...own]);
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const pods = await kubectl(['get', 'pods', '-A', '-o', 'name']);
    if (pods.trim() === '') return;
    await sleep(500);
  }
  await kubectl(['delete', 'pods', '-A', '--all', '--force', '--grace-period=0']);
}

/** Containers left when the node stops (a killed pod's): killed and removed through containerd. */
function removeContainers(socket: string): void {
  const ctr = (...args: string[]): string =>
    spawnSync('ctr', ['--address', socket, '-n', 'k8s.io', ...args], { encoding: 'utf8' }).stdout ?? '';
  for (const id of ctr('tasks', 'list', '-q').split('\n').filter(Boolean)) ctr('tasks', 'kill', '-s', 'SIGKILL', id);
  for (const id of ctr('tasks', 'list', '-q').split('\n').filter(Boolean)) ctr('tasks', 'delete', '-f', id);
  for (const id of ctr('containers', 'list', '-q').split('\n').filter(Boolean)) ctr('containers', 'rm', id);
}
