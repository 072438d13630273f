// Retirement benchmark: how long a rotation takes to finish itself on a real control plane. etcd,
// kube-apiserver encrypting Secrets through the real KMS plugin, the operator and the etcd scanner,
// each as its own process. N Secrets are written under one version (re-encryption off, so nothing
// is rewritten while they are made); then re-encryption is turned on with spec.reEncryption
// .maxWritesPerSecond and the ring rotated, and the bench follows the KeyRing's status:
// rotation → every kube-apiserver encrypts with the new key_id (status.reEncryption
// .apiserverSwitchedAt) → Rewriting → Verifying (a scan asked of the scanner) → Complete and
// RetirementComplete=True ("retirable").
//
// Meanwhile a Go prober (bench/load/cmd/api-load) sends unrelated requests at a steady rate (GETs
// of a ConfigMap, a small LIST of ConfigMaps): their latency in a baseline window just before the
// rotation, measured in the same run because the machine is noisy, against the rewrite window.
// The apiserver's own request counters (apiserver_request_total) give the request rate in both
// windows, and the scanner's metrics its scan time and etcd read rate.
//
// Sizes run on one control plane, smallest first: after a size is retired the next size's extra
// Secrets are added and the ring rotated again. When the smallest size misses a target at --rate
// (its retirement time, or the unrelated p99), it is run again at each of --extra-rates, for the
// trade-off between the two.
//
// Usage: npm run bench:retire -- [--sizes 10000,50000] [--rate 100] [--extra-rates 200,400|none]
//        [--baseline 45] [--create-concurrency 32]
// One JSON line per figure on stdout; progress on stderr.
import { CoreV1Api, CustomObjectsApi, PatchStrategy, setHeaderOptions, type KubeConfig } from '@kubernetes/client-node';
import { mkdtempSync, readFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { keyRingResource, type KeyRing } from '../core/api/keyRing.js';
import { createSoftHsmToken } from '../core/hsm/softHsmToken.js';
import { keepAliveApiClient } from '../core/kube/keepAliveApiClient.js';
import { kmsEncryptionConfig, startKmsPluginProcess, type KmsPluginProcess } from '../e2e/kms/kmsPluginProcess.js';
import { installCrds } from '../e2e/operator/crds.js';
import { startOperatorProcess, type OperatorProcess } from '../e2e/operator/operatorProcess.js';
import { startScannerProcess, type ScannerProcess } from '../e2e/retirement/scannerProcess.js';
import { ComponentProcess, logTail, trackDirectory } from '../testbed/control-plane/componentProcess.js';
import { startControlPlane, type ControlPlane } from '../testbed/control-plane/controlPlane.js';
import { httpsGet, type TlsClient } from '../testbed/control-plane/network.js';
import { buildGoClient } from './goClient.js';
import { cpuSeconds } from './procStats.js';
import { emit, load1m, percentile, round, warnIfBusy } from './report.js';

const progress = (line: string): void => console.error(`[bench:retire] ${new Date().toISOString().slice(11, 19)} ${line}`);

// ---------------------------------------------------------------- options

const { values: args } = parseArgs({
  options: {
    sizes: { type: 'string', default: '10000,50000' },
    rate: { type: 'string', default: '100' },
    'extra-rates': { type: 'string', default: '200,400' },
    baseline: { type: 'string', default: '45' },
    'create-concurrency': { type: 'string', default: '32' },
  },
});
const positiveInts = (text: string, flag: string): number[] => {
  const list = text === 'none' ? [] : text.split(',').map((s) => Number(s.trim()));
  for (const n of list) if (!(Number.isInteger(n) && n >= 1)) throw new Error(`--${flag} must be whole numbers of 1 or more, comma-separated (got '${text}')`);
  return list;
};
const sizes = positiveInts(args.sizes, 'sizes').sort((a, b) => a - b);
const [rate = 100] = positiveInts(args.rate, 'rate');
const extraRates = positiveInts(args['extra-rates'], 'extra-rates').filter((r) => r !== rate);
const baselineSeconds = positiveInts(args.baseline, 'baseline')[0] ?? 45;
const createConcurrency = positiveInts(args['create-concurrency'], 'create-concurrency')[0] ?? 32;
if (sizes.length === 0) throw new Error('--sizes names no size');
if (rate > 2000 || extraRates.some((r) => r > 2000)) throw new Error('spec.reEncryption.maxWritesPerSecond is at most 2000');

/** The issue's targets: retired within 2 minutes of the apiserver having the new key_id (for 10,000 Secrets); unrelated p99 up by at most 20%. */
const targetRetireSeconds = 120;
const targetSecrets = 10_000;
const targetP99RisePct = 20;

const ringNamespace = 'kube-system';
const ringName = 'etcd-secrets';
const providerName = 'keyward';
const secretNamespace = 'bench-secrets';
const probeNamespace = 'bench-probe';
const probeGetPath = `/api/v1/namespaces/${probeNamespace}/configmaps/unrelated-0`;
const probeListPath = `/api/v1/namespaces/${probeNamespace}/configmaps`;
const probeGetRate = 20;
const probeListRate = 5;
const merge = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

// ---------------------------------------------------------------- the apiserver's and scanner's counters

/** Every sample of `metric` in a Prometheus text, with its labels. */
function samples(text: string, metric: string): Array<{ labels: Record<string, string>; value: number }> {
  const out: Array<{ labels: Record<string, string>; value: number }> = [];
  for (const [, labelText = '', value] of text.matchAll(new RegExp(`^${metric}(?:\\{(.*)\\})? (\\S+)$`, 'gm'))) {
    const labels = Object.fromEntries([...labelText.matchAll(/(\w+)="([^"]*)"/g)].map(([, k = '', v = '']) => [k, v]));
    out.push({ labels, value: Number(value) });
  }
  return out;
}

interface ApiserverCounters {
  at: number;
  requests: number;
  secretPuts: number;
  secretLists: number;
  keyRingStatusWrites: number;
  keyRingWrites: number;
  cpu: { apiserver: number; etcd: number; operator: number; plugin: number; scanner: number };
}

interface Components {
  cp: ControlPlane;
  operator: OperatorProcess;
  plugin: KmsPluginProcess;
  scanner: ScannerProcess;
  tls: TlsClient;
}

const cpuOf = (process: ComponentProcess | undefined): number => {
  try {
    return process?.pid ? cpuSeconds(process.pid) : NaN;
  } catch {
    return NaN;
  }
};

async function apiserverCounters(c: Components): Promise<ApiserverCounters> {
  const { status, body } = await httpsGet(`${c.cp.apiserverUrl}/metrics`, c.tls, 30_000);
  if (status !== 200) throw new Error(`GET /metrics of kube-apiserver answered ${status}`);
  const requests = samples(body, 'apiserver_request_total');
  const sum = (keep: (l: Record<string, string>) => boolean): number => requests.filter((s) => keep(s.labels)).reduce((n, s) => n + s.value, 0);
  return {
    at: Date.now(),
    requests: sum(() => true),
    secretPuts: sum((l) => l.resource === 'secrets' && l.verb === 'PUT'),
    secretLists: sum((l) => l.resource === 'secrets' && l.verb === 'LIST'),
    keyRingStatusWrites: sum((l) => l.resource === 'keyrings' && l.subresource === 'status' && l.verb !== 'GET' && l.verb !== 'LIST' && l.verb !== 'WATCH'),
    keyRingWrites: sum((l) => l.resource === 'keyrings' && l.subresource !== 'status' && ['PUT', 'PATCH', 'APPLY', 'POST'].includes(l.verb ?? '')),
    cpu: { apiserver: cpuOf(c.cp.apiserver), etcd: cpuOf(c.cp.etcd), operator: cpuOf(c.operator.process), plugin: cpuOf(c.plugin.process), scanner: cpuOf(c.scanner.process) },
  };
}

/** What happened between two readings, per second. */
function apiserverFigures(from: ApiserverCounters, to: ApiserverCounters): Record<string, unknown> {
  const seconds = (to.at - from.at) / 1000;
  const perSecond = (n: number): number => round(n / seconds, 1);
  const cpu = Object.fromEntries(Object.entries(to.cpu).map(([k, v]) => [k, round((v - from.cpu[k as keyof ApiserverCounters['cpu']]) / seconds, 3)]));
  return {
    window_s: round(seconds, 1),
    requests_per_s: perSecond(to.requests - from.requests),
    secret_puts_per_s: perSecond(to.secretPuts - from.secretPuts),
    secret_lists: to.secretLists - from.secretLists,
    keyring_status_writes: to.keyRingStatusWrites - from.keyRingStatusWrites,
    keyring_writes: to.keyRingWrites - from.keyRingWrites,
    cpu_cores: cpu,
  };
}

interface ScannerCounters {
  scans: number;
  scanSeconds: number;
  objects: number;
  bytes: number;
}

async function scannerCounters(scanner: ScannerProcess): Promise<ScannerCounters> {
  const text = await (await fetch(`${scanner.metricsUrl}/metrics`)).text();
  const one = (metric: string): number => samples(text, metric).reduce((n, s) => n + s.value, 0);
  return {
    scans: one('keyward_scanner_scan_duration_seconds_count'),
    scanSeconds: one('keyward_scanner_scan_duration_seconds_sum'),
    objects: one('keyward_scanner_objects_scanned_total'),
    bytes: one('keyward_scanner_etcd_read_bytes_total'),
  };
}

/** The last complete scan the operator asked for under `target` (its request id starts v<target>-), from the scanner's log. */
function requestedScan(scanner: ScannerProcess, target: number): { seconds: number; objects: number } | undefined {
  let found: { seconds: number; objects: number } | undefined;
  for (const line of readFileSync(scanner.logFile, 'utf8').split('\n')) {
    if (!line.includes('etcd scan complete')) continue;
    try {
      const entry = JSON.parse(line) as { msg?: string; request?: string; seconds?: number; objects?: number };
      if (entry.msg === 'etcd scan complete' && entry.request?.startsWith(`v${target}-`)) found = { seconds: entry.seconds ?? NaN, objects: entry.objects ?? NaN };
    } catch {
      // not a log record
    }
  }
  return found;
}

// ---------------------------------------------------------------- the unrelated prober

interface ProbeSample {
  at: number;
  kind: string;
  ms: number;
  status: number;
}

interface Prober {
  process: ComponentProcess;
  samples(): ProbeSample[];
}

async function startProber(bin: string, c: Components, dir: string): Promise<Prober> {
  const logFile = join(dir, 'prober.log');
  const { pki } = c.cp;
  const process = new ComponentProcess('api-load probe', bin, [
    '-mode=probe',
    `-server=${c.cp.apiserverUrl}`,
    `-ca=${pki.caCert}`,
    `-cert=${pki.adminCert}`,
    `-key=${pki.adminKey}`,
    `-get-path=${probeGetPath}`,
    `-get-rate=${probeGetRate}`,
    `-list-path=${probeListPath}`,
    `-list-rate=${probeListRate}`,
  ], logFile);
  const parse = (): ProbeSample[] => {
    const out: ProbeSample[] = [];
    for (const [, at, kind = '', us, status] of readFileSync(logFile, 'utf8').matchAll(/^s (\d+) (\w+) (\d+) (\d+)$/gm)) {
      out.push({ at: Number(at), kind, ms: Number(us) / 1000, status: Number(status) });
    }
    return out;
  };
  await process.waitReady(() => Promise.resolve(parse().length > 0), 15_000, 'probing');
  return { process, samples: parse };
}

function latencyFigures(all: ProbeSample[], from: number, to: number): Record<string, Record<string, number>> {
  const figures: Record<string, Record<string, number>> = {};
  for (const kind of ['get', 'list']) {
    const window = all.filter((s) => s.kind === kind && s.at >= from && s.at < to);
    const ms = window.map((s) => s.ms).sort((a, b) => a - b);
    figures[kind] = {
      n: ms.length,
      errors: window.filter((s) => s.status !== 200).length,
      p50_ms: round(percentile(ms, 50), 2),
      p90_ms: round(percentile(ms, 90), 2),
      p99_ms: round(percentile(ms, 99), 2),
      max_ms: round(ms.at(-1) ?? NaN, 2),
    };
  }
  return figures;
}

// ---------------------------------------------------------------- Secrets

/** Creates Secrets bench-N for N in [start, start+count) through the Go client, many in flight. */
async function createSecrets(bin: string, cp: ControlPlane, dir: string, start: number, count: number): Promise<Record<string, unknown>> {
  const logFile = join(dir, `create-${start}.log`);
  const creator = new ComponentProcess('api-load create', bin, [
    '-mode=create',
    `-server=${cp.apiserverUrl}`,
    `-ca=${cp.pki.caCert}`,
    `-cert=${cp.pki.adminCert}`,
    `-key=${cp.pki.adminKey}`,
    `-namespace=${secretNamespace}`,
    '-prefix=bench',
    `-start=${start}`,
    `-count=${count}`,
    `-concurrency=${createConcurrency}`,
  ], logFile);
  await creator.exitedPromise();
  const status = creator.exitStatus;
  if (status?.code !== 0) throw new Error(`creating Secrets failed (${JSON.stringify(status)}):\n${logTail(logFile)}`);
  return JSON.parse(readFileSync(logFile, 'utf8').trim().split('\n').pop() ?? '') as Record<string, unknown>;
}

// ---------------------------------------------------------------- one rotation, followed to "retirable"

interface RunResult {
  line: Record<string, unknown>;
  met: boolean;
}

const seconds = (from: string | number | undefined, to: string | number | undefined): number | null => {
  const a = typeof from === 'string' ? Date.parse(from) : from;
  const b = typeof to === 'string' ? Date.parse(to) : to;
  return a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) ? null : round((b - a) / 1000, 1);
};

async function rotateAndRetire(c: Components, prober: Prober, objects: CustomObjectsApi, secrets: number, writesPerSecond: number, rotation: number): Promise<RunResult> {
  const keyRing = async (): Promise<KeyRing> => (await objects.getNamespacedCustomObject({ ...keyRingResource, namespace: ringNamespace, name: ringName })) as KeyRing;
  const loadStart = readFileSync('/proc/loadavg', 'utf8').trim();
  const before = await keyRing();
  const from = before.status?.primaryVersion ?? 0;
  const target = from + 1;

  progress(`${secrets} Secrets at ${writesPerSecond}/s: baseline window of ${baselineSeconds} s (load ${loadStart})`);
  const baseStart = await apiserverCounters(c);
  await sleep(baselineSeconds * 1000);
  const baseEnd = await apiserverCounters(c);
  const scannerBefore = await scannerCounters(c.scanner);

  progress(`rotating to version ${target} with maxWritesPerSecond ${writesPerSecond}`);
  const rotatedAt = Date.now();
  await objects.patchNamespacedCustomObject(
    { ...keyRingResource, namespace: ringNamespace, name: ringName, body: { spec: { reEncryption: { enabled: true, maxWritesPerSecond: writesPerSecond }, rotationRequest: `bench-rotation-${rotation}` } } },
    merge,
  );

  // Follows the status once a second; the apiserver's counters are read as rewriting starts and ends.
  const deadline = rotatedAt + (240 + (3 * secrets) / writesPerSecond) * 1000;
  const seen: Record<string, number> = {};
  const progressSeries: Array<{ at: number; rewritten: number }> = [];
  let rewriteStart: ApiserverCounters | undefined;
  let rewriteEnd: ApiserverCounters | undefined;
  let ring: KeyRing;
  let lastPhase = '';
  for (;;) {
    if (Date.now() > deadline) throw new Error(`version ${target} was not retirable within ${Math.round((deadline - rotatedAt) / 1000)} s: ${JSON.stringify((await keyRing()).status?.reEncryption)}`);
    await sleep(1000);
    ring = await keyRing().catch(() => ring);
    if (!ring) continue;
    const run = ring.status?.reEncryption;
    if (ring.status?.primaryVersion === target && seen.primary === undefined) seen.primary = Date.now();
    if (run?.targetVersion !== target) continue;
    if (run.phase !== lastPhase) {
      progress(`  ${run.phase}${run.phase === 'WaitingForApiserver' ? '' : ` (${run.rewrittenObjects ?? 0} rewritten)`}`);
      lastPhase = run.phase;
    }
    seen[run.phase] ??= Date.now();
    if (run.phase === 'Failed') throw new Error(`re-encryption under version ${target} failed: ${run.message}`);
    if (run.phase === 'Rewriting') {
      rewriteStart ??= await apiserverCounters(c);
      progressSeries.push({ at: Date.now(), rewritten: run.rewrittenObjects ?? 0 });
    }
    if ((run.phase === 'Verifying' || run.phase === 'Complete') && !rewriteEnd) rewriteEnd = await apiserverCounters(c);
    const retired = ring.status?.conditions?.find((cond) => cond.type === 'RetirementComplete');
    if (run.phase === 'Complete' && retired?.status === 'True' && Date.parse(retired.lastTransitionTime ?? '') >= rotatedAt - 1000) break;
  }
  const scannerAfter = await scannerCounters(c.scanner);
  const loadEnd = readFileSync('/proc/loadavg', 'utf8').trim();

  const run = ring.status!.reEncryption!;
  const retirable = ring.status?.conditions?.find((cond) => cond.type === 'RetirementComplete')?.lastTransitionTime;
  const version = (n: number) => ring.status?.versions?.find((v) => v.number === n);
  const createdAt = version(target)?.createTime;
  const rewriteSeconds = seconds(run.startedAt, run.completedAt);
  const toRetirable = seconds(run.apiserverSwitchedAt, retirable);
  const rewritten = run.rewrittenObjects ?? 0;
  const scans = scannerAfter.scans - scannerBefore.scans;
  const scanSeconds = scannerAfter.scanSeconds - scannerBefore.scanSeconds;
  const scannedBytes = scannerAfter.bytes - scannerBefore.bytes;
  const scannedObjects = scannerAfter.objects - scannerBefore.objects;

  const verifyScan = requestedScan(c.scanner, target);
  const probeSamples = prober.samples();
  const baseline = latencyFigures(probeSamples, baseStart.at, rotatedAt);
  const during = latencyFigures(probeSamples, Date.parse(run.startedAt ?? ''), Date.parse(run.completedAt ?? ''));
  const rise = (kind: string): number => round(((during[kind]!.p99_ms! - baseline[kind]!.p99_ms!) / baseline[kind]!.p99_ms!) * 100, 1);
  const p99Rise = { get: rise('get'), list: rise('list') };
  const retireMet = toRetirable !== null && toRetirable <= targetRetireSeconds;
  const latencyMet = Math.max(p99Rise.get, p99Rise.list) <= targetP99RisePct;
  // The steady rate: between the first and the last progress the status showed (it is written after each page of 500).
  const moving = progressSeries.filter((p, i) => i === 0 || p.rewritten !== progressSeries[i - 1]!.rewritten);
  const first = moving[0];
  const last = moving.at(-1);
  const steady = first && last && last.at > first.at ? round((last.rewritten - first.rewritten) / ((last.at - first.at) / 1000), 1) : null;

  const line: Record<string, unknown> = {
    bench: 'retire',
    secrets,
    max_writes_per_s: writesPerSecond,
    from_version: from,
    to_version: target,
    method: run.method,
    rotation_to_primary_s: seconds(rotatedAt, createdAt),
    rotation_to_apiserver_s: seconds(rotatedAt, run.apiserverSwitchedAt),
    apiserver_to_retirable_s: toRetirable,
    rotation_to_retirable_s: seconds(rotatedAt, retirable),
    target: { secrets: targetSecrets, retire_s: targetRetireSeconds, applies: secrets === targetSecrets, met: retireMet },
    profile: {
      switched_to_rewriting_s: seconds(run.apiserverSwitchedAt, run.startedAt),
      rewrite_s: rewriteSeconds,
      rewritten_to_retirable_s: seconds(run.completedAt, retirable),
      verify_scan_s: verifyScan?.seconds ?? null,
    },
    rewritten,
    rewrites_per_s: rewriteSeconds ? round(rewritten / rewriteSeconds, 1) : null,
    rewrites_per_s_steady: steady,
    rewrite_rate_of_limit: rewriteSeconds ? round(rewritten / rewriteSeconds / writesPerSecond, 2) : null,
    apiserver_baseline: apiserverFigures(baseStart, baseEnd),
    apiserver_rewrite: rewriteStart && rewriteEnd ? apiserverFigures(rewriteStart, rewriteEnd) : null,
    unrelated: {
      get_per_s: probeGetRate,
      list_per_s: probeListRate,
      baseline,
      rewrite: during,
      p99_rise_pct: p99Rise,
      target_pct: targetP99RisePct,
      met: latencyMet,
    },
    scanner: {
      verify_scan: verifyScan ?? null,
      scans_in_run: scans,
      scan_s: round(scanSeconds, 2),
      objects: scannedObjects,
      read_mib: round(scannedBytes / 2 ** 20, 2),
      read_mib_per_s: scanSeconds > 0 ? round(scannedBytes / 2 ** 20 / scanSeconds, 2) : null,
      objects_per_s: scanSeconds > 0 ? round(scannedObjects / scanSeconds, 0) : null,
    },
    etcd_objects_by_version: Object.fromEntries((ring.status?.versions ?? []).map((v) => [v.number, v.etcdObjects ?? null])),
    loadavg: { start: loadStart, end: loadEnd },
  };
  emit(line);
  progress(`  retirable ${toRetirable} s after the apiserver switched (rewrite ${rewriteSeconds} s, ${String(line.rewrites_per_s)}/s); unrelated p99 rise get ${p99Rise.get}% list ${p99Rise.list}%`);
  return { line, met: retireMet && latencyMet };
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  warnIfBusy(progress);
  const benchStarted = Date.now();
  progress('building the Go client (bench/load/cmd/api-load)');
  const bin = buildGoClient('api-load');
  const dir = mkdtempSync(join(tmpdir(), 'keyward-bench-retire-'));
  const removeDir = trackDirectory(dir);
  let cp: ControlPlane | undefined;
  let operator: OperatorProcess | undefined;
  let plugin: KmsPluginProcess | undefined;
  let scanner: ScannerProcess | undefined;
  let prober: Prober | undefined;
  try {
    const hsm = createSoftHsmToken({ parentDir: dir });
    cp = await startControlPlane({ encryptionConfig: kmsEncryptionConfig(dir, providerName, join(dir, 'kms.sock')), skipReadyz: true, progress: (l) => progress(`  ${l}`) });
    const kubeConfig: KubeConfig = cp.kubeConfig;
    const objects = keepAliveApiClient(kubeConfig, CustomObjectsApi);
    const core = keepAliveApiClient(kubeConfig, CoreV1Api);
    await installCrds(kubeConfig);
    operator = await startOperatorProcess({ hsm, kubeconfigPath: cp.kubeconfigPath, dir, identity: 'bench', auditLog: join(dir, 'operator-audit.jsonl') });
    // Re-encryption off while the Secrets are written: nothing is rewritten before the rotation.
    await objects.createNamespacedCustomObject({
      ...keyRingResource,
      namespace: ringNamespace,
      body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name: ringName }, spec: { purpose: 'encryption', reEncryption: { enabled: false } } },
    });
    for (let deadline = Date.now() + 60_000; ; await sleep(250)) {
      const kr = (await objects.getNamespacedCustomObject({ ...keyRingResource, namespace: ringNamespace, name: ringName })) as KeyRing;
      if (kr.status?.primaryVersion === 1) break;
      if (Date.now() > deadline) throw new Error(`KeyRing ${ringName} has no primary version after 60 s: ${JSON.stringify(kr.status?.conditions)}`);
    }
    plugin = await startKmsPluginProcess({ hsm, ringName, ringNamespace, dir });
    for (const namespace of [secretNamespace, probeNamespace]) await core.createNamespace({ body: { metadata: { name: namespace } } });
    progress('waiting until kube-apiserver encrypts through the plugin (it retries every 10 s)');
    for (let deadline = Date.now() + 150_000; ; await sleep(1000)) {
      try {
        await core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name: 'first' }, stringData: { value: 'first' } } });
        break;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`kube-apiserver did not encrypt through the plugin within 150 s: ${(err as Error).message}`, { cause: err });
      }
    }
    // The product's defaults: a scan every 5 minutes and whenever the operator asks, 10 pages of 500 keys a second.
    scanner = await startScannerProcess({ hsm, ringName, ringNamespace, providerName, etcdEndpoint: cp.etcdEndpoint, dir });
    for (let i = 0; i < 10; i++) {
      await core.createNamespacedConfigMap({ namespace: probeNamespace, body: { metadata: { name: `unrelated-${i}` }, data: { greeting: `hello ${i}`, padding: 'x'.repeat(200) } } });
    }
    const tls: TlsClient = { ca: readFileSync(cp.pki.caCert), cert: readFileSync(cp.pki.adminCert), key: readFileSync(cp.pki.adminKey) };
    const components: Components = { cp, operator, plugin, scanner, tls };
    prober = await startProber(bin, components, dir);

    let created = 0;
    let rotation = 0;
    const grow = async (size: number): Promise<void> => {
      progress(`creating ${size - created} Secrets (${created} → ${size}), ${createConcurrency} in flight`);
      const report = await createSecrets(bin, cp!, dir, created, size - created);
      created = size;
      emit({ bench: 'retire-create', secrets_total: size, ...report, load1m: load1m() });
    };
    for (const [index, size] of sizes.entries()) {
      await grow(size);
      const { met } = await rotateAndRetire(components, prober, objects, size, rate, ++rotation);
      if (index === 0 && !met) {
        for (const extra of extraRates) {
          progress(`${size} Secrets missed a target at ${rate}/s: again at ${extra}/s, for the trade-off`);
          await rotateAndRetire(components, prober, objects, size, extra, ++rotation);
        }
      }
    }
    emit({ bench: 'retire-total', seconds: round((Date.now() - benchStarted) / 1000, 0), kubernetes: cp.kubernetesVersion, cores: cpus().length, loadavg: loadavg().map((l) => round(l, 2)) });
  } finally {
    progress('stopping');
    await prober?.process.stop();
    await scanner?.process.stop();
    await plugin?.process.stop();
    await operator?.process.stop();
    await cp?.stop();
    removeDir();
  }
}

try {
  await main();
} catch (err) {
  console.error(`[bench:retire] FAILED: ${(err as Error).stack ?? (err as Error).message}`);
  process.exitCode = 1;
}
