// The KMS plugin's Prometheus metrics. Labels are low-cardinality: method and status code only.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RingHealth, RingSnapshot } from './ringView.js';

export class KmsMetrics {
  readonly registry = new Registry();
  private primaryCreatedAt = 0;

  readonly requests = new Counter({
    name: 'keyward_kms_requests_total',
    help: 'KMS v2 calls by method and gRPC status code.',
    labelNames: ['method', 'code'] as const,
    registers: [this.registry],
  });

  readonly latency = new Histogram({
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

  private readonly primaryAge = new Gauge({
    name: 'keyward_kms_primary_key_age_seconds',
    help: 'Age of the primary key version.',
    registers: [this.registry],
    collect: () => {
      if (this.primaryCreatedAt > 0) this.primaryAge.set((Date.now() - this.primaryCreatedAt) / 1000);
    },
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'keyward_kms_' });
  }

  observeRing(snapshot: RingSnapshot | undefined, health: RingHealth): void {
    this.hsmUp.set(health.ok ? 1 : 0);
    if (snapshot) {
      this.primaryVersion.set(snapshot.primary.version.number);
      this.primaryCreatedAt = Date.parse(snapshot.primary.version.createdAt);
    }
  }
}
