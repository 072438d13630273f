// The quickstart: Keyward's real parts on one machine, shown working. A SoftHSM2 token made with
// `keyward hsm init`, a key ring in it, the KMS v2 plugin as its own process, and a real
// etcd + kube-apiserver that encrypts Secrets through the plugin; etcd is read directly to show
// what is stored, then the ring is rotated. Everything it starts is stopped and removed at the end.
import { CoreV1Api } from '@kubernetes/client-node';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { grpcClient } from '../core/grpc/unaryService.js';
import { findSoftHsmModule } from '../core/hsm/pkcs11Module.js';
import { KeyManagementService } from '../proto/gen/kms/v2/api_pb.js';
import { startControlPlane, type ControlPlane } from './control-plane/controlPlane.js';
import { parseKmsV2Value } from './control-plane/encryptedObject.js';
import { readEtcdKey, secretEtcdKey } from './control-plane/etcdClient.js';
import { httpsGet } from './control-plane/network.js';
import { keywardCli, kmsEncryptionConfig, startKmsPluginProcess } from './kms/kmsPluginProcess.js';

const step = (text: string): void => console.error(`[quickstart] ${text}`);

async function main(dir: string): Promise<void> {
  step('1/6 creating a SoftHSM2 token: keyward hsm init');
  const hsmDir = join(dir, 'hsm');
  execFileSync(process.execPath, [keywardCli, 'hsm', 'init', `--dir=${hsmDir}`, '--label=keyward'], { stdio: 'ignore' });
  const hsm = {
    modulePath: findSoftHsmModule(),
    label: 'keyward',
    pin: readFileSync(join(hsmDir, 'user.pin'), 'utf8'),
    env: { SOFTHSM2_CONF: join(hsmDir, 'softhsm2.conf') },
  };
  const keyward = (...args: string[]): string =>
    execFileSync(process.execPath, [keywardCli, ...args, `--pin-file=${join(hsmDir, 'user.pin')}`], { env: { ...process.env, ...hsm.env }, encoding: 'utf8' }).trim();

  step('2/6 creating key ring etcd-secrets (AES-256, generated inside the HSM, non-extractable)');
  step(`    ${keyward('ring', 'create', 'etcd-secrets')}`);

  step('3/6 starting the KMS v2 plugin on a 0600 unix socket');
  const plugin = await startKmsPluginProcess({ hsm, ringName: 'etcd-secrets', dir });
  let cp: ControlPlane | undefined;
  try {
    const kms = grpcClient(KeyManagementService, `unix:${plugin.socketPath}`);
    const status = await kms.status({});
    step(`    Status: version=${status.version} healthz=${status.healthz} key_id=${status.keyId}`);

    step('4/6 starting etcd and kube-apiserver with an EncryptionConfiguration pointing at the plugin');
    cp = await startControlPlane({
      encryptionConfig: kmsEncryptionConfig(dir, 'keyward', plugin.socketPath),
      progress: (line) => step(`    ${line}`),
    });
    const core = cp.kubeConfig.makeApiClient(CoreV1Api);
    const value = 'correct-horse-battery-staple';
    await core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name: 'db-password' }, stringData: { password: value } } });
    const raw = await readEtcdKey(cp.etcdEndpoint, secretEtcdKey('default', 'db-password'));
    const stored = raw && parseKmsV2Value(raw);
    step(`5/6 Secret default/db-password written; etcd holds ${raw?.length ?? 0} bytes starting '${raw?.subarray(0, 23).toString()}'`);
    step(`    stored under key_id ${stored?.keyId}; plaintext in etcd: ${raw?.includes(Buffer.from(value)) ? 'YES (wrong!)' : 'no'}`);
    if (!stored || stored.keyId !== status.keyId || raw.includes(Buffer.from(value))) throw new Error('the Secret is not encrypted under the plugin key');

    step('6/6 rotating the ring: keyward ring rotate etcd-secrets');
    step(`    ${keyward('ring', 'rotate', 'etcd-secrets')}`);
    const rotated = await waitFor(async () => {
      const s = await kms.status({});
      return s.keyId !== status.keyId ? s.keyId : undefined;
    }, 10_000);
    step(`    the plugin reports the new key_id ${rotated} without a restart`);
    step('    waiting for kube-apiserver to notice (it asks the plugin about once a minute)');
    const tls = { ca: readFileSync(join(cp.dir, 'pki', 'ca.crt')), cert: readFileSync(join(cp.dir, 'pki', 'admin.crt')), key: readFileSync(join(cp.dir, 'pki', 'admin.key')) };
    let n = 0;
    await waitFor(async () => {
      await httpsGet(`${cp!.apiserverUrl}/healthz/kms-provider-0`, tls);
      const name = `after-rotation-${n++}`;
      await core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name }, stringData: { password: 'new' } } });
      const after = await readEtcdKey(cp!.etcdEndpoint, secretEtcdKey('default', name));
      return after && parseKmsV2Value(after)?.keyId === rotated ? true : undefined;
    }, 150_000);
    const old = await core.readNamespacedSecret({ namespace: 'default', name: 'db-password' });
    step(`    new Secrets are stored under ${rotated}; the old one still reads back: ${Buffer.from(old.data?.password ?? '', 'base64').toString() === value}`);
    kms.close();
    step(`done. Plugin audit records: ${readFileSync(plugin.auditFile, 'utf8').trim().split('\n').length} (one per Encrypt/Decrypt)`);
  } finally {
    step('stopping everything');
    await cp?.stop();
    await plugin.process.stop();
  }
}

async function waitFor<T>(fn: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`gave up after ${timeoutMs / 1000} s`);
    await sleep(1000);
  }
}

const dir = mkdtempSync(join(tmpdir(), 'keyward-quickstart-'));
try {
  await main(dir);
} catch (err) {
  console.error(`[quickstart] FAILED: ${(err as Error).message}`);
  process.exitCode = 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
