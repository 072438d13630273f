// A keyed work queue in the shape of client-go's workqueue: the controller queues object keys
// (namespace/name), never objects, and reads the current state when it gets a key, so repeated
// changes collapse into one reconcile.
//
// Invariants: a key is held by at most one worker at a time; a key added while a worker holds it
// is handed out again after done(); a key added many times while waiting is handed out once; of
// several delayed adds of one key the earliest due time wins.
//
// Unlike client-go, shutDown() drops keys that are still waiting instead of handing them out:
// keys are hints for a level-based controller, and the next run (or the next leader) lists every
// object again anyway, so stopping promptly matters more.
import type { Registry } from 'prom-client';
import { defaultControllerRateLimiter, type RateLimiter } from './rateLimiter.js';
import { workQueueMetrics, type WorkQueueMetrics } from './workQueueMetrics.js';

export interface WorkQueueOptions {
  /** The `name` label of the queue's metrics, e.g. the controller's name. */
  name: string;
  /** Default: per key 5 ms doubling to 5 min, overall 10/s with a burst of 100. */
  rateLimiter?: RateLimiter;
  /** Where the keyward_workqueue_* metrics go; none when absent. */
  registry?: Registry;
}

// setTimeout cannot wait longer than 2^31-1 ms (about 24.8 days); a requeue for a rotation
// months away re-arms until it is due.
const longestTimerMs = 2 ** 31 - 1;

export class WorkQueue {
  readonly name: string;
  private readonly rateLimiter: RateLimiter;
  private readonly metrics: WorkQueueMetrics | undefined;
  /** Keys ready for a worker, in order (a Map keeps insertion order), with when they became ready. */
  private readonly ready = new Map<string, number>();
  /** Keys that need processing: ready ones, and held ones added again while held. */
  private readonly dirty = new Set<string>();
  /** Keys a worker holds between get() and done(), with when it took them. */
  private readonly processing = new Map<string, number>();
  private readonly delayed = new Map<string, { due: number; timer: NodeJS.Timeout }>();
  private readonly consumers: ((key: string | undefined) => void)[] = [];
  private shuttingDown = false;
  private readonly drainWaiters: (() => void)[] = [];

  constructor(options: WorkQueueOptions) {
    this.name = options.name;
    this.rateLimiter = options.rateLimiter ?? defaultControllerRateLimiter();
    this.metrics = options.registry ? workQueueMetrics(options.registry) : undefined;
    this.metrics?.inProgress.add(this);
  }

  /** Seconds each key held by a worker has been processed so far (the in-progress metrics). */
  runningSeconds(): number[] {
    const now = performance.now();
    return [...this.processing.values()].map((since) => (now - since) / 1000);
  }

  add(key: string): void {
    if (this.shuttingDown || this.dirty.has(key)) return;
    this.metrics?.adds.inc({ name: this.name });
    this.dirty.add(key);
    // A held key goes back in line when its worker calls done().
    if (!this.processing.has(key)) this.makeReady(key);
  }

  /** Adds the key once delayMs have passed; an earlier pending due time for the key wins. */
  addAfter(key: string, delayMs: number): void {
    if (this.shuttingDown) return;
    if (delayMs <= 0) {
      this.add(key);
      return;
    }
    const due = performance.now() + delayMs;
    const pending = this.delayed.get(key);
    if (pending && pending.due <= due) return;
    if (pending) clearTimeout(pending.timer);
    this.delayed.set(key, { due, timer: this.arm(key, due) });
  }

  /** Adds the key after the rate limiter's delay for it: the retry path after a failure. */
  addRateLimited(key: string): void {
    if (this.shuttingDown) return;
    this.metrics?.retries.inc({ name: this.name });
    this.addAfter(key, this.rateLimiter.when(key));
  }

  /** Resets the key's backoff, after it was processed successfully. */
  forget(key: string): void {
    this.rateLimiter.forget(key);
  }

  /** Failures recorded for the key since it was last forgotten. */
  numRequeues(key: string): number {
    return this.rateLimiter.retries(key);
  }

  /**
   * The next key to process, held for the caller until done(key); waits when none is ready.
   * undefined once the queue is shutting down.
   */
  get(): Promise<string | undefined> {
    if (this.ready.size > 0) return Promise.resolve(this.take());
    if (this.shuttingDown) return Promise.resolve(undefined);
    return new Promise((resolve) => this.consumers.push(resolve));
  }

  /** Releases a key taken with get(); if it was added meanwhile, it is queued again. */
  done(key: string): void {
    const since = this.processing.get(key);
    if (since === undefined) return;
    this.processing.delete(key);
    this.metrics?.workDuration.observe({ name: this.name }, (performance.now() - since) / 1000);
    if (this.dirty.has(key)) this.makeReady(key);
    if (this.shuttingDown && this.processing.size === 0) this.drained();
  }

  /** Keys ready for a worker (not counting held or delayed ones). */
  len(): number {
    return this.ready.size;
  }

  get isShuttingDown(): boolean {
    return this.shuttingDown;
  }

  /** Ignores further adds, drops waiting and delayed keys, and makes every get() return undefined. */
  shutDown(): void {
    if (this.shuttingDown) return;
    this.shuttingDown = true;
    for (const { timer } of this.delayed.values()) clearTimeout(timer);
    this.delayed.clear();
    this.ready.clear();
    this.dirty.clear();
    this.metrics?.depth.set({ name: this.name }, 0);
    for (const consumer of this.consumers.splice(0)) consumer(undefined);
    if (this.processing.size === 0) this.drained();
  }

  /** shutDown(), then resolves once every held key has been released with done(). */
  shutDownWithDrain(): Promise<void> {
    this.shutDown();
    if (this.processing.size === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** Shut down with nothing held: the queue leaves the metrics and wakes shutDownWithDrain(). */
  private drained(): void {
    this.metrics?.inProgress.delete(this);
    for (const drained of this.drainWaiters.splice(0)) drained();
  }

  private makeReady(key: string): void {
    this.ready.set(key, performance.now());
    this.metrics?.depth.set({ name: this.name }, this.ready.size);
    // Hand keys straight to waiting workers, oldest waiter first.
    while (this.consumers.length > 0 && this.ready.size > 0) this.consumers.shift()?.(this.take());
  }

  private take(): string {
    const [key, since] = this.ready.entries().next().value as [string, number];
    const now = performance.now();
    this.ready.delete(key);
    this.dirty.delete(key);
    this.processing.set(key, now);
    this.metrics?.queueDuration.observe({ name: this.name }, (now - since) / 1000);
    this.metrics?.depth.set({ name: this.name }, this.ready.size);
    return key;
  }

  private arm(key: string, due: number): NodeJS.Timeout {
    return setTimeout(() => {
      const pending = this.delayed.get(key);
      if (!pending) return;
      const remaining = pending.due - performance.now();
      if (remaining > 0) {
        pending.timer = this.arm(key, pending.due);
        return;
      }
      this.delayed.delete(key);
      this.add(key);
    }, Math.min(longestTimerMs, Math.max(1, Math.ceil(due - performance.now()))));
  }
}
