// The operator's Prometheus metrics. Labels stay low-cardinality: states, results and operations;
// the per-ring rotation gauge is labelled by namespace and name, which admins choose and bound.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { versionStates, type RingState } from '../core/hsm/ringState.js';

export class OperatorMetrics {
  readonly registry = new Registry();

  readonly reconcileDuration = new Histogram({
    name: 'keyward_operator_reconcile_duration_seconds',
    help: 'Time to reconcile one KeyRing, by result.',
    labelNames: ['result'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });

  readonly reconcileErrors = new Counter({
    name: 'keyward_operator_reconcile_errors_total',
    help: 'Failed KeyRing reconciles, by reason.',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  /** Admission decisions on KeyRing management; a rise in denials is worth an alert. */
  readonly policyDecisions = new Counter({
    name: 'keyward_policy_decisions_total',
    help: 'KeyPolicy decisions on KeyRing management requests, by operation and decision reason (Granted, NotGranted, NoPolicy, ...).',
    labelNames: ['operation', 'reason'] as const,
    registers: [this.registry],
  });

  readonly hsmOperationDuration = new Histogram({
    name: 'keyward_hsm_operation_duration_seconds',
    help: 'Time of the operator ring operations in the HSM, by operation.',
    labelNames: ['operation'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
    registers: [this.registry],
  });

  private readonly rings = new Gauge({
    name: 'keyward_hsm_rings',
    help: 'Key rings recorded in the HSM.',
    registers: [this.registry],
  });

  private readonly versions = new Gauge({
    name: 'keyward_hsm_key_versions',
    help: 'Key versions recorded in the HSM, by lifecycle state.',
    labelNames: ['state'] as const,
    registers: [this.registry],
  });

  private readonly orphanKeys = new Gauge({
    name: 'keyward_hsm_orphan_keys',
    help: 'Keyward key objects in the HSM that no ring accounts for (reported, never deleted).',
    registers: [this.registry],
  });

  /** Ring state objects found corrupt in the HSM (see RingStateCorruptError); any rise wants a look. */
  readonly corruptRingStates = new Counter({
    name: 'keyward_hsm_ring_state_corrupt_total',
    help: 'Reconciles that found a KeyRing\'s ring state object in the HSM corrupt.',
    registers: [this.registry],
  });

  readonly secondsToRotation = new Gauge({
    name: 'keyward_keyring_next_rotation_seconds',
    help: 'Seconds until the next scheduled rotation of a KeyRing (negative when overdue).',
    labelNames: ['namespace', 'name'] as const,
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'keyward_operator_' });
  }

  /** Times one HSM operation under its name. */
  async hsm<T>(operation: string, fn: () => Promise<T>): Promise<T> {
    const end = this.hsmOperationDuration.startTimer({ operation });
    try {
      return await fn();
    } finally {
      end();
    }
  }

  observeInventory(rings: RingState[], orphans: number): void {
    this.rings.set(rings.length);
    for (const state of versionStates) {
      this.versions.set({ state }, rings.reduce((sum, ring) => sum + ring.versions.filter((v) => v.state === state).length, 0));
    }
    this.orphanKeys.set(orphans);
  }
}
