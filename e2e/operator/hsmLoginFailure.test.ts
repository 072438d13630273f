// An operator whose HSM refuses it (a wrong PIN) keeps running and says so on every KeyRing,
// Ready=False with a reason, retrying with backoff; it creates nothing meanwhile.
import assert from 'node:assert/strict';
import { CustomObjectsApi } from '@kubernetes/client-node';
import { HsmToken } from '../../core/hsm/hsmToken.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { createAuditLog } from '../../core/audit/auditLog.js';
import { createLogger } from '../../core/observability/logger.js';
import { keyRingResource, type KeyRing } from '../../core/api/keyRing.js';
import { startOperator, type Operator } from '../../operator/operator.js';
import { eventually } from '../../testbed/eventually.js';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { installCrds } from './crds.js';

describe('KeyRing operator with an HSM that refuses its PIN', function () {
  this.timeout(120_000);
  let cp: ControlPlane;
  let softhsm: SoftHsmToken;
  let operator: Operator;

  before(async function () {
    this.timeout(300_000);
    cp = await startControlPlane();
    await installCrds(cp.kubeConfig);
    softhsm = createSoftHsmToken();
    process.env.SOFTHSM2_CONF = softhsm.configPath;
    operator = await startOperator(
      {
        kubeConfig: cp.kubeConfig,
        modulePath: softhsm.modulePath,
        tokenLabel: softhsm.label,
        pin: `${softhsm.pin}-wrong`,
        leaseNamespace: 'default',
        identity: 'wrong-pin',
        leaseDurationMs: 4000,
        renewDeadlineMs: 2700,
        retryPeriodMs: 500,
        audit: createAuditLog('operator', '/dev/null'),
      },
      createLogger('operator', 'fatal'),
    );
  });
  after(async () => {
    await operator?.stop();
    softhsm?.remove();
    await cp?.stop();
  });

  it('reports Ready=False with reason HsmLoginFailed and generates nothing', async () => {
    const objects = cp.kubeConfig.makeApiClient(CustomObjectsApi);
    await objects.createNamespacedCustomObject({
      ...keyRingResource,
      namespace: 'default',
      body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name: 'locked-out' }, spec: { purpose: 'encryption' } },
    });
    const ready = await eventually('a Ready condition', 30_000, async () => {
      const kr = (await objects.getNamespacedCustomObject({ ...keyRingResource, namespace: 'default', name: 'locked-out' })) as KeyRing;
      return kr.status?.conditions?.find((c) => c.type === 'Ready');
    });
    assert.equal(ready.status, 'False');
    assert.equal(ready.reason, 'HsmLoginFailed');
    assert.match(ready.message, /wrong PIN/);
    assert.ok(!ready.message.includes(softhsm.pin), 'the PIN is never echoed');

    // The health check names the PKCS#11 code: what an alert on a failing login keys on.
    const metrics = await (await fetch(`http://${operator.metricsAddress}/metrics`)).text();
    assert.match(metrics, /^keyward_hsm_up 0$/m);
    assert.match(metrics, /^keyward_hsm_errors_total\{operation="check",code="CKR_PIN_INCORRECT"\} [1-9]/m);
    assert.match(metrics, /^keyward_keyring_ready\{namespace="default",keyring="locked-out"\} 0$/m);

    const admin = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.pin });
    try {
      assert.deepEqual(await new RingStore(admin).list(), [], 'no ring was written');
    } finally {
      admin.close();
    }
  });
});
