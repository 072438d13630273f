// The quickstart: Keyward installed and used as on a real cluster, on one machine. The image is
// built from the Dockerfile; a single-node Kubernetes starts (control plane, containerd, kubelet,
// kube-proxy, the Secrets Store CSI driver); `helm install` puts the operator and the CSI provider
// on it; the KMS plugin runs as the chart's static pod and kube-apiserver encrypts Secrets through
// it (etcd read directly to show it); a pod gets a sealed secret and a derived key in its volume
// through the real driver and another pod is refused; a rotation reaches the running pod, and etcd
// is re-encrypted under the new version and proven so by the scanner beside the plugin.
// Everything it starts is stopped, and the machine left as it was.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { eventually } from '../testbed/eventually.js';
import { parseKmsV2Value } from '../testbed/control-plane/encryptedObject.js';
import { readEtcdKey, readEtcdPrefix, secretEtcdKey } from '../testbed/control-plane/etcdClient.js';
import type { KeyRing } from '../core/api/keyRing.js';
import { buildKeywardImage } from '../testbed/image/keywardImage.js';
import { applyKeyRing, applyShopWorkload, expectMountRefused, keywardPod, primaryVersion, readPodFile, shop, waitFileChange, waitPodRunning } from './install/clusterChecks.js';
import { createNodeToken, enableKmsEncryption, installKeyward, installKmsStaticPod, releaseNamespace, waitPodReady } from './install/keywardOnNode.js';
import { identityEncryptionConfig, kmsStatus } from './kms/kmsPluginProcess.js';
import { startTestNode, type TestNode } from '../testbed/node/testNode.js';
import { trackDirectory } from '../testbed/control-plane/componentProcess.js';

const step = (text: string): void => console.error(`[quickstart ${new Date().toISOString().slice(11, 19)}] ${text}`);
const etcdRing = { namespace: 'kube-system', name: 'etcd-secrets' };
const admin = 'keyward-admin';
const rotationPollSeconds = 10;

async function main(dir: string): Promise<void> {
  step('1/8 building the Keyward image from the Dockerfile (reused when nothing changed)');
  const image = await buildKeywardImage({ progress: (line) => step(`    ${line}`) });
  step(`    ${image.ref}`);

  step('2/8 starting a single-node Kubernetes: etcd (TLS), kube-apiserver, scheduler, controller-manager, containerd, kubelet, kube-proxy, Secrets Store CSI driver');
  let node: TestNode | undefined;
  try {
    node = await startTestNode({
      images: [image.dockerArchive],
      controlPlane: { encryptionConfig: identityEncryptionConfig(dir), etcdTls: true },
      rotationPollInterval: `${rotationPollSeconds}s`,
      progress: (line) => step(`    ${line}`),
    });
    await run(node, image.ref, dir);
    step('done');
  } finally {
    step('stopping everything and restoring the machine');
    await node?.stop();
  }
}

async function run(node: TestNode, image: string, dir: string): Promise<void> {
  step('3/8 a SoftHSM2 token on the node (keyward hsm init), its PIN as a Secret, then helm install');
  const token = createNodeToken(join(node.dir, 'softhsm'));
  await installKeyward(node, image, token, join(dir, 'helm'));
  step(`    ${(await node.kubectl(['-n', releaseNamespace, 'get', 'pods', '-o', 'wide'])).trim().replace(/\n/g, '\n    ')}`);

  step(`4/8 KeyRing ${etcdRing.namespace}/${etcdRing.name}, the KMS plugin as the chart's static pod, and kube-apiserver encrypting Secrets through it`);
  await applyKeyRing(node, etcdRing.namespace, etcdRing.name, { purpose: 'encryption', rotationPeriod: '720h' });
  step(`    ${(await node.kubectl(['-n', etcdRing.namespace, 'get', 'keyring', etcdRing.name])).trim().replace(/\n/g, '\n    ')}`);
  const kms = await installKmsStaticPod(node, image, token, etcdRing);
  await waitPodReady(node, 'kube-system', 'app.kubernetes.io/component=kms-plugin');
  const status = await kmsStatus(kms.socketPath);
  step(`    static pod kube-system/keyward-kms-plugin-${node.name} Ready; Status: healthz=${status.healthz} key_id=${status.keyId}`);
  const rewritten = await enableKmsEncryption(node, dir, kms.socketPath);
  step(`    EncryptionConfiguration points at its socket; kube-apiserver restarted; ${rewritten} existing Secrets rewritten under the key`);

  const value = 'correct-horse-battery-staple';
  await node.kubectl(['-n', 'default', 'create', 'secret', 'generic', 'db-password', `--from-literal=password=${value}`]);
  const raw = await readEtcdKey(node.controlPlane.etcdEndpoint, secretEtcdKey('default', 'db-password'), node.controlPlane.etcdPki);
  const stored = raw && parseKmsV2Value(raw);
  step(`5/8 Secret default/db-password written; etcd holds ${raw?.length ?? 0} bytes starting '${raw?.subarray(0, 23).toString()}'`);
  step(`    stored under key_id ${stored?.keyId}; plaintext in etcd: ${raw?.includes(Buffer.from(value)) ? 'YES (wrong!)' : 'no'}`);
  if (!stored || stored.keyId !== status.keyId || raw.includes(Buffer.from(value))) throw new Error('the Secret is not encrypted under the KeyRing key');

  step(`6/8 namespace ${shop.namespace}: KeyRings ${shop.secretRing} (encryption) and ${shop.volumeRing} (derivation), a KeyPolicy for ServiceAccount ${shop.serviceAccount}, a value sealed with keyward encrypt, a SecretProviderClass`);
  const secretValue = 'quickstart-db-password';
  await applyShopWorkload(node, releaseNamespace, admin, secretValue);
  await node.kubectl(['apply', '-f', '-'], keywardPod('web', shop.serviceAccount, node.images.busybox.ref));
  await waitPodRunning(node, 'web');
  const files = await node.kubectl(['-n', shop.namespace, 'exec', 'web', '--', 'ls', '-lL', `${shop.mountPath}/db`, `${shop.mountPath}/luks`]);
  step(`    pod ${shop.namespace}/web Running; the real driver filled its volume through keyward csi-provider:\n      ${files.trim().replace(/\n/g, '\n      ')}`);
  const password = (await readPodFile(node, 'web', 'db/password')).toString();
  const key = await readPodFile(node, 'web', 'luks/db.key');
  step(`    db/password matches the sealed value: ${password === secretValue}; luks/db.key: ${key.length} bytes derived in the HSM for ${shop.namespace}/${shop.serviceAccount}`);
  if (password !== secretValue || key.length !== 32) throw new Error('the pod volume does not hold what was sealed and derived');
  await node.kubectl(['apply', '-f', '-'], keywardPod('intruder', 'intruder', node.images.busybox.ref));
  const refusal = await expectMountRefused(node, 'intruder', 'NotAuthorized');
  step(`    pod ${shop.namespace}/intruder (ServiceAccount intruder) stays ContainerCreating: ${refusal.slice(0, 160)}...`);

  step('7/8 rotation: KeyPolicy refuses it to a cluster admin until granted; then both rings rotate');
  const refused = await node.kubectl(['-n', etcdRing.namespace, 'patch', 'keyring', etcdRing.name, '--type=merge', '-p', '{"spec":{"rotationRequest":"quickstart"}}']).then(() => 'admitted (wrong!)', (err: Error) => err.message.split('\n').pop());
  step(`    refused: ${refused}`);
  await node.kubectl(['apply', '-f', '-'], `apiVersion: keyward.dev/v1alpha1\nkind: KeyPolicy\nmetadata: { name: etcd-key-admins, namespace: ${etcdRing.namespace} }\nspec:\n  rules:\n    - { name: admins, subjects: [{ kind: User, name: ${admin} }], keyRings: [${etcdRing.name}], roles: [Administrator] }\n`);
  await eventually('the rotation admitted', 20_000, () => node.kubectl(['-n', etcdRing.namespace, 'patch', 'keyring', etcdRing.name, '--type=merge', '-p', `{"spec":{"rotationRequest":"quickstart-${Date.now()}"}}`]).catch(() => undefined), 1000);
  await eventually('version 2 primary', 30_000, async () => ((await primaryVersion(node, etcdRing.namespace, etcdRing.name)) === 2 ? true : undefined), 500);
  const v2 = await eventually('the plugin reporting version 2', 30_000, async () => {
    const now = await kmsStatus(kms.socketPath);
    return now.keyId !== status.keyId ? now.keyId : undefined;
  }, 1000);
  const keyBefore = key;
  await node.kubectl(['-n', shop.namespace, 'patch', 'keyring', shop.volumeRing, '--type=merge', '-p', `{"spec":{"rotationRequest":"quickstart-${Date.now()}"}}`]);
  step(`    ${etcdRing.name} and ${shop.volumeRing} rotated; the static plugin reports key_id ${v2} without a restart (read from the HSM)`);
  const newKey = await waitFileChange('the pod\'s derived key', keyBefore, () => readPodFile(node, 'web', 'luks/db.key'), rotationPollSeconds * 4000);
  step(`    the running pod's luks/db.key changed (${newKey.length} bytes, new version) at the driver's next poll; db/password unchanged: ${(await readPodFile(node, 'web', 'db/password')).toString() === secretValue}`);
  step('    waiting for kube-apiserver to switch to version 2 (it asks the plugin about once a minute); the operator then rewrites etcd under it and the scanner beside the plugin counts what is left');
  const retired = await eventually('re-encryption under version 2 complete', 300_000, async () => {
    const kr = JSON.parse(await node.kubectl(['-n', etcdRing.namespace, 'get', 'keyring', etcdRing.name, '-o', 'json'])) as KeyRing;
    return kr.status?.reEncryption?.targetVersion === 2 && kr.status.reEncryption.phase === 'Complete' ? kr : undefined;
  }, 2000);
  const run = retired.status?.reEncryption;
  const v1 = retired.status?.versions?.find((v) => v.number === 1);
  const keyIds = (await readEtcdPrefix(node.controlPlane.etcdEndpoint, '/registry/secrets/', node.controlPlane.etcdPki)).map(({ value }) => parseKmsV2Value(value)?.keyId);
  step(`    ${run?.rewrittenObjects ?? 0} objects rewritten (${run?.method}); etcd read directly: ${keyIds.filter((k) => k === v2).length} of ${keyIds.length} Secrets under version 2`);
  step(`    the scanner counts ${v1?.etcdObjects} objects under version 1 (scan at ${v1?.etcdObjectsProvenAt}): it may now be disabled and destroyed`);
  if (keyIds.some((k) => k !== v2) || v1?.etcdObjects !== 0) throw new Error('etcd still holds Secrets under version 1 after re-encryption');
  const old = await node.kubectl(['-n', 'default', 'get', 'secret', 'db-password', '-o', 'jsonpath={.data.password}']);
  step(`    the Secret written before the rotation reads back: ${Buffer.from(old, 'base64').toString() === value}`);

  step('8/8 audit: what the operator and the CSI provider recorded');
  const audit = async (selector: string): Promise<string[]> =>
    (await node.kubectl(['-n', releaseNamespace, 'logs', '-l', selector, '--tail=400']))
      .split('\n')
      .filter((line) => line.includes('"stream":"audit"'))
      .map((line) => JSON.parse(line) as { operation?: string; result?: string; code?: string; actor?: string; object?: string })
      .map((r) => `${(r.actor ?? '').replace('system:serviceaccount:', '')} ${r.operation ?? r.object ?? ''} ${r.result ?? ''} (${r.code ?? ''})`);
  for (const line of (await audit('app.kubernetes.io/component=operator')).slice(-6)) step(`    operator: ${line}`);
  for (const line of (await audit('app.kubernetes.io/component=csi-provider')).slice(-4)) step(`    csi-provider: ${line}`);
}

const dir = mkdtempSync(join(tmpdir(), 'keyward-quickstart-'));
// Removed also when the quickstart is interrupted.
const removeDir = trackDirectory(dir);
const started = Date.now();
try {
  await main(dir);
  step(`finished in ${Math.round((Date.now() - started) / 1000)} s`);
} catch (err) {
  console.error(`[quickstart] FAILED: ${(err as Error).message}`);
  process.exitCode = 1;
} finally {
  removeDir();
}
