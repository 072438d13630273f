// Keyward as users run it, timed on a real node: node start (cold: page cache dropped; warm:
// right after), `helm install` until every Keyward pod is Ready, pod create → Running with a
// Keyward volume filled by the real Secrets Store CSI driver (p50/p99 over many pods), and Secret
// writes through kube-apiserver with the static-pod KMS plugin against the built-in aesgcm
// provider, alternated in the same run. One JSON line per figure on stdout; progress on stderr.
import { CoreV1Api, Watch, type V1Pod } from '@kubernetes/client-node';
import { load } from 'js-yaml';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildKeywardImage } from '../testbed/image/keywardImage.js';
import { applyKeyRing, applyShopWorkload, keywardPod, shop } from '../e2e/install/clusterChecks.js';
import { createNodeToken, enableKmsEncryption, installKeyward, installKmsStaticPod, waitPodReady, releaseNamespace } from '../e2e/install/keywardOnNode.js';
import { aesgcmProviderYaml, identityEncryptionConfig, kmsProviderYaml, writeEncryptionConfig } from '../e2e/kms/kmsPluginProcess.js';
import { readEtcdKey, secretEtcdKey } from '../testbed/control-plane/etcdClient.js';
import { startTestNode, type TestNode } from '../testbed/node/testNode.js';
import { emit, load1m, percentile, round, warnIfBusy } from './report.js';
import { trackDirectory } from '../testbed/control-plane/componentProcess.js';

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

/** A pod with the shop's Keyward volume, or the same pod without any volume (the baseline). */
function benchPod(node: TestNode, name: string, withVolume: boolean): V1Pod {
  const pod = load(keywardPod(name, shop.serviceAccount, node.images.busybox.ref)) as V1Pod;
  if (!withVolume) {
    pod.spec!.volumes = [];
    pod.spec!.containers[0]!.volumeMounts = [];
  }
  return pod;
}

/**
 * Create → Ready of each pod, timed on a watch of the namespace (no kubectl processes in the
 * way). Pods are created `concurrency` at a time, with and without a Keyward volume in turn, so
 * the machine's drift weighs on both alike; each is deleted once Ready (kubelet runs at most 110).
 */
async function podStartLatencies(node: TestNode, count: number, concurrency: number, kinds: readonly boolean[]): Promise<Map<boolean, number[]>> {
  const core = node.kubeConfig.makeApiClient(CoreV1Api);
  const readyAt = new Map<string, (at: number) => void>();
  const watch = await new Watch(node.kubeConfig).watch(`/api/v1/namespaces/${shop.namespace}/pods`, {}, (_type, pod: V1Pod) => {
    const ready = pod.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True');
    if (ready) readyAt.get(pod.metadata?.name ?? '')?.(performance.now());
  }, () => undefined);
  const latencies = new Map<boolean, number[]>(kinds.map((k) => [k, []]));
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      const i = next++;
      const withVolume = kinds[i % kinds.length]!;
      const name = `bench-${withVolume ? 'keyward' : 'plain'}-${concurrency}-${i}`;
      const ready = new Promise<number>((resolve) => readyAt.set(name, resolve));
      const started = performance.now();
      await core.createNamespacedPod({ namespace: shop.namespace, body: benchPod(node, name, withVolume) });
      const at = await Promise.race([ready, sleep(120_000).then(() => { throw new Error(`pod ${name} not Ready within 120 s`); })]);
      latencies.get(withVolume)!.push(at - started);
      readyAt.delete(name);
      await core.deleteNamespacedPod({ namespace: shop.namespace, name, gracePeriodSeconds: 1 });
    }
  };
  try {
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    (watch as { abort(): void }).abort();
  }
  for (const list of latencies.values()) list.sort((a, b) => a - b);
  return latencies;
}

function emitPodLatencies(latencies: Map<boolean, number[]>, concurrency: number): void {
  for (const [withVolume, list] of latencies) {
    emit({
      bench: 'node',
      figure: withVolume ? 'pod_with_keyward_volume_running_ms' : 'pod_without_volume_running_ms',
      pods: list.length,
      concurrency,
      p50: round(percentile(list, 50), 0),
      p99: round(percentile(list, 99), 0),
      max: round(list.at(-1) ?? NaN, 0),
      load1m: load1m(),
    });
  }
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
    const started = performance.now();
    await installKeyward(node, image.ref, token, join(dir, 'helm'));
    emit({ bench: 'node', figure: 'helm_install_to_ready_s', value: seconds(started), load1m: load1m() });

    await applyShopWorkload(node, releaseNamespace, 'keyward-admin', 'bench-password');
    progress(`${podCount} pods with a Keyward volume and ${podCount} without, alternated, one at a time`);
    emitPodLatencies(await podStartLatencies(node, podCount * 2, 1, [true, false]), 1);
    progress(`the same, ${podConcurrency} at a time`);
    emitPodLatencies(await podStartLatencies(node, podCount * 2, podConcurrency, [true, false]), podConcurrency);

    progress('KMS plugin as a static pod; Secret writes, KMS against aesgcm, alternated');
    await applyKeyRing(node, etcdRing.namespace, etcdRing.name, { purpose: 'encryption' });
    const kms = await installKmsStaticPod(node, image.ref, token, etcdRing);
    await waitPodReady(node, 'kube-system', 'app.kubernetes.io/component=kms-plugin');
    await enableKmsEncryption(node, dir, kms.socketPath);
    const times: Record<string, number[]> = { kms: [], aesgcm: [] };
    // Both providers stay configured, so everything written so far still reads; the first writes.
    const aesgcm = aesgcmProviderYaml();
    const kmsProvider = kmsProviderYaml('keyward', kms.socketPath);
    for (const [trial, provider] of (['kms', 'aesgcm', 'aesgcm', 'kms'] as const).entries()) {
      writeEncryptionConfig(join(dir, 'encryption-config.yaml'), provider === 'kms' ? kmsProvider + aesgcm : aesgcm + kmsProvider);
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
const removeDir = trackDirectory(dir);
try {
  await main(dir);
} catch (err) {
  progress(`FAILED: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
} finally {
  removeDir();
}
