// Workers that take keys from a work queue and reconcile them, in controller-runtime's shape: a
// failure retries the key with backoff, a success clears its backoff, and a reconciler that wants
// to look again later (the next rotation, a destroy date) says so with requeueAfterMs.
import { KeywardError } from '../../core/errors.js';
import { createLogger, type Logger } from '../../core/observability/logger.js';
import type { WorkQueue } from './workQueue.js';

/** What a reconcile asks for; nothing means the object is settled until it changes. */
export type ReconcileResult = { requeueAfterMs?: number } | void;

/** Brings the object named by key (namespace/name) to its desired state; level-based and idempotent. */
export type Reconcile = (key: string) => Promise<ReconcileResult>;

export interface ControllerLoopOptions {
  name: string;
  queue: WorkQueue;
  reconcile: Reconcile;
  /** Keys reconciled at once; one key is never reconciled by two workers. Default 1. */
  workers?: number;
  logger?: Logger;
}

export interface ControllerLoop {
  readonly name: string;
  /** Shuts the queue down and resolves once every in-flight reconcile has finished. */
  stop(): Promise<void>;
}

export function startControllerLoop(options: ControllerLoopOptions): ControllerLoop {
  const { name, queue, reconcile } = options;
  const workers = options.workers ?? 1;
  if (!Number.isInteger(workers) || workers < 1) throw new KeywardError('InvalidArgument', `controller '${name}': workers must be a whole number ≥ 1, got ${workers}`);
  const log = (options.logger ?? createLogger('operator')).child({ controller: name });

  const reconcileKey = async (key: string): Promise<void> => {
    let result: ReconcileResult;
    try {
      result = await reconcile(key);
    } catch (err) {
      queue.addRateLimited(key);
      log.error({ key, err, retries: queue.numRequeues(key) }, 'reconcile failed; retrying with backoff');
      return;
    }
    queue.forget(key);
    const after = result?.requeueAfterMs;
    if (after !== undefined && after > 0) queue.addAfter(key, after);
  };

  const work = async (): Promise<void> => {
    for (let key = await queue.get(); key !== undefined; key = await queue.get()) {
      try {
        await reconcileKey(key);
      } finally {
        queue.done(key);
      }
    }
  };

  log.info({ workers }, 'controller started');
  const running = Promise.all(Array.from({ length: workers }, work));
  return {
    name,
    stop: async () => {
      await queue.shutDownWithDrain();
      await running;
      log.info('controller stopped');
    },
  };
}
