// Operator benchmark: the operator as its own process, on a real control plane and a SoftHSM2
// token, turning KeyRings into HSM keys. Creates N KeyRings at a steady rate (or as fast as a few
// creators in flight allow), sees each one's Ready=True (for its generation) on a watch, and
// reports create→Ready latency, the operator's reconciles/s, errors, CPU and memory; then requests
// a rotation of every ring the same way and reports request→new primary. One JSON line per phase
// on stdout, plus one with the HSM operation latencies of that phase; progress on stderr.
import { CustomObjectsApi, PatchStrategy, setHeaderOptions, type KubeConfig } from '@kubernetes/client-node';
import { mkdtempSync, readFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createSoftHsmToken } from '../core/hsm/softHsmToken.js';
import { keyRingResource, type KeyRing } from '../core/api/keyRing.js';
import { keepAliveApiClient } from '../core/kube/keepAliveApiClient.js';
import { trackDirectory } from '../testbed/control-plane/componentProcess.js';
import { startControlPlane, type ControlPlane } from '../testbed/control-plane/controlPlane.js';
import { installCrds } from '../e2e/operator/crds.js';
import { startOperatorProcess, type OperatorProcess } from '../e2e/operator/operatorProcess.js';
import { cpuSeconds, rssMib, watchPeakRss } from './procStats.js';
import { watchObjects } from './watchObjects.js';
import { load1m, percentile, round, warnIfBusy } from './report.js';

/** Overridable so a quick check of the harness does not take minutes. */
const ringCount = Number(process.env.KEYWARD_BENCH_RINGS ?? 500);
const creators = Number(process.env.KEYWARD_BENCH_CREATORS ?? 10);
/** Requests per second; 0 sends them as fast as `creators` requests in flight allow. */
const ratePerSecond = Number(process.env.KEYWARD_BENCH_RATE ?? 10);
const workers = Number(process.env.KEYWARD_BENCH_WORKERS ?? 4);
const rotatePhase = process.env.KEYWARD_BENCH_ROTATE !== '0';
const phaseTimeoutMs = Number(process.env.KEYWARD_BENCH_TIMEOUT_S ?? 600) * 1000;
const namespace = 'default';
const rotationRequest = 'bench-rotation-1';
const rssSampleMs = 200;
const identity = 'bench-operator';

const progress = (line: string): void => console.error(`[bench:operator] ${line}`);

// ---------------------------------------------------------------- operator metrics

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

async function scrape(operator: OperatorProcess): Promise<Sample[]> {
  const text = await (await fetch(`${operator.metricsUrl}/metrics`)).text();
  const samples: Sample[] = [];
  for (const [, name = '', labelText = '', value] of text.matchAll(/^(\w+)(?:\{(.*)\})? (\S+)$/gm)) {
    const labels = Object.fromEntries([...labelText.matchAll(/(\w+)="([^"]*)"/g)].map(([, k = '', v = '']) => [k, v]));
    samples.push({ name, labels, value: Number(value) });
  }
  return samples;
}

const total = (samples: Sample[], name: string): number => samples.filter((s) => s.name === name).reduce((sum, s) => sum + s.value, 0);

/** Per HSM operation: calls and the median, interpolated within the histogram's buckets, over the phase. */
function hsmMedians(before: Sample[], after: Sample[]): Record<string, number | null> {
  const bucketName = 'keyward_hsm_operation_duration_seconds_bucket';
  const at = (samples: Sample[], op: string, le: string): number =>
    samples.find((s) => s.name === bucketName && s.labels.operation === op && s.labels.le === le)?.value ?? 0;
  const figures: Record<string, number | null> = {};
  const operations = new Set(after.filter((s) => s.name === bucketName).map((s) => s.labels.operation ?? ''));
  for (const op of operations) {
    const bounds = after.filter((s) => s.name === bucketName && s.labels.operation === op).map((s) => s.labels.le ?? '');
    const counts = bounds.map((le) => ({ upper: le === '+Inf' ? Infinity : Number(le), count: at(after, op, le) - at(before, op, le) }));
    const calls = counts.at(-1)?.count ?? 0;
    figures[`${op}_calls`] = calls;
    if (calls === 0) continue;
    let lower = 0;
    let below = 0;
    for (const { upper, count } of counts) {
      if (count >= calls / 2) {
        figures[`${op}_p50_ms`] = upper === Infinity ? null : round((lower + ((calls / 2 - below) / Math.max(1, count - below)) * (upper - lower)) * 1000, 2);
        break;
      }
      lower = upper;
      below = count;
    }
  }
  return figures;
}

// ---------------------------------------------------------------- apiserver client and watch

/** Ready=True for the object's current generation. */
function isReady(keyRing: KeyRing): boolean {
  const generation = keyRing.metadata.generation;
  return (keyRing.status?.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True' && c.observedGeneration === generation);
}

/** The namespace's KeyRings from now on: every object seen goes to `onObject`. */
async function watchKeyRings(kubeConfig: KubeConfig, objects: CustomObjectsApi, onObject: (keyRing: KeyRing) => void): Promise<{ stop(): void }> {
  const path = `/apis/${keyRingResource.group}/${keyRingResource.version}/namespaces/${namespace}/${keyRingResource.plural}`;
  const list = (await objects.listNamespacedCustomObject({ ...keyRingResource, namespace })) as { metadata?: { resourceVersion?: string } };
  return watchObjects<KeyRing>(kubeConfig, path, { resourceVersion: list.metadata?.resourceVersion }, onObject, progress);
}

// ---------------------------------------------------------------- one phase

interface PhaseResult {
  wallSeconds: number;
  latenciesMs: number[];
}

/**
 * Sends `request(name)` for every ring, on a fixed schedule of `ratePerSecond` (at most `creators`
 * in flight), and waits until `done` has been seen for each (`seen` is filled by the watch).
 * Latency: first seen done − request sent.
 */
async function runPhase(
  names: string[],
  request: (name: string) => Promise<unknown>,
  seen: Map<string, number>,
  label: string,
): Promise<PhaseResult> {
  const sent = new Map<string, number>();
  let next = 0;
  const started = performance.now();
  const sender = async (): Promise<void> => {
    while (next < names.length) {
      const index = next++;
      const name = names[index] ?? '';
      if (ratePerSecond > 0) await sleep(Math.max(0, started + (index * 1000) / ratePerSecond - performance.now()));
      sent.set(name, performance.now());
      await request(name);
    }
  };
  const ticker = setInterval(() => progress(`${label}: ${sent.size} sent, ${seen.size} done`), 5000);
  try {
    await Promise.all(Array.from({ length: creators }, sender));
    progress(`${label}: all ${names.length} sent in ${round((performance.now() - started) / 1000, 1)} s`);
    while (seen.size < names.length) {
      if (performance.now() - started > phaseTimeoutMs) {
        throw new Error(`${label}: only ${seen.size} of ${names.length} done after ${phaseTimeoutMs / 1000} s`);
      }
      await sleep(50);
    }
  } finally {
    clearInterval(ticker);
  }
  const last = Math.max(...seen.values());
  const latency = (name: string): number => (seen.get(name) ?? NaN) - (sent.get(name) ?? NaN);
  // When the slowest ones were sent tells a backlog (late in the run) from a stall (one moment).
  const slowest = [...names].sort((a, b) => latency(b) - latency(a)).slice(0, 5);
  progress(`${label}: slowest ${slowest.map((name) => `${Math.round(latency(name))} ms (sent at +${round(((sent.get(name) ?? 0) - started) / 1000, 1)} s)`).join(', ')}`);
  return { wallSeconds: (last - started) / 1000, latenciesMs: names.map(latency).sort((a, b) => a - b) };
}


/** Runs a phase while measuring the operator process around it; prints its JSON lines. */
async function measuredPhase(
  phase: string,
  operator: OperatorProcess,
  pid: number,
  run: () => Promise<PhaseResult>,
): Promise<void> {
  const loadStart = load1m();
  const before = await scrape(operator);
  const cpuBefore = cpuSeconds(pid);
  const stopRssWatch = watchPeakRss(pid, rssSampleMs);
  const { wallSeconds, latenciesMs } = await run();
  const rssPeak = stopRssWatch();
  const cpuUsed = cpuSeconds(pid) - cpuBefore;
  const after = await scrape(operator);
  const reconciles = total(after, 'keyward_operator_reconcile_duration_seconds_count') - total(before, 'keyward_operator_reconcile_duration_seconds_count');
  const reconcileSeconds = total(after, 'keyward_operator_reconcile_duration_seconds_sum') - total(before, 'keyward_operator_reconcile_duration_seconds_sum');
  const line = {
    bench: 'operator',
    phase,
    rings: latenciesMs.length,
    rate_per_s: ratePerSecond > 0 ? ratePerSecond : 'max',
    creators,
    workers,
    total_s: round(wallSeconds, 2),
    p50_ms: round(percentile(latenciesMs, 50), 1),
    p99_ms: round(percentile(latenciesMs, 99), 1),
    max_ms: round(latenciesMs.at(-1) ?? NaN, 1),
    reconciles,
    reconciles_per_s: round(reconciles / wallSeconds, 1),
    reconcile_mean_ms: reconciles > 0 ? round((reconcileSeconds / reconciles) * 1000, 1) : null,
    reconcile_errors: total(after, 'keyward_operator_reconcile_errors_total') - total(before, 'keyward_operator_reconcile_errors_total'),
    operator_rss_mib: round(rssMib(pid), 1),
    operator_rss_peak_mib: round(rssPeak, 1),
    operator_cpu_s: round(cpuUsed, 2),
    operator_cpu_cores: round(cpuUsed / wallSeconds, 2),
    load_1m_start: loadStart,
    load_1m_end: load1m(),
  };
  process.stdout.write(`${JSON.stringify(line)}\n`);
  process.stdout.write(`${JSON.stringify({ bench: 'operator-hsm', phase, ...hsmMedians(before, after) })}\n`);
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  progress(`load average at start: ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  warnIfBusy(progress);
  const dir = mkdtempSync(join(tmpdir(), 'keyward-bench-operator-'));
  const removeDir = trackDirectory(dir);
  let cp: ControlPlane | undefined;
  let operator: OperatorProcess | undefined;
  let watch: { stop(): void } | undefined;
  try {
    cp = await startControlPlane({ progress });
    await installCrds(cp.kubeConfig);
    const hsm = createSoftHsmToken({ parentDir: dir, label: 'keyward-bench-operator' });
    operator = await startOperatorProcess({ hsm, kubeconfigPath: cp.kubeconfigPath, dir, identity, leaseSeconds: 15, workers });
    const pid = operator.process.pid;
    if (pid === undefined) throw new Error('the operator process has no pid');
    const logFile = operator.logFile;
    await operator.process.waitReady(() => Promise.resolve(readFileSync(logFile, 'utf8').includes('starting the KeyRing controller')), 60_000, 'leading');
    const pace = ratePerSecond > 0 ? `${ratePerSecond}/s` : 'as fast as they go';
    progress(`operator pid ${pid} leading with ${workers} workers; ${ringCount} KeyRings, ${pace}, at most ${creators} requests in flight`);

    const ready = new Map<string, number>();
    const rotated = new Map<string, number>();
    // Keep-alive, as real clients are: a TLS handshake per create would load the apiserver instead.
    const objects = keepAliveApiClient(cp.kubeConfig, CustomObjectsApi);
    watch = await watchKeyRings(cp.kubeConfig, objects, (keyRing) => {
      const name = keyRing.metadata.name ?? '';
      if (!ready.has(name) && isReady(keyRing)) ready.set(name, performance.now());
      if (!rotated.has(name) && isReady(keyRing) && keyRing.status?.lastRotationRequest === rotationRequest && keyRing.status.primaryVersion === 2) {
        rotated.set(name, performance.now());
      }
    });

    const names = Array.from({ length: ringCount }, (_, i) => `bench-${String(i).padStart(4, '0')}`);
    const body = (name: string) => ({ apiVersion: `${keyRingResource.group}/${keyRingResource.version}`, kind: 'KeyRing', metadata: { name }, spec: { purpose: 'encryption' } });
    await measuredPhase('create', operator, pid, () =>
      runPhase(names, (name) => objects.createNamespacedCustomObject({ ...keyRingResource, namespace, body: body(name) }), ready, 'create'),
    );

    if (rotatePhase) {
      const merge = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
      await measuredPhase('rotate', operator, pid, () =>
        runPhase(
          names,
          (name) => objects.patchNamespacedCustomObject({ ...keyRingResource, namespace, name, body: { spec: { rotationRequest } } }, merge),
          rotated,
          'rotate',
        ),
      );
    }
  } finally {
    progress('stopping the operator and the control plane, removing the token');
    watch?.stop();
    await operator?.process.stop();
    await cp?.stop();
    removeDir();
  }
}

try {
  await main();
} catch (err) {
  console.error(`[bench:operator] FAILED: ${(err as Error).message}`);
  process.exitCode = 1;
}
