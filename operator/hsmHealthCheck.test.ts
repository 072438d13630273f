import assert from 'node:assert/strict';
import { readdirSync, renameSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createLogger } from '../core/observability/logger.js';
import { useSoftHsmToken } from '../testbed/hsm/softHsmFixture.js';
import { startHsmHealthCheck } from './hsmHealthCheck.js';
import { OperatorMetrics } from './operatorMetrics.js';

const log = createLogger('test', 'silent');

async function until(check: () => Promise<boolean>, what: string): Promise<void> {
  for (const deadline = Date.now() + 5000; !(await check()); await sleep(10)) if (Date.now() > deadline) assert.fail(`${what} within 5 s`);
}

describe('HSM health check', () => {
  const hsm = useSoftHsmToken();

  it('sets keyward_hsm_up to 1 while the check passes and 0 once it fails, counting the failure and recovering', async () => {
    const metrics = new OperatorMetrics();
    let failing = false;
    let recovered = 0;
    const check = startHsmHealthCheck({
      check: () => (failing ? Promise.reject(new Error('CKR_DEVICE_ERROR:48')) : hsm.token.check()),
      recover: () => recovered++,
      metrics,
      log,
      intervalMs: 20,
    });
    try {
      const up = async (): Promise<string | undefined> => /^keyward_hsm_up (\d)$/m.exec(await metrics.registry.metrics())?.[1];
      await until(async () => (await up()) === '1', 'up');
      failing = true;
      await until(async () => (await up()) === '0', 'down');
      assert.match(await metrics.registry.metrics(), /^keyward_hsm_errors_total\{operation="check",code="CKR_DEVICE_ERROR"\} [1-9]/m);
      assert.ok(recovered > 0, 'the pool is told to reconnect');
      failing = false;
      await until(async () => (await up()) === '1', 'up again');
    } finally {
      await check.stop();
    }
  });

  it("fails while the token's storage is gone (a logged-in session still answers from memory) and passes again after a recover once it is back", async () => {
    await hsm.token.check();
    const [uuid] = readdirSync(hsm.softhsm.tokenDir);
    const home = join(hsm.softhsm.tokenDir, uuid!);
    const away = join(dirname(hsm.softhsm.tokenDir), `${uuid}.away`);
    renameSync(home, away);
    try {
      await assert.rejects(hsm.token.check(), /CKR_/);
    } finally {
      renameSync(away, home);
    }
    hsm.token.recover();
    await hsm.token.check();
  });
});
