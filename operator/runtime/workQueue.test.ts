import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { Registry } from 'prom-client';
import { defaultControllerRateLimiter, exponentialBackoff, maxOf, tokenBucket } from './rateLimiter.js';
import { WorkQueue } from './workQueue.js';

/** The key get() hands out, failing after ms (a generous bound, not a timing claim). */
async function getWithin(queue: WorkQueue, ms: number): Promise<string | undefined> {
  const timeout = new AbortController();
  const late = sleep(ms, undefined, { signal: timeout.signal }).then(
    () => assert.fail(`no key within ${ms} ms`),
    () => undefined,
  );
  const got = await Promise.race([queue.get(), late]);
  timeout.abort();
  return got;
}

/** Nothing becomes ready for a while. (A get() raced against a timer would swallow the next key.) */
async function assertStaysEmpty(queue: WorkQueue, ms: number): Promise<void> {
  await sleep(ms);
  assert.equal(queue.len(), 0);
}

describe('rate limiters', () => {
  it('backs off exponentially per key, capped, and forget resets', () => {
    const limiter = exponentialBackoff({ baseDelayMs: 5, maxDelayMs: 1000 });
    const delays = Array.from({ length: 10 }, () => limiter.when('a'));
    assert.deepEqual(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    assert.equal(limiter.retries('a'), 10);
    assert.equal(limiter.when('b'), 5, 'keys back off independently');
    limiter.forget('a');
    assert.equal(limiter.retries('a'), 0);
    assert.equal(limiter.when('a'), 5);
  });

  it('stays finite after very many failures', () => {
    const limiter = exponentialBackoff();
    let last = 0;
    for (let i = 0; i < 5000; i++) last = limiter.when('a');
    assert.equal(last, 300_000);
  });

  it('token bucket: a burst goes through, then one try per 1/rate, refilled over time', () => {
    let now = 0;
    const bucket = tokenBucket({ perSecond: 10, burst: 3, now: () => now });
    assert.deepEqual([bucket.when('a'), bucket.when('b'), bucket.when('c')], [0, 0, 0]);
    assert.equal(bucket.when('d'), 100);
    assert.equal(bucket.when('e'), 200);
    now = 10_000;
    assert.equal(bucket.when('f'), 0, 'refilled after a quiet period');
  });

  it('the default takes the longer of per-key backoff and the overall bucket', () => {
    const limiter = maxOf(exponentialBackoff({ baseDelayMs: 5, maxDelayMs: 300_000 }), tokenBucket({ perSecond: 10, burst: 2, now: () => 0 }));
    assert.equal(limiter.when('a'), 5);
    assert.equal(limiter.when('a'), 10);
    assert.equal(limiter.when('b'), 100, 'the bucket is empty: its wait is longer than b’s first backoff');
    assert.equal(limiter.retries('a'), 2);
    limiter.forget('a');
    assert.equal(limiter.retries('a'), 0);
    assert.equal(defaultControllerRateLimiter().when('x'), 5);
  });
});

describe('WorkQueue', () => {
  let queue: WorkQueue;
  afterEach(() => queue.shutDown());

  it('hands out a key added many times while waiting once', async () => {
    queue = new WorkQueue({ name: 'test' });
    for (let i = 0; i < 5; i++) queue.add('ns/a');
    queue.add('ns/b');
    assert.equal(queue.len(), 2);
    assert.equal(await queue.get(), 'ns/a');
    assert.equal(await queue.get(), 'ns/b');
    await assertStaysEmpty(queue, 50);
  });

  it('never hands a held key to a second worker, and re-queues it after done when added meanwhile', async () => {
    queue = new WorkQueue({ name: 'test' });
    queue.add('k');
    assert.equal(await queue.get(), 'k');
    queue.add('k');
    queue.add('k');
    assert.equal(queue.len(), 0, 'a held key does not enter the line');
    await assertStaysEmpty(queue, 50);
    const waiting = queue.get();
    queue.done('k');
    assert.equal(await waiting, 'k', 'added while held: processed again, once');
    queue.done('k');
    await assertStaysEmpty(queue, 50);
  });

  it('keeps one worker per key under concurrent workers and random adds', async () => {
    queue = new WorkQueue({ name: 'test' });
    const keys = ['a', 'b', 'c', 'd'];
    const held = new Set<string>();
    let processed = 0;
    const worker = async (): Promise<void> => {
      for (let key = await queue.get(); key !== undefined; key = await queue.get()) {
        assert.ok(!held.has(key), `${key} held by two workers`);
        held.add(key);
        await sleep(Math.random() * 3);
        held.delete(key);
        processed++;
        queue.done(key);
      }
    };
    const workers = Array.from({ length: 4 }, worker);
    for (let i = 0; i < 300; i++) {
      queue.add(keys[i % keys.length] ?? 'a');
      if (i % 7 === 0) await sleep(1);
    }
    await queue.shutDownWithDrain();
    await Promise.all(workers);
    assert.ok(processed >= keys.length && processed <= 300, `processed ${processed}`);
  });

  it('addAfter: the earliest due time wins, and the key comes once', async () => {
    queue = new WorkQueue({ name: 'test' });
    queue.addAfter('late-then-early', 60_000);
    queue.addAfter('late-then-early', 20);
    assert.equal(await getWithin(queue, 10_000), 'late-then-early');
    queue.done('late-then-early');

    queue.addAfter('early-then-late', 20);
    queue.addAfter('early-then-late', 60_000);
    assert.equal(await getWithin(queue, 10_000), 'early-then-late');
    queue.done('early-then-late');
    await assertStaysEmpty(queue, 100); // the later due time was dropped, not kept as a second add
  });

  it('addAfter beyond the longest setTimeout (24.8 days) still waits', async () => {
    queue = new WorkQueue({ name: 'test' });
    queue.addAfter('next-rotation', 90 * 24 * 3600 * 1000);
    await assertStaysEmpty(queue, 50);
  });

  it('addAfter with no delay adds at once', async () => {
    queue = new WorkQueue({ name: 'test' });
    queue.addAfter('now', 0);
    assert.equal(queue.len(), 1);
    assert.equal(await queue.get(), 'now');
  });

  it('addRateLimited waits the growing backoff; forget resets it', async () => {
    const asked: number[] = [];
    const backoff = exponentialBackoff({ baseDelayMs: 1, maxDelayMs: 8 });
    queue = new WorkQueue({
      name: 'test',
      rateLimiter: { ...backoff, when: (key) => { const ms = backoff.when(key); asked.push(ms); return ms; } },
    });
    for (let i = 0; i < 5; i++) {
      queue.addRateLimited('k');
      assert.equal(await getWithin(queue, 10_000), 'k');
      queue.done('k');
    }
    assert.deepEqual(asked, [1, 2, 4, 8, 8]);
    assert.equal(queue.numRequeues('k'), 5);
    queue.forget('k');
    assert.equal(queue.numRequeues('k'), 0);
    queue.addRateLimited('k');
    assert.equal(asked.at(-1), 1);
  });

  it('shutDown unblocks get(), drops waiting keys and ignores new ones', async () => {
    queue = new WorkQueue({ name: 'test' });
    const blocked = [queue.get(), queue.get()];
    queue.addAfter('delayed', 60_000);
    queue.shutDown();
    assert.deepEqual(await Promise.all(blocked), [undefined, undefined]);
    queue.add('late');
    queue.addRateLimited('late');
    assert.equal(queue.len(), 0);
    assert.equal(await queue.get(), undefined);
    assert.ok(queue.isShuttingDown);
  });

  it('shutDownWithDrain waits for held keys to be done', async () => {
    queue = new WorkQueue({ name: 'test' });
    queue.add('a');
    queue.add('b');
    assert.equal(await queue.get(), 'a');
    let drained = false;
    const draining = queue.shutDownWithDrain().then(() => (drained = true));
    assert.equal(await queue.get(), undefined, 'b was waiting: dropped');
    await sleep(20);
    assert.equal(drained, false, 'a is still held');
    queue.done('a');
    await draining;
    assert.equal(drained, true);
    await queue.shutDownWithDrain();
  });

  it('reports depth, adds, retries and durations on the registry it is given, per queue name', async () => {
    const registry = new Registry();
    queue = new WorkQueue({ name: 'keyrings', registry, rateLimiter: exponentialBackoff({ baseDelayMs: 1 }) });
    const other = new WorkQueue({ name: 'keypolicies', registry });
    queue.add('a');
    queue.add('a');
    queue.add('b');
    other.add('x');
    const key = await queue.get();
    assert.equal(key, 'a');
    queue.addRateLimited('a');
    queue.done('a');
    const text = await registry.metrics();
    other.shutDown();
    assert.match(text, /keyward_workqueue_depth\{name="keyrings"\} 1/);
    assert.match(text, /keyward_workqueue_depth\{name="keypolicies"\} 1/);
    assert.match(text, /keyward_workqueue_adds_total\{name="keyrings"\} 2/);
    assert.match(text, /keyward_workqueue_retries_total\{name="keyrings"\} 1/);
    assert.match(text, /keyward_workqueue_work_duration_seconds_count\{name="keyrings"\} 1/);
    assert.match(text, /keyward_workqueue_queue_duration_seconds_count\{name="keyrings"\} 1/);
    assert.doesNotMatch(text, /key="?a"?/, 'keys never become labels');
  });

  it('reports at scrape time how long the keys in progress have run, and 0 once they are done', async () => {
    const registry = new Registry();
    queue = new WorkQueue({ name: 'keyrings', registry });
    const read = async (metric: string): Promise<number> => Number(new RegExp(`^${metric}\\{name="keyrings"\\} (\\S+)$`, 'm').exec(await registry.metrics())?.[1]);
    queue.add('a');
    queue.add('b');
    await queue.get();
    await sleep(60);
    await queue.get();
    const longest = await read('keyward_workqueue_longest_running_processor_seconds');
    const unfinished = await read('keyward_workqueue_unfinished_work_seconds');
    assert.ok(longest >= 0.05, `the oldest key has run 60 ms: ${longest}`);
    assert.ok(unfinished >= longest && unfinished < longest * 2, `the sum of both: ${unfinished}`);
    await sleep(40);
    assert.ok((await read('keyward_workqueue_longest_running_processor_seconds')) >= longest + 0.03, 'it grows between scrapes');
    queue.done('a');
    queue.done('b');
    assert.equal(await read('keyward_workqueue_longest_running_processor_seconds'), 0);
    assert.equal(await read('keyward_workqueue_unfinished_work_seconds'), 0);
    queue.shutDown();
    assert.equal(await read('keyward_workqueue_unfinished_work_seconds'), 0, 'a name whose queue is gone reads 0');
  });
});
