// A real Kubernetes control plane as child processes: etcd, kube-apiserver and, when asked,
// kube-controller-manager, on free loopback ports with throw-away certificates. Several can run
// side by side; each lives in its own temporary directory, removed when it stops.
import { KubeConfig } from '@kubernetes/client-node';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { controlPlaneBinaries, controlPlaneVersions, type ControlPlaneBinaries } from './binaries.js';
import { ComponentProcess, trackDirectory } from './componentProcess.js';
import { assertPortFree, freePort, httpsGet, type TlsClient } from './network.js';
import { createEtcdPki, createPki, issueClientCertificate, kubeconfigYaml, type ControlPlanePki, type EtcdPki } from './pki.js';

export interface ControlPlaneOptions {
  /** An EncryptionConfiguration file for --encryption-provider-config. */
  encryptionConfig?: string;
  /** Also run kube-controller-manager (ServiceAccounts per namespace, garbage collection). */
  controllerManager?: boolean;
  /** Per component; 2 cores need 60 s or more for a cold apiserver. */
  readyTimeoutMs?: number;
  /** Fixed ports instead of free ones; one already in use fails with a clear error. */
  ports?: { etcdClient?: number; etcdPeer?: number; apiserver?: number; controllerManager?: number };
  extraApiserverArgs?: string[];
  /** Flags for kube-controller-manager (feature gates, say), when it runs. */
  extraControllerManagerArgs?: string[];
  /** Progress lines, e.g. console.error for the quickstart. */
  progress?: (line: string) => void;
  /** Wait only until the API serves, not for /readyz: its KMS check fails while no plugin runs yet. */
  skipReadyz?: boolean;
  /**
   * Serve a real node (testbed/node): listen on every address and advertise `address`, so pods reach
   * the apiserver through kube-proxy at 10.0.0.1:443; Node authorization and NodeRestriction for
   * the kubelet; ServiceAccount admission (pods get tokens); a client certificate for the
   * apiserver's calls to the kubelet (logs, exec); kube-scheduler and kube-controller-manager.
   */
  node?: { address: string };
  /** Where its temporary directory goes (default: the OS temp directory). */
  parentDir?: string;
  /**
   * etcd over https requiring a client certificate from its own CA, as kubeadm runs it (the
   * apiserver connects with --etcd-cafile/--etcd-certfile/--etcd-keyfile). Plain http otherwise.
   */
  etcdTls?: boolean;
}

export interface ControlPlane {
  readonly dir: string;
  readonly apiserverUrl: string;
  readonly etcdEndpoint: string;
  /** With etcdTls: etcd's CA and the client certificate the apiserver uses (files). */
  readonly etcdPki: EtcdPki | undefined;
  readonly kubeconfigPath: string;
  readonly kubeConfig: KubeConfig;
  /** The throw-away CA and certificates; issue more with pki.ts. */
  readonly pki: ControlPlanePki & { dir: string };
  readonly kubernetesVersion: string;
  readonly apiserver: ComponentProcess;
  readonly etcd: ComponentProcess;
  readonly controllerManager: ComponentProcess | undefined;
  readonly scheduler: ComponentProcess | undefined;
  /**
   * Stops the apiserver and starts it again with the same flags (KMS restart tests). With
   * `skipReadyz`, waits only until it serves the API: /readyz includes the KMS check, which
   * fails by design while the plugin is down.
   */
  restartApiserver(options?: { skipReadyz?: boolean }): Promise<void>;
  /** Stops everything it started and removes its directory. Safe to call twice. */
  stop(): Promise<void>;
}

interface Ports {
  etcdClient: number;
  etcdPeer: number;
  apiserver: number;
  controllerManager: number;
  scheduler: number;
}

async function choosePorts(fixed: ControlPlaneOptions['ports'] = {}): Promise<Ports> {
  const pick = async (port: number | undefined, owner: string): Promise<number> => {
    if (port === undefined) return freePort();
    await assertPortFree(port, owner);
    return port;
  };
  return {
    etcdClient: await pick(fixed.etcdClient, 'the etcd client URL'),
    etcdPeer: await pick(fixed.etcdPeer, 'the etcd peer URL'),
    apiserver: await pick(fixed.apiserver, 'kube-apiserver'),
    controllerManager: await pick(fixed.controllerManager, 'kube-controller-manager'),
    scheduler: await freePort(),
  };
}

function startEtcd(bin: ControlPlaneBinaries, dir: string, ports: Ports, tls: EtcdPki | undefined): ComponentProcess {
  const client = `${tls ? 'https' : 'http'}://127.0.0.1:${ports.etcdClient}`;
  const peer = `http://127.0.0.1:${ports.etcdPeer}`;
  const tlsArgs = tls ? [`--cert-file=${tls.serverCert}`, `--key-file=${tls.serverKey}`, `--trusted-ca-file=${tls.caCert}`, '--client-cert-auth=true'] : [];
  return new ComponentProcess('etcd', bin.etcd, [
    ...tlsArgs,
    '--name=default',
    `--data-dir=${join(dir, 'etcd-data')}`,
    `--listen-client-urls=${client}`,
    `--advertise-client-urls=${client}`,
    `--listen-peer-urls=${peer}`,
    `--initial-advertise-peer-urls=${peer}`,
    `--initial-cluster=default=${peer}`,
    '--unsafe-no-fsync=true',
    '--log-level=warn',
  ], join(dir, 'etcd.log'));
}

function apiserverArgs(dir: string, ports: Ports, pki: ControlPlanePki, options: ControlPlaneOptions, etcdPki: EtcdPki | undefined, kubeletClient?: { cert: string; key: string }): string[] {
  const args = [
    `--etcd-servers=${etcdPki ? 'https' : 'http'}://127.0.0.1:${ports.etcdClient}`,
    ...(etcdPki ? [`--etcd-cafile=${etcdPki.caCert}`, `--etcd-certfile=${etcdPki.clientCert}`, `--etcd-keyfile=${etcdPki.clientKey}`] : []),
    `--cert-dir=${join(dir, 'apiserver-certs')}`,
    `--tls-cert-file=${pki.servingCert}`,
    `--tls-private-key-file=${pki.servingKey}`,
    `--client-ca-file=${pki.caCert}`,
    `--secure-port=${ports.apiserver}`,
    `--service-account-issuer=https://127.0.0.1:${ports.apiserver}/`,
    `--service-account-key-file=${pki.serviceAccountPub}`,
    `--service-account-signing-key-file=${pki.serviceAccountKey}`,
    '--service-cluster-ip-range=10.0.0.0/24',
    '--allow-privileged=true',
    '--profiling=false',
  ];
  if (options.node) {
    args.push(
      '--bind-address=0.0.0.0',
      `--advertise-address=${options.node.address}`,
      '--authorization-mode=Node,RBAC',
      '--enable-admission-plugins=NodeRestriction',
      // The node's name is not in DNS: reach kubelet (logs, exec) at its address.
      '--kubelet-preferred-address-types=InternalIP',
      `--kubelet-client-certificate=${kubeletClient!.cert}`,
      `--kubelet-client-key=${kubeletClient!.key}`,
    );
  } else {
    args.push('--bind-address=127.0.0.1', '--authorization-mode=RBAC', '--disable-admission-plugins=ServiceAccount');
  }
  if (options.encryptionConfig) args.push(`--encryption-provider-config=${options.encryptionConfig}`);
  return [...args, ...(options.extraApiserverArgs ?? [])];
}

/** The names pods and the node use for the apiserver, for its serving certificate. */
function nodeFacingNames(address: string): string[] {
  const dns = ['kubernetes', 'kubernetes.default', 'kubernetes.default.svc', 'kubernetes.default.svc.cluster.local'];
  return [`IP:${address}`, 'IP:10.0.0.1', ...dns.map((name) => `DNS:${name}`)];
}

export async function startControlPlane(options: ControlPlaneOptions = {}): Promise<ControlPlane> {
  const progress = options.progress ?? (() => undefined);
  const timeoutMs = options.readyTimeoutMs ?? 120_000;
  const bin = controlPlaneBinaries();
  const versions = controlPlaneVersions();
  const dir = mkdtempSync(join(options.parentDir ?? tmpdir(), 'keyward-cp-'));
  const removeDir = trackDirectory(dir);
  const started: ComponentProcess[] = [];
  const stopAll = async (): Promise<void> => {
    // In reverse order: kube-apiserver stopping after etcd spends its whole grace period retrying etcd.
    for (const component of started.splice(0).reverse()) await component.stop();
    removeDir();
  };

  try {
    const ports = await choosePorts(options.ports);
    const pkiDir = join(dir, 'pki');
    mkdirSync(pkiDir);
    const pki = createPki(pkiDir, options.node ? nodeFacingNames(options.node.address) : []);
    const kubeletClient = options.node ? issueClientCertificate(pkiDir, 'apiserver-kubelet-client', 'kube-apiserver-kubelet-client', ['system:masters']) : undefined;
    const tls: TlsClient = { ca: readFileSync(pki.caCert), cert: readFileSync(pki.adminCert), key: readFileSync(pki.adminKey) };
    const apiserverUrl = `https://127.0.0.1:${ports.apiserver}`;
    const etcdPki = options.etcdTls ? createEtcdPki(pkiDir) : undefined;
    const etcdEndpoint = `${etcdPki ? 'https' : 'http'}://127.0.0.1:${ports.etcdClient}`;

    progress(`starting etcd ${versions.etcd} on ${etcdEndpoint}`);
    const etcd = startEtcd(bin, dir, ports, etcdPki);
    started.push(etcd);
    const etcdHealthy = etcdPki
      ? async () => (await httpsGet(`${etcdEndpoint}/health`, { ca: readFileSync(etcdPki.caCert), cert: readFileSync(etcdPki.clientCert), key: readFileSync(etcdPki.clientKey) })).status === 200
      : async () => (await fetch(`${etcdEndpoint}/health`)).ok;
    await etcd.waitReady(etcdHealthy, timeoutMs, 'healthy');

    const kubeconfigPath = join(dir, 'kubeconfig');
    writeFileSync(kubeconfigPath, kubeconfigYaml(apiserverUrl, pki), { mode: 0o600 });
    const args = apiserverArgs(dir, ports, pki, options, etcdPki, kubeletClient);
    let apiserver: ComponentProcess;
    const launchApiserver = async (skipReadyz = false): Promise<void> => {
      progress(`starting kube-apiserver ${versions.kubernetes} on ${apiserverUrl}`);
      apiserver = new ComponentProcess('kube-apiserver', bin.kubeApiserver, args, join(dir, 'kube-apiserver.log'));
      started.push(apiserver);
      // readyz needs a credential: anonymous requests get 403 until RBAC bootstrap finishes.
      if (!skipReadyz) {
        await apiserver.waitReady(async () => (await httpsGet(`${apiserverUrl}/readyz`, tls)).status === 200, timeoutMs, 'ready (/readyz)');
      }
      await apiserver.waitReady(
        async () => (await httpsGet(`${apiserverUrl}/api/v1/namespaces/default`, tls)).status === 200,
        timeoutMs,
        "ready (namespace 'default')",
      );
    };
    await launchApiserver(options.skipReadyz);

    // kube-controller-manager and kube-scheduler: the admin kubeconfig for everything, served on
    // loopback, healthy when /healthz answers.
    const startComponent = async (name: string, binary: string, port: number, extraArgs: string[]): Promise<ComponentProcess> => {
      progress(`starting ${name} on 127.0.0.1:${port}`);
      const component = new ComponentProcess(name, binary, [
        `--kubeconfig=${kubeconfigPath}`,
        `--authentication-kubeconfig=${kubeconfigPath}`,
        `--authorization-kubeconfig=${kubeconfigPath}`,
        '--bind-address=127.0.0.1',
        `--secure-port=${port}`,
        '--leader-elect=false',
        ...extraArgs,
      ], join(dir, `${name}.log`));
      started.push(component);
      await component.waitReady(
        async () => (await httpsGet(`https://127.0.0.1:${port}/healthz`, { insecure: true })).status === 200,
        timeoutMs,
        'healthy (/healthz)',
      );
      return component;
    };
    const controllerManager = options.controllerManager || options.node
      ? await startComponent('kube-controller-manager', bin.kubeControllerManager, ports.controllerManager, [
          `--cert-dir=${join(dir, 'kcm-certs')}`,
          `--service-account-private-key-file=${pki.serviceAccountKey}`,
          `--root-ca-file=${pki.caCert}`,
          '--use-service-account-credentials=true',
          // Signs the certificates the kubelet asks for, and knows the Service range, on a real node.
          `--cluster-signing-cert-file=${pki.caCert}`,
          `--cluster-signing-key-file=${pki.caKey}`,
          '--service-cluster-ip-range=10.0.0.0/24',
          ...(options.extraControllerManagerArgs ?? []),
        ])
      : undefined;
    const scheduler = options.node ? await startComponent('kube-scheduler', bin.kubeScheduler, ports.scheduler, []) : undefined;

    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromFile(kubeconfigPath);
    progress('control plane ready');
    return {
      dir,
      apiserverUrl,
      etcdEndpoint,
      etcdPki,
      kubeconfigPath,
      pki: { ...pki, dir: pkiDir },
      kubeConfig,
      kubernetesVersion: versions.kubernetes,
      get apiserver() {
        return apiserver;
      },
      etcd,
      controllerManager,
      scheduler,
      restartApiserver: async (restart) => {
        await apiserver.stop();
        started.splice(started.indexOf(apiserver), 1);
        await launchApiserver(restart?.skipReadyz);
      },
      stop: stopAll,
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
