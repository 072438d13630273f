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
import { CoreV1Api, CustomObjectsApi, RbacAuthorizationV1Api } from '@kubernetes/client-node';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { HsmToken } from '../core/hsm/hsmToken.js';
import { RingStore } from '../core/hsm/ringStore.js';
import { sealSecret } from '../core/formats/sealedSecret.js';
import { createSoftHsmToken, type SoftHsmToken } from '../core/hsm/softHsmToken.js';
import { keepAliveApiClient } from '../core/kube/keepAliveApiClient.js';
import { keyPolicyResource, type KeyPolicyRule } from '../core/api/keyPolicy.js';
import { trackDirectory, type ComponentProcess } from '../testbed/control-plane/componentProcess.js';
import { startControlPlane, type ControlPlane } from '../testbed/control-plane/controlPlane.js';
import { csiProviderNodeFlags, startCsiProviderProcess } from '../e2e/csi/csiProviderProcess.js';
import { createPod, driverMountRequest, podToken, type TestPod } from '../e2e/csi/driverRequest.js';
import { userKubeConfig } from '../e2e/operator/admissionWebhooks.js';
import { installCrds } from '../e2e/operator/crds.js';
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
/** The provider's defaults (cli/keyward.ts), scaled down with the compressed minute. */
const defaults = { tokenReviewTtlS: 300, materialTtlS: 300, ringRefreshS: 2 };

const namespace = 'bench';
const audience = 'keyward';
const appServiceAccount = 'app';
const rings = {
  derivation: { name: 'volume-keys', algorithm: 'HMAC_SHA_384' },
  encryption: { name: 'app-secrets', algorithm: 'AES_256_GCM' },
  signing: { name: 'release', algorithm: 'ECDSA_P384' },
} as const;
const providerUser = 'keyward-csi-provider';

const progress = (line: string): void => console.error(`[bench:csi] ${line}`);

// ---------------------------------------------------------------- the workload

/** The SecretProviderClass `objects` every Mount asks for; `ciphertext` is the pod's sealed secret. */
function objectsYaml(ciphertext: Buffer): string {
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
const objectsPerMount = 3;

/** The three rings in the HSM, and sealed secrets: one for the app workload, one per cold workload. */
async function createRings(hsm: SoftHsmToken, coldSecrets: number): Promise<{ app: Buffer; cold: Buffer[] }> {
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

const coldName = (i: number): string => `cold-${String(i).padStart(4, '0')}`;
const appPodName = (i: number): string => `app-${String(i).padStart(4, '0')}`;

/**
 * KeyPolicies granting exactly what a Mount needs on the three rings: to bench/app, and to each
 * cold workload's ServiceAccount (32 subjects a rule, 32 rules a policy: the CRD's limits).
 */
async function createPolicies(api: CustomObjectsApi): Promise<void> {
  const rule = (name: string, serviceAccounts: string[]): KeyPolicyRule => ({
    name,
    subjects: serviceAccounts.map((sa) => ({ kind: 'ServiceAccount' as const, namespace, name: sa })),
    keyRings: Object.values(rings).map((r) => r.name),
    operations: ['deriveKey', 'decrypt', 'getPublicKey'],
  });
  const policies: KeyPolicyRule[][] = [[rule('app', [appServiceAccount])]];
  const cold = Array.from({ length: coldPods }, (_, i) => coldName(i));
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

interface DriverRequest {
  attributes: string;
  secrets: string;
  target_path: string;
  permission: string;
}

/** Creates the pods (and their ServiceAccounts) with `concurrency` in flight, each with its own pod-bound token. */
async function createPods(core: CoreV1Api, specs: { name: string; serviceAccount: string; ciphertext: Buffer }[], what: string): Promise<DriverRequest[]> {
  const requests: DriverRequest[] = new Array<DriverRequest>(specs.length);
  const started = performance.now();
  let next = 0;
  let done = 0;
  const worker = async (): Promise<void> => {
    while (next < specs.length) {
      const index = next++;
      const spec = specs[index]!;
      const pod: TestPod = await createPod(core, namespace, spec.name, spec.serviceAccount);
      const token = await podToken(core, pod, audience);
      const request = driverMountRequest(pod, { objects: objectsYaml(spec.ciphertext), tokens: { [audience]: token } });
      requests[index] = { attributes: request.attributes ?? '', secrets: request.secrets ?? 'null', target_path: request.targetPath ?? '', permission: request.permission ?? '420' };
      if (++done % 250 === 0) progress(`${what}: ${done}/${specs.length} pods with tokens`);
    }
  };
  await Promise.all(Array.from({ length: createConcurrency }, worker));
  progress(`${what}: ${specs.length} pods with tokens in ${round((performance.now() - started) / 1000, 1)} s`);
  return requests;
}

/**
 * A client certificate for the provider with only what the chart gives its DaemonSet's
 * ServiceAccount: create TokenReviews, list and watch KeyPolicies. Written as a kubeconfig file for KUBECONFIG.
 */
async function providerKubeconfig(cp: ControlPlane, dir: string): Promise<string> {
  const rbac = cp.kubeConfig.makeApiClient(RbacAuthorizationV1Api);
  await rbac.createClusterRole({
    body: {
      metadata: { name: providerUser },
      rules: [
        { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
        { apiGroups: ['keyward.dev'], resources: ['keypolicies'], verbs: ['list', 'watch'] },
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

interface ProviderProcess {
  process: ComponentProcess;
  pid: number;
  socketPath: string;
  metricsUrl: string;
  logFile: string;
  nodeFlags: string;
}

/** The provider through the CLI (e2e/csi/csiProviderProcess.ts), in its own directory `<dir>/<name>`. */
async function startProvider(options: { hsm: SoftHsmToken; kubeconfigPath: string; dir: string; name: string; settings: typeof defaults }): Promise<ProviderProcess> {
  const { settings, name } = options;
  const dir = join(options.dir, name);
  mkdirSync(dir);
  const profiling = cpuProfDir ? ['--cpu-prof', `--cpu-prof-dir=${cpuProfDir}`, `--cpu-prof-name=csi-provider-${name}.cpuprofile`] : [];
  const started = await startCsiProviderProcess({
    hsm: options.hsm,
    kubeconfigPath: options.kubeconfigPath,
    dir,
    audience,
    nodeFlags: [...providerNodeFlags, ...profiling],
    flags: [`--token-review-ttl=${settings.tokenReviewTtlS}`, `--material-ttl=${settings.materialTtlS}`, `--ring-refresh=${settings.ringRefreshS}`],
    readyTimeoutMs: 60_000,
  });
  const pid = started.process.pid;
  if (pid === undefined) throw new Error('the provider process has no pid');
  return { ...started, pid, nodeFlags: providerNodeFlags.join(' ') };
}

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
    await createPolicies(keepAliveApiClient(cp.kubeConfig, CustomObjectsApi));
    const kubeconfigPath = await providerKubeconfig(cp, dir);
    // Pods of the app workload: all served in the steady state; the first ones are also the warm pod and the cold pods.
    const appRequests = await createPods(
      core,
      Array.from({ length: steadyPods }, (_, i) => ({ name: appPodName(i), serviceAccount: appServiceAccount, ciphertext: sealed.app })),
      `workload ${namespace}/${appServiceAccount}`,
    );
    const coldWorkloadRequests = await createPods(
      core,
      Array.from({ length: coldPods }, (_, i) => ({ name: coldName(i), serviceAccount: coldName(i), ciphertext: sealed.cold[i]! })),
      'cold workloads (one ServiceAccount each)',
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
