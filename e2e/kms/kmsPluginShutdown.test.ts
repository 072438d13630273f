// SIGTERM on the plugin process while kube-apiserver-like load runs on one connection: calls in
// flight finish, later ones are refused as UNAVAILABLE (which the apiserver retries), the audit
// holds one record per answered call, and the socket is gone when the process exits 0.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status as grpcStatus } from '@grpc/grpc-js';
import { grpcClient } from '../../testbed/grpcClient.js';
import { HsmToken } from '../../core/hsm/hsmToken.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { KeyManagementService } from '../../proto/gen/kms/v2/api_pb.js';
import { startKmsPluginProcess, type KmsPluginProcess } from './kmsPluginProcess.js';

describe('KMS plugin graceful shutdown', function () {
  this.timeout(120_000);
  let dir: string;
  let hsm: SoftHsmToken;
  let plugin: KmsPluginProcess;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keyward-e2e-drain-'));
    hsm = createSoftHsmToken({ parentDir: dir });
    process.env.SOFTHSM2_CONF = hsm.configPath;
    const admin = HsmToken.open({ modulePath: hsm.modulePath, tokenLabel: hsm.label, pin: hsm.pin });
    try {
      await new RingStore(admin).create({ name: 'drain' });
    } finally {
      admin.close();
    }
    plugin = await startKmsPluginProcess({ hsm, ringName: 'drain', dir });
  });
  after(async () => {
    await plugin?.process.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('drains in-flight calls on SIGTERM, audits every answered call, removes its socket and exits 0 [practice:audit]', async () => {
    const kms = grpcClient(KeyManagementService, `unix:${plugin.socketPath}`);
    const outcomes: string[] = [];
    let exited = false;
    void plugin.process.exitedPromise().then(() => (exited = true));
    const worker = async (w: number): Promise<void> => {
      for (let i = 0; !exited; i++) {
        try {
          await kms.encrypt({ plaintext: Buffer.from(`dek-${w}-${i}`), uid: `drain-${w}-${i}` });
          outcomes.push('OK');
        } catch (err) {
          outcomes.push(grpcStatus[(err as { code: number }).code] ?? 'UNKNOWN');
          if (exited) break;
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
      }
    };
    const load = Promise.all(Array.from({ length: 16 }, (_, w) => worker(w)));
    await new Promise((resolve) => setTimeout(resolve, 500));
    const answeredBefore = outcomes.length;
    process.kill(plugin.process.pid ?? 0, 'SIGTERM');
    await plugin.process.exitedPromise();
    await load;
    kms.close();

    assert.ok(answeredBefore > 0, 'load was running when the signal came');
    assert.deepEqual(plugin.process.exitStatus, { code: 0, signal: null }, 'a clean exit');
    const unexpected = outcomes.filter((o) => o !== 'OK' && o !== 'UNAVAILABLE');
    assert.deepEqual(unexpected, [], 'no call was cut off mid-flight (CANCELLED, INTERNAL, UNKNOWN)');
    const ok = outcomes.filter((o) => o === 'OK').length;
    const audited = readFileSync(plugin.auditFile, 'utf8').trim().split('\n').map((line) => JSON.parse(line) as { operation: string; result: string });
    assert.equal(audited.filter((r) => r.operation === 'encrypt' && r.result === 'allowed').length, ok, 'one audit record per answered Encrypt, none lost at exit');
    assert.equal(existsSync(plugin.socketPath), false, 'the socket is removed');
  });
});
