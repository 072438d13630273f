// The KMS plugin's socket under attack: the plugin process, with the chart's Node flags, on a
// SoftHSM2 token, serving a steady legitimate Encrypt+Decrypt load (bench/load, kms-hostile) while
// hostile workers send malformed, oversize and forged requests, unknown methods, garbage and idle
// connections and connection churn. One JSON line with the generator's report, the plugin's peak
// memory against the chart's limit, and whether the plugin survived; progress on stderr.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { load } from 'js-yaml';
import { kmsStatus } from '../e2e/kms/kmsPluginProcess.js';
import { buildGoClient, runGoClient } from './goClient.js';
import { startBenchPlugin } from './kmsBench.js';
import { watchPeakRss } from './procStats.js';
import { emit, load1m, round, warnIfBusy } from './report.js';

const seconds = Number(process.env.KEYWARD_BENCH_SECONDS ?? 30);
const legitRate = Number(process.env.KEYWARD_BENCH_LEGIT_RATE ?? 200);
const workers = Number(process.env.KEYWARD_BENCH_WORKERS ?? 8);
const progress = (line: string): void => console.error(`[bench:kms-hostile] ${line}`);

/** The plugin's memory limit in the chart (kmsPlugin.resources.limits.memory), in MiB. */
function chartMemoryLimitMib(): number {
  const values = load(readFileSync(join(fileURLToPath(import.meta.url), '..', '..', '..', 'charts', 'keyward', 'values.yaml'), 'utf8')) as {
    kmsPlugin: { resources: { limits: { memory: string } } };
  };
  const limit = /^(\d+)Mi$/.exec(values.kmsPlugin.resources.limits.memory);
  if (!limit) throw new Error(`kmsPlugin.resources.limits.memory is not in Mi: ${values.kmsPlugin.resources.limits.memory}`);
  return Number(limit[1]);
}

async function main(): Promise<void> {
  warnIfBusy(progress);
  const limitMib = chartMemoryLimitMib();
  const bin = buildGoClient('kms-hostile');
  const bench = await startBenchPlugin(progress);
  try {
    const pid = bench.plugin.process.pid;
    if (pid === undefined) throw new Error('the plugin process has no pid');
    progress(`${seconds} s: ${legitRate} legitimate Encrypt+Decrypt/s and ${workers} hostile workers`);
    const peak = watchPeakRss(pid, 100);
    const report = await runGoClient(bin, [`-socket=${bench.plugin.socketPath}`, `-duration=${seconds}s`, `-legit-rate=${legitRate}`, `-workers=${workers}`]);
    const peakMib = peak();
    const survived = bench.plugin.process.running && (await kmsStatus(bench.plugin.socketPath)).healthz === 'ok';
    const legit = report.legit as { p99_ms: number };
    emit({
      ...report,
      plugin_survived: survived,
      plugin_rss_peak_mib: round(peakMib, 1),
      chart_memory_limit_mib: limitMib,
      targets_met: survived && report.legit_failures === 0 && peakMib <= limitMib && legit.p99_ms <= 50,
      load_1m: load1m(),
    });
  } finally {
    await bench.stop();
  }
}

try {
  await main();
} catch (err) {
  console.error(`[bench:kms-hostile] FAILED: ${(err as Error).message}`);
  process.exitCode = 1;
}
