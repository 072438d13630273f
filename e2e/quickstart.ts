// The quickstart: brings up Keyward's real parts on one machine and shows them working.
// At this stage: a SoftHSM2 token holding a non-extractable AES-256 key, and a real control plane
// (etcd + kube-apiserver) storing a Secret. Everything it starts is stopped and removed at the end.
import { CoreV1Api } from '@kubernetes/client-node';
import { randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { aesGcmDecrypt, aesGcmEncrypt, generateAesKey } from '../core/hsm/aesGcm.js';
import { HsmToken, pkcs11Code } from '../core/hsm/hsmToken.js';
import { createSoftHsmToken } from '../core/hsm/softHsmToken.js';
import { startControlPlane } from './control-plane/controlPlane.js';
import { readEtcdKey, secretEtcdKey } from './control-plane/etcdClient.js';

const step = (text: string): void => console.error(`[quickstart] ${text}`);

async function showHsm(): Promise<void> {
  step('creating a throw-away SoftHSM2 token');
  const softhsm = createSoftHsmToken({ label: 'keyward-quickstart' });
  process.env.SOFTHSM2_CONF = softhsm.configPath;
  const token = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.pin });
  try {
    step(`token '${softhsm.label}' ready (module ${softhsm.modulePath})`);
    const key = await generateAesKey(token, { label: 'quickstart-key', id: randomBytes(16) });
    step('generated an AES-256 key inside the HSM: sensitive, non-extractable');
    const message = Buffer.from('hello from keyward');
    const sealed = await aesGcmEncrypt(token, key, message, Buffer.from('quickstart'));
    step(`AES-256-GCM in the HSM: ${message.length} bytes -> ${sealed.sealed.length} bytes (+12-byte IV from the HSM)`);
    const opened = await aesGcmDecrypt(token, key, sealed, Buffer.from('quickstart'));
    step(`decrypted in the HSM: ${opened.equals(message) ? 'matches the original' : 'MISMATCH'}`);
    if (!opened.equals(message)) throw new Error('HSM round trip failed');
    try {
      await token.withSession((s) => token.pkcs11.C_GetAttributeValue(s, key, [{ type: pkcs11js.CKA_VALUE }]));
      throw new Error('the HSM revealed a key value');
    } catch (err) {
      if (pkcs11Code(err) !== pkcs11js.CKR_ATTRIBUTE_SENSITIVE) throw err;
      step('asked the HSM for the key value: refused (CKR_ATTRIBUTE_SENSITIVE)');
    }
  } finally {
    token.close();
    softhsm.remove();
  }
}

async function showControlPlane(): Promise<void> {
  step('starting a real control plane (this takes about half a minute on 2 cores)');
  const cp = await startControlPlane({ progress: (line) => step(`  ${line}`) });
  try {
    const core = cp.kubeConfig.makeApiClient(CoreV1Api);
    await core.createNamespacedSecret({
      namespace: 'default',
      body: { metadata: { name: 'quickstart' }, stringData: { greeting: 'stored-in-plain-for-now' } },
    });
    const read = await core.readNamespacedSecret({ namespace: 'default', name: 'quickstart' });
    step(`created Secret default/quickstart and read it back: ${Object.keys(read.data ?? {}).join(', ')}`);
    const raw = await readEtcdKey(cp.etcdEndpoint, secretEtcdKey('default', 'quickstart'));
    const plain = raw?.includes(Buffer.from('stored-in-plain-for-now')) ?? false;
    step(`read etcd directly: ${raw?.length ?? 0} bytes, value ${plain ? 'visible in plain text (no KMS configured yet)' : 'not visible'}`);
  } finally {
    step('stopping the control plane');
    await cp.stop();
  }
}

try {
  await showHsm();
  await showControlPlane();
  step('done: SoftHSM2 and the control plane work on this machine');
} catch (err) {
  console.error(`[quickstart] FAILED: ${(err as Error).message}`);
  process.exitCode = 1;
}
