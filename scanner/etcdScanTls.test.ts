// The scanner against etcd run as kubeadm runs it: https only, a client certificate from etcd's
// own CA required (kube-apiserver connects the same way). The scanner reads with the apiserver's
// etcd client certificate, as it does beside the KMS static pod, and is refused with any other.
import { CoreV1Api } from '@kubernetes/client-node';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RingStore } from '../core/hsm/ringStore.js';
import { kmsEncryptionConfig, kmsStatus, startKmsPluginProcess, type KmsPluginProcess } from '../e2e/kms/kmsPluginProcess.js';
import { startControlPlane, type ControlPlane } from '../testbed/control-plane/controlPlane.js';
import { createPki } from '../testbed/control-plane/pki.js';
import { useSoftHsmToken } from '../testbed/hsm/softHsmFixture.js';
import { EtcdReader, type EtcdTlsFiles } from './etcdReader.js';
import { scanEtcd } from './etcdScan.js';

describe('etcd scanner over TLS with client-certificate authentication', function () {
  this.timeout(300_000);
  const hsm = useSoftHsmToken();
  let dir: string;
  let plugin: KmsPluginProcess;
  let cp: ControlPlane;
  let ringId: string;
  /** A client certificate and CA that etcd does not know. */
  let foreign: ReturnType<typeof createPki>;

  const scan = async (tls: EtcdTlsFiles, endpoint = cp.etcdEndpoint) => {
    const reader = new EtcdReader({ endpoints: [endpoint], tls, requestTimeoutMs: 5000 });
    try {
      return await scanEtcd({ reader, ringId, provider: 'keyward', resources: ['secrets'] });
    } finally {
      reader.close();
    }
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keyward-scanner-tls-'));
    mkdirSync(join(dir, 'foreign'));
    foreign = createPki(join(dir, 'foreign'));
    ringId = (await new RingStore(hsm.token).create({ name: 'etcd-secrets' })).ringId;
    plugin = await startKmsPluginProcess({ hsm: hsm.softhsm, ringName: 'etcd-secrets', dir });
    cp = await startControlPlane({ etcdTls: true, encryptionConfig: kmsEncryptionConfig(dir, 'keyward', plugin.socketPath) });
    const core = cp.kubeConfig.makeApiClient(CoreV1Api);
    for (let i = 0; i < 20; i++) await core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name: `tls-${i}` }, stringData: { v: String(i) } } });
  });

  after(async () => {
    await cp?.stop();
    await plugin?.process.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('runs etcd on https only: a plain http read of it fails', async () => {
    assert.match(cp.etcdEndpoint, /^https:\/\/127\.0\.0\.1:\d+$/);
    const plain = await scan({}, cp.etcdEndpoint.replace('https:', 'http:'));
    assert.equal(plain.complete, false);
    assert.match(plain.error ?? '', /^etcd at http:\/\/127\.0\.0\.1:\d+ closed the connection \(ECONNRESET\); if etcd serves TLS, use https:\/\//);
  });

  it('scans with the apiserver\'s etcd client certificate: every Secret counted under the plugin key id', async () => {
    const pki = cp.etcdPki!;
    const report = await scan({ caFile: pki.caCert, certFile: pki.clientCert, keyFile: pki.clientKey });
    assert.equal(report.complete, true, report.error);
    assert.deepEqual(report.resources[0]?.byKeyId, { [(await kmsStatus(plugin.socketPath)).keyId]: 20 });
  });

  it('reports the client credentials refused, as an incomplete scan, with a certificate from another CA or none', async () => {
    const pki = cp.etcdPki!;
    for (const tls of [{ caFile: pki.caCert, certFile: foreign.adminCert, keyFile: foreign.adminKey }, { caFile: pki.caCert }]) {
      const report = await scan(tls);
      assert.equal(report.complete, false);
      assert.match(report.error ?? '', new RegExp(`^etcd at ${cp.etcdEndpoint} refused the client credentials \\(TLS `));
      assert.deepEqual(report.resources[0]?.byKeyId ?? {}, {});
    }
  });

  it('reports an etcd serving certificate it does not trust, and an unreadable certificate file, by name', async () => {
    const pki = cp.etcdPki!;
    const untrusted = await scan({ caFile: foreign.caCert, certFile: pki.clientCert, keyFile: pki.clientKey });
    assert.equal(untrusted.complete, false);
    assert.match(untrusted.error ?? '', /^TLS with etcd at https:\/\/127\.0\.0\.1:\d+ failed: its certificate is not trusted \(/);
    const missing = join(dir, 'missing.crt');
    const unreadable = await scan({ caFile: pki.caCert, certFile: missing, keyFile: pki.clientKey });
    assert.equal(unreadable.complete, false);
    assert.equal(unreadable.error, `cannot read the etcd client certificate ${missing}: ENOENT`);
  });
});
