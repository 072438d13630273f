// The KMS plugin's /metrics after real calls over its socket: every call is measured (a
// keyward_kms_request_duration_seconds observation per call, by method), and no label carries
// anything a call handled. How fast the calls are is for `npm run bench:kms`, not for a test.
import { status as grpcStatus } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { HsmToken } from '../../core/hsm/hsmToken.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { KeyManagementService } from '../../proto/gen/kms/v2/api_pb.js';
import { grpcClient, type UnaryClient } from '../../testbed/grpcClient.js';
import { oneOf, scrape, secretsInLabels, total, unboundedLabels } from '../../testbed/metricsText.js';
import { startKmsPlugin, type KmsPlugin } from './kmsPlugin.js';

type Kms = UnaryClient<(typeof KeyManagementService)['method']>;

const grpcCodeNames = Object.keys(grpcStatus).filter((k) => Number.isNaN(Number(k)));

describe('KMS plugin metrics over a real SoftHSM2 token', function () {
  this.timeout(60_000);
  let softhsm: SoftHsmToken;
  let admin: HsmToken;
  let plugin: KmsPlugin;
  let kms: Kms;
  let dir: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keyward-kms-metrics-'));
    softhsm = createSoftHsmToken();
    process.env.SOFTHSM2_CONF = softhsm.configPath;
    admin = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.pin });
    await new RingStore(admin).create({ name: 'etcd-secrets-k4v', namespace: 'kube-system' });
    plugin = await startKmsPlugin(
      {
        socketPath: join(dir, 'kms.sock'),
        modulePath: softhsm.modulePath,
        tokenLabel: softhsm.label,
        pin: softhsm.pin,
        ring: { name: 'etcd-secrets-k4v', namespace: 'kube-system' },
        auditLog: join(dir, 'audit.log'),
      },
      pino({ level: 'silent' }),
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

  const durationCount = async (method: string): Promise<number> => total(await scrape(plugin.metricsAddress), 'keyward_kms_request_duration_seconds_count', { method });

  it('observes keyward_kms_request_duration_seconds once per Status, Encrypt and Decrypt call, refused calls included [practice:latency]', async () => {
    const before = { status: await durationCount('status'), encrypt: await durationCount('encrypt'), decrypt: await durationCount('decrypt') };
    for (let i = 0; i < 3; i++) await kms.status({});
    const sealed = [];
    for (let i = 0; i < 5; i++) sealed.push(await kms.encrypt({ plaintext: Buffer.from(`dek-seed-${i}`), uid: `e-${i}` }));
    for (const enc of sealed.slice(0, 4)) await kms.decrypt({ ciphertext: enc.ciphertext, keyId: enc.keyId, annotations: enc.annotations, uid: 'd' });
    await assert.rejects(kms.decrypt({ ciphertext: Buffer.alloc(0), keyId: sealed[0]!.keyId, annotations: {}, uid: 'refused' }));

    const samples = await scrape(plugin.metricsAddress);
    const count = (method: string): number => total(samples, 'keyward_kms_request_duration_seconds_count', { method });
    assert.deepEqual(
      { status: count('status') - before.status, encrypt: count('encrypt') - before.encrypt, decrypt: count('decrypt') - before.decrypt },
      { status: 3, encrypt: 5, decrypt: 5 },
    );
    // Each observation is a duration: the buckets hold them all and the sum is a real number.
    for (const method of ['status', 'encrypt', 'decrypt']) {
      assert.equal(total(samples, 'keyward_kms_request_duration_seconds_bucket', { method, le: '+Inf' }), count(method));
      const sum = total(samples, 'keyward_kms_request_duration_seconds_sum', { method });
      assert.ok(Number.isFinite(sum) && sum > 0, `${method}: sum ${sum}`);
    }
  });

  it('puts no plaintext, ciphertext or key id in any label; every keyward_* label value is from a bounded set [practice:no-sensitive-metadata]', async () => {
    const plaintext = Buffer.from('tenant-db-password-Zr8q-plaintext');
    const enc = await kms.encrypt({ plaintext, uid: 'uid-7c1e0d' });
    const dec = await kms.decrypt({ ciphertext: enc.ciphertext, keyId: enc.keyId, annotations: enc.annotations, uid: 'uid-7c1e0e' });
    assert.deepEqual(Buffer.from(dec.plaintext), plaintext);
    const tampered = Buffer.from(enc.ciphertext);
    tampered[tampered.length - 1]! ^= 1;
    await assert.rejects(kms.decrypt({ ciphertext: tampered, keyId: enc.keyId, annotations: enc.annotations, uid: 'uid-7c1e0f' }));

    const samples = await scrape(plugin.metricsAddress);
    const ciphertext = Buffer.from(enc.ciphertext);
    assert.deepEqual(
      secretsInLabels(samples, {
        plaintext: plaintext.toString('utf8'),
        'base64 plaintext': plaintext.toString('base64'),
        'base64 ciphertext': ciphertext.toString('base64'),
        'hex ciphertext': ciphertext.toString('hex'),
        'key id': enc.keyId,
        'request uid': 'uid-7c1e0',
      }),
      [],
    );
    assert.deepEqual(unboundedLabels(samples, { method: oneOf('status', 'encrypt', 'decrypt'), code: oneOf(...grpcCodeNames) }), []);
    assert.ok(total(samples, 'keyward_kms_requests_total', { method: 'decrypt', code: 'INVALID_ARGUMENT' }) >= 1, 'a refusal is counted by its code');
  });
});
