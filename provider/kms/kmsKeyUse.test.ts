import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { HsmRecords } from '../../core/hsm/hsmRecords.js';
import { HsmToken } from '../../core/hsm/hsmToken.js';
import type { RingState } from '../../core/hsm/ringState.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { KeyUseRecords, type KeyUseRecord } from '../../core/keyUse/keyUseRecords.js';
import { KeyManagementService } from '../../proto/gen/kms/v2/api_pb.js';
import { eventually } from '../../testbed/eventually.js';
import { grpcClient, type UnaryClient } from '../../testbed/grpcClient.js';
import { startKmsPlugin, type KmsPlugin } from './kmsPlugin.js';

describe('KMS v2 plugin key-use records, over a real SoftHSM2 token', function () {
  this.timeout(60_000);
  let softhsm: SoftHsmToken;
  let admin: HsmToken;
  let store: RingStore;
  let records: KeyUseRecords;
  let ring: RingState;
  let plugin: KmsPlugin;
  let kms: UnaryClient<(typeof KeyManagementService)['method']>;
  let dir: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keyward-kms-keyuse-'));
    softhsm = createSoftHsmToken();
    process.env.SOFTHSM2_CONF = softhsm.configPath;
    admin = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.pin });
    store = new RingStore(admin);
    records = new KeyUseRecords(new HsmRecords(admin));
    ring = await store.create({ name: 'apps', namespace: 'kube-system' });
    plugin = await startKmsPlugin(
      {
        socketPath: join(dir, 'kms.sock'),
        modulePath: softhsm.modulePath,
        tokenLabel: softhsm.label,
        pin: softhsm.pin,
        ring: { name: 'apps', namespace: 'kube-system' },
        auditLog: join(dir, 'audit.log'),
        refreshMs: 200,
        nodeName: 'cp-1',
      },
      pino(pino.destination({ dest: join(dir, 'plugin.log'), sync: true })),
    );
    kms = grpcClient(KeyManagementService, `unix:${plugin.socketPath}`);
  });

  after(async () => {
    kms?.close();
    await plugin?.stop();
    admin?.close();
    softhsm?.remove();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** The plugin's record of the ring, as the operator reads it from the HSM (another session, as another process would). */
  const pluginRecord = async (): Promise<KeyUseRecord | undefined> => (await records.uses(ring.ringId)).find((r) => r.component === 'kms-plugin');

  it('records the Status key id, and when each version last encrypted and decrypted, under kms-plugin@<node>', async () => {
    const keyId = ring.versions[0]!.keyId;
    const before = new Date().toISOString();
    const enc = await kms.encrypt({ plaintext: Buffer.from('a DEK seed, as it were'), uid: 'e1' });
    await kms.decrypt({ ciphertext: enc.ciphertext, keyId: enc.keyId, annotations: enc.annotations, uid: 'd1' });
    assert.equal((await kms.status({})).keyId, keyId);
    // Status's new key id makes the write prompt; the record carries the decrypt with it.
    const record = await eventually('the record with Status, Encrypt and Decrypt', 5000, async () => {
      const r = await pluginRecord();
      return r?.statusKeyId && r.versions[keyId]?.lastDecryptAt ? r : undefined;
    });
    assert.equal(record.host, 'cp-1');
    assert.equal(record.statusKeyId, keyId);
    const v1 = record.versions[keyId]!;
    for (const [what, at] of Object.entries({ lastStatusAt: record.lastStatusAt, lastEncryptAt: v1.lastEncryptAt, lastDecryptAt: v1.lastDecryptAt })) {
      assert.ok(at && at >= before && at <= new Date().toISOString(), `${what} ${at} is a time of this test`);
    }
    assert.deepEqual(Object.keys(record.versions), [keyId], 'only the version used');
    const stored = await new HsmRecords(admin).list('usage', ring.ringId);
    assert.deepEqual(stored.map((s) => s.writer), ['kms-plugin@cp-1']);
  });

  it('shows a new key id within 2 s of a rotation, without waiting for the 15 s flush', async () => {
    const old = ring.versions[0]!.keyId;
    const rotated = await store.rotate({ ringId: ring.ringId });
    const newKeyId = rotated.versions.at(-1)!.keyId;
    await eventually('the rotation reaching the plugin', 10_000, () => (plugin.view.snapshot()?.primary.version.keyId === newKeyId ? true : undefined));
    const enc = await kms.encrypt({ plaintext: Buffer.from('a new seed'), uid: 'e2' });
    assert.equal(enc.keyId, newKeyId);
    const record = await eventually('the new key id in the record', 2000, async () => {
      const r = await pluginRecord();
      return r?.versions[newKeyId]?.lastEncryptAt ? r : undefined;
    }, 50);
    assert.ok(record.versions[old]?.lastEncryptAt, 'the old version keeps its last encrypt time');
    assert.ok(record.versions[newKeyId]!.lastEncryptAt! > record.versions[old].lastEncryptAt);
    // Status moving to the new key id is what tells the operator kube-apiserver may switch.
    assert.equal((await kms.status({})).keyId, newKeyId);
    await eventually('the new Status key id in the record', 2000, async () => ((await pluginRecord())?.statusKeyId === newKeyId ? true : undefined), 50);
  });

  it('counts nothing for a refused call, and writes its last uses when it stops', async () => {
    const current = (await store.get({ ringId: ring.ringId }))!;
    const old = current.versions.find((v) => v.number !== current.primary)!;
    const oldDecryptAt = (await pluginRecord())?.versions[old.keyId]?.lastDecryptAt;
    assert.ok(oldDecryptAt, 'decrypted in the first test');
    await assert.rejects(kms.decrypt({ ciphertext: Buffer.alloc(66, 1), keyId: old.keyId, annotations: {}, uid: 'bad' }));
    const enc = await kms.encrypt({ plaintext: Buffer.from('seed'), uid: 'e3' });
    const beforeDecrypt = new Date().toISOString();
    await kms.decrypt({ ciphertext: enc.ciphertext, keyId: enc.keyId, annotations: enc.annotations, uid: 'd3' });
    await plugin.stop();
    const record = (await pluginRecord())!;
    assert.ok(record.versions[enc.keyId]!.lastDecryptAt! >= beforeDecrypt, 'the decrypt just before stop is written');
    assert.equal(record.versions[old.keyId]?.lastDecryptAt, oldDecryptAt, 'the refused decrypt under the old version is no use of it');
    const metrics = await fetch(`http://${plugin.metricsAddress}/metrics`).catch(() => undefined);
    assert.equal(metrics, undefined, 'stopped');
  });
});
