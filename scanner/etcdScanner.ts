// `keyward etcd-scanner`: beside the KMS plugin on a control-plane node, where etcd's client
// credentials are. Scans etcd every interval, and soon after the operator asks (a scan request in
// the HSM), and writes each report into the HSM for the operator: the HSM is the channel both
// already trust, so the scanner needs no apiserver credentials and works while the apiserver is down.
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { createAuditLog, type AuditLog } from '../core/audit/auditLog.js';
import { KeywardError } from '../core/errors.js';
import { HsmRecords, maxRecordBytes } from '../core/hsm/hsmRecords.js';
import { HsmToken } from '../core/hsm/hsmToken.js';
import { describeRing, type RingRef } from '../core/hsm/ringState.js';
import { RingStore } from '../core/hsm/ringStore.js';
import { KeyUseRecords, type EtcdScanReport } from '../core/keyUse/keyUseRecords.js';
import { createLogger, type Logger } from '../core/observability/logger.js';
import { startMetricsServer, type HealthCheck } from '../core/observability/metricsServer.js';
import { Teardown } from '../core/teardown.js';
import { scanEtcd, etcdPrefix } from './etcdScan.js';
import { EtcdReader, type EtcdTlsFiles } from './etcdReader.js';

export interface EtcdScannerConfig {
  modulePath: string;
  tokenLabel: string;
  pin: string;
  ring: RingRef;
  provider: string;
  endpoints: string[];
  tls?: EtcdTlsFiles;
  /** As the EncryptionConfiguration names them (default: secrets). */
  resources?: string[];
  intervalMs?: number;
  /** How often the HSM is asked for a new scan request (default 3 s). */
  requestPollMs?: number;
  pageSize?: number;
  pagesPerSecond?: number;
  requestTimeoutMs?: number;
  metricsAddress?: string;
  auditLog?: string;
  /** The records' writer name; 'scanner@' + host name by default. */
  writer?: string;
}

export interface EtcdScanner {
  readonly metricsAddress: string;
  /** The last report written (or that failed to be written). */
  lastReport(): EtcdScanReport | undefined;
  stop(): Promise<void>;
}

class ScannerMetrics {
  readonly registry = new Registry();
  readonly scans = new Counter({ name: 'keyward_scanner_scans_total', help: 'etcd scans by result (complete, incomplete).', labelNames: ['result'] as const, registers: [this.registry] });
  readonly duration = new Histogram({
    name: 'keyward_scanner_scan_duration_seconds',
    help: 'Time to scan every configured resource in etcd.',
    buckets: [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600],
    registers: [this.registry],
  });
  readonly objects = new Counter({ name: 'keyward_scanner_objects_scanned_total', help: 'Stored objects read from etcd.', registers: [this.registry] });
  readonly bytes = new Counter({ name: 'keyward_scanner_etcd_read_bytes_total', help: 'Response bytes read from etcd.', registers: [this.registry] });
  readonly lastComplete = new Gauge({
    name: 'keyward_scanner_last_complete_scan_timestamp_seconds',
    help: 'When the last complete scan finished (its report written to the HSM).',
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, labels: { component: 'etcd-scanner' } });
  }
}

export async function startEtcdScanner(config: EtcdScannerConfig, log: Logger = createLogger('etcd-scanner')): Promise<EtcdScanner> {
  const resources = config.resources ?? ['secrets'];
  for (const resource of resources) etcdPrefix(resource); // refuses a bad name now, not at the first scan
  if (!config.provider || config.provider.includes(':')) throw new KeywardError('InvalidArgument', 'the KMS provider name must be non-empty and without ":"');
  const intervalMs = config.intervalMs ?? 300_000;
  const pollMs = config.requestPollMs ?? 3000;
  const writer = config.writer ?? `scanner@${hostname()}`.replace(/[^A-Za-z0-9._@:-]/g, '-').slice(0, 128);
  const teardown = new Teardown();
  try {
    const reader = new EtcdReader({ endpoints: config.endpoints, tls: config.tls, pageSize: config.pageSize, pagesPerSecond: config.pagesPerSecond, requestTimeoutMs: config.requestTimeoutMs });
    teardown.add(() => reader.close());
    const token = HsmToken.open({ modulePath: config.modulePath, tokenLabel: config.tokenLabel, pin: config.pin, poolSize: 2 });
    teardown.add(() => token.close());
    const audit = createAuditLog('etcd-scanner', config.auditLog ?? '-');
    teardown.add(() => audit.flush());
    const store = new RingStore(token);
    const records = new KeyUseRecords(new HsmRecords(token));
    const metrics = new ScannerMetrics();
    let last: EtcdScanReport | undefined;
    let health: HealthCheck = { ok: false, reason: 'no scan yet' };
    const metricsServer = await startMetricsServer(config.metricsAddress ?? '127.0.0.1:0', metrics.registry, () => health);
    teardown.add(() => metricsServer.close());

    const stopping = new AbortController();
    const loop = runLoop({ config, resources, intervalMs, pollMs, writer, store, records, metrics, audit, log, reader, signal: stopping.signal, onReport: (report, written) => {
      last = report;
      health = report.complete && written ? { ok: true, reason: 'ok' } : { ok: false, reason: (report.error ?? 'the report could not be written to the HSM').slice(0, 200) };
    } });
    teardown.add(async () => {
      stopping.abort();
      await loop;
    });
    log.info({ ring: describeRing(config.ring), provider: config.provider, resources, endpoints: config.endpoints, intervalSeconds: intervalMs / 1000, metrics: metricsServer.address }, 'etcd scanner started');
    return {
      metricsAddress: metricsServer.address,
      lastReport: () => last,
      stop: async () => {
        await teardown.run();
        log.info('stopped');
      },
    };
  } catch (err) {
    await teardown.run();
    throw err;
  }
}

interface LoopContext {
  config: EtcdScannerConfig;
  resources: string[];
  intervalMs: number;
  pollMs: number;
  writer: string;
  store: RingStore;
  records: KeyUseRecords;
  metrics: ScannerMetrics;
  audit: AuditLog;
  log: Logger;
  reader: EtcdReader;
  signal: AbortSignal;
  onReport: (report: EtcdScanReport, written: boolean) => void;
}

/** Scans at start, then every interval and whenever a new scan request appears; until aborted. */
async function runLoop(ctx: LoopContext): Promise<void> {
  const { signal, log } = ctx;
  let ringId: string | undefined;
  let answered: string | undefined;
  let nextScanAt = 0;
  let lastFailure = '';
  while (!signal.aborted) {
    try {
      // The ring a name means can change (a KeyRing re-created): resolved again at each scan.
      if (ringId === undefined || Date.now() >= nextScanAt) {
        const ring = await ctx.store.get(ctx.config.ring);
        if (!ring) throw new KeywardError('NotFound', `ring ${describeRing(ctx.config.ring)} does not exist in the HSM`);
        ringId = ring.ringId;
      }
      const request = await ctx.records.scanRequest(ringId);
      const asked = request && request.request !== answered ? request.request : undefined;
      if (asked !== undefined || Date.now() >= nextScanAt) {
        await scanAndReport(ctx, ringId, asked);
        if (asked !== undefined) answered = asked;
        nextScanAt = Date.now() + ctx.intervalMs;
      }
      lastFailure = '';
    } catch (err) {
      if (signal.aborted) break;
      const message = err instanceof KeywardError ? err.message : (err as Error).message;
      // Once per distinct failure, not at every poll.
      if (message !== lastFailure) log.warn({ err: message }, 'scanner loop failed; retrying');
      lastFailure = message;
    }
    try {
      await sleep(ctx.pollMs, undefined, { signal });
    } catch {
      break;
    }
  }
}

async function scanAndReport(ctx: LoopContext, ringId: string, request: string | undefined): Promise<void> {
  const { metrics, log } = ctx;
  const started = process.hrtime.bigint();
  const report = await scanEtcd({
    reader: ctx.reader,
    ringId,
    provider: ctx.config.provider,
    resources: ctx.resources,
    request,
    signal: ctx.signal,
    onPage: ({ objects, bytes }) => {
      metrics.objects.inc(objects);
      metrics.bytes.inc(bytes);
    },
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  // A scan cut short by SIGTERM proves nothing and is not worth a record.
  if (ctx.signal.aborted) return;
  metrics.duration.observe(seconds);
  metrics.scans.inc({ result: report.complete ? 'complete' : 'incomplete' });
  const objects = report.resources.reduce((sum, r) => sum + r.objects, 0);
  const summary = { ringId, request, revision: report.revision, objects, seconds: Math.round(seconds * 1000) / 1000, byKeyId: totalsByKeyId(report) };
  if (report.complete) log.info(summary, 'etcd scan complete');
  else log.warn({ ...summary, error: report.error }, 'etcd scan did not complete');
  let written = false;
  try {
    await ctx.records.writeScanReport(fitRecord(report), ctx.writer);
    written = true;
  } catch (err) {
    log.error({ err: (err as Error).message }, 'the scan report could not be written to the HSM');
  }
  ctx.audit.record({
    requestId: request ?? randomUUID(),
    actor: ctx.writer,
    operation: 'etcdScan',
    result: report.complete && written ? 'allowed' : 'failed',
    ringId,
    reason: report.complete ? `${objects} objects at revision ${report.revision}` : report.error,
  });
  if (report.complete && written) metrics.lastComplete.set(Date.parse(report.finishedAt) / 1000);
  ctx.onReport(report, written);
}

function totalsByKeyId(report: EtcdScanReport): Record<string, number> {
  const totals = new Map<string, number>();
  for (const r of report.resources) for (const [keyId, n] of Object.entries(r.byKeyId)) totals.set(keyId, (totals.get(keyId) ?? 0) + n);
  return Object.fromEntries(totals);
}

/**
 * HSM records are bounded (64 KiB): samples go first, as they only illustrate the counts. A report
 * still too large (thousands of key ids, which only someone writing etcd directly could make) is
 * refused by HsmRecords, so no report replaces the last one and every version stays protected.
 */
function fitRecord(report: EtcdScanReport): EtcdScanReport {
  if (Buffer.byteLength(JSON.stringify(report)) < maxRecordBytes - 1024) return report;
  return { ...report, samples: {} };
}
