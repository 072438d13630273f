// A real Prometheus (Debian's /usr/bin/prometheus) run as a child process for tests: on a free
// loopback port, with the scrape configs and rule files a test passes, a short evaluation
// interval and its own TSDB directory. stop() ends it by its pid and removes the directory; an
// interrupted or failing run leaves neither behind (see ComponentProcess).
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dump } from 'js-yaml';
import { setupError } from '../../core/errors.js';
import { ComponentProcess, logTail, trackDirectory } from '../control-plane/componentProcess.js';
import { freePort } from '../control-plane/network.js';

export const prometheusBinary = process.env.KEYWARD_PROMETHEUS ?? '/usr/bin/prometheus';
export const promtoolBinary = process.env.KEYWARD_PROMTOOL ?? '/usr/bin/promtool';

export interface PrometheusConfig {
  /** `scrape_configs` entries, as Prometheus's YAML holds them (job_name, static_configs, ...). */
  scrapeConfigs?: object[];
  /** Absolute paths of rule files (`rule_files`). */
  ruleFiles?: string[];
  /** How often targets are scraped; 1s by default. */
  scrapeInterval?: string;
  /** How often rules are evaluated; 1s by default. */
  evaluationInterval?: string;
}

/** A sample of an instant query: its labels and value (a string, as Prometheus sends it). */
export interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

export interface RangeSeries {
  metric: Record<string, string>;
  values: [number, string][];
}

export type QueryResult =
  | { resultType: 'vector'; result: Sample[] }
  | { resultType: 'matrix'; result: RangeSeries[] }
  | { resultType: 'scalar' | 'string'; result: [number, string] };

/** An entry of /api/v1/alerts: a pending or firing alert. */
export interface Alert {
  labels: Record<string, string>;
  annotations: Record<string, string>;
  state: 'pending' | 'firing';
  activeAt: string;
  value: string;
}

/** An active target of /api/v1/targets. */
export interface Target {
  labels: Record<string, string>;
  scrapePool: string;
  scrapeUrl: string;
  health: 'up' | 'down' | 'unknown';
  lastError: string;
}

/** A request the API refused: `errorType` is Prometheus's (`bad_data` for an expression that does not parse). */
export class PrometheusApiError extends Error {
  constructor(
    readonly status: number,
    readonly errorType: string,
    readonly error: string,
  ) {
    super(`Prometheus answered ${status} ${errorType}: ${error}`);
  }
}

export class PrometheusServer {
  private constructor(
    private readonly process: ComponentProcess,
    /** e.g. http://127.0.0.1:40123 */
    readonly url: string,
    /** Config, TSDB and log; removed by stop(). */
    readonly dir: string,
    private readonly removeDir: () => void,
  ) {}

  static async start(config: PrometheusConfig = {}, timeoutMs = 30_000): Promise<PrometheusServer> {
    if (!existsSync(prometheusBinary)) {
      throw setupError(`${prometheusBinary} is missing: install Debian's prometheus package (npm run setup, or apt-get install prometheus)`);
    }
    const dir = mkdtempSync(join(tmpdir(), 'keyward-prometheus-'));
    const removeDir = trackDirectory(dir);
    const configFile = join(dir, 'prometheus.yml');
    writeFileSync(
      configFile,
      dump({
        global: { scrape_interval: config.scrapeInterval ?? '1s', evaluation_interval: config.evaluationInterval ?? '1s' },
        rule_files: config.ruleFiles ?? [],
        scrape_configs: config.scrapeConfigs ?? [],
      }),
    );
    const port = await freePort();
    const process = new ComponentProcess('prometheus', prometheusBinary, [
      `--config.file=${configFile}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      // Debian's defaults point at its console files; no test needs them.
      `--web.console.templates=${join(dir, 'consoles')}`,
      `--web.console.libraries=${join(dir, 'console_libraries')}`,
    ], join(dir, 'prometheus.log'));
    const server = new PrometheusServer(process, `http://127.0.0.1:${port}`, dir, removeDir);
    try {
      await server.waitHealthy(timeoutMs);
    } catch (err) {
      await server.stop();
      throw err;
    }
    return server;
  }

  get pid(): number | undefined {
    return this.process.pid;
  }

  get running(): boolean {
    return this.process.running;
  }

  /** Until Prometheus reports ready (TSDB open, config loaded); fails with its log on exit or time-out. */
  async waitHealthy(timeoutMs = 30_000): Promise<void> {
    await this.process.waitReady(async () => (await fetch(`${this.url}/-/ready`)).ok, timeoutMs, 'ready');
  }

  /** An instant query, at `time` (seconds since the epoch) or now. */
  async query(expr: string, time?: number): Promise<QueryResult> {
    const params: Record<string, string> = { query: expr };
    if (time !== undefined) params.time = String(time);
    return this.api<QueryResult>('/api/v1/query', params);
  }

  /** A range query from `start` to `end` (seconds since the epoch), one point every `stepSeconds`. */
  async queryRange(expr: string, start: number, end: number, stepSeconds: number): Promise<RangeSeries[]> {
    const data = await this.api<{ result: RangeSeries[] }>('/api/v1/query_range', {
      query: expr,
      start: String(start),
      end: String(end),
      step: String(stepSeconds),
    });
    return data.result;
  }

  /** Pending and firing alerts. */
  async alerts(): Promise<Alert[]> {
    return (await this.api<{ alerts: Alert[] }>('/api/v1/alerts')).alerts;
  }

  /** The active targets and their last scrape's health. */
  async targets(): Promise<Target[]> {
    return (await this.api<{ activeTargets: Target[] }>('/api/v1/targets', { state: 'active' })).activeTargets;
  }

  /** SIGTERM by pid (SIGKILL after the grace), then the directory is removed. */
  async stop(graceMs = 10_000): Promise<void> {
    await this.process.stop(graceMs);
    this.removeDir();
  }

  /** The last lines of its log, for a failing test's message (until stop() removes it). */
  logTail(lines = 30): string {
    return logTail(this.process.logFile, lines);
  }

  private async api<T>(path: string, params: Record<string, string> = {}): Promise<T> {
    const response = await fetch(`${this.url}${path}?${new URLSearchParams(params).toString()}`);
    const body = (await response.json().catch(() => undefined)) as
      | { status: 'success'; data: T }
      | { status: 'error'; errorType: string; error: string }
      | undefined;
    if (!body) throw new PrometheusApiError(response.status, 'unparsable', `${path} did not answer JSON`);
    if (body.status !== 'success') throw new PrometheusApiError(response.status, body.errorType, body.error);
    return body.data;
  }
}
