// The operator's Prometheus metrics (docs/metrics.md). Labels stay low-cardinality: states, results,
// operations and PKCS#11 codes; per-KeyRing series carry namespace and name, which admins choose and
// bound, and the gauges among them are removed with the KeyRing. Time-dependent values are computed
// when Prometheus scrapes, from what the last reconcile saw, so they keep moving while the HSM fails.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { pkcs11CodeName } from '../core/hsm/hsmToken.js';
import { versionStates, type RingState, type VersionState } from '../core/hsm/ringState.js';

/** A KeyRing's labels. */
export interface KeyRingLabels {
  namespace: string;
  keyring: string;
}

type RingLabel = 'namespace' | 'keyring';

/** What the last reconcile knew of a KeyRing, read again at every scrape. */
interface KeyRingView {
  labels: KeyRingLabels;
  ready: boolean;
  versions?: Partial<Record<VersionState, number>>;
  lastRotationMs?: number;
  rotationPeriodMs?: number;
}

export class OperatorMetrics {
  readonly registry = new Registry();
  private readonly keyRings = new Map<string, KeyRingView>();

  /** `now` is the operator's clock (tests move it); overdue rotations are measured against it. */
  constructor(private readonly now: () => Date = () => new Date()) {
    collectDefaultMetrics({ register: this.registry, labels: { component: 'operator' } });
  }

  readonly leader = new Gauge({
    name: 'keyward_operator_leader',
    help: '1 while this replica leads (reconciles and touches the HSM), else 0.',
    registers: [this.registry],
  });

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

  readonly breakGlassUses = new Counter({
    name: 'keyward_policy_break_glass_uses_total',
    help: 'KeyRing management requests allowed only by a break-glass grant.',
    labelNames: ['namespace', 'keyring', 'operation'] as const,
    registers: [this.registry],
  });

  readonly admissionRequests = new Counter({
    name: 'keyward_admission_requests_total',
    help: 'Admission reviews answered by this replica, by resource and result (allowed, denied, error).',
    labelNames: ['resource', 'result'] as const,
    registers: [this.registry],
  });

  readonly admissionCertificateExpiry = new Gauge({
    name: 'keyward_admission_certificate_expiry_timestamp_seconds',
    help: 'notAfter of the admission webhook\'s serving certificate, as loaded.',
    registers: [this.registry],
  });

  readonly hsmUp = new Gauge({
    name: 'keyward_hsm_up',
    help: '1 when the last HSM health check (a logged-in session answering) succeeded, else 0.',
    registers: [this.registry],
  });

  readonly hsmErrors = new Counter({
    name: 'keyward_hsm_errors_total',
    help: 'Failed HSM operations, by operation and PKCS#11 return code (or Keyward error code when the module gave none).',
    labelNames: ['operation', 'code'] as const,
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

  readonly destructionsScheduled = new Counter({
    name: 'keyward_keyring_destructions_scheduled_total',
    help: 'Key versions scheduled for destruction, by KeyRing.',
    labelNames: ['namespace', 'keyring'] as const,
    registers: [this.registry],
  });

  // The per-KeyRing gauges are filled at scrape time from keyRings, so a deleted KeyRing's series
  // go with it and the overdue time follows the clock.
  private readonly keyRingReady: Gauge<RingLabel> = new Gauge({
    name: 'keyward_keyring_ready',
    help: '1 when the KeyRing\'s Ready condition is True.',
    labelNames: ['namespace', 'keyring'] as const,
    registers: [this.registry],
    collect: (): void => this.fill(this.keyRingReady, (ring) => Number(ring.ready)),
  });

  private readonly keyRingVersions = new Gauge({
    name: 'keyward_keyring_versions',
    help: 'Versions of the KeyRing per lifecycle state.',
    labelNames: ['namespace', 'keyring', 'state'] as const,
    registers: [this.registry],
    collect: () => {
      this.keyRingVersions.reset();
      for (const ring of this.keyRings.values()) {
        if (!ring.versions) continue;
        for (const state of versionStates) this.keyRingVersions.set({ ...ring.labels, state }, ring.versions[state] ?? 0);
      }
    },
  });

  private readonly lastRotation: Gauge<RingLabel> = new Gauge({
    name: 'keyward_keyring_last_rotation_timestamp_seconds',
    help: 'When the KeyRing\'s primary version was created.',
    labelNames: ['namespace', 'keyring'] as const,
    registers: [this.registry],
    collect: (): void => this.fill(this.lastRotation, (ring) => (ring.lastRotationMs === undefined ? undefined : ring.lastRotationMs / 1000)),
  });

  private readonly rotationPeriod: Gauge<RingLabel> = new Gauge({
    name: 'keyward_keyring_rotation_period_seconds',
    help: 'The KeyRing\'s rotation period (absent without one).',
    labelNames: ['namespace', 'keyring'] as const,
    registers: [this.registry],
    collect: (): void => this.fill(this.rotationPeriod, (ring) => (ring.rotationPeriodMs === undefined ? undefined : ring.rotationPeriodMs / 1000)),
  });

  private readonly rotationOverdue: Gauge<RingLabel> = new Gauge({
    name: 'keyward_keyring_rotation_overdue_seconds',
    help: 'At scrape time: how long past its due time the KeyRing\'s next rotation is (0 when not due).',
    labelNames: ['namespace', 'keyring'] as const,
    registers: [this.registry],
    collect: () => {
      const now = this.now().getTime();
      this.fill(this.rotationOverdue, (ring) =>
        ring.lastRotationMs === undefined || ring.rotationPeriodMs === undefined ? undefined : Math.max(0, now - ring.lastRotationMs - ring.rotationPeriodMs) / 1000,
      );
    },
  });

  /** Times one HSM operation under its name, and counts its failure by PKCS#11 code. */
  async hsm<T>(operation: string, fn: () => Promise<T>): Promise<T> {
    const end = this.hsmOperationDuration.startTimer({ operation });
    try {
      return await fn();
    } catch (err) {
      this.hsmFailed(operation, err);
      throw err;
    } finally {
      end();
    }
  }

  hsmFailed(operation: string, err: unknown): void {
    this.hsmErrors.inc({ operation, code: pkcs11CodeName(err) });
  }

  observeInventory(rings: RingState[], orphans: number): void {
    this.rings.set(rings.length);
    for (const state of versionStates) {
      this.versions.set({ state }, rings.reduce((sum, ring) => sum + ring.versions.filter((v) => v.state === state).length, 0));
    }
    this.orphanKeys.set(orphans);
  }

  /**
   * What a reconcile learnt of a KeyRing. Without a ring (the HSM failed) the versions and last
   * rotation known before stay, so an overdue rotation keeps showing.
   */
  observeKeyRing(labels: KeyRingLabels, seen: { ready: boolean; rotationPeriodMs?: number; ring?: RingState; lastRotation?: Date }): void {
    const key = `${labels.namespace}/${labels.keyring}`;
    const known = this.keyRings.get(key);
    if (!known) this.destructionsScheduled.inc(labels, 0); // a first increment then shows as one
    const view: KeyRingView = { labels, ready: seen.ready, rotationPeriodMs: seen.rotationPeriodMs, versions: known?.versions, lastRotationMs: known?.lastRotationMs };
    if (seen.lastRotation) view.lastRotationMs = seen.lastRotation.getTime();
    if (seen.ring) {
      const counts: Partial<Record<VersionState, number>> = {};
      for (const version of seen.ring.versions) counts[version.state] = (counts[version.state] ?? 0) + 1;
      view.versions = counts;
      const primary = seen.ring.versions.find((v) => v.number === seen.ring?.primary);
      if (primary) view.lastRotationMs = Date.parse(primary.createdAt);
    }
    this.keyRings.set(key, view);
  }

  /** A KeyRing is gone (or this replica stopped leading): its gauges go; counters stay until restart. */
  forgetKeyRing(labels: KeyRingLabels): void {
    this.keyRings.delete(`${labels.namespace}/${labels.keyring}`);
  }

  forgetKeyRings(): void {
    this.keyRings.clear();
  }

  private fill(gauge: Gauge<RingLabel>, value: (ring: KeyRingView) => number | undefined): void {
    gauge.reset();
    for (const ring of this.keyRings.values()) {
      const v = value(ring);
      if (v !== undefined) gauge.set(ring.labels, v);
    }
  }
}
