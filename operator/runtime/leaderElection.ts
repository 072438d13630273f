// Leader election over a coordination.k8s.io/v1 Lease, with client-go's algorithm: a candidate
// takes the Lease when it is absent, released (no holder) or expired, and otherwise waits; the
// leader renews it every retryPeriod and steps down when it cannot renew within renewDeadline.
//
// Expiry is judged on the candidate's own monotonic clock: a Lease is expired when its record has
// not changed for leaseDuration since this process last saw it change. Nobody compares their
// clock with the renewTime another machine wrote, so clock skew does not matter.
//
// renewDeadline < leaseDuration is what keeps leaders from overlapping: the old leader gives up
// before any candidate can have seen the Lease unchanged for a whole leaseDuration.
import type { KubeConfig } from '@kubernetes/client-node';
import { setTimeout as delay } from 'node:timers/promises';
import { KeywardError } from '../../core/errors.js';
import { createLogger, type Logger } from '../../core/observability/logger.js';
import { isConflict, LeaseLock, type LeaderRecord, type LeaseSnapshot } from './leaseLock.js';

export interface LeaderElectionCallbacks {
  /**
   * Called when this process becomes leader; `signal` aborts when leadership ends. On a graceful
   * stop, a returned promise is awaited (the Lease still renewed) before the Lease is released,
   * so return one that settles once the leader's work has stopped, and no successor overlaps it.
   */
  onStartedLeading(signal: AbortSignal): void | Promise<void>;
  /** Called once leadership has ended: lost, or given up on stop(). */
  onStoppedLeading?(): void;
  /** Called when the observed holder changes, including to this process. */
  onNewLeader?(identity: string): void;
}

export interface LeaderElectionOptions {
  kubeConfig: KubeConfig;
  /** Namespace and name of the Lease. */
  namespace: string;
  name: string;
  /** Unique per candidate, e.g. the pod name. */
  identity: string;
  /** How long a silent holder keeps the Lease; written rounded up to whole seconds. Default 15 s. */
  leaseDurationMs?: number;
  /** How long the leader keeps trying to renew before it steps down. Default 10 s. */
  renewDeadlineMs?: number;
  /** Time between attempts to acquire or renew. Default 2 s. */
  retryPeriodMs?: number;
  /** Release the Lease on stop() so a successor takes over at once. Default true. */
  releaseOnStop?: boolean;
  callbacks: LeaderElectionCallbacks;
  logger?: Logger;
}

export interface LeaderElector {
  readonly identity: string;
  isLeader(): boolean;
  /** The holder this process last observed; '' when none. */
  leader(): string;
  /**
   * Settles when the election is over for this elector: after stop(), or after leadership was
   * lost (it does not campaign again; the process should exit or start a new elector).
   */
  readonly done: Promise<void>;
  /** Stops campaigning; when leading, ends the leader's work and releases the Lease (see releaseOnStop). */
  stop(): Promise<void>;
}

// client-go's JitterFactor: candidates spread their attempts over retryPeriod × [1, 2.2).
const jitterFactor = 1.2;

type Attempt = { ok: true; at: number } | { ok: false; heldBy?: string };

interface Observation {
  fingerprint: string;
  holder: string;
  durationMs: number;
  at: number;
}

function validated(options: LeaderElectionOptions): Required<Pick<LeaderElectionOptions, 'leaseDurationMs' | 'renewDeadlineMs' | 'retryPeriodMs'>> {
  const { leaseDurationMs = 15_000, renewDeadlineMs = 10_000, retryPeriodMs = 2_000 } = options;
  const invalid = (message: string): KeywardError => new KeywardError('InvalidArgument', `leader election: ${message}`);
  for (const field of ['namespace', 'name', 'identity'] as const) {
    if (!options[field]) throw invalid(`${field} must not be empty`);
  }
  if (!(retryPeriodMs > 0)) throw invalid(`retryPeriodMs must be > 0, got ${retryPeriodMs}`);
  if (!(renewDeadlineMs > jitterFactor * retryPeriodMs)) {
    throw invalid(`renewDeadlineMs (${renewDeadlineMs}) must be greater than ${jitterFactor} × retryPeriodMs (${retryPeriodMs})`);
  }
  if (!(leaseDurationMs > renewDeadlineMs)) {
    throw invalid(`leaseDurationMs (${leaseDurationMs}) must be greater than renewDeadlineMs (${renewDeadlineMs})`);
  }
  return { leaseDurationMs, renewDeadlineMs, retryPeriodMs };
}

/** Waits ms, or less when signal aborts. */
async function sleep(ms: number, signal: AbortSignal): Promise<void> {
  await delay(ms, undefined, { signal }).catch(() => undefined);
}

export function startLeaderElection(options: LeaderElectionOptions): LeaderElector {
  return new LeaseElector(options);
}

class LeaseElector implements LeaderElector {
  readonly identity: string;
  readonly done: Promise<void>;
  private readonly lock: LeaseLock;
  private readonly leaseDurationSeconds: number;
  private readonly renewDeadlineMs: number;
  private readonly retryPeriodMs: number;
  private readonly releaseOnStop: boolean;
  private readonly callbacks: LeaderElectionCallbacks;
  private readonly log: Logger;
  private readonly stopping = new AbortController();
  private leading = false;
  private observed: Observation | undefined;
  private reportedLeader = '';
  /** The Lease as our last successful write left it: what a release replaces. */
  private held: LeaseSnapshot | undefined;

  constructor(options: LeaderElectionOptions) {
    const timing = validated(options);
    this.identity = options.identity;
    this.lock = new LeaseLock(options.kubeConfig, options.namespace, options.name);
    this.leaseDurationSeconds = Math.ceil(timing.leaseDurationMs / 1000);
    this.renewDeadlineMs = timing.renewDeadlineMs;
    this.retryPeriodMs = timing.retryPeriodMs;
    this.releaseOnStop = options.releaseOnStop ?? true;
    this.callbacks = options.callbacks;
    this.log = (options.logger ?? createLogger('operator')).child({ lease: this.lock.describe(), identity: this.identity });
    this.done = this.run().catch((err: unknown) => this.log.error({ err }, 'leader election failed'));
  }

  isLeader(): boolean {
    return this.leading;
  }

  leader(): string {
    return this.observed?.holder ?? '';
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    await this.done;
  }

  private async run(): Promise<void> {
    const acquiredAt = await this.acquire();
    if (acquiredAt === undefined) return;
    if (this.stopping.signal.aborted) {
      // Won just as stop() was called: hand it back without starting any work.
      if (this.releaseOnStop) await this.release();
      return;
    }
    this.leading = true;
    this.log.info('became leader');
    const leadership = new AbortController();
    const work = Promise.resolve()
      .then(() => this.callbacks.onStartedLeading(leadership.signal))
      .catch((err: unknown) => this.log.error({ err }, 'onStartedLeading failed'));
    // On stop: end the work, keep renewing until it has ended, then leave.
    const finished = new AbortController();
    const onStop = (): void => {
      leadership.abort();
      void work.finally(() => finished.abort());
    };
    this.stopping.signal.addEventListener('abort', onStop, { once: true });

    const outcome = await this.holdLease(acquiredAt, finished.signal);
    this.stopping.signal.removeEventListener('abort', onStop);
    this.leading = false;
    leadership.abort();
    if (outcome === 'finished' && this.releaseOnStop) await this.release();
    this.log.info(outcome === 'lost' ? 'lost leadership' : 'stopped leading');
    this.callback('onStoppedLeading', () => this.callbacks.onStoppedLeading?.());
  }

  /** Tries until the Lease is ours; the monotonic time of the winning attempt, or undefined on stop(). */
  private async acquire(): Promise<number | undefined> {
    while (!this.stopping.signal.aborted) {
      const attempt = await this.tryAcquireOrRenew(this.renewDeadlineMs);
      if (attempt.ok) return attempt.at;
      await sleep(this.retryPeriodMs * (1 + Math.random() * jitterFactor), this.stopping.signal);
    }
    return undefined;
  }

  /** Renews every retryPeriod until `finished` aborts, or until leadership is lost. */
  private async holdLease(acquiredAt: number, finished: AbortSignal): Promise<'lost' | 'finished'> {
    let renewedAt = acquiredAt;
    for (;;) {
      await sleep(this.retryPeriodMs, finished);
      if (finished.aborted) return 'finished';
      const left = renewedAt + this.renewDeadlineMs - performance.now();
      const attempt: Attempt = left > 0 ? await this.tryAcquireOrRenew(left) : { ok: false };
      if (attempt.ok) {
        renewedAt = attempt.at;
      } else if (attempt.heldBy !== undefined) {
        this.log.warn({ holder: attempt.heldBy }, 'the Lease is held by another candidate; stepping down');
        return 'lost';
      } else if (performance.now() >= renewedAt + this.renewDeadlineMs) {
        this.log.warn({ renewDeadlineMs: this.renewDeadlineMs }, 'could not renew the Lease within the renew deadline; stepping down');
        return 'lost';
      }
    }
  }

  /** One read and at most one write, all within timeoutMs. `at` is when the attempt began. */
  private async tryAcquireOrRenew(timeoutMs: number): Promise<Attempt> {
    const at = performance.now();
    const now = new Date();
    const left = (): number => timeoutMs - (performance.now() - at);
    let current: LeaseSnapshot | undefined;
    try {
      current = await this.lock.get(timeoutMs);
    } catch (err) {
      this.attemptFailed('read', err);
      return { ok: false };
    }
    const fresh: LeaderRecord = {
      holderIdentity: this.identity,
      leaseDurationSeconds: this.leaseDurationSeconds,
      acquireTime: now,
      renewTime: now,
      leaseTransitions: 0,
    };
    if (!current) return this.write('create', at, () => this.lock.create(fresh, left()));

    this.observe(current);
    const { holderIdentity, acquireTime, leaseTransitions } = current.record;
    const ours = holderIdentity === this.identity;
    if (holderIdentity !== '' && !ours && !this.observedExpired()) return { ok: false, heldBy: holderIdentity };
    const record: LeaderRecord = ours
      ? { ...fresh, acquireTime: acquireTime ?? now, leaseTransitions }
      : { ...fresh, leaseTransitions: leaseTransitions + 1 };
    const snapshot = current;
    return this.write(ours ? 'renew' : 'take over', at, () => this.lock.update(snapshot, record, left()));
  }

  private async write(what: string, at: number, request: () => Promise<LeaseSnapshot>): Promise<Attempt> {
    try {
      this.held = await request();
    } catch (err) {
      this.attemptFailed(what, err);
      return { ok: false };
    }
    this.observe(this.held);
    return { ok: true, at };
  }

  /** Notes when the record last changed, by our clock; expiry is measured from there. */
  private observe(snapshot: LeaseSnapshot): void {
    if (snapshot.fingerprint === this.observed?.fingerprint) return;
    const holder = snapshot.record.holderIdentity;
    this.observed = {
      fingerprint: snapshot.fingerprint,
      holder,
      durationMs: snapshot.record.leaseDurationSeconds * 1000,
      at: performance.now(),
    };
    if (holder !== '' && holder !== this.reportedLeader) {
      this.reportedLeader = holder;
      this.log.info({ leader: holder }, 'new leader observed');
      this.callback('onNewLeader', () => this.callbacks.onNewLeader?.(holder));
    }
  }

  private observedExpired(): boolean {
    return !this.observed || this.observed.at + this.observed.durationMs <= performance.now();
  }

  /** Leaves the Lease without a holder, so the next candidate takes it on its next attempt. */
  private async release(): Promise<void> {
    const held = this.held;
    if (held?.record.holderIdentity !== this.identity) return;
    const now = new Date();
    const record: LeaderRecord = {
      holderIdentity: '',
      leaseDurationSeconds: 1,
      acquireTime: now,
      renewTime: now,
      leaseTransitions: held.record.leaseTransitions,
    };
    try {
      this.held = await this.lock.update(held, record, this.renewDeadlineMs);
      this.log.info('released the Lease');
    } catch (err) {
      this.log.warn({ err }, 'could not release the Lease; a successor takes over once it expires');
    }
  }

  private attemptFailed(what: string, err: unknown): void {
    // A conflict is the normal outcome of losing a race; anything else is worth a warning.
    if (isConflict(err)) this.log.debug({ what }, 'lost a race for the Lease');
    // Only the per-request timeout aborts a request.
    else if (err instanceof Error && err.name === 'AbortError') this.log.warn({ what }, 'Lease request timed out');
    else this.log.warn({ err, what }, 'Lease request failed');
  }

  private callback(name: string, call: () => void): void {
    try {
      call();
    } catch (err) {
      this.log.error({ err, callback: name }, 'leader election callback threw');
    }
  }
}
