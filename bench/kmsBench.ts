// KMS plugin benchmark: the real plugin process on a SoftHSM2 token, driven over its unix socket
// by the Go load generator (bench/load, kms-load). For Encrypt and Decrypt: throughput and latency
// at several concurrencies, p99 at a fixed rate, and the plugin's own CPU time and memory per run.
// A/B: a baseline build (KEYWARD_BENCH_BASELINE, a Git revision; the last grpc-js build by default)
// runs beside this tree's, alternating run by run, so both see the same machine load.
// One JSON line per run and per comparison on stdout; progress on stderr.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { HsmToken } from '../core/hsm/hsmToken.js';
import { RingStore } from '../core/hsm/ringStore.js';
import { createSoftHsmToken, type SoftHsmToken } from '../core/hsm/softHsmToken.js';
import { trackDirectory } from '../testbed/control-plane/componentProcess.js';
import { keywardCli, startKmsPluginProcess, type KmsPluginProcess } from '../e2e/kms/kmsPluginProcess.js';
import { baselineCli } from './baselineBuild.js';
import { buildGoClient, runGoClient } from './goClient.js';
import { cpuSeconds, memoryMib, rssMib, watchPeakRss } from './procStats.js';
import { emit, load1m, round, warnIfBusy } from './report.js';

type Method = 'encrypt' | 'decrypt';

interface LoadRun {
  method: Method;
  concurrency: number;
  /** Calls/s on a fixed schedule; 0 = as fast as the plugin answers. */
  rate: number;
  seconds: number;
}

/** Overridable so a quick check of the harness does not take minutes. */
const runSeconds = Number(process.env.KEYWARD_BENCH_SECONDS ?? 8);
const warmupSeconds = 2;
const concurrencies = [1, 4, 16, 64];
const fixedRate = 1000;
/** Longer than the closed-loop runs: a p99 needs enough calls behind it. */
const fixedRateSeconds = Math.max(runSeconds, 15);
/** Enough workers that a slow call does not hold back the schedule. */
const fixedRateConcurrency = 16;
const rssSampleMs = 200;
const ringName = 'bench-ring';
/** The last build on @grpc/grpc-js, before the plugin moved to core/grpc/grpcServer.ts. */
const baselineRevision = process.env.KEYWARD_BENCH_BASELINE ?? '39811e9';

const progress = (line: string): void => console.error(`[bench:kms] ${line}`);

// ---------------------------------------------------------------- plugin under test

export interface BenchPlugin {
  readonly plugin: KmsPluginProcess;
  /** Stops the plugin and removes its token and directory. */
  stop(): Promise<void>;
}

/** Creates the ring (key version 1) through PKCS#11 in this process, as an admin would. */
async function createRing(hsm: SoftHsmToken, name: string): Promise<void> {
  // SoftHSM2 reads its config when the module initialises, so this must come first.
  process.env.SOFTHSM2_CONF = hsm.configPath;
  const token = HsmToken.open({ modulePath: hsm.modulePath, tokenLabel: hsm.label, pin: hsm.pin });
  try {
    await new RingStore(token).create({ name });
  } finally {
    token.close();
  }
}

/** A throw-away token with one ring and the plugin process serving it, all in one temp dir. */
export async function startBenchPlugin(log: (line: string) => void, cli?: string): Promise<BenchPlugin> {
  const dir = mkdtempSync(join(tmpdir(), 'keyward-bench-'));
  // Removes the dir (token included) even if the benchmark is interrupted.
  const removeDir = trackDirectory(dir);
  let plugin: KmsPluginProcess | undefined;
  try {
    const hsm = createSoftHsmToken({ parentDir: dir, label: 'keyward-bench' });
    await createRing(hsm, ringName);
    log(`token '${hsm.label}' with ring '${ringName}' ready; starting the plugin`);
    plugin = await startKmsPluginProcess({ hsm, ringName, dir, cli });
    log(`plugin pid ${plugin.process.pid} serving ${plugin.socketPath}`);
  } catch (err) {
    await plugin?.process.stop();
    removeDir();
    throw err;
  }
  const started = plugin;
  return {
    plugin: started,
    stop: async () => {
      await started.process.stop();
      removeDir();
    },
  };
}

/** On 2 cores anything else running skews every figure; say so up front. */

// ---------------------------------------------------------------- load generator

function loadArgs(socketPath: string, run: LoadRun): string[] {
  return [
    `-socket=${socketPath}`,
    `-method=${run.method}`,
    `-concurrency=${run.concurrency}`,
    `-duration=${run.seconds}s`,
    `-warmup=${warmupSeconds}s`,
    `-rate=${run.rate}`,
    `-label=keyward`,
  ];
}

// ---------------------------------------------------------------- one measured run


/**
 * Runs one load and measures the plugin around it. CPU is read over a window strictly inside the
 * measured part (after the warm-up, before the end) and divided by the calls made in that window
 * at the measured rate, so warm-up and set-up calls do not count.
 */
async function measure(bin: string, pid: number, socketPath: string, run: LoadRun): Promise<Record<string, unknown>> {
  const stopRssWatch = watchPeakRss(pid, rssSampleMs);
  const cpuWindow = measureCpuWindow(pid, (warmupSeconds + 0.3) * 1000, (run.seconds - 0.6) * 1000);
  const report = await runGoClient(bin, loadArgs(socketPath, run));
  const { cpuSecondsUsed, wallSeconds } = await cpuWindow;
  const peak = stopRssWatch();
  const opsPerSecond = Number(report.ops_per_s);
  return {
    ...report,
    bench: 'kms',
    plugin_cpu_us_per_call: opsPerSecond > 0 ? round((cpuSecondsUsed * 1e6) / (opsPerSecond * wallSeconds), 1) : null,
    plugin_cpu_cores: round(cpuSecondsUsed / wallSeconds, 2),
    plugin_rss_mib: round(rssMib(pid), 1),
    plugin_rss_peak_mib: round(peak, 1),
  };
}

/** The plugin's CPU seconds between `startMs` and `startMs + lengthMs` from now. */
async function measureCpuWindow(pid: number, startMs: number, lengthMs: number): Promise<{ cpuSecondsUsed: number; wallSeconds: number }> {
  await sleep(startMs);
  const cpuBefore = cpuSeconds(pid);
  const wallBefore = performance.now();
  await sleep(lengthMs);
  return { cpuSecondsUsed: cpuSeconds(pid) - cpuBefore, wallSeconds: (performance.now() - wallBefore) / 1000 };
}

function plannedRuns(): LoadRun[] {
  const runs: LoadRun[] = [];
  for (const method of ['encrypt', 'decrypt'] as const) {
    for (const concurrency of concurrencies) runs.push({ method, concurrency, rate: 0, seconds: runSeconds });
    runs.push({ method, concurrency: fixedRateConcurrency, rate: fixedRate, seconds: fixedRateSeconds });
  }
  return runs;
}

interface Build {
  name: 'baseline' | 'current';
  revision: string;
  bench: BenchPlugin;
}

async function main(): Promise<void> {
  warnIfBusy(progress);
  progress('building the Go load generator (cached after the first build)');
  const bin = buildGoClient('kms-load');
  const builds: Build[] = [];
  try {
    builds.push({ name: 'baseline', revision: baselineRevision, bench: await startBenchPlugin(progress, baselineCli(baselineRevision, progress)) });
    builds.push({ name: 'current', revision: 'working tree', bench: await startBenchPlugin(progress, keywardCli) });
    await sleep(2000);
    for (const build of builds) emit({ bench: 'kms', figure: 'idle_memory', build: build.name, revision: build.revision, ...memoryOf(build), load_1m: load1m() });
    for (const [i, run] of plannedRuns().entries()) {
      const shape = run.rate > 0 ? `${run.rate} calls/s` : `concurrency ${run.concurrency}`;
      // A, B then B, A: drift in the machine's load falls on both builds alike.
      const order = i % 2 === 0 ? builds : [...builds].reverse();
      const results = new Map<string, Record<string, unknown>>();
      for (const build of order) {
        progress(`${build.name}: ${run.method} at ${shape} for ${warmupSeconds}+${run.seconds} s`);
        const result = await measure(bin, pidOf(build), build.bench.plugin.socketPath, run);
        results.set(build.name, result);
        emit({ ...result, build: build.name, revision: build.revision, load_1m: load1m() });
      }
      emit(comparison(run, results.get('current')!, results.get('baseline')!));
    }
    for (const build of builds) emit({ bench: 'kms', figure: 'memory_after_load', build: build.name, revision: build.revision, ...memoryOf(build) });
  } finally {
    progress('stopping the plugins and removing their tokens');
    for (const build of builds) await build.bench.stop();
  }
}

function pidOf(build: Build): number {
  const pid = build.bench.plugin.process.pid;
  if (pid === undefined) throw new Error(`the ${build.name} plugin process has no pid`);
  return pid;
}

function memoryOf(build: Build): Record<string, number> {
  const memory = memoryMib(pidOf(build));
  return { rss_mib: round(memory.rss, 1), rss_anon_mib: round(memory.anon, 1), rss_file_mib: round(memory.file, 1) };
}

/** current / baseline for the figures the yardstick names. */
function comparison(run: LoadRun, current: Record<string, unknown>, baseline: Record<string, unknown>): Record<string, unknown> {
  const ratio = (field: string): number | null => {
    const a = Number(current[field]);
    const b = Number(baseline[field]);
    return Number.isFinite(a) && Number.isFinite(b) && b > 0 ? round(a / b, 2) : null;
  };
  return {
    bench: 'kms',
    figure: 'current_vs_baseline',
    method: run.method,
    concurrency: run.concurrency,
    rate: run.rate,
    ops_per_s_ratio: ratio('ops_per_s'),
    cpu_us_per_call_ratio: ratio('plugin_cpu_us_per_call'),
    p99_ratio: ratio('p99_ms'),
    rss_peak_ratio: ratio('plugin_rss_peak_mib'),
  };
}

// Run only as the entry point: secretWritesBench imports startBenchPlugin from here.
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try {
    await main();
  } catch (err) {
    console.error(`[bench:kms] FAILED: ${(err as Error).message}`);
    process.exitCode = 1;
  }
}
