import { status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { get as httpsGet } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { grpcClient, type UnaryClient } from '../../testbed/grpcClient.js';
import { HsmToken } from '../../core/hsm/hsmToken.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import { keyIdFor, type RingState } from '../../core/hsm/ringState.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { KeyManagementService } from '../../proto/gen/kms/v2/api_pb.js';
import { eventually } from '../../testbed/eventually.js';
import { createPki, issueClientCertificate, issueServingCertificate } from '../../testbed/control-plane/pki.js';
import { startKmsPlugin, type KmsPlugin } from './kmsPlugin.js';
import { formatAnnotation } from './kmsService.js';

type Kms = UnaryClient<(typeof KeyManagementService)['method']>;

async function rejectsWith(promise: Promise<unknown>, code: status, message: RegExp): Promise<void> {
  await assert.rejects(promise, (err: { code: number; details: string }) => {
    assert.equal(err.code, code, `expected ${status[code]}, got ${status[err.code]}: ${err.details}`);
    assert.match(err.details, message);
    return true;
  });
}

describe('KMS v2 plugin over a real SoftHSM2 token', function () {
  this.timeout(60_000);
  let softhsm: SoftHsmToken;
  let admin: HsmToken;
  let store: RingStore;
  let ring: RingState;
  let plugin: KmsPlugin;
  let kms: Kms;
  let dir: string;
  const secrets: Buffer[] = [];
  const secret = (): Buffer => {
    const value = Buffer.from(`plaintext-${randomBytes(12).toString('hex')}`);
    secrets.push(value);
    return value;
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keyward-kms-test-'));
    softhsm = createSoftHsmToken();
    process.env.SOFTHSM2_CONF = softhsm.configPath;
    admin = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.pin });
    store = new RingStore(admin);
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

  it('serves on a 0600 unix socket and reports v2, ok and the primary key id [practice:secure-transport]', async () => {
    assert.equal(statSync(plugin.socketPath).mode & 0o777, 0o600);
    const s = await kms.status({});
    assert.deepEqual({ version: s.version, healthz: s.healthz, keyId: s.keyId }, { version: 'v2', healthz: 'ok', keyId: ring.versions[0]?.keyId });
    assert.ok(s.keyId.length <= 1024 && /^[\x21-\x7e]+$/.test(s.keyId), 'key id is printable ASCII');
  });

  it('encrypts under the Status key id and decrypts back, within the apiserver limits', async () => {
    const { keyId } = await kms.status({});
    const plaintext = secret();
    const enc = await kms.encrypt({ plaintext, uid: 'u-1' });
    assert.equal(enc.keyId, keyId);
    assert.ok(enc.ciphertext.length <= 1024);
    assert.ok(!Buffer.from(enc.ciphertext).includes(plaintext), 'no plaintext in the ciphertext');
    assert.equal(enc.ciphertext[0], 1, 'format version 1');
    assert.equal(enc.ciphertext[1], 1, 'algorithm AES-256-GCM');
    for (const key of Object.keys(enc.annotations)) assert.match(key, /^[a-z0-9-]+(\.[a-z0-9-]+)+$/);
    const dec = await kms.decrypt({ ciphertext: enc.ciphertext, keyId: enc.keyId, annotations: enc.annotations, uid: 'u-2' });
    assert.deepEqual(Buffer.from(dec.plaintext), plaintext);
    const seed = randomBytes(32);
    const again = await kms.encrypt({ plaintext: seed, uid: 'u-3' });
    assert.equal(again.ciphertext.length, 32 + 34, 'a 32-byte DEK seed makes a 66-byte ciphertext');
  });

  it('refuses bad input with precise status codes', async () => {
    const enc = await kms.encrypt({ plaintext: secret(), uid: 'bad-input' });
    const good = { ciphertext: enc.ciphertext, keyId: enc.keyId, annotations: enc.annotations, uid: 'bad' };
    const tampered = Buffer.from(enc.ciphertext);
    tampered[tampered.length - 1]! ^= 0x01;
    const wrongVersion = Buffer.from(enc.ciphertext);
    wrongVersion.writeUInt32BE(2, 2);

    await rejectsWith(kms.encrypt({ plaintext: Buffer.alloc(0), uid: 'e' }), status.INVALID_ARGUMENT, /plaintext is empty/);
    await rejectsWith(kms.encrypt({ plaintext: Buffer.alloc(991), uid: 'e' }), status.INVALID_ARGUMENT, /plaintext is 991 bytes; the limit is 990/);
    await rejectsWith(kms.decrypt({ ...good, ciphertext: Buffer.alloc(0) }), status.INVALID_ARGUMENT, /ciphertext is empty/);
    await rejectsWith(kms.decrypt({ ...good, ciphertext: enc.ciphertext.subarray(0, 20) }), status.INVALID_ARGUMENT, /truncated/);
    await rejectsWith(kms.decrypt({ ...good, ciphertext: Buffer.alloc(1025, 1) }), status.INVALID_ARGUMENT, /1025 bytes; the limit is 1024/);
    await rejectsWith(kms.decrypt({ ...good, ciphertext: tampered }), status.INVALID_ARGUMENT, /failed authentication/);
    await rejectsWith(kms.decrypt({ ...good, ciphertext: wrongVersion }), status.INVALID_ARGUMENT, /made under key version 2/);
    await rejectsWith(kms.decrypt({ ...good, keyId: '' }), status.INVALID_ARGUMENT, /key_id is empty/);
    await rejectsWith(kms.decrypt({ ...good, keyId: 'not a key id' }), status.INVALID_ARGUMENT, /key_id is malformed/);
    await rejectsWith(kms.decrypt({ ...good, keyId: keyIdFor('another-ring', 1) }), status.NOT_FOUND, /names no version of this ring/);
    await rejectsWith(kms.decrypt({ ...good, annotations: { Bad_Key: Buffer.from('x') } }), status.INVALID_ARGUMENT, /not a lowercase fully-qualified/);
    await rejectsWith(kms.decrypt({ ...good, annotations: { 'a.example.com': Buffer.alloc(33 * 1024) } }), status.INVALID_ARGUMENT, /the limit is 32768/);
    await rejectsWith(kms.decrypt({ ...good, annotations: { [formatAnnotation]: Buffer.from('9') } }), status.INVALID_ARGUMENT, /unknown ciphertext format/);
    // Still serving after all of that.
    assert.deepEqual(Buffer.from((await kms.decrypt(good)).plaintext), secrets.at(-1));
  });

  it('picks up rotations without restart and keeps every enabled version decrypting [practice:rotation]', async () => {
    const before = await kms.encrypt({ plaintext: secret(), uid: 'r0' });
    const made = [{ enc: before, plaintext: secrets.at(-1)! }];
    for (let i = 0; i < 2; i++) {
      const rotated = await store.rotate({ ringId: ring.ringId });
      const newKeyId = rotated.versions.at(-1)!.keyId;
      await eventually(`rotation ${i + 1} reaching Status`, 10_000, async () => ((await kms.status({})).keyId === newKeyId ? true : undefined));
      const enc = await kms.encrypt({ plaintext: secret(), uid: `r${i + 1}` });
      assert.equal(enc.keyId, newKeyId, 'new writes carry the new key id');
      made.push({ enc, plaintext: secrets.at(-1)! });
    }
    assert.equal(new Set(made.map((m) => m.enc.keyId)).size, 3, 'three distinct key ids');
    for (const { enc, plaintext } of made) {
      const dec = await kms.decrypt({ ciphertext: enc.ciphertext, keyId: enc.keyId, annotations: enc.annotations, uid: 'r-dec' });
      assert.deepEqual(Buffer.from(dec.plaintext), plaintext);
    }
  });

  it('refuses a disabled version with FAILED_PRECONDITION and serves it again once re-enabled', async () => {
    const current = (await store.get({ ringId: ring.ringId }))!;
    const old = current.versions.find((v) => v.number !== current.primary)!;
    // A ciphertext under the old version, made by the plugin while that version was primary, is
    // not at hand; any ciphertext naming it is refused before the HSM is asked.
    const enc = await kms.encrypt({ plaintext: secret(), uid: 'd0' });
    const underOld = Buffer.from(enc.ciphertext);
    underOld.writeUInt32BE(old.number, 2);
    await store.setVersionState({ ringId: ring.ringId }, old.number, 'Disabled');
    await eventually('disable reaching the plugin', 10_000, () => (plugin.view.snapshot()?.byKeyId.get(old.keyId)?.version.state === 'Disabled' ? true : undefined));
    await rejectsWith(kms.decrypt({ ciphertext: underOld, keyId: old.keyId, annotations: {}, uid: 'd1' }), status.FAILED_PRECONDITION, /is Disabled; it may not decrypt/);
    await store.setVersionState({ ringId: ring.ringId }, old.number, 'Enabled');
    await eventually('re-enable reaching the plugin', 10_000, () => (plugin.view.snapshot()?.byKeyId.get(old.keyId)?.version.state === 'Enabled' ? true : undefined));
  });

  it('exposes metrics and a health endpoint that reflect real HSM checks', async () => {
    const metrics = await (await fetch(`http://${plugin.metricsAddress}/metrics`)).text();
    assert.match(metrics, /keyward_kms_requests_total\{method="encrypt",code="OK"\} [1-9]/);
    assert.match(metrics, /keyward_kms_requests_total\{method="decrypt",code="INVALID_ARGUMENT"\} [1-9]/);
    assert.match(metrics, /keyward_kms_hsm_up 1/);
    assert.match(metrics, /keyward_kms_primary_key_version 3/);
    assert.match(metrics, /keyward_kms_request_duration_seconds_bucket/);
    const created = Date.parse((await store.require({ name: 'apps', namespace: 'kube-system' })).versions.find((v) => v.number === 3)?.createdAt ?? '');
    assert.match(metrics, new RegExp(`^keyward_kms_primary_key_created_timestamp_seconds ${created / 1000}$`, 'm'));
    assert.match(metrics, /^process_resident_memory_bytes\{component="kms-plugin"\} /m, "Node's standard metrics, unprefixed");
    assert.doesNotMatch(metrics, /^keyward_kms_(process|nodejs)_/m);
    assert.equal((await fetch(`http://${plugin.metricsAddress}/healthz`)).status, 200);
    assert.equal((await fetch(`http://${plugin.metricsAddress}/livez`)).status, 200);
  });

  it('turns unhealthy with a reason during an HSM outage, keeps its key id, and recovers by itself [practice:continuity]', async () => {
    const { keyId } = await kms.status({});
    const away = `${softhsm.tokenDir}.away`;
    renameSync(softhsm.tokenDir, away);
    try {
      await eventually('the outage showing in Status', 10_000, async () => ((await kms.status({})).healthz !== 'ok' ? true : undefined));
      const during = await kms.status({});
      assert.equal(during.keyId, keyId, 'the last good key id is kept');
      assert.match(during.healthz, /HSM/);
      assert.equal((await fetch(`http://${plugin.metricsAddress}/healthz`)).status, 503);
      assert.match(await (await fetch(`http://${plugin.metricsAddress}/metrics`)).text(), /^keyward_kms_hsm_up 0$/m);
      await rejectsWith(kms.encrypt({ plaintext: secret(), uid: 'o1' }), status.UNAVAILABLE, /HSM|unavailable/i);
    } finally {
      renameSync(away, softhsm.tokenDir);
    }
    await eventually('recovery', 10_000, async () => ((await kms.status({})).healthz === 'ok' ? true : undefined));
    const enc = await kms.encrypt({ plaintext: secret(), uid: 'o2' });
    assert.equal(enc.keyId, keyId);
  });

  it('serves /metrics on a mutual-TLS listener as well when configured, health staying on the plain one', async () => {
    const pkiDir = join(dir, 'pki');
    mkdirSync(pkiDir);
    const pki = createPki(pkiDir);
    const serving = issueServingCertificate(pkiDir, 'metrics');
    const prometheus = issueClientCertificate(pkiDir, 'prometheus', 'prometheus');
    const withTls = await startKmsPlugin(
      {
        socketPath: join(dir, 'tls.sock'),
        modulePath: softhsm.modulePath,
        tokenLabel: softhsm.label,
        pin: softhsm.pin,
        ring: { name: 'apps', namespace: 'kube-system' },
        auditLog: join(dir, 'tls-audit.log'),
        metricsTls: { address: '127.0.0.1:0', certFile: serving.cert, keyFile: serving.key, clientCaFile: pki.caCert },
      },
      pino({ level: 'silent' }),
    );
    try {
      assert.ok(withTls.metricsTlsAddress);
      const port = Number(withTls.metricsTlsAddress.split(':')[1]);
      const scrape = await new Promise<string>((resolve, reject) => {
        const ca = readFileSync(pki.caCert);
        httpsGet({ host: '127.0.0.1', port, path: '/metrics', ca, cert: readFileSync(prometheus.cert), key: readFileSync(prometheus.key) }, (res) => {
          let text = '';
          res.on('data', (chunk: Buffer) => (text += chunk.toString()));
          res.on('end', () => resolve(text));
        }).on('error', reject);
      });
      assert.match(scrape, /^keyward_kms_hsm_up 1$/m);
      assert.equal((await fetch(`http://${withTls.metricsAddress}/healthz`)).status, 200, 'the probes keep the loopback listener');
    } finally {
      await withTls.stop();
    }
  });

  it('refuses a ring that is not an encryption ring: unhealthy, naming its purpose', async () => {
    await store.create({ name: 'release', namespace: 'kube-system', algorithm: 'ECDSA_P384' });
    const signing = await startKmsPlugin(
      { socketPath: join(dir, 'signing.sock'), modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.pin, ring: { name: 'release', namespace: 'kube-system' }, auditLog: join(dir, 'signing-audit.log') },
      pino({ level: 'silent' }),
    );
    try {
      assert.equal(signing.view.health().ok, false);
      assert.match(signing.view.health().reason, /ring 'kube-system\/release' has purpose signing \(ECDSA_P384\); the KMS plugin needs purpose encryption/);
    } finally {
      await signing.stop();
    }
  });

  it('audits every Encrypt and Decrypt, and writes no plaintext to its logs or audit [practice:audit]', async () => {
    await sleep(200);
    const audit = readFileSync(join(dir, 'audit.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.ok(audit.some((r) => r.operation === 'encrypt' && r.result === 'allowed' && r.code === 'OK' && r.keyVersion === 1 && r.ring === 'apps'));
    assert.ok(audit.some((r) => r.operation === 'decrypt' && r.result === 'denied' && r.code === 'INVALID_ARGUMENT' && /tampered/.test(String(r.reason))));
    assert.ok(audit.some((r) => r.operation === 'decrypt' && r.code === 'FAILED_PRECONDITION'));
    assert.ok(audit.every((r) => typeof r.requestId === 'string' && typeof r.time === 'string'));
    const written = readFileSync(join(dir, 'audit.log')).toString('latin1') + readFileSync(join(dir, 'plugin.log')).toString('latin1');
    for (const value of secrets) {
      assert.ok(!written.includes(value.toString('latin1')), 'a plaintext leaked into logs or audit');
      assert.ok(!written.includes(value.toString('base64')), 'a base64 plaintext leaked into logs or audit');
    }
  });
});

describe('KMS plugin socket handling', function () {
  this.timeout(30_000);

  it('removes a stale socket at start and refuses to replace a live one or a regular file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'keyward-sock-'));
    const softhsm = createSoftHsmToken();
    process.env.SOFTHSM2_CONF = softhsm.configPath;
    const socketPath = join(dir, 'kms.sock');
    try {
      // A process that dies by SIGKILL leaves its socket file behind.
      const holder = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(socketPath)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
      await new Promise((resolve) => holder.stdout.once('data', resolve));
      const config = { socketPath, modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.pin, ring: { name: 'r' }, auditLog: join(dir, 'a.log') };
      await assert.rejects(startKmsPlugin(config, pino({ level: 'silent' })), /another process is serving/);
      holder.kill('SIGKILL');
      await new Promise((resolve) => holder.once('exit', resolve));
      assert.ok(existsSync(socketPath), 'the stale socket is left behind');

      const admin = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.pin });
      await new RingStore(admin).create({ name: 'r' });
      const plugin = await startKmsPlugin(config, pino({ level: 'silent' }));
      const kms = grpcClient(KeyManagementService, `unix:${socketPath}`);
      assert.equal((await kms.status({})).healthz, 'ok');
      kms.close();
      await plugin.stop();
      admin.close();
      assert.ok(!existsSync(socketPath), 'stop removes the socket');

      await assert.rejects(startKmsPlugin({ ...config, socketPath: softhsm.configPath }, pino({ level: 'silent' })), /is not a socket; refusing/);
    } finally {
      softhsm.remove();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
