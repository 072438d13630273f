// CSI provider benchmark: the provider process (`keyward csi-provider`) on a SoftHSM2 token and a
// real control plane, driven over its unix socket by the Go load generator (bench/load, csi-load) with
// MountRequests shaped as the Secrets Store CSI driver sends them: pods exist as API objects, each
// with its own TokenRequest token bound to the pod (audience keyward). Every Mount asks for three
// objects: a dataKey (derivation ring), a sealed secret (encryption ring) and a publicKey (signing
// ring). One JSON line per figure on stdout; progress on stderr.
//
// Provider A (default TTLs: token reviews and material 5 min, rings re-read every 2 s):
//   first   the first Mount after the process starts (ring listing, public key, derive, decrypt,
//           TokenReview, and Node's cold JIT all at once)
//   warm    one pod mounted again and again: every cache hits
//   cold    the first Mount of distinct pods, one at a time, in two flavours:
//           pod       new pods of a workload already served (ServiceAccount bench/app): a
//                     TokenReview miss each, the workload's derived key and secret cached;
//           workload  new pods of new workloads: each its own ServiceAccount (so the derived key,
//                     whose context names the ServiceAccount, misses) and its own sealed secret (so
//                     opening it misses): TokenReview + HSM derive + HSM decrypt per Mount. Only
//                     the ring listing and the public key (kept while the version lives) are shared.
//   Cold is measured on a process warmed by the warm run (a provider serves for days; its first
//   Mount is reported on its own), and made cold by distinct ServiceAccounts and objects rather
//   than by restarts.
// Provider B, started fresh for the steady state: P pods (1,000) remounting once per compressed
// minute (6 s) for K rounds, open loop. Time is compressed by 60 s / interval and so are the
// provider's TTLs and ring refresh (300 s → 30 s, 2 s → 0.2 s at 6 s), so the per-Mount ratios
// (TokenReviews, HSM calls) are those of real one-minute remounts. A first round fills the
// caches (reported as phase fill); the next K rounds are measured, with deltas of the provider's
// /metrics, its CPU, and its RSS (peak over the whole life of the process, and at the end).
// The reviews filled in one round all expire one TTL later (5 rounds), so that round carries a
// wave of P TokenReviews; compressed, the wave comes at 10x the rate real remounts would make it
// (167/s instead of 17/s at the defaults): per_round shows it.
//
// Targets: cold p99 ≤ 50 ms, warm p99 ≤ 5 ms, provider RSS ≤ 100 MiB.
// KEYWARD_BENCH_PODS, _COLD_PODS, _WARM_CALLS, _INTERVAL_S, _ROUNDS, _CREATE_CONCURRENCY shrink it
// for a quick harness check; KEYWARD_BENCH_COMPRESS_TTLS=0 keeps the default TTLs in the steady
// state; KEYWARD_BENCH_CPU_PROF=DIR runs the providers with --cpu-prof into DIR;
// the providers run with the chart's Node flags, or KEYWARD_BENCH_PROVIDER_NODE_FLAGS ("" for none);
// KEYWARD_BENCH_KEEP_LOGS=DIR keeps their logs.
import { CoreV1Api, CustomObjectsApi } from '@kubernetes/client-node';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSoftHsmToken, type SoftHsmToken } from '../core/hsm/softHsmToken.js';
import { keepAliveApiClient } from '../core/kube/keepAliveApiClient.js';
import { trackDirectory } from '../testbed/control-plane/componentProcess.js';
import { startControlPlane, type ControlPlane } from '../testbed/control-plane/controlPlane.js';
import { csiProviderNodeFlags } from '../e2e/csi/csiProviderProcess.js';
import { installCrds } from '../e2e/operator/crds.js';
import {
  appServiceAccount,
  createPods,
  createPolicies,
  createRings,
  namespace,
  objectsPerMount,
  providerKubeconfig,
  rings,
  startProvider as startWorkloadProvider,
  type DriverRequest,
  type ProviderProcess,
  type ProviderSettings,
} from './csiWorkload.js';
import { buildGoClient, runGoClient } from './goClient.js';
import { cpuSeconds, rssMib, watchPeakRss } from './procStats.js';
import { emit, load1m, round, warnIfBusy } from './report.js';

/** Overridable so a quick check of the harness does not take minutes. */
const envNumber = (name: string, fallback: number): number => Number(process.env[`KEYWARD_BENCH_${name}`] ?? fallback);
const steadyPods = envNumber('PODS', 1000);
const coldPods = envNumber('COLD_PODS', 250);
const warmCalls = envNumber('WARM_CALLS', 2000);
const intervalSeconds = envNumber('INTERVAL_S', 6);
const rounds = envNumber('ROUNDS', 10);
const createConcurrency = envNumber('CREATE_CONCURRENCY', 8);
const compressTtls = process.env.KEYWARD_BENCH_COMPRESS_TTLS !== '0';
const cpuProfDir = process.env.KEYWARD_BENCH_CPU_PROF;
/** Copies the providers' logs (and --trace-gc output, if asked for) here before the run's directory is removed. */
const keepLogsDir = process.env.KEYWARD_BENCH_KEEP_LOGS;
/**
 * Node flags for the provider processes; none by default (plain `node dist/cli/keyward.js
 * csi-provider`). The chart's DaemonSet adds --max-semi-space-size=2 --max-old-space-size=64.
 */
const providerNodeFlags = process.env.KEYWARD_BENCH_PROVIDER_NODE_FLAGS?.split(/\s+/).filter(Boolean) ?? csiProviderNodeFlags;

const warmupCalls = 50;
const targets = { coldP99Ms: 50, warmP99Ms: 5, rssMib: 100 };

const progress = (line: string): void => console.error(`[bench:csi] ${line}`);
const coldName = (i: number): string => `cold-${String(i).padStart(4, '0')}`;
const appPodName = (i: number): string => `app-${String(i).padStart(4, '0')}`;
/** The provider's defaults (cli/keyward.ts), scaled down with the compressed minute. */
const defaults: ProviderSettings = { tokenReviewTtlS: 300, materialTtlS: 300, ringRefreshS: 2 };

/** The provider with the benchmark's Node flags, and a CPU profile when asked for. */
const startProvider = (options: { hsm: SoftHsmToken; kubeconfigPath: string; dir: string; name: string; settings: ProviderSettings }): Promise<ProviderProcess> =>
  startWorkloadProvider({
    ...options,
    nodeFlags: [...providerNodeFlags, ...(cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${cpuProfDir}`, `--cpu-prof-name=csi-provider-${options.name}.cpuprofile`] : [])],
  });

// ---------------------------------------------------------------- the provider's costs

/** The provider's counters that say what a Mount cost: one number per series. */
type Scrape = Map<string, number>;

async function scrape(provider: ProviderProcess): Promise<Scrape> {
  const text = await (await fetch(`${provider.metricsUrl}/metrics`)).text();
  const series: Scrape = new Map();
  for (const line of text.split('\n')) {
    if (!line.startsWith('keyward_csi_')) continue;
    const space = line.lastIndexOf(' ');
    series.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return series;
}

/** Sum over the series of `name` whose labels include every `label="value"` given. */
function total(s: Scrape, name: string, labels: string[] = []): number {
  let sum = 0;
  for (const [key, value] of s) {
    const bare = key.split('{')[0];
    if (bare === name && labels.every((l) => key.includes(l))) sum += value;
  }
  return sum;
}

/** What the Mounts between two scrapes cost, per Mount. */
function costs(before: Scrape, after: Scrape): Record<string, unknown> {
  const delta = (name: string, labels: string[] = []): number => total(after, name, labels) - total(before, name, labels);
  const mounts = delta('keyward_csi_mounts_total');
  const hsmCalls = delta('keyward_csi_hsm_calls_per_mount_sum');
  const per = (n: number): number | null => (mounts > 0 ? round(n / mounts, 4) : null);
  const lookups = (cache: string): { hits: number; misses: number } => ({
    hits: delta('keyward_csi_cache_lookups_total', [`cache="${cache}"`, 'outcome="hit"']),
    misses: delta('keyward_csi_cache_lookups_total', [`cache="${cache}"`, 'outcome="miss"']),
  });
  return {
    mounts,
    mounts_served: delta('keyward_csi_mounts_total', ['result="served"']),
    token_reviews: delta('keyward_csi_token_reviews_total'),
    token_reviews_per_mount: per(delta('keyward_csi_token_reviews_total')),
    hsm_calls: hsmCalls,
    hsm_calls_per_mount: per(hsmCalls),
    hsm_calls_per_mount_histogram_count: delta('keyward_csi_hsm_calls_per_mount_count'),
    cache_token_review: lookups('tokenReview'),
    cache_material: lookups('material'),
  };
}

// ---------------------------------------------------------------- load generator

/** One load run, with the provider's metric deltas, CPU and RSS around it. */
async function measured(bin: string, provider: ProviderProcess, requestsFile: string, args: string[]): Promise<Record<string, unknown>> {
  const before = await scrape(provider);
  const cpuBefore = cpuSeconds(provider.pid);
  const loadStart = load1m();
  const report = await runGoClient(bin, [`-socket=${provider.socketPath}`, `-requests=${requestsFile}`, `-expect-files=${objectsPerMount}`, ...args]);
  const cpuUsed = cpuSeconds(provider.pid) - cpuBefore;
  const cost = costs(before, await scrape(provider));
  const mounts = Number(cost.mounts);
  return {
    ...report,
    ...cost,
    provider_cpu_s: round(cpuUsed, 2),
    provider_cpu_ms_per_mount: mounts > 0 ? round((cpuUsed * 1000) / mounts, 2) : null,
    provider_rss_mib: round(rssMib(provider.pid), 1),
    provider_node_flags: provider.nodeFlags,
    load_1m_start: loadStart,
    load_1m_end: load1m(),
  };
}

const verdict = (value: number, target: number): { target: number; meets_target: boolean } => ({ target, meets_target: value <= target });

// ---------------------------------------------------------------- main

function checkSettings(): void {
  const whole = (name: string, value: number, least: number): void => {
    if (!Number.isInteger(value) || value < least) throw new Error(`KEYWARD_BENCH_${name} must be a whole number of at least ${least}`);
  };
  whole('PODS', steadyPods, 2);
  whole('COLD_PODS', coldPods, 1);
  whole('WARM_CALLS', warmCalls, 1);
  whole('ROUNDS', rounds, 1);
  whole('CREATE_CONCURRENCY', createConcurrency, 1);
  if (!(intervalSeconds > 0)) throw new Error('KEYWARD_BENCH_INTERVAL_S must be more than 0');
}

async function main(): Promise<void> {
  checkSettings();
  progress(`load average at start: ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  warnIfBusy(progress);
  progress('building the Go load generator (cached after the first build)');
  const bin = buildGoClient('csi-load');
  const dir = mkdtempSync(join(tmpdir(), 'keyward-bench-csi-'));
  const removeDir = trackDirectory(dir);
  if (cpuProfDir) mkdirSync(cpuProfDir, { recursive: true });
  let cp: ControlPlane | undefined;
  let provider: ProviderProcess | undefined;
  try {
    cp = await startControlPlane({ progress });
    await installCrds(cp.kubeConfig);
    const hsm = createSoftHsmToken({ parentDir: dir, label: 'keyward-bench-csi' });
    const sealed = await createRings(hsm, coldPods);
    progress(`token with rings ${Object.values(rings).map((r) => `${namespace}/${r.name}`).join(', ')} and ${coldPods + 1} sealed secrets ready`);

    const core = keepAliveApiClient(cp.kubeConfig, CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: namespace } } });
    await createPolicies(keepAliveApiClient(cp.kubeConfig, CustomObjectsApi), Array.from({ length: coldPods }, (_, i) => coldName(i)));
    const kubeconfigPath = await providerKubeconfig(cp, dir);
    // Pods of the app workload: all served in the steady state; the first ones are also the warm pod and the cold pods.
    const appRequests = await createPods(
      core,
      Array.from({ length: steadyPods }, (_, i) => ({ name: appPodName(i), serviceAccount: appServiceAccount, ciphertext: sealed.app })),
      `workload ${namespace}/${appServiceAccount}`,
      { concurrency: createConcurrency, progress },
    );
    const coldWorkloadRequests = await createPods(
      core,
      Array.from({ length: coldPods }, (_, i) => ({ name: coldName(i), serviceAccount: coldName(i), ciphertext: sealed.cold[i]! })),
      'cold workloads (one ServiceAccount each)',
      { concurrency: createConcurrency, progress },
    );
    const file = (name: string, requests: DriverRequest[]): string => {
      const path = join(dir, `${name}.json`);
      writeFileSync(path, JSON.stringify(requests));
      return path;
    };
    const firstFile = file('first', appRequests.slice(0, 1));
    const coldPodFile = file('cold-pod', appRequests.slice(1, 1 + Math.min(coldPods, steadyPods - 1)));
    const coldWorkloadFile = file('cold-workload', coldWorkloadRequests);
    const steadyFile = file('steady', appRequests);

    // ------------------------------------------------ provider A: first, warm, cold
    progress('starting provider A (default TTLs)');
    provider = await startProvider({ hsm, kubeconfigPath, dir, name: 'a', settings: defaults });
    const idleRssA = rssMib(provider.pid);
    const stopRssWatchA = watchPeakRss(provider.pid, 100);
    const settingsA = { token_review_ttl_s: defaults.tokenReviewTtlS, material_ttl_s: defaults.materialTtlS, ring_refresh_s: defaults.ringRefreshS };

    const first = await measured(bin, provider, firstFile, ['-mode=cold', '-label=first-mount-after-start']);
    emit({ ...first, bench: 'csi-first', provider_idle_rss_mib: round(idleRssA, 1), ...settingsA });

    progress(`warm: pod ${appPodName(0)}, ${warmupCalls} unmeasured then ${warmCalls} Mounts one at a time`);
    const warm = await measured(bin, provider, firstFile, ['-mode=warm', '-index=0', `-warmup-calls=${warmupCalls}`, `-repeat=${warmCalls}`, '-label=one-pod-repeated']);
    emit({ ...warm, bench: 'csi-warm', ...verdict(Number(warm.p99_ms), targets.warmP99Ms), ...settingsA });

    progress('cold (pod): first Mount of distinct pods of workload bench/app, one at a time');
    const coldPod = await measured(bin, provider, coldPodFile, ['-mode=cold', '-label=new-pods-of-a-served-workload']);
    emit({ ...coldPod, bench: 'csi-cold', flavour: 'pod', ...verdict(Number(coldPod.p99_ms), targets.coldP99Ms), ...settingsA });

    progress('cold (workload): first Mount of distinct pods, each its own ServiceAccount and sealed secret, one at a time');
    const coldWorkload = await measured(bin, provider, coldWorkloadFile, ['-mode=cold', '-label=new-pods-of-new-workloads']);
    emit({ ...coldWorkload, bench: 'csi-cold', flavour: 'workload', ...verdict(Number(coldWorkload.p99_ms), targets.coldP99Ms), ...settingsA });
    const peakRssA = stopRssWatchA();
    progress(`provider A: RSS ${round(rssMib(provider.pid), 1)} MiB now, peak ${round(peakRssA, 1)} MiB; stopping it`);
    await provider.process.stop();
    provider = undefined;

    // ------------------------------------------------ provider B: steady state
    const factor = compressTtls ? 60 / intervalSeconds : 1;
    const settingsB = {
      tokenReviewTtlS: round(Math.max(1, defaults.tokenReviewTtlS / factor), 1),
      materialTtlS: round(Math.max(1, defaults.materialTtlS / factor), 1),
      ringRefreshS: round(Math.max(0.1, defaults.ringRefreshS / factor), 2),
    };
    progress(`starting provider B for the steady state (time compressed ×${round(factor, 2)}: TTLs ${settingsB.tokenReviewTtlS} s, ring refresh ${settingsB.ringRefreshS} s)`);
    provider = await startProvider({ hsm, kubeconfigPath, dir, name: 'b', settings: settingsB });
    const idleRssB = rssMib(provider.pid);
    const stopRssWatchB = watchPeakRss(provider.pid, 100);
    const steadyCommon = {
      pods: steadyPods,
      compressed_minute_s: intervalSeconds,
      time_compression: round(factor, 2),
      token_review_ttl_s: settingsB.tokenReviewTtlS,
      material_ttl_s: settingsB.materialTtlS,
      ring_refresh_s: settingsB.ringRefreshS,
    };
    progress(`steady (fill): ${steadyPods} pods, one round of ${intervalSeconds} s`);
    const fill = await measured(bin, provider, steadyFile, ['-mode=steady', `-interval=${intervalSeconds}s`, '-rounds=1', '-label=fill']);
    emit({ ...fill, bench: 'csi-steady', phase: 'fill', ...steadyCommon });

    progress(`steady (measured): ${steadyPods} pods, ${rounds} rounds of ${intervalSeconds} s`);
    const steady = await measured(bin, provider, steadyFile, ['-mode=steady', `-interval=${intervalSeconds}s`, `-rounds=${rounds}`, '-label=measured']);
    const peakRssB = stopRssWatchB();
    const endRssB = rssMib(provider.pid);
    emit({
      ...steady,
      bench: 'csi-steady',
      phase: 'measured',
      ...steadyCommon,
      provider_cpu_cores: round(Number(steady.provider_cpu_s) / Number(steady.duration_s), 3),
      provider_rss_idle_mib: round(idleRssB, 1),
      provider_rss_peak_mib: round(peakRssB, 1),
      provider_rss_end_mib: round(endRssB, 1),
      provider_a_rss_peak_mib: round(peakRssA, 1),
      rss_target_mib: targets.rssMib,
      rss_meets_target: Math.max(peakRssA, peakRssB) <= targets.rssMib,
      errors_meet_target: Number(fill.errors) === 0 && Number(steady.errors) === 0,
    });
  } finally {
    progress('stopping the provider and the control plane, removing the token');
    await provider?.process.stop();
    await cp?.stop();
    if (keepLogsDir) {
      mkdirSync(keepLogsDir, { recursive: true });
      for (const name of ['a', 'b']) {
        const log = join(dir, name, 'csi-provider.log');
        if (existsSync(log)) copyFileSync(log, join(keepLogsDir, `csi-provider-${name}.log`));
      }
    }
    removeDir();
  }
}

try {
  await main();
} catch (err) {
  console.error(`[bench:csi] FAILED: ${(err as Error).message}`);
  process.exitCode = 1;
}
