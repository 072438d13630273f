import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { startControllerLoop, type ControllerLoop, type Reconcile } from './controllerLoop.js';
import { exponentialBackoff } from './rateLimiter.js';
import { WorkQueue } from './workQueue.js';

interface LogLine {
  level: number;
  msg: string;
  key?: string;
  retries?: number;
  controller?: string;
  err?: { message: string };
}

/** A pino logger whose lines the test can read. */
function capturedLogger(): { logger: pino.Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => lines.push(JSON.parse(line) as LogLine) });
  return { logger, lines };
}

async function eventually(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() > deadline) assert.fail(`${what} did not happen within ${timeoutMs} ms`);
    await sleep(5);
  }
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve = (): void => undefined;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

describe('controller loop', () => {
  let loop: ControllerLoop | undefined;
  afterEach(async () => {
    await loop?.stop();
    loop = undefined;
  });

  it('retries a failing key with growing backoff until it succeeds, then forgets its failures', async () => {
    const asked: number[] = [];
    const backoff = exponentialBackoff({ baseDelayMs: 1, maxDelayMs: 50 });
    const queue = new WorkQueue({
      name: 'keyrings',
      rateLimiter: { ...backoff, when: (key) => { const ms = backoff.when(key); asked.push(ms); return ms; } },
    });
    const { logger, lines } = capturedLogger();
    let calls = 0;
    let succeeded = false;
    const reconcile: Reconcile = async (key) => {
      await sleep(1);
      calls++;
      if (calls <= 3) throw new Error(`HSM unavailable for ${key}`);
      succeeded = true;
    };
    loop = startControllerLoop({ name: 'keyrings', queue, reconcile, logger });
    queue.add('ns/ring');
    await eventually(() => succeeded, 'a successful reconcile');
    assert.equal(calls, 4);
    assert.deepEqual(asked, [1, 2, 4], 'each failure waited longer');
    await eventually(() => queue.numRequeues('ns/ring') === 0, 'forget after success');
    const failures = lines.filter((l) => l.msg === 'reconcile failed; retrying with backoff');
    assert.deepEqual(failures.map((l) => l.retries), [1, 2, 3]);
    assert.ok(failures.every((l) => l.key === 'ns/ring' && l.controller === 'keyrings' && l.err?.message === 'HSM unavailable for ns/ring'));
    await sleep(50);
    assert.equal(calls, 4, 'no reconcile after success without a change');
  });

  it('re-runs a key after requeueAfterMs', async () => {
    const queue = new WorkQueue({ name: 'keyrings' });
    const times: number[] = [];
    const reconcile: Reconcile = () => {
      times.push(performance.now());
      return Promise.resolve(times.length < 3 ? { requeueAfterMs: 30 } : undefined);
    };
    loop = startControllerLoop({ name: 'keyrings', queue, reconcile, logger: capturedLogger().logger });
    queue.add('ns/ring');
    await eventually(() => times.length === 3, 'three reconciles');
    await sleep(100);
    assert.equal(times.length, 3, 'no requeue asked: no more reconciles');
  });

  it('stop waits for in-flight reconciles and starts no new ones', async () => {
    const queue = new WorkQueue({ name: 'keyrings' });
    const release = deferred();
    const started: string[] = [];
    const finished: string[] = [];
    const reconcile: Reconcile = async (key) => {
      started.push(key);
      await release.promise;
      finished.push(key);
    };
    loop = startControllerLoop({ name: 'keyrings', queue, reconcile, workers: 2, logger: capturedLogger().logger });
    queue.add('a');
    queue.add('b');
    queue.add('c');
    await eventually(() => started.length === 2, 'two reconciles in flight');
    let stopped = false;
    const stopping = loop.stop().then(() => (stopped = true));
    await sleep(30);
    assert.equal(stopped, false, 'stop waits while reconciles run');
    release.resolve();
    await stopping;
    assert.deepEqual(finished.sort(), ['a', 'b']);
    assert.deepEqual(started.sort(), ['a', 'b'], 'c was still waiting: not started after stop');
    loop = undefined;
  });

  it('runs different keys in parallel on several workers, never one key twice at once', async () => {
    const queue = new WorkQueue({ name: 'keyrings' });
    const inFlight = new Set<string>();
    let most = 0;
    let done = 0;
    let overlapped = false;
    const reconcile: Reconcile = async (key) => {
      // An assertion thrown here would only count as a failed reconcile; record it instead.
      if (inFlight.has(key)) overlapped = true;
      inFlight.add(key);
      most = Math.max(most, inFlight.size);
      await sleep(5);
      inFlight.delete(key);
      done++;
    };
    loop = startControllerLoop({ name: 'keyrings', queue, reconcile, workers: 3, logger: capturedLogger().logger });
    for (let round = 0; round < 5; round++) {
      for (const key of ['a', 'b', 'c', 'd']) queue.add(key);
      await sleep(2);
    }
    await eventually(() => queue.len() === 0 && inFlight.size === 0 && done >= 4, 'the queue to empty');
    assert.equal(overlapped, false, 'one key reconciled twice at once');
    assert.ok(most > 1 && most <= 3, `at most 3 at once, more than 1: saw ${most}`);
  });

  it('refuses a worker count that is not a positive whole number', () => {
    const queue = new WorkQueue({ name: 'x' });
    assert.throws(
      () => startControllerLoop({ name: 'x', queue, reconcile: () => Promise.resolve(), workers: 0 }),
      /controller 'x': workers must be a whole number ≥ 1, got 0/,
    );
  });
});
