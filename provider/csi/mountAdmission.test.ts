// The provider's admission by request bytes in flight (mountService.ts mountAdmission), with the
// real audit log and metrics: what is let in, what is refused and how, and that bytes come back.
// The whole path, through the gRPC server and the provider's process, runs in e2e/csi.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createAuditLog } from '../../core/audit/auditLog.js';
import { createLogger } from '../../core/observability/logger.js';
import { CsiMetrics } from './csiMetrics.js';
import { mountAdmission } from './mountService.js';

describe('CSI admission by request bytes in flight', () => {
  let dir: string;
  let auditFile: string;
  let metrics: CsiMetrics;
  let admit: ReturnType<typeof mountAdmission>;
  const mountPath = '/v1alpha1.CSIDriverProvider/Mount';

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'keyward-admission-'));
    auditFile = join(dir, 'audit.jsonl');
    metrics = new CsiMetrics();
    admit = mountAdmission({ audit: createAuditLog('csi-provider', auditFile), metrics, log: createLogger('csi-provider', 'silent'), maxInFlightBytes: 1000 });
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const inFlight = async (): Promise<number> => (await metrics.inFlightBytes.get()).values[0]?.value ?? -1;

  it('admits within the budget, refuses past it with Overloaded, audited and counted, and takes back what is released', async () => {
    const first = admit(mountPath, 600);
    const second = admit(mountPath, 400);
    assert.equal(typeof first, 'function');
    assert.equal(typeof second, 'function');
    assert.equal(await inFlight(), 1000);
    const refused = admit(mountPath, 1);
    assert.equal(typeof refused, 'string');
    assert.match(refused as string, /^Overloaded: the provider holds 1000 request bytes and this request has 1; the budget is 1000/);
    (first as () => void)();
    (first as () => void)();
    assert.equal(await inFlight(), 400, 'released once, however often called');
    assert.equal(typeof admit(mountPath, 600), 'function');
    await new Promise((resolve) => setTimeout(resolve, 50));
    const audit = readFileSync(auditFile, 'utf8');
    assert.match(audit, /"operation":"mount","result":"failed","code":"Overloaded"/);
    assert.match(await metrics.registry.metrics(), /keyward_csi_mounts_total\{result="failed",code="Overloaded"\} 1/);
  });

  it('always lets one call in, so a request larger than the budget is still served when alone', () => {
    const alone = admit(mountPath, 5000);
    assert.equal(typeof alone, 'function');
    assert.equal(typeof admit(mountPath, 10), 'string', 'nothing else while it holds more than the budget');
    (alone as () => void)();
    assert.equal(typeof admit(mountPath, 10), 'function');
  });
});
