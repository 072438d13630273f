// The CSI provider's Prometheus metrics. The driver hides failed remounts from the pod, so these
// are the signal that rotation keeps working. Labels are low-cardinality: result, a refusal code
// from a fixed set, a cache name, an object type.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class CsiMetrics {
  readonly registry = new Registry();

  readonly mounts = new Counter({
    name: 'keyward_csi_mounts_total',
    help: 'Mount calls by result (served, refused, failed) and refusal code ("" when served).',
    labelNames: ['result', 'code'] as const,
    registers: [this.registry],
  });

  readonly latency = new Histogram({
    name: 'keyward_csi_mount_duration_seconds',
    help: 'Time to answer a Mount call, by result.',
    labelNames: ['result'] as const,
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5],
    registers: [this.registry],
  });

  readonly objects = new Counter({
    name: 'keyward_csi_objects_total',
    help: 'Objects served or refused, by object type and result.',
    labelNames: ['type', 'result'] as const,
    registers: [this.registry],
  });

  readonly cache = new Counter({
    name: 'keyward_csi_cache_lookups_total',
    help: 'Cache lookups by cache (tokenReview, material) and outcome (hit, miss).',
    labelNames: ['cache', 'outcome'] as const,
    registers: [this.registry],
  });

  readonly hsmCallsPerMount = new Histogram({
    name: 'keyward_csi_hsm_calls_per_mount',
    help: 'HSM calls (listings, key lookups, derivations, decryptions) made to answer one Mount.',
    buckets: [0, 1, 2, 4, 8, 16, 32, 64],
    registers: [this.registry],
  });

  readonly tokenReviews = new Counter({
    name: 'keyward_csi_token_reviews_total',
    help: 'TokenReview calls made to the apiserver (cache misses), by outcome.',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  });

  readonly inFlightBytes = new Gauge({
    name: 'keyward_csi_in_flight_request_bytes',
    help: 'Request bytes held by calls in progress; past the budget, calls are refused with Overloaded (RESOURCE_EXHAUSTED).',
    registers: [this.registry],
  });

  /** Set by the provider: how many entries each cache holds now. */
  cacheSizes: () => Record<string, number> = () => ({});

  private readonly cachedEntries = new Gauge({
    name: 'keyward_csi_cache_entries',
    help: 'Entries held per cache (tokenReview, material).',
    labelNames: ['cache'] as const,
    registers: [this.registry],
    collect: () => {
      for (const [cache, entries] of Object.entries(this.cacheSizes())) this.cachedEntries.set({ cache }, entries);
    },
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, labels: { component: 'csi-provider' } });
  }
}
