// The etcd scanner against a real control plane: kube-apiserver encrypting Secrets through the
// real KMS plugin (its own process) on a SoftHSM2 token, etcd read by the scanner's paged reader
// and, to check it, by the test bed's one-shot reader.
import { CoreV1Api, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HsmRecords } from '../core/hsm/hsmRecords.js';
import { RingStore } from '../core/hsm/ringStore.js';
import { KeyUseRecords, type EtcdScanReport } from '../core/keyUse/keyUseRecords.js';
import { startScannerProcess } from '../e2e/retirement/scannerProcess.js';
import { apiserverKmsHealthStatus, kmsEncryptionConfig, kmsStatus, startKmsPluginProcess, type KmsPluginProcess } from '../e2e/kms/kmsPluginProcess.js';
import { startControlPlane, type ControlPlane } from '../testbed/control-plane/controlPlane.js';
import { parseKmsV2Value } from '../testbed/control-plane/encryptedObject.js';
import { readEtcdPrefix } from '../testbed/control-plane/etcdClient.js';
import { freePort } from '../testbed/control-plane/network.js';
import { eventually } from '../testbed/eventually.js';
import { useSoftHsmToken } from '../testbed/hsm/softHsmFixture.js';
import { EtcdReader, type EtcdReaderConfig } from './etcdReader.js';
import { scanEtcd, type EtcdScanOptions } from './etcdScan.js';

const provider = 'keyward';
const ringName = 'etcd-secrets';
const namespace = 'scan';

async function inParallel<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: limit }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

const b64 = (s: string | Buffer): string => Buffer.from(s).toString('base64');

/** Writes raw bytes straight into etcd, past the apiserver: values it would never write itself. */
async function putEtcd(endpoint: string, key: string, value: Buffer): Promise<number> {
  const res = await fetch(`${endpoint}/v3/kv/put`, { method: 'POST', body: JSON.stringify({ key: b64(key), value: b64(value) }) });
  assert.equal(res.status, 200, `etcd put ${key}`);
  return Number(((await res.json()) as { header: { revision: string } }).header.revision);
}

describe('etcd scanner against a real control plane', function () {
  this.timeout(600_000);
  const hsm = useSoftHsmToken();
  let dir: string;
  let plugin: KmsPluginProcess;
  let cp: ControlPlane;
  let core: CoreV1Api;
  let ringId: string;
  let keyId1: string;
  let keyId2: string;
  /** The Secret names written and the key id each was last written under. */
  const expected = new Map<string, string>();
  let firstReport: EtcdScanReport;

  const scan = async (reader: Partial<EtcdReaderConfig> = {}, options: Partial<EtcdScanOptions> = {}): Promise<EtcdScanReport> => {
    const etcd = new EtcdReader({ endpoints: [cp.etcdEndpoint], pagesPerSecond: 1000, ...reader });
    try {
      return await scanEtcd({ reader: etcd, ringId, provider, resources: ['secrets'], ...options });
    } finally {
      etcd.close();
    }
  };
  const writeSecret = async (name: string): Promise<void> => {
    await core.createNamespacedSecret({ namespace, body: { metadata: { name }, stringData: { value: randomBytes(16).toString('hex') } } });
  };
  const storedKeyId = async (name: string): Promise<string | undefined> => {
    const kv = (await readEtcdPrefix(cp.etcdEndpoint, `/registry/secrets/${namespace}/${name}`)).find((v) => v.key.endsWith(`/${name}`));
    return kv && parseKmsV2Value(kv.value)?.keyId;
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keyward-scanner-'));
    ringId = (await new RingStore(hsm.token).create({ name: ringName })).ringId;
    plugin = await startKmsPluginProcess({ hsm: hsm.softhsm, ringName, dir });
    cp = await startControlPlane({ encryptionConfig: kmsEncryptionConfig(dir, provider, plugin.socketPath) });
    core = cp.kubeConfig.makeApiClient(CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: namespace } } });
  });

  after(async () => {
    await cp?.stop();
    await plugin?.process.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('counts 300 Secrets across a rotation per key id exactly as written, as etcd read directly says [practice:verified-retirement]', async () => {
    keyId1 = (await kmsStatus(plugin.socketPath)).keyId;
    const first = Array.from({ length: 200 }, (_, i) => `s-${i}`);
    await inParallel(first, 20, writeSecret);
    for (const name of first) expected.set(name, keyId1);

    await new RingStore(hsm.token).rotate({ name: ringName });
    keyId2 = await eventually('the plugin reporting the new key id', 15_000, async () => {
      const { keyId } = await kmsStatus(plugin.socketPath);
      return keyId !== keyId1 ? keyId : undefined;
    });
    // Probes until the apiserver writes under the new key id; deleted after, so only known Secrets remain.
    const probes: string[] = [];
    await eventually('the apiserver writing under the new key id', 150_000, async () => {
      await apiserverKmsHealthStatus(cp);
      const name = `probe-${probes.length}`;
      probes.push(name);
      await writeSecret(name);
      return (await storedKeyId(name)) === keyId2 ? true : undefined;
    }, 1000);
    for (const name of probes) await core.deleteNamespacedSecret({ name, namespace });

    // Rewritten: the first 50 move to the new version; 100 more are new.
    await inParallel(first.slice(0, 50), 20, async (name) => {
      await core.patchNamespacedSecret({ name, namespace, body: { stringData: { value: randomBytes(16).toString('hex') } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
    });
    for (const name of first.slice(0, 50)) expected.set(name, keyId2);
    const later = Array.from({ length: 100 }, (_, i) => `s-${200 + i}`);
    await inParallel(later, 20, writeSecret);
    for (const name of later) expected.set(name, keyId2);

    // What the apiserver never writes: another provider's envelopes, broken ones of ours, plain objects.
    const raw = `/registry/secrets/raw/`;
    for (let i = 0; i < 3; i++) await putEtcd(cp.etcdEndpoint, `${raw}aescbc-${i}`, Buffer.from(`k8s:enc:aescbc:v1:key1:${randomBytes(40).toString('latin1')}`));
    await putEtcd(cp.etcdEndpoint, `${raw}truncated`, Buffer.from(`k8s:enc:kms:v2:${provider}:\x0a\x50\x01\x02`));
    await putEtcd(cp.etcdEndpoint, `${raw}other-kms`, Buffer.concat([Buffer.from('k8s:enc:kms:v2:elsewhere:'), Buffer.from([0x12, 0x02]), Buffer.from('k9')]));
    for (let i = 0; i < 4; i++) await putEtcd(cp.etcdEndpoint, `${raw}plain-${i}`, Buffer.from(`k8s\x00\x0a\x0c\x0a\x02v1\x12\x06Secret${i}`));

    firstReport = await scan();
    assert.equal(firstReport.complete, true, firstReport.error);
    assert.ok((firstReport.revision ?? 0) > 0);
    const [secrets] = firstReport.resources;
    assert.equal(secrets?.resource, 'secrets');

    // Against the test's own record of what it wrote.
    const mine = (keyId: string) => [...expected.values()].filter((k) => k === keyId).length;
    assert.equal(mine(keyId1), 150);
    assert.equal(mine(keyId2), 150);
    const others = (await readEtcdPrefix(cp.etcdEndpoint, '/registry/secrets/')).filter((kv) => !kv.key.startsWith(`/registry/secrets/${namespace}/`) && !kv.key.startsWith(raw));
    assert.equal(others.length, 0, `no other Secrets in this control plane: ${others.map((kv) => kv.key).join(', ')}`);
    assert.deepEqual(secrets.byKeyId, { [keyId1]: 150, [keyId2]: 150 });
    assert.equal(secrets.otherProvider, 5);
    assert.equal(secrets.malformed, 1);
    assert.equal(secrets.unencrypted, 4);
    assert.equal(secrets.objects, 309);

    // Against etcd read in one request by the test bed's reader.
    const direct = new Map<string, number>();
    for (const kv of await readEtcdPrefix(cp.etcdEndpoint, `/registry/secrets/${namespace}/`)) {
      const keyId = parseKmsV2Value(kv.value)?.keyId ?? 'none';
      direct.set(keyId, (direct.get(keyId) ?? 0) + 1);
      assert.equal(keyId, expected.get(kv.key.split('/').at(-1)!), `${kv.key} is under the key id it was last written with`);
    }
    assert.deepEqual(Object.fromEntries(direct), secrets.byKeyId);

    // Samples name Secrets that really are under that key id.
    for (const keyId of [keyId1, keyId2]) {
      const samples = firstReport.samples[keyId] ?? [];
      assert.equal(samples.length, 5);
      for (const key of samples) assert.equal(expected.get(key.split('/').at(-1)!), keyId, `${key} sampled under ${keyId}`);
    }
  });

  it('pages of 7 keys, read while Secrets are being written, count the same snapshot as one page of 500', async () => {
    let writing = true;
    let late = 0;
    const writer = (async () => {
      while (writing) await writeSecret(`late-${late++}`);
    })();
    try {
      const paged = await scan({ pageSize: 7, pagesPerSecond: 100 });
      assert.equal(paged.complete, true, paged.error);
      assert.deepEqual(paged.resources, firstReport.resources);
      assert.deepEqual(paged.samples, firstReport.samples);
      assert.ok(late > 0, 'Secrets were written during the scan');
    } finally {
      writing = false;
      await writer;
    }
    for (let i = 0; i < late; i++) await core.deleteNamespacedSecret({ name: `late-${i}`, namespace });
    const again = await scan();
    assert.deepEqual(again.resources, firstReport.resources, 'the late Secrets deleted, the counts are back');
  });

  it('starts again once, at a newer revision, when etcd compacts the revision it was reading at', async () => {
    let compacted = 0;
    let compactedAt = 0;
    let compaction: Promise<void> | undefined;
    const report = await scan({ pageSize: 50, pagesPerSecond: 2 }, {
      onPage: () => {
        if (compacted++ > 0) return;
        compaction = (async () => {
          const revision = await putEtcd(cp.etcdEndpoint, '/registry/keyward-test/bump', Buffer.from('x'));
          compactedAt = revision;
          const res = await fetch(`${cp.etcdEndpoint}/v3/kv/compaction`, { method: 'POST', body: JSON.stringify({ revision, physical: true }) });
          assert.equal(res.status, 200);
        })();
      },
    });
    await compaction;
    assert.equal(report.complete, true, report.error);
    assert.ok(compactedAt > 0);
    assert.ok((report.revision ?? 0) >= compactedAt, `read at revision ${report.revision}, not before the compaction at ${compactedAt}`);
    assert.deepEqual(report.resources, firstReport.resources);
  });

  it('halves the page while a response is over the byte cap, and refuses a single value over it', async () => {
    let pages = 0;
    const capped = await scan({ pageSize: 500, maxResponseBytes: 16 * 1024 }, { onPage: () => pages++ });
    assert.equal(capped.complete, true, capped.error);
    assert.deepEqual(capped.resources, firstReport.resources);
    assert.ok(pages > 309 / 16, `${pages} pages of at most 16 KiB`);
    const tiny = await scan({ maxResponseBytes: 200 });
    assert.equal(tiny.complete, false);
    assert.equal(tiny.error, 'one etcd value is over the 200-byte response limit');
  });

  it('reports etcd unreachable, naming it, as an incomplete scan', async () => {
    const endpoint = `http://127.0.0.1:${await freePort()}`;
    const report = await scan({ endpoints: [endpoint], requestTimeoutMs: 2000 });
    assert.equal(report.complete, false);
    assert.equal(report.error, `etcd at ${endpoint} is unreachable (ECONNREFUSED)`);
  });

  it('as a process: scans at start, answers a scan request from the operator within seconds, counts in metrics, stops on SIGTERM', async () => {
    // A dead endpoint first: the scanner goes on to the next one.
    const scanner = await startScannerProcess({
      hsm: hsm.softhsm,
      ringName,
      providerName: provider,
      etcdEndpoint: `http://127.0.0.1:1,${cp.etcdEndpoint}`,
      dir,
      intervalSeconds: 3600,
    });
    try {
      const records = new KeyUseRecords(new HsmRecords(hsm.token));
      const startup = await eventually('the scanner\'s first report in the HSM', 60_000, async () => (await records.scanReports(ringId))[0], 500);
      assert.equal(startup.complete, true, startup.error);
      assert.deepEqual(startup.resources, firstReport.resources);
      assert.equal(startup.request, undefined);

      const requestedAt = Date.now();
      await records.requestScan(ringId, { schema: 1, request: 'after-rewrite-1', requestedAt: new Date().toISOString() });
      const answer = await eventually('the scan request answered', 30_000, async () => (await records.scanReports(ringId)).find((r) => r.request === 'after-rewrite-1'), 250);
      assert.ok(Date.now() - requestedAt < 15_000, 'answered within seconds, not at the next interval');
      assert.equal(answer.complete, true, answer.error);
      assert.deepEqual(answer.resources, firstReport.resources);

      const metrics = await (await fetch(`${scanner.metricsUrl}/metrics`)).text();
      assert.match(metrics, /keyward_scanner_scans_total\{result="complete"\} 2/);
      assert.match(metrics, /keyward_scanner_objects_scanned_total 618/);
      assert.match(metrics, /keyward_scanner_etcd_read_bytes_total [1-9]\d+/);
      const lastComplete = Number(/^keyward_scanner_last_complete_scan_timestamp_seconds (\S+)$/m.exec(metrics)?.[1]);
      assert.ok(Math.abs(lastComplete - Date.parse(answer.finishedAt) / 1000) < 0.01, 'the last complete scan is the answer');
      assert.equal((await fetch(`${scanner.metricsUrl}/healthz`)).status, 200);
    } finally {
      await scanner.process.stop();
    }
    assert.deepEqual(scanner.process.exitStatus, { code: 0, signal: null }, 'SIGTERM stops it cleanly');
    const audit = readFileSync(join(dir, 'scanner-audit.log'), 'utf8').trim().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
    assert.equal(audit.filter((r) => r.operation === 'etcdScan' && r.result === 'allowed').length, 2);
    assert.ok(audit.some((r) => r.requestId === 'after-rewrite-1'));
    // Nothing from etcd but keys and key ids: no Secret data in the log or the audit.
    const log = readFileSync(scanner.logFile, 'utf8');
    assert.doesNotMatch(log + JSON.stringify(audit), /k8s:enc:|"data"/);
  });
});
