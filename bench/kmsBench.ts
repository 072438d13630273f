// KMS plugin benchmark: the real plugin process on a SoftHSM2 token, driven over its unix socket
// by the Go load generator (bench/kms-load). For Encrypt and Decrypt: throughput and latency at
// several concurrencies, p99 at a fixed rate, and the plugin's own CPU time and memory per run.
// One JSON line per run on stdout; progress on stderr.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { HsmToken } from '../core/hsm/hsmToken.js';
import { RingStore } from '../core/hsm/ringStore.js';
import { createSoftHsmToken, type SoftHsmToken } from '../core/hsm/softHsmToken.js';
import { trackDirectory } from '../testbed/control-plane/componentProcess.js';
import { startKmsPluginProcess, type KmsPluginProcess } from '../e2e/kms/kmsPluginProcess.js';
import { buildGoClient, runGoClient } from './goClient.js';
import { cpuSeconds, rssMib, watchPeakRss } from './procStats.js';
import { round, warnIfBusy } from './report.js';

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
export async function startBenchPlugin(log: (line: string) => void): Promise<BenchPlugin> {
  const dir = mkdtempSync(join(tmpdir(), 'keyward-bench-'));
  // Removes the dir (token included) even if the benchmark is interrupted.
  const removeDir = trackDirectory(dir);
  let plugin: KmsPluginProcess | undefined;
  try {
    const hsm = createSoftHsmToken({ parentDir: dir, label: 'keyward-bench' });
    await createRing(hsm, ringName);
    log(`token '${hsm.label}' with ring '${ringName}' ready; starting the plugin`);
    plugin = await startKmsPluginProcess({ hsm, ringName, dir });
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

async function main(): Promise<void> {
  warnIfBusy(progress);
  progress('building the Go load generator (cached after the first build)');
  const bin = buildGoClient('kms-load');
  const bench = await startBenchPlugin(progress);
  try {
    const pid = bench.plugin.process.pid;
    if (pid === undefined) throw new Error('the plugin process has no pid');
    for (const run of plannedRuns()) {
      const shape = run.rate > 0 ? `${run.rate} calls/s` : `concurrency ${run.concurrency}`;
      progress(`${run.method} at ${shape} for ${warmupSeconds}+${run.seconds} s`);
      const result = await measure(bin, pid, bench.plugin.socketPath, run);
      process.stdout.write(`${JSON.stringify(result)}\n`);
    }
  } finally {
    progress('stopping the plugin and removing the token');
    await bench.stop();
  }
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
