import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { keyIdFor } from '../hsm/ringState.js';
import { HsmRecords, maxRecordBytes } from '../hsm/hsmRecords.js';
import { useSoftHsmToken } from '../../testbed/hsm/softHsmFixture.js';
import { eventually } from '../../testbed/eventually.js';
import { KeyUseRecorder, keyUseHost, keyUseWriter, type KeyUseRecorderOptions } from './keyUseRecorder.js';
import { KeyUseRecords, type KeyUseRecord } from './keyUseRecords.js';

/** Records as the recorder hands them over, with a switch to make writes fail. */
class RecordSink {
  writes: { record: KeyUseRecord; writer: string }[] = [];
  failing = false;
  writeUse(record: KeyUseRecord, writer: string): Promise<void> {
    if (this.failing) return Promise.reject(new Error('CKR_DEVICE_REMOVED'));
    this.writes.push({ record: structuredClone(record), writer });
    return Promise.resolve();
  }
  last(): KeyUseRecord | undefined {
    return this.writes.at(-1)?.record;
  }
  uses(): Promise<KeyUseRecord[]> {
    return Promise.resolve([]);
  }
}

function captureLog(): { log: KeyUseRecorderOptions['log']; lines: { level: number; msg: string }[] } {
  const lines: { level: number; msg: string }[] = [];
  return { log: pino({ level: 'info' }, { write: (line: string) => void lines.push(JSON.parse(line) as { level: number; msg: string }) }), lines };
}

const t0 = Date.parse('2026-12-07T10:00:00.000Z');
const iso = (ms: number): string => new Date(ms).toISOString();

describe('Key-use recorder', () => {
  let clock: number;
  let sink: RecordSink;
  const ringId = 'ring-a';
  const k1 = keyIdFor(ringId, 1);
  const k2 = keyIdFor(ringId, 2);
  const recorder = (options: Partial<KeyUseRecorderOptions> = {}): KeyUseRecorder =>
    new KeyUseRecorder(sink, { component: 'kms-plugin', host: 'node-1', log: captureLog().log, now: () => clock, ...options });

  beforeEach(() => {
    clock = t0;
    sink = new RecordSink();
  });

  it('writes a first use at once, later uses only after flushMs, and an unchanged record as a heartbeat', async () => {
    const r = recorder();
    r.encrypted(ringId, k1);
    await r.flushDue();
    assert.equal(sink.writes.length, 1, 'a key id used for the first time is written on the next tick');
    assert.equal(sink.writes[0]?.writer, 'kms-plugin@node-1');
    assert.deepEqual(sink.last(), { schema: 1, ringId, component: 'kms-plugin', host: 'node-1', updatedAt: iso(t0), versions: { [k1]: { lastEncryptAt: iso(t0) } } });

    clock += 100;
    r.decrypted(ringId, k1);
    clock += 2000;
    await r.flushDue();
    assert.equal(sink.writes.length, 1, 'a known key id waits for flushMs');
    clock = t0 + 15_000;
    await r.flushDue();
    assert.equal(sink.writes.length, 2);
    assert.deepEqual(sink.last()?.versions[k1], { lastEncryptAt: iso(t0), lastDecryptAt: iso(t0 + 100) });

    clock += 59_000;
    await r.flushDue();
    assert.equal(sink.writes.length, 2, 'nothing changed, no heartbeat yet');
    clock += 1000;
    await r.flushDue();
    assert.equal(sink.writes.length, 3, 'heartbeat after 60 s');
    assert.equal(sink.last()?.updatedAt, iso(t0 + 75_000));
    assert.deepEqual(sink.last()?.versions[k1], { lastEncryptAt: iso(t0), lastDecryptAt: iso(t0 + 100) });
  });

  it('writes a new Status key id at once, but a ring at most once a second', async () => {
    const r = recorder();
    r.status(ringId, k1);
    await r.flushDue();
    assert.deepEqual([sink.last()?.statusKeyId, sink.last()?.lastStatusAt], [k1, iso(t0)]);
    clock += 300;
    r.status(ringId, k1);
    r.encrypted(ringId, k1);
    await r.flushDue();
    assert.equal(sink.writes.length, 1, 'within a second of the last write');
    clock = t0 + 1000;
    await r.flushDue();
    assert.equal(sink.writes.length, 2, 'the first use of k1 a second later');
    clock += 500;
    r.status(ringId, k1);
    clock += 1000;
    await r.flushDue();
    assert.equal(sink.writes.length, 2, 'the same key id again is no news');
    r.status(ringId, k2);
    await r.flushDue();
    assert.equal(sink.writes.length, 3);
    assert.deepEqual([sink.last()?.statusKeyId, sink.last()?.lastStatusAt], [k2, iso(clock)]);
  });

  it('keeps rings apart and notes other uses as lastUseAt', async () => {
    const r = recorder({ component: 'csi-provider' });
    r.used('ring-a', k1);
    r.used('ring-b', keyIdFor('ring-b', 3));
    await r.flushDue();
    const byRing = new Map(sink.writes.map((w) => [w.record.ringId, w.record]));
    assert.deepEqual(byRing.get('ring-a')?.versions, { [k1]: { lastUseAt: iso(t0) } });
    assert.deepEqual(Object.keys(byRing.get('ring-b')?.versions ?? {}), [keyIdFor('ring-b', 3)]);
    assert.equal(byRing.get('ring-a')?.component, 'csi-provider');
    assert.equal(byRing.get('ring-a')?.statusKeyId, undefined);
  });

  it('survives failed writes: never throws, logs once, counts each, retries next tick and keeps what it noted', async () => {
    const registry = new Registry();
    const { log, lines } = captureLog();
    const r = recorder({ registry, log });
    sink.failing = true;
    r.encrypted(ringId, k1);
    for (let i = 0; i < 3; i++) {
      await r.flushDue();
      clock += 1000;
    }
    assert.equal(sink.writes.length, 0);
    assert.match(await registry.metrics(), /^keyward_key_use_write_failures_total 3$/m);
    assert.equal(lines.filter((l) => l.level === 40).length, 1, 'one warning per outage');
    assert.match(lines[0]?.msg ?? '', /not written to the HSM/);
    r.decrypted(ringId, k1);
    sink.failing = false;
    await r.flushDue();
    assert.equal(sink.writes.length, 1, 'retried on the next tick, though the change is not new');
    assert.deepEqual(sink.last()?.versions[k1], { lastEncryptAt: iso(t0), lastDecryptAt: iso(t0 + 3000) });
    assert.equal(lines.filter((l) => /written again/.test(l.msg)).length, 1);
    assert.match(await registry.metrics(), new RegExp(`^keyward_key_use_last_write_timestamp_seconds ${(t0 + 3000) / 1000}$`, 'm'));
  });

  it('bounds its memory: least recently used versions go first, and rings beyond the cap are not kept', async () => {
    const { log, lines } = captureLog();
    const r = recorder({ maxVersionsPerRing: 3, maxRings: 2, log });
    const keys = [1, 2, 3, 4].map((n) => keyIdFor(ringId, n));
    for (const key of keys.slice(0, 3)) {
      r.decrypted(ringId, key);
      clock += 10;
    }
    r.decrypted(ringId, keys[0]!);
    r.decrypted(ringId, keys[3]!);
    r.used('ring-b', k1);
    r.used('ring-c', k1);
    r.used('ring-d', k1);
    clock += 1000;
    await r.flushDue();
    const ringA = sink.writes.find((w) => w.record.ringId === ringId)?.record;
    assert.deepEqual(Object.keys(ringA?.versions ?? {}).sort(), [keys[0], keys[2], keys[3]].sort(), 'version 2, used least recently, was forgotten');
    assert.deepEqual(sink.writes.map((w) => w.record.ringId).sort(), [ringId, 'ring-b']);
    assert.equal(lines.filter((l) => /more rings/.test(l.msg)).length, 1, 'warned once');
  });

  it('fits a ring of 1000 used versions into one record, most recently used first', async () => {
    const r = recorder();
    for (let n = 1; n <= 1000; n++) {
      clock = t0 + n;
      r.encrypted(ringId, keyIdFor(ringId, n));
      r.decrypted(ringId, keyIdFor(ringId, n));
      r.used(ringId, keyIdFor(ringId, n));
    }
    await r.flushDue();
    const record = sink.last()!;
    const kept = Object.keys(record.versions).length;
    assert.ok(kept > 100 && kept < 1000, `${kept} versions kept`);
    assert.equal(record.omittedVersions, 1000 - kept);
    assert.ok(record.versions[keyIdFor(ringId, 1000)], 'the newest is kept');
    assert.equal(record.versions[keyIdFor(ringId, 1)], undefined, 'the oldest is left out');
    assert.ok(JSON.stringify(record).length < maxRecordBytes - 512);
  });

  it('stop() writes what changed once, and nothing after', async () => {
    const r = recorder();
    r.encrypted(ringId, k1);
    await r.flushDue();
    clock += 10;
    r.decrypted(ringId, k1);
    await r.stop();
    assert.equal(sink.writes.length, 2);
    assert.equal(sink.last()?.versions[k1]?.lastDecryptAt, iso(t0 + 10));
    r.decrypted(ringId, k2);
    clock += 120_000;
    await r.flushDue();
    await r.stop();
    assert.equal(sink.writes.length, 2);
  });

  it('on its own timer, writes a first use within about a second and never two writes of a ring within a second', async function () {
    this.timeout(10_000);
    const r = new KeyUseRecorder(sink, { component: 'kms-plugin', host: 'node-1', log: captureLog().log, flushMs: 60_000 });
    r.start();
    try {
      const start = Date.now();
      r.encrypted(ringId, k1);
      await eventually('the first use written', 3000, () => (sink.writes.length === 1 ? true : undefined));
      r.encrypted(ringId, k2);
      await eventually('the second new key id written', 3000, () => (sink.writes.length === 2 ? true : undefined));
      const [a, b] = sink.writes.map((w) => Date.parse(w.record.updatedAt));
      assert.ok(b! - a! >= 1000, `writes ${b! - a!} ms apart`);
      assert.ok(a! - start < 1000, 'the first written without waiting for a tick');
    } finally {
      await r.stop();
    }
  });

  it('names its writer from the node name, NODE_NAME or the hostname, within the label alphabet', () => {
    const saved = process.env.NODE_NAME;
    try {
      delete process.env.NODE_NAME;
      assert.equal(keyUseHost(), hostname());
      process.env.NODE_NAME = 'cp-1';
      assert.equal(keyUseHost(), 'cp-1');
      assert.equal(keyUseHost('given'), 'given');
    } finally {
      if (saved === undefined) delete process.env.NODE_NAME;
      else process.env.NODE_NAME = saved;
    }
    assert.equal(keyUseWriter('csi-provider', 'node one/ä'), 'csi-provider@node-one--');
    assert.equal(keyUseWriter('kms-plugin', 'x'.repeat(300)).length, 128);
  });
});

describe('Key-use recorder writing to a real SoftHSM2 token', () => {
  const hsm = useSoftHsmToken();

  it('leaves one record per component and host that the operator reads back, even for a ring of 1000 versions', async () => {
    const records = new KeyUseRecords(new HsmRecords(hsm.token));
    const log = captureLog().log;
    const ringId = randomUUID();
    const plugin = new KeyUseRecorder(records, { component: 'kms-plugin', host: 'cp-1', log });
    const provider = new KeyUseRecorder(records, { component: 'csi-provider', host: 'worker-1', log });
    const before = new Date().toISOString();
    plugin.status(ringId, keyIdFor(ringId, 1));
    plugin.encrypted(ringId, keyIdFor(ringId, 1));
    plugin.decrypted(ringId, keyIdFor(ringId, 1));
    provider.used(ringId, keyIdFor(ringId, 1));
    await plugin.flushDue();
    await provider.flushDue();

    const uses = (await records.uses(ringId)).sort((a, b) => a.component.localeCompare(b.component));
    assert.deepEqual(
      uses.map((u) => [u.component, u.host]),
      [
        ['csi-provider', 'worker-1'],
        ['kms-plugin', 'cp-1'],
      ],
    );
    const kms = uses[1]!;
    assert.equal(kms.statusKeyId, keyIdFor(ringId, 1));
    const v1 = kms.versions[keyIdFor(ringId, 1)]!;
    for (const at of [kms.lastStatusAt, v1.lastEncryptAt, v1.lastDecryptAt, uses[0]?.versions[keyIdFor(ringId, 1)]?.lastUseAt]) {
      assert.ok(at && at >= before, `${at} is a time of this test`);
    }

    for (let n = 2; n <= 1000; n++) plugin.decrypted(ringId, keyIdFor(ringId, n));
    await plugin.stop();
    const big = (await records.uses(ringId)).find((u) => u.component === 'kms-plugin')!;
    assert.ok(big.omittedVersions !== undefined && big.omittedVersions > 0, 'trimmed to fit');
    assert.equal(Object.keys(big.versions).length + big.omittedVersions, 1000);
  });

  it('keeps what it recorded before a restart: the last use of a version is not lost', async () => {
    const records = new KeyUseRecords(new HsmRecords(hsm.token));
    const ringId = randomUUID();
    const [k1, k2] = [keyIdFor(ringId, 1), keyIdFor(ringId, 2)];
    const before = new KeyUseRecorder(records, { component: 'kms-plugin', host: 'cp-1', log: captureLog().log });
    before.decrypted(ringId, k1);
    await before.stop();
    const decryptedAt = (await records.uses(ringId))[0]?.versions[k1]?.lastDecryptAt;
    assert.ok(decryptedAt);

    const after = new KeyUseRecorder(records, { component: 'kms-plugin', host: 'cp-1', log: captureLog().log });
    after.encrypted(ringId, k2);
    await after.stop();
    const [record] = await records.uses(ringId);
    assert.equal(record?.versions[k1]?.lastDecryptAt, decryptedAt, 'the restarted plugin keeps version 1 last decryption');
    assert.ok(record?.versions[k2]?.lastEncryptAt);
  });
});
