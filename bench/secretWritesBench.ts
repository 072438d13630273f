// Secret writes through a real kube-apiserver: the cost users feel. Times the same burst of
// Secret creates with the apiserver encrypting through the Keyward plugin and through the
// built-in aesgcm provider, each on a fresh control plane, and prints the time ratio.
// One JSON line per trial and a final ratio line on stdout; progress on stderr.
import { CoreV1Api } from '@kubernetes/client-node';
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { keepAliveApiClient } from '../core/kube/keepAliveApiClient.js';
import { trackDirectory } from '../testbed/control-plane/componentProcess.js';
import { startControlPlane, type ControlPlane } from '../testbed/control-plane/controlPlane.js';
import { readEtcdKey, secretEtcdKey } from '../testbed/control-plane/etcdClient.js';
import { aesgcmEncryptionConfig, kmsEncryptionConfig } from '../e2e/kms/kmsPluginProcess.js';
import { startBenchPlugin, type BenchPlugin } from './kmsBench.js';
import { warnIfBusy } from './report.js';

type Provider = 'kms' | 'aesgcm';

const secretCount = Number(process.env.KEYWARD_BENCH_SECRETS ?? 5000);
const warmupWrites = 200;
const writeConcurrency = 32;
const providerName = 'keyward';
/** ABBA: a drift over the whole run (caches, disk, other load) weighs on both providers alike. */
const trialOrder: Provider[] = ['kms', 'aesgcm', 'aesgcm', 'kms'];
/** How each provider's values start in etcd: proof the writes went through it. */
const etcdPrefix: Record<Provider, string> = { kms: `k8s:enc:kms:v2:${providerName}:`, aesgcm: 'k8s:enc:aesgcm:v1:key1:' };

const progress = (line: string): void => console.error(`[bench:secrets] ${line}`);

// ---------------------------------------------------------------- client


// ---------------------------------------------------------------- writes

const secretBody = (name: string): { metadata: { name: string }; stringData: Record<string, string> } => ({
  metadata: { name },
  stringData: { username: 'bench', password: randomBytes(12).toString('hex') },
});

/** Creates `count` Secrets named prefix-N, `writeConcurrency` in flight; returns the seconds taken. */
async function timedWrites(core: CoreV1Api, prefix: string, count: number): Promise<number> {
  let next = 0;
  const writer = async (): Promise<void> => {
    while (next < count) {
      const name = `${prefix}-${next++}`;
      await core.createNamespacedSecret({ namespace: 'default', body: secretBody(name) });
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: writeConcurrency }, writer));
  return (performance.now() - started) / 1000;
}

async function assertStoredVia(cp: ControlPlane, provider: Provider, name: string): Promise<void> {
  const raw = await readEtcdKey(cp.etcdEndpoint, secretEtcdKey('default', name));
  const prefix = raw?.subarray(0, etcdPrefix[provider].length).toString('latin1');
  if (prefix !== etcdPrefix[provider]) {
    throw new Error(`Secret default/${name} is not stored with the ${provider} provider (etcd value starts '${prefix}')`);
  }
}

/** The plugin's successful calls per method so far, from its Prometheus metrics. */
async function pluginCalls(bench: BenchPlugin): Promise<Record<string, number>> {
  const text = await (await fetch(`${bench.plugin.metricsUrl}/metrics`)).text();
  const calls: Record<string, number> = {};
  for (const match of text.matchAll(/^keyward_kms_requests_total\{method="(\w+)",code="OK"\} (\d+)$/gm)) {
    calls[match[1] ?? ''] = Number(match[2]);
  }
  return calls;
}

const callsSince = (before: Record<string, number>, after: Record<string, number>): Record<string, number> =>
  Object.fromEntries(Object.entries(after).map(([method, n]) => [method, n - (before[method] ?? 0)]));

// ---------------------------------------------------------------- one trial

interface TrialResult {
  provider: Provider;
  seconds: number;
}

/** The encryption config for `provider`, and the plugin behind it when there is one. */
async function encryptionFor(provider: Provider, dir: string): Promise<{ config: string; plugin?: BenchPlugin }> {
  if (provider === 'aesgcm') return { config: aesgcmEncryptionConfig(dir) };
  const plugin = await startBenchPlugin(progress);
  return { config: kmsEncryptionConfig(dir, providerName, plugin.plugin.socketPath), plugin };
}

async function runTrial(provider: Provider, trial: number): Promise<TrialResult> {
  const dir = mkdtempSync(join(tmpdir(), 'keyward-bench-writes-'));
  const removeDir = trackDirectory(dir);
  let plugin: BenchPlugin | undefined;
  let cp: ControlPlane | undefined;
  try {
    const encryption = await encryptionFor(provider, dir);
    plugin = encryption.plugin;
    progress(`trial ${trial} (${provider}): starting a fresh control plane`);
    cp = await startControlPlane({ encryptionConfig: encryption.config, progress: (line) => progress(`  ${line}`) });
    // One keep-alive pool, as client-go and kubectl use: fresh TLS handshakes would swamp the encryption cost.
    const core = keepAliveApiClient(cp.kubeConfig, CoreV1Api);
    await timedWrites(core, 'warmup', warmupWrites);
    const callsBefore = plugin ? await pluginCalls(plugin) : {};
    progress(`trial ${trial} (${provider}): ${secretCount} writes, ${writeConcurrency} in flight`);
    const seconds = await timedWrites(core, 'bench', secretCount);
    const pluginCallsDuringWrites = plugin ? callsSince(callsBefore, await pluginCalls(plugin)) : undefined;
    await assertStoredVia(cp, provider, `bench-${secretCount - 1}`);
    const line = {
      bench: 'secret-writes',
      provider,
      trial,
      secrets: secretCount,
      seconds: Number(seconds.toFixed(3)),
      writes_per_s: Number((secretCount / seconds).toFixed(1)),
      ...(pluginCallsDuringWrites ? { plugin_calls: pluginCallsDuringWrites } : {}),
    };
    process.stdout.write(`${JSON.stringify(line)}\n`);
    return { provider, seconds };
  } finally {
    await cp?.stop();
    await plugin?.stop();
    removeDir();
  }
}

const mean = (values: number[]): number => values.reduce((a, b) => a + b, 0) / values.length;

function ratioLine(results: TrialResult[]): Record<string, unknown> {
  const secondsOf = (provider: Provider): number[] => results.filter((r) => r.provider === provider).map((r) => r.seconds);
  const kms = secondsOf('kms');
  const aesgcm = secondsOf('aesgcm');
  return {
    bench: 'secret-writes-ratio',
    kms_over_aesgcm: Number((mean(kms) / mean(aesgcm)).toFixed(3)),
    order: trialOrder,
    kms_seconds: kms.map((s) => Number(s.toFixed(3))),
    aesgcm_seconds: aesgcm.map((s) => Number(s.toFixed(3))),
  };
}

async function main(): Promise<void> {
  warnIfBusy(progress);
  const results: TrialResult[] = [];
  for (const [index, provider] of trialOrder.entries()) results.push(await runTrial(provider, index + 1));
  process.stdout.write(`${JSON.stringify(ratioLine(results))}\n`);
}

try {
  await main();
} catch (err) {
  console.error(`[bench:secrets] FAILED: ${(err as Error).message}`);
  process.exitCode = 1;
}
