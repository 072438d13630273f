// Keyward as users run it, timed on a real node: node start (cold: page cache dropped; warm:
// right after), `helm install` until every Keyward pod is Ready, pod create → Running with a
// Keyward volume filled by the real Secrets Store CSI driver (p50/p99 over many pods), and Secret
// writes through kube-apiserver with the static-pod KMS plugin against the built-in aesgcm
// provider, alternated in the same run. One JSON line per figure on stdout; progress on stderr.
import { CoreV1Api } from '@kubernetes/client-node';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildKeywardImage } from '../e2e/image/keywardImage.js';
import { applyShopWorkload, keywardPod, shop } from '../e2e/install/clusterChecks.js';
import { createNodeToken, enableKmsEncryption, installKeyward, installKmsStaticPod, waitPodReady, releaseNamespace } from '../e2e/install/keywardOnNode.js';
import { aesgcmEncryptionConfig, identityEncryptionConfig, kmsEncryptionConfig } from '../e2e/kms/kmsPluginProcess.js';
import { readEtcdKey, secretEtcdKey } from '../e2e/control-plane/etcdClient.js';
import { startTestNode, type TestNode } from '../e2e/node/testNode.js';
import { emit, load1m, percentile, round, warnIfBusy } from './report.js';

const podCount = Number(process.env.KEYWARD_BENCH_PODS ?? 100);
const podConcurrency = 10;
const secretCount = Number(process.env.KEYWARD_BENCH_SECRETS ?? 2000);
const writeConcurrency = 32;
const progress = (line: string): void => console.error(`[bench:node] ${line}`);
const etcdRing = { namespace: 'kube-system', name: 'etcd-secrets' };

const seconds = (since: number): number => round((performance.now() - since) / 1000, 2);

function dropPageCache(): void {
  writeFileSync('/proc/sys/vm/drop_caches', '3');
}

async function timedNodeStart(kind: 'cold' | 'warm'): Promise<void> {
  if (kind === 'cold') dropPageCache();
  const started = performance.now();
  const node = await startTestNode();
  emit({ bench: 'node', figure: `node_start_${kind}_s`, value: seconds(started), load1m: load1m() });
  await node.stop();
}

/** Pods created `podConcurrency` at a time; each timed from create to Ready (its volume mounted). */
async function podStartLatencies(node: TestNode): Promise<number[]> {
  const latencies: number[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < podCount) {
      const name = `bench-${next++}`;
      const started = performance.now();
      await node.kubectl(['apply', '-f', '-'], keywardPod(name, shop.serviceAccount, node.images.busybox.ref));
      await node.kubectl(['-n', shop.namespace, 'wait', '--for=condition=Ready', `pod/${name}`, '--timeout=120s']);
      latencies.push(performance.now() - started);
    }
  };
  await Promise.all(Array.from({ length: podConcurrency }, worker));
  return latencies.sort((a, b) => a - b);
}

async function timedSecretWrites(node: TestNode, provider: 'kms' | 'aesgcm', trial: number): Promise<number> {
  const core = node.kubeConfig.makeApiClient(CoreV1Api);
  let next = 0;
  const prefix = `bench-${provider}-${trial}`;
  const writer = async (): Promise<void> => {
    while (next < secretCount) {
      const name = `${prefix}-${next++}`;
      await core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name }, stringData: { password: randomBytes(12).toString('hex') } } });
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: writeConcurrency }, writer));
  const taken = seconds(started);
  const raw = await readEtcdKey(node.controlPlane.etcdEndpoint, secretEtcdKey('default', `${prefix}-0`));
  const expected = provider === 'kms' ? 'k8s:enc:kms:v2:keyward:' : 'k8s:enc:aesgcm:v1:';
  if (!raw?.subarray(0, expected.length).toString('latin1').startsWith(expected)) throw new Error(`the ${provider} trial's Secrets are not stored through ${provider}`);
  return taken;
}

async function main(dir: string): Promise<void> {
  warnIfBusy(progress);
  progress('building (or reusing) the image');
  const image = await buildKeywardImage();
  for (const kind of ['cold', 'warm'] as const) {
    progress(`node start, ${kind}`);
    await timedNodeStart(kind);
  }

  progress('node with Keyward installed');
  const node = await startTestNode({ images: [image.dockerArchive], controlPlane: { encryptionConfig: identityEncryptionConfig(dir) } });
  try {
    const token = createNodeToken(join(node.dir, 'softhsm'));
    let started = performance.now();
    await installKeyward(node, image.ref, token, join(dir, 'helm'));
    await waitPodReady(node, releaseNamespace, 'app.kubernetes.io/component=operator');
    await waitPodReady(node, releaseNamespace, 'app.kubernetes.io/component=csi-provider');
    emit({ bench: 'node', figure: 'helm_install_to_ready_s', value: seconds(started), load1m: load1m() });

    await applyShopWorkload(node, releaseNamespace, 'keyward-admin', 'bench-password');
    progress(`${podCount} pods with a Keyward volume, ${podConcurrency} at a time`);
    started = performance.now();
    const latencies = await podStartLatencies(node);
    emit({
      bench: 'node',
      figure: 'pod_with_keyward_volume_running_ms',
      pods: podCount,
      concurrency: podConcurrency,
      p50: round(percentile(latencies, 50), 0),
      p99: round(percentile(latencies, 99), 0),
      max: round(latencies.at(-1) ?? NaN, 0),
      totalS: seconds(started),
      load1m: load1m(),
    });
    await node.kubectl(['-n', shop.namespace, 'delete', 'pods', '--all', '--wait=true', '--timeout=180s']);

    progress('KMS plugin as a static pod; Secret writes, KMS against aesgcm, alternated');
    await node.kubectl(['apply', '-f', '-'], `apiVersion: keyward.dev/v1alpha1\nkind: KeyRing\nmetadata: { name: ${etcdRing.name}, namespace: ${etcdRing.namespace} }\nspec: { purpose: encryption }\n`);
    await node.kubectl(['-n', etcdRing.namespace, 'wait', '--for=condition=Ready', `keyring/${etcdRing.name}`, '--timeout=60s']);
    const kms = await installKmsStaticPod(node, image.ref, token, etcdRing);
    await waitPodReady(node, 'kube-system', 'app.kubernetes.io/component=kms-plugin');
    await enableKmsEncryption(node, dir, kms.socketPath);
    const times: Record<string, number[]> = { kms: [], aesgcm: [] };
    for (const [trial, provider] of (['kms', 'aesgcm', 'aesgcm', 'kms'] as const).entries()) {
      if (provider === 'kms') kmsEncryptionConfig(dir, 'keyward', kms.socketPath);
      else copyFileSync(aesgcmEncryptionConfig(dir), join(dir, 'encryption-config.yaml'));
      await node.controlPlane.restartApiserver();
      const taken = await timedSecretWrites(node, provider, trial);
      times[provider]!.push(taken);
      emit({ bench: 'node', figure: 'secret_writes_s', provider, secrets: secretCount, concurrency: writeConcurrency, value: taken, load1m: load1m() });
    }
    const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);
    emit({ bench: 'node', figure: 'secret_writes_kms_over_aesgcm', value: round(sum(times.kms!) / sum(times.aesgcm!), 3) });
  } finally {
    await node.stop();
  }
}

const dir = mkdtempSync(join(tmpdir(), 'keyward-bench-node-'));
try {
  await main(dir);
} catch (err) {
  progress(`FAILED: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
