// A periodic HSM health check on every operator replica, leader or not: a logged-in session must
// answer. It feeds keyward_hsm_up and keyward_hsm_errors_total{operation="check"}, so an
// unreachable HSM or a rejected PIN shows before any KeyRing needs a reconcile, and a standby shows
// whether it could take over.
import type { Logger } from '../core/observability/logger.js';
import { pkcs11CodeName } from '../core/hsm/hsmToken.js';
import type { OperatorMetrics } from './operatorMetrics.js';

export interface HsmHealthCheckOptions {
  /** One round trip to the token (HsmToken.check). */
  check: () => Promise<void>;
  /** After a failure, so the next check reconnects (HsmToken.recover). */
  recover: () => void;
  metrics: OperatorMetrics;
  log: Logger;
  intervalMs: number;
}

export function startHsmHealthCheck(options: HsmHealthCheckOptions): { stop(): Promise<void> } {
  const { metrics, log } = options;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let healthy: boolean | undefined;

  const runCheck = async (): Promise<void> => {
    try {
      await options.check();
      metrics.hsmUp.set(1);
      if (healthy === false) log.info('HSM health check passes again');
      healthy = true;
    } catch (err) {
      metrics.hsmUp.set(0);
      metrics.hsmFailed('check', err);
      if (healthy !== false) log.warn({ code: pkcs11CodeName(err), err: (err as Error).message }, 'HSM health check failed');
      healthy = false;
      options.recover();
    }
  };

  let pass = runCheck();
  const schedule = (): void => {
    if (stopped) return;
    timer = setTimeout(() => {
      pass = runCheck().finally(schedule);
    }, options.intervalMs);
  };
  void pass.finally(schedule);

  return {
    stop: async () => {
      stopped = true;
      clearTimeout(timer);
      await pass;
    },
  };
}
