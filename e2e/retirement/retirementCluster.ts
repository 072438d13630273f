// The etcd path of a control-plane node, for the retirement tests: a real control plane encrypting
// Secrets through the KMS plugin, the operator (with its webhook when asked), a KeyRing
// kube-system/etcd-secrets for the plugin, and the etcd scanner beside it; each component a
// process of its own that a test may kill and start again.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CoreV1Api, CustomObjectsApi, PatchStrategy, setHeaderOptions, type KubeConfig } from '@kubernetes/client-node';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { keyPolicyResource, type KeyPolicyRule } from '../../core/api/keyPolicy.js';
import { keyRingResource, type KeyRing, type KeyRingSpec } from '../../core/api/keyRing.js';
import { eventually } from '../../testbed/eventually.js';
import { startControlPlane, type ControlPlane, type ControlPlaneOptions } from '../../testbed/control-plane/controlPlane.js';
import { freePort } from '../../testbed/control-plane/network.js';
import { kmsEncryptionConfig, startKmsPluginProcess, type KmsPluginProcess } from '../kms/kmsPluginProcess.js';
import { installCrds } from '../operator/crds.js';
import { registerAdmissionWebhooks, webhookCertDir } from '../operator/admissionWebhooks.js';
import { startOperatorProcess, type OperatorProcess } from '../operator/operatorProcess.js';
import { startScannerProcess, type ScannerProcess } from './scannerProcess.js';

export const ringNamespace = 'kube-system';
export const ringName = 'etcd-secrets';
const providerName = 'keyward';
const merge = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

export interface RetirementClusterOptions {
  /** Names the temporary directory. */
  name: string;
  controlPlane?: Pick<ControlPlaneOptions, 'controllerManager' | 'extraApiserverArgs' | 'extraControllerManagerArgs'>;
  /** Serve and register the admission webhook, and grant these KeyPolicy rules on the ring. */
  admission?: { rules: KeyPolicyRule[] };
  keyRingSpec: Partial<KeyRingSpec>;
  scanner?: { intervalSeconds?: number; pagesPerSecond?: number };
}

export class RetirementCluster {
  operator!: OperatorProcess;
  plugin!: KmsPluginProcess;
  scanner!: ScannerProcess;
  private webhook: { address: string; certDir: string } | undefined;

  private constructor(
    readonly dir: string,
    readonly hsm: SoftHsmToken,
    readonly cp: ControlPlane,
    private readonly options: RetirementClusterOptions,
  ) {}

  static async start(options: RetirementClusterOptions): Promise<RetirementCluster> {
    const dir = mkdtempSync(join(tmpdir(), `keyward-e2e-${options.name}-`));
    const hsm = createSoftHsmToken({ parentDir: dir });
    let cp: ControlPlane | undefined;
    try {
      cp = await startControlPlane({ encryptionConfig: kmsEncryptionConfig(dir, providerName, join(dir, 'kms.sock')), skipReadyz: true, ...options.controlPlane });
      const cluster = new RetirementCluster(dir, hsm, cp, options);
      await cluster.setUp();
      return cluster;
    } catch (err) {
      await cp?.stop();
      rmSync(dir, { recursive: true, force: true });
      throw err;
    }
  }

  private async setUp(): Promise<void> {
    await installCrds(this.cp.kubeConfig);
    const objects = this.objects();
    if (this.options.admission) {
      // A fixed address, so an operator started again serves the registered webhook.
      this.webhook = { address: `127.0.0.1:${await freePort()}`, certDir: webhookCertDir(this.cp, join(this.dir, 'webhook')) };
      await this.startOperator('first');
      await registerAdmissionWebhooks(this.cp, this.webhook.address);
      await objects.createNamespacedCustomObject({
        ...keyPolicyResource,
        namespace: ringNamespace,
        body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyPolicy', metadata: { name: 'etcd-custody' }, spec: { rules: this.options.admission.rules } },
      });
    } else await this.startOperator('first');
    await objects.createNamespacedCustomObject({
      ...keyRingResource,
      namespace: ringNamespace,
      body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name: ringName }, spec: { purpose: 'encryption', ...this.options.keyRingSpec } },
    });
    await eventually('KeyRing version 1', 30_000, async () => ((await this.keyRing()).status?.primaryVersion === 1 ? true : undefined));
    await this.startPlugin();
    // The apiserver encrypts once it has had the plugin's first Status (it asks every 10 s while unhealthy).
    const core = this.cp.kubeConfig.makeApiClient(CoreV1Api);
    await eventually('kube-apiserver encrypting through the plugin', 150_000, () =>
      core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name: 'probe' }, stringData: { value: 'probe' } } }).then(() => true, () => undefined),
    1000);
    await this.startScanner();
  }

  objects(kubeConfig: KubeConfig = this.cp.kubeConfig): CustomObjectsApi {
    return kubeConfig.makeApiClient(CustomObjectsApi);
  }

  async keyRing(): Promise<KeyRing> {
    return (await this.objects().getNamespacedCustomObject({ ...keyRingResource, namespace: ringNamespace, name: ringName })) as KeyRing;
  }

  patchRing(spec: Record<string, unknown>, kubeConfig?: KubeConfig): Promise<unknown> {
    return this.objects(kubeConfig).patchNamespacedCustomObject({ ...keyRingResource, namespace: ringNamespace, name: ringName, body: { spec } }, merge);
  }

  /** Asks for a rotation and waits until `version` is primary; its key id. */
  async rotate(request: string, version: number, kubeConfig?: KubeConfig): Promise<string> {
    await this.patchRing({ rotationRequest: request }, kubeConfig);
    return eventually(`primary version ${version}`, 30_000, async () => {
      const kr = await this.keyRing();
      return kr.status?.primaryVersion === version ? kr.status.versions?.find((v) => v.number === version)?.keyId : undefined;
    });
  }

  /** Waits for the run under `target` to reach `phase`; a timeout says what the run and the operator last said. */
  async phase(target: number, phase: string, timeoutMs: number): Promise<KeyRing> {
    try {
      return await eventually(`re-encryption under version ${target} ${phase}`, timeoutMs, async () => {
        const kr = await this.keyRing();
        return kr.status?.reEncryption?.targetVersion === target && kr.status.reEncryption.phase === phase ? kr : undefined;
      }, 1000);
    } catch (err) {
      const log = readFileSync(this.operator.logFile, 'utf8').split('\n').slice(-15).join('\n');
      throw new Error(`${(err as Error).message}\n${JSON.stringify((await this.keyRing()).status?.reEncryption)}\n${log}`, { cause: err });
    }
  }

  async startOperator(identity: string): Promise<OperatorProcess> {
    return (this.operator = await startOperatorProcess({
      hsm: this.hsm,
      kubeconfigPath: this.cp.kubeconfigPath,
      dir: this.dir,
      identity,
      leaseSeconds: 4,
      ...(this.webhook ? { webhook: this.webhook, auditLog: join(this.dir, `audit-${identity}.jsonl`) } : {}),
    }));
  }

  async startPlugin(): Promise<KmsPluginProcess> {
    return (this.plugin = await startKmsPluginProcess({ hsm: this.hsm, ringName, ringNamespace, dir: this.dir }));
  }

  async startScanner(): Promise<ScannerProcess> {
    const { intervalSeconds = 10, pagesPerSecond } = this.options.scanner ?? {};
    return (this.scanner = await startScannerProcess({
      hsm: this.hsm,
      ringName,
      ringNamespace,
      providerName,
      etcdEndpoint: this.cp.etcdEndpoint,
      dir: this.dir,
      intervalSeconds,
      pagesPerSecond,
    }));
  }

  async stop(): Promise<void> {
    await this.scanner?.process.stop();
    await this.plugin?.process.stop();
    await this.operator?.process.stop();
    await this.cp.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
