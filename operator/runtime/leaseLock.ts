// The coordination.k8s.io/v1 Lease that leader election contends for: read, create, and replace
// with the resourceVersion last read (optimistic concurrency: 409 Conflict means another writer
// got there first). Every request carries its own timeout, so a hung apiserver cannot stall the
// elector past its renew deadline.
//
// MicroTime fields: @kubernetes/client-node 1.4.0 sends a plain Date as "…T10:00:00.123Z", which
// the apiserver rejects (it parses MicroTime as RFC3339 with exactly six fraction digits); a
// V1MicroTime serializes as "…T10:00:00.123000Z". On reads it hands the field back as the raw
// string despite its declared type, so reads accept both.
import {
  ApiException,
  CoordinationV1Api,
  Observable,
  V1MicroTime,
  type ConfigurationOptions,
  type KubeConfig,
  type ObservableMiddleware,
  type V1Lease,
} from '@kubernetes/client-node';

/** The leader election fields of a Lease spec. */
export interface LeaderRecord {
  /** Empty when nobody holds the lease (released). */
  holderIdentity: string;
  leaseDurationSeconds: number;
  acquireTime: Date | undefined;
  renewTime: Date | undefined;
  leaseTransitions: number;
}

export interface LeaseSnapshot {
  readonly record: LeaderRecord;
  /** Differs whenever the record does; observers compare it to notice renewals. */
  readonly fingerprint: string;
  /** The object as read, kept whole so a replace preserves what others wrote (labels, spec.strategy). */
  readonly lease: V1Lease;
}

export function isConflict(err: unknown): boolean {
  return err instanceof ApiException && err.code === 409;
}

function isNotFound(err: unknown): boolean {
  return err instanceof ApiException && err.code === 404;
}

function microTimeText(value: unknown): string {
  if (value instanceof Date) return value.toISOString();
  return typeof value === 'string' ? value : '';
}

function parseMicroTime(value: unknown): Date | undefined {
  const text = microTimeText(value);
  return text ? new Date(text) : undefined;
}

function snapshotOf(lease: V1Lease): LeaseSnapshot {
  const spec = lease.spec ?? {};
  const record: LeaderRecord = {
    holderIdentity: spec.holderIdentity ?? '',
    leaseDurationSeconds: spec.leaseDurationSeconds ?? 0,
    acquireTime: parseMicroTime(spec.acquireTime),
    renewTime: parseMicroTime(spec.renewTime),
    leaseTransitions: spec.leaseTransitions ?? 0,
  };
  const fingerprint = JSON.stringify([
    record.holderIdentity,
    record.leaseDurationSeconds,
    microTimeText(spec.acquireTime),
    microTimeText(spec.renewTime),
    record.leaseTransitions,
  ]);
  return { record, fingerprint, lease };
}

const microTime = (time: Date | undefined): V1MicroTime | undefined => (time ? new V1MicroTime(time.getTime()) : undefined);

function specOf(record: LeaderRecord): V1Lease['spec'] {
  return {
    holderIdentity: record.holderIdentity,
    leaseDurationSeconds: record.leaseDurationSeconds,
    acquireTime: microTime(record.acquireTime),
    renewTime: microTime(record.renewTime),
    leaseTransitions: record.leaseTransitions,
  };
}

function timeoutOptions(timeoutMs: number): ConfigurationOptions<ObservableMiddleware> {
  const middleware: ObservableMiddleware = {
    pre: (request) => {
      request.setSignal(AbortSignal.timeout(Math.max(1, Math.round(timeoutMs))));
      return new Observable(Promise.resolve(request));
    },
    post: (response) => new Observable(Promise.resolve(response)),
  };
  return { middleware: [middleware], middlewareMergeStrategy: 'append' };
}

export class LeaseLock {
  private readonly api: CoordinationV1Api;

  constructor(
    kubeConfig: KubeConfig,
    readonly namespace: string,
    readonly name: string,
  ) {
    this.api = kubeConfig.makeApiClient(CoordinationV1Api);
  }

  describe(): string {
    return `${this.namespace}/${this.name}`;
  }

  /** The Lease as it is now; undefined when it does not exist. */
  async get(timeoutMs: number): Promise<LeaseSnapshot | undefined> {
    try {
      return snapshotOf(await this.api.readNamespacedLease({ name: this.name, namespace: this.namespace }, timeoutOptions(timeoutMs)));
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /** Creates the Lease; fails with 409 when someone created it first. */
  async create(record: LeaderRecord, timeoutMs: number): Promise<LeaseSnapshot> {
    const body: V1Lease = { metadata: { name: this.name, namespace: this.namespace }, spec: specOf(record) };
    return snapshotOf(await this.api.createNamespacedLease({ namespace: this.namespace, body }, timeoutOptions(timeoutMs)));
  }

  /** Replaces the record of the Lease as last read; fails with 409 when it changed since. */
  async update(current: LeaseSnapshot, record: LeaderRecord, timeoutMs: number): Promise<LeaseSnapshot> {
    const body: V1Lease = { ...current.lease, spec: { ...current.lease.spec, ...specOf(record) } };
    return snapshotOf(
      await this.api.replaceNamespacedLease({ name: this.name, namespace: this.namespace, body }, timeoutOptions(timeoutMs)),
    );
  }
}
