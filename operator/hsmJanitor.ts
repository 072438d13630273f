// The leader's periodic pass over the whole HSM: destroys the due versions of rings whose KeyRing
// is gone (deleted with deletionPolicy Destroy), counts rings and versions by state, and reports
// Keyward keys that no ring accounts for. It never deletes anything it cannot account for.
import type { Logger } from '../core/observability/logger.js';
import type { RingStore } from '../core/hsm/ringStore.js';
import type { OperatorMetrics } from './operatorMetrics.js';

export interface HsmJanitorOptions {
  store: RingStore;
  metrics: OperatorMetrics;
  log: Logger;
  intervalMs: number;
  now: () => Date;
  /** Ring ids owned by live KeyRings (their reconcilers handle destruction). */
  ownedRingIds: () => Set<string>;
}

export function startHsmJanitor(options: HsmJanitorOptions): { stop(): Promise<void> } {
  const { store, metrics, log } = options;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let pass: Promise<void> = Promise.resolve();

  const runPass = async (): Promise<void> => {
    try {
      // Every full listing searches the whole token (O(objects) in SoftHSM2): list again only if needed.
      let rings = await store.list();
      let destroyed = 0;
      const owned = options.ownedRingIds();
      for (const ring of rings) {
        if (owned.has(ring.ringId)) continue;
        for (const { version } of await metrics.hsm('destroy', () => store.destroyDue(options.now(), ring.ringId))) {
          log.info({ ringId: ring.ringId, version }, 'key material of a deleted KeyRing destroyed');
          destroyed++;
        }
      }
      const orphans = await store.orphanKeys();
      for (const orphan of orphans) log.warn(orphan, 'Keyward key in the HSM that no ring accounts for; left in place');
      if (destroyed > 0) rings = await store.list();
      metrics.observeInventory(rings, orphans.length);
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'HSM janitor pass failed; trying again next interval');
    }
  };

  const schedule = (): void => {
    if (stopped) return;
    timer = setTimeout(() => {
      pass = runPass().finally(schedule);
    }, options.intervalMs);
  };
  pass = runPass().finally(schedule);

  return {
    stop: async () => {
      stopped = true;
      clearTimeout(timer);
      await pass;
    },
  };
}
