// kube-apiserver encrypting Secrets in etcd through the Keyward KMS v2 plugin, with every part
// real: SoftHSM2, the plugin as its own process, etcd and kube-apiserver. etcd is read directly.
import { CoreV1Api } from '@kubernetes/client-node';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { readEtcdPrefix } from '../../testbed/control-plane/etcdClient.js';
import { parseKmsV2Value } from '../../testbed/control-plane/encryptedObject.js';
import { eventually } from '../../testbed/eventually.js';
import { apiserverKmsHealthStatus, keywardCli, kmsEncryptionConfig, kmsStatus, startKmsPluginProcess, type KmsPluginProcess } from './kmsPluginProcess.js';

const providerName = 'keyward';
const namespace = 'default';

/** Runs `fn` over `items` with at most `limit` in flight. */
async function inParallel<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: limit }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}

describe('Secrets encrypted in etcd by kube-apiserver through the KMS v2 plugin', function () {
  this.timeout(600_000);
  let dir: string;
  let hsm: SoftHsmToken;
  let plugin: KmsPluginProcess;
  let cp: ControlPlane;
  let core: CoreV1Api;
  /** Every Secret written and acknowledged, with its value: none may be lost. */
  const written = new Map<string, string>();

  const keyward = (...args: string[]): string =>
    execFileSync(process.execPath, [keywardCli, ...args, `--pkcs11-module=${hsm.modulePath}`, `--token-label=${hsm.label}`, `--pin-file=${join(dir, 'admin.pin')}`], {
      env: { ...process.env, ...hsm.env },
      encoding: 'utf8',
    });
  const pluginStatus = () => kmsStatus(plugin.socketPath);
  const writeSecret = async (name: string): Promise<void> => {
    const value = `value-${name}-${randomBytes(8).toString('hex')}`;
    await core.createNamespacedSecret({ namespace, body: { metadata: { name }, stringData: { value } } });
    written.set(name, value);
  };
  const storedSecrets = async () =>
    (await readEtcdPrefix(cp.etcdEndpoint, `/registry/secrets/${namespace}/`)).filter((kv) => kv.key.includes('/s-'));
  const assertAllReadable = async (): Promise<void> => {
    // After a restart the apiserver's Secret cache may still be initialising (429): wait for it.
    const listed = await eventually('listing Secrets', 60_000, () => core.listNamespacedSecret({ namespace }));
    const byName = new Map(listed.items.map((s) => [s.metadata?.name, Buffer.from(s.data?.value ?? '', 'base64').toString()]));
    for (const [name, value] of written) assert.equal(byName.get(name), value, `Secret ${name} reads back`);
  };
  const apiserverKmsHealth = () => apiserverKmsHealthStatus(cp);

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keyward-e2e-kms-'));
    hsm = createSoftHsmToken();
    writeFileSync(join(dir, 'admin.pin'), hsm.pin, { mode: 0o600 });
    keyward('ring', 'create', 'etcd-secrets');
    plugin = await startKmsPluginProcess({ hsm, ringName: 'etcd-secrets', dir });
    cp = await startControlPlane({ encryptionConfig: kmsEncryptionConfig(dir, providerName, plugin.socketPath) });
    core = cp.kubeConfig.makeApiClient(CoreV1Api);
  });

  after(async () => {
    await cp?.stop();
    await plugin?.process.stop();
    hsm?.remove();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('stores 500 Secrets encrypted under the plugin key id, with no plaintext in etcd, all readable', async () => {
    const { keyId } = await pluginStatus();
    await inParallel(Array.from({ length: 500 }, (_, i) => `s-${i}`), 20, writeSecret);
    const stored = await storedSecrets();
    assert.equal(stored.length, 500);
    for (const { key, value } of stored) {
      const prefix = Buffer.from(`k8s:enc:kms:v2:${providerName}:`);
      assert.ok(value.subarray(0, prefix.length).equals(prefix), `${key} is KMS v2 encrypted by ${providerName}`);
      assert.equal(parseKmsV2Value(value)?.keyId, keyId, `${key} names the plugin's key id`);
      const name = key.split('/').at(-1)!;
      assert.ok(!value.includes(Buffer.from(written.get(name)!)), `${key} holds no plaintext`);
    }
    await assertAllReadable();
  });

  it('keeps every Secret readable across an apiserver restart', async () => {
    await cp.restartApiserver();
    core = cp.kubeConfig.makeApiClient(CoreV1Api);
    await assertAllReadable();
  });

  it('survives the plugin being killed mid-write: KMS unhealthy, clean failures, nothing lost [practice:continuity]', async () => {
    let stop = false;
    const failures: string[] = [];
    let n = 0;
    const writer = (async () => {
      while (!stop) {
        const name = `s-kill-${n++}`;
        try {
          await writeSecret(name);
        } catch (err) {
          failures.push((err as Error).message.slice(0, 200));
          await sleep(100);
        }
      }
    })();
    await sleep(500);
    plugin.process.killNow();
    await plugin.process.exitedPromise();
    // The apiserver's KMS check turns unhealthy (its healthy result is cached for up to 20 s).
    await eventually('the apiserver reporting the KMS provider unhealthy', 60_000, async () => ((await apiserverKmsHealth()) !== 200 ? true : undefined));
    // Without the plugin a restarted apiserver has no key to write with: writes fail, cleanly.
    stop = true;
    await writer;
    await cp.restartApiserver({ skipReadyz: true });
    core = cp.kubeConfig.makeApiClient(CoreV1Api);
    await assert.rejects(writeSecret('s-while-down'), /500|503|Internal|unavailable|KMS|connection/i);

    plugin = await startKmsPluginProcess({ hsm, ringName: 'etcd-secrets', dir });
    await eventually('writes succeeding again', 120_000, async () => {
      await writeSecret(`s-after-${Date.now()}`);
      return true;
    });
    await assertAllReadable();
    assert.ok(written.size > 500, 'writes went on while the plugin was up');
  });

  it('rotates: new writes carry the new key id, and every earlier Secret stays readable after two rotations [practice:rotation]', async () => {
    const keyIds = new Set<string>([(await pluginStatus()).keyId]);
    for (let rotation = 1; rotation <= 2; rotation++) {
      keyward('ring', 'rotate', 'etcd-secrets');
      const newKeyId = await eventually('the plugin reporting the new key id', 10_000, async () => {
        const { keyId, healthz } = await pluginStatus();
        return healthz === 'ok' && !keyIds.has(keyId) ? keyId : undefined;
      });
      keyIds.add(newKeyId);
      await eventually('new writes carrying the new key id in etcd', 120_000, async () => {
        await apiserverKmsHealth();
        const name = `s-rot${rotation}-${Date.now()}`;
        await writeSecret(name);
        const raw = (await storedSecrets()).find((kv) => kv.key.endsWith(`/${name}`));
        return raw && parseKmsV2Value(raw.value)?.keyId === newKeyId ? true : undefined;
      });
    }
    const storedKeyIds = new Set((await storedSecrets()).map((kv) => parseKmsV2Value(kv.value)?.keyId));
    for (const keyId of keyIds) assert.ok(storedKeyIds.has(keyId), `some Secret in etcd is under ${keyId}`);
    // A restart empties the apiserver's cache of decrypted keys: every version is asked again.
    await cp.restartApiserver();
    core = cp.kubeConfig.makeApiClient(CoreV1Api);
    await assertAllReadable();
  });

  it('reports an HSM outage within 10 s, keeps its key id, and recovers by itself within 10 s [practice:continuity]', async () => {
    const before = await pluginStatus();
    const away = `${hsm.tokenDir}.away`;
    renameSync(hsm.tokenDir, away);
    try {
      const during = await eventually('the plugin reporting the outage', 10_000, async () => {
        const s = await pluginStatus();
        return s.healthz !== 'ok' ? s : undefined;
      });
      assert.equal(during.keyId, before.keyId);
      assert.match(during.healthz, /HSM/);
    } finally {
      renameSync(away, hsm.tokenDir);
    }
    await eventually('the plugin recovering', 10_000, async () => ((await pluginStatus()).healthz === 'ok' ? true : undefined));
    await writeSecret(`s-after-outage-${Date.now()}`);
  });

  it('never wrote a plaintext to its logs or audit during the whole run', () => {
    const output = readFileSync(plugin.logFile, 'latin1') + readFileSync(plugin.auditFile, 'latin1');
    assert.ok(output.includes('"operation":"encrypt"'), 'the audit stream has records');
    for (const value of written.values()) {
      assert.ok(!output.includes(value), 'a Secret value appears in the plugin output');
      assert.ok(!output.includes(Buffer.from(value).toString('base64')), 'a base64 Secret value appears in the plugin output');
    }
  });
});
