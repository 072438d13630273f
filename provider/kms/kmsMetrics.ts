// The KMS plugin's Prometheus metrics. Labels are low-cardinality: method and status code only.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RingHealth, RingSnapshot } from './ringView.js';

export class KmsMetrics {
  readonly registry = new Registry();

  private readonly requests = new Counter({
    name: 'keyward_kms_requests_total',
    help: 'KMS v2 calls by method and gRPC status code.',
    labelNames: ['method', 'code'] as const,
    registers: [this.registry],
  });

  private readonly latency = new Histogram({
    name: 'keyward_kms_request_duration_seconds',
    help: 'Time to serve a KMS v2 call, by method.',
    labelNames: ['method'] as const,
    buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.5, 1],
    registers: [this.registry],
  });

  private readonly hsmUp = new Gauge({
    name: 'keyward_kms_hsm_up',
    help: '1 when the last encrypt+decrypt round trip through the HSM with the primary key succeeded.',
    registers: [this.registry],
  });

  private readonly primaryVersion = new Gauge({
    name: 'keyward_kms_primary_key_version',
    help: 'Version number of the primary key the plugin encrypts with.',
    registers: [this.registry],
  });

  // A point in time rather than an age: Prometheus computes the age (time() - x) and the value
  // stays right between refreshes.
  private readonly primaryCreated = new Gauge({
    name: 'keyward_kms_primary_key_created_timestamp_seconds',
    help: 'When the primary key version was created.',
    registers: [this.registry],
  });

  /** Label children by method and code: resolving labels on every call costs more than counting. */
  private readonly callMetrics = new Map<string, { count: { inc(): void }; time: { observe(seconds: number): void } }>();

  /** Counts a served call and its duration. */
  observeCall(method: string, code: string, seconds: number): void {
    const key = `${method} ${code}`;
    let children = this.callMetrics.get(key);
    if (!children) {
      children = { count: this.requests.labels(method, code), time: this.latency.labels(method) };
      this.callMetrics.set(key, children);
    }
    children.count.inc();
    children.time.observe(seconds);
  }

  constructor() {
    collectDefaultMetrics({ register: this.registry, labels: { component: 'kms-plugin' } });
  }

  observeRing(snapshot: RingSnapshot | undefined, health: RingHealth): void {
    this.hsmUp.set(health.ok ? 1 : 0);
    if (snapshot) {
      this.primaryVersion.set(snapshot.primary.version.number);
      this.primaryCreated.set(Date.parse(snapshot.primary.version.createdAt) / 1000);
    }
  }
}
