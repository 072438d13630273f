// Keyward as users run it, on a real node: the image imported into containerd, `helm install` of
// the chart (operator, webhook behind its Service, CSI provider DaemonSet), the KMS plugin as the
// chart's static pod with kube-apiserver encrypting Secrets through it (read back from etcd), and
// pods whose volumes the real Secrets Store CSI driver fills through the provider; the static pod's
// etcd scanner, with its own client certificate from etcd's CA (etcd serves TLS only, as kubeadm
// runs it), proving to the operator what each key version protects. Then the faults
// the issue names, each on this node: refused pods, rotation reaching running pods, syncSecret,
// killed containers, a provider pod deleted mid-mount, the operator down during a rotation, and
// helm test, upgrade and uninstall.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { eventually } from '../../testbed/eventually.js';
import { parseKmsV2Value } from '../../testbed/control-plane/encryptedObject.js';
import { trackDirectory } from '../../testbed/control-plane/componentProcess.js';
import { readEtcdKey, readEtcdPrefix, secretEtcdKey } from '../../testbed/control-plane/etcdClient.js';
import { buildKeywardImage, type KeywardImage } from '../../testbed/image/keywardImage.js';
import { apiserverKmsHealthStatus, identityEncryptionConfig, kmsStatus } from '../kms/kmsPluginProcess.js';
import { chartDir, helmIn } from '../helm/helm.js';
import { nodeUnsupportedReason, startTestNode, type TestNode } from '../../testbed/node/testNode.js';
import {
  applyKeyRing,
  applyProviderClass,
  applyShopWorkload,
  expectMountRefused,
  keywardPod,
  primaryVersion,
  readPodFile,
  shop,
  waitFileChange,
  waitKeyRingReady,
  waitPodRunning,
} from './clusterChecks.js';
import {
  createNodeToken,
  enableKmsEncryption,
  installKeyward,
  installKmsStaticPod,
  nodeValues,
  releaseNamespace,
  waitPodReady,
  type KeywardRelease,
  type KmsStaticPod,
  type NodeToken,
} from './keywardOnNode.js';

const etcdRing = { namespace: 'kube-system', name: 'etcd-secrets' };
const admin = 'keyward-admin';
const secretValue = 'node-test-db-password';
/** The driver re-mounts every pod this often (--rotation-poll-interval). */
const rotationPollSeconds = 5;

/** SIGKILL to the one Keyward process running `subcommand` in a container of this node. */
function killContainerProcess(subcommand: string): void {
  const pids = execFileSync('pgrep', ['-f', `keyward.js ${subcommand}`], { encoding: 'utf8' })
    .trim()
    .split('\n')
    .filter((pid) => pid && readFileSync(`/proc/${pid}/cgroup`, 'utf8').includes('kubepods'));
  assert.equal(pids.length, 1, `one ${subcommand} process runs`);
  process.kill(Number(pids[0]), 'SIGKILL');
}

describe('Keyward installed on a real node (helm, static KMS plugin, Secrets Store CSI driver)', function () {
  this.timeout(600_000);
  let dir: string;
  let removeDir: (() => void) | undefined;
  let image: KeywardImage;
  let node: TestNode;
  let token: NodeToken;
  let release: KeywardRelease;
  let kms: KmsStaticPod;

  before(async function () {
    if (nodeUnsupportedReason()) this.skip();
    dir = mkdtempSync(join(tmpdir(), 'keyward-install-'));
    removeDir = trackDirectory(dir);
    image = await buildKeywardImage();
    node = await startTestNode({
      images: [image.dockerArchive],
      // etcd over https with client certificates from its own CA, as kubeadm runs it: the static
      // pod's scanner gets its certificate as the manifest's header tells an admin.
      controlPlane: { encryptionConfig: identityEncryptionConfig(dir), etcdTls: true },
      rotationPollInterval: `${rotationPollSeconds}s`,
    });
    token = createNodeToken(join(node.dir, 'softhsm'));
  });

  after(async () => {
    await node?.stop();
    removeDir?.();
  });

  it('helm install refuses a schema-invalid value, a missing PIN Secret and a wrong module path, and leaves nothing behind', async () => {
    const helm = helmIn(join(dir, 'helm-refusals'));
    const ns = 'keyward-refused';
    const attempt = (values: string[]): Promise<unknown> =>
      helm(['install', 'refused', chartDir, '--kubeconfig', node.kubeconfigPath, '--namespace', ns, '--create-namespace', ...nodeValues(node, image.ref, token), ...values, '--wait', '--timeout', '90s']);
    await assert.rejects(attempt(['--set', 'operator.replicaCount=-1']), /replicaCount/);
    await assert.rejects(attempt([]), /keyward-hsm-pin/);
    await node.kubectl(['create', 'namespace', ns]).catch(() => undefined);
    await node.kubectl(['-n', ns, 'create', 'secret', 'generic', 'keyward-hsm-pin', `--from-file=pin=${token.pinFile}`]);
    await assert.rejects(attempt(['--set', 'hsm.modulePath=/usr/lib/no-such-pkcs11.so']), /no-such-pkcs11\.so/);
    await helm(['uninstall', 'refused', '--kubeconfig', node.kubeconfigPath, '--namespace', ns, '--ignore-not-found']).catch(() => undefined);
    // Nothing of the refused releases stays: no workloads, no cluster-wide objects.
    const left = await node.kubectl(['get', 'deployments,daemonsets,services,clusterroles,clusterrolebindings,validatingwebhookconfigurations,mutatingwebhookconfigurations', '-A', '-l', 'app.kubernetes.io/instance=refused', '-o', 'name']);
    assert.equal(left.trim(), '');
    await node.kubectl(['delete', 'namespace', ns, '--wait=false']);
  });

  it('helm install brings up the operator behind its webhook Service and the CSI provider DaemonSet', async () => {
    release = await installKeyward(node, image.ref, token, join(dir, 'helm'));
    assert.ok(existsSync(join(node.providerDir, 'keyward.sock')), 'the provider listens in the driver directory');
    // The webhook answers through the Service: a KeyRing change nobody is granted is refused.
    await applyKeyRing(node, etcdRing.namespace, etcdRing.name, { purpose: 'encryption' });
    await assert.rejects(
      node.kubectl(['-n', etcdRing.namespace, 'patch', 'keyring', etcdRing.name, '--type=merge', '-p', '{"spec":{"rotationRequest":"not-granted"}}']),
      /rotate/,
    );
  });

  it('the KMS plugin runs as the chart static pod and kube-apiserver stores Secrets encrypted under the KeyRing', async () => {
    kms = await installKmsStaticPod(node, image.ref, token, etcdRing);
    await waitPodReady(node, 'kube-system', 'app.kubernetes.io/component=kms-plugin');
    const status = await kmsStatus(kms.socketPath);
    assert.equal(status.healthz, 'ok');
    const rewritten = await enableKmsEncryption(node, dir, kms.socketPath);
    assert.ok(rewritten >= 1, 'the PIN Secret and the webhook certificate were rewritten');
    await node.kubectl(['-n', 'default', 'create', 'secret', 'generic', 'after-kms', '--from-literal=password=plain-words']);
    const raw = await readEtcdKey(node.controlPlane.etcdEndpoint, secretEtcdKey('default', 'after-kms'), node.controlPlane.etcdPki);
    assert.ok(raw, 'etcd holds the Secret');
    assert.equal(parseKmsV2Value(raw)?.keyId, status.keyId);
    assert.ok(!raw.includes(Buffer.from('plain-words')));
    // Secrets written before encryption was on were rewritten under the key too.
    const pin = await readEtcdKey(node.controlPlane.etcdEndpoint, secretEtcdKey(releaseNamespace, 'keyward-hsm-pin'), node.controlPlane.etcdPki);
    assert.equal(parseKmsV2Value(pin!)?.keyId, status.keyId);
    assert.ok(!pin!.includes(Buffer.from(token.pin)));
  });

  it('the etcd scanner in the static pod proves from etcd what the primary version protects; the operator shows it and re-encryption; the plugin names the node [practice:verified-retirement]', async () => {
    // The operator looks at a ring no KMS plugin used yet every 5 minutes; a metadata change makes it look now.
    await node.kubectl(['-n', etcdRing.namespace, 'annotate', '--overwrite', 'keyring', etcdRing.name, `keyward.dev/test-poke=${Date.now()}`]);
    const keyId = (await kmsStatus(kms.socketPath)).keyId;
    const ringStatus = async (): Promise<RingStatus> => JSON.parse(await node.kubectl(['-n', etcdRing.namespace, 'get', 'keyring', etcdRing.name, '-o', 'jsonpath={.status}'])) as RingStatus;
    // What etcd holds, read directly (over TLS, as the apiserver's client): every Secret, and those under the primary's key id.
    const etcdSecrets = async (): Promise<{ total: number; underKey: number }> => {
      const values = await readEtcdPrefix(node.controlPlane.etcdEndpoint, '/registry/secrets/', node.controlPlane.etcdPki);
      return { total: values.length, underKey: values.filter((v) => parseKmsV2Value(v.value)?.keyId === keyId).length };
    };
    const proven = await eventually('the KeyRing showing a complete re-encryption and a scan count equal to what etcd holds', 150_000, async () => {
      const status = await ringStatus();
      const primary = status.versions?.find((v) => v.number === status.primaryVersion);
      const held = await etcdSecrets();
      if (status.reEncryption?.phase === 'Complete' && primary?.etcdObjects === held.underKey) return { status, primary, held };
      // Thrown, so a timeout names where it stopped.
      throw new Error(`etcd holds ${held.underKey} of ${held.total} Secrets under the primary; the KeyRing status is ${JSON.stringify(status)}`);
    }, 2000).catch(async (err: Error) => {
      const pod = await waitPodReady(node, 'kube-system', 'app.kubernetes.io/component=kms-plugin').catch(() => '');
      const logs = await Promise.all(['etcd-scanner', 'kms-plugin'].map((c) => node.kubectl(['-n', 'kube-system', 'logs', pod, '-c', c, '--tail=15']).catch((e: Error) => e.message)));
      const operator = await node.kubectl(['-n', releaseNamespace, 'logs', '-l', 'app.kubernetes.io/component=operator', '--tail=30']).catch((e: Error) => e.message);
      throw new Error(`${err.message}\nscanner: ${logs[0]}\nplugin: ${logs[1]}\noperator: ${operator}`);
    });
    const { status, primary, held } = proven;
    assert.equal(status.reEncryption?.targetVersion, status.primaryVersion);
    assert.equal(primary.keyId, keyId, 'the primary is the key id kube-apiserver encrypts with');
    assert.equal(held.underKey, held.total, 'every Secret in etcd is under the primary');
    assert.ok(held.total >= 3, `etcd holds the release's Secrets and the test's (${held.total})`);
    // The count comes from a scan made after the rewrite: the one the operator asked for.
    assert.ok(primary.etcdObjectsProvenAt && status.reEncryption?.completedAt, 'a proof time and a rewrite time');
    assert.ok(Date.parse(primary.etcdObjectsProvenAt) >= Date.parse(status.reEncryption.completedAt), `scan at ${primary.etcdObjectsProvenAt}, after the rewrite finished at ${status.reEncryption.completedAt}`);
    assert.equal(status.conditions?.find((c) => c.type === 'RetirementComplete')?.status, 'True');

    // The records in the HSM, read in the scanner's container (it holds the token and the PIN): the
    // KMS plugin's names the node (NODE_NAME from spec.nodeName, which the kubelet sets on a static
    // pod), and the scanner's report is complete and counts what etcd holds.
    const pod = await waitPodReady(node, 'kube-system', 'app.kubernetes.io/component=kms-plugin');
    const records = JSON.parse(await node.kubectl(['-n', 'kube-system', 'exec', pod, '-c', 'etcd-scanner', '--', 'node', '--max-old-space-size=32', '--input-type=module', '-e', hsmRecordsScript(etcdRing)])) as {
      uses: { component: string; host: string; statusKeyId?: string }[];
      reports: { complete: boolean; resources: { resource: string; byKeyId: Record<string, number> }[] }[];
    };
    const plugin = records.uses.filter((u) => u.component === 'kms-plugin');
    assert.deepEqual(plugin.map((u) => [u.host, u.statusKeyId]), [[node.name, keyId]], 'one KMS plugin, on this node, reporting the primary');
    assert.ok(records.reports[0]?.complete);
    assert.equal(records.reports[0]?.resources.find((r) => r.resource === 'secrets')?.byKeyId[keyId], primary.etcdObjects);
  });

  it('a pod granted by a KeyPolicy gets the sealed secret and its derived key through the real driver', async () => {
    await applyShopWorkload(node, releaseNamespace, admin, secretValue);
    await node.kubectl(['apply', '-f', '-'], keywardPod('web', shop.serviceAccount, node.images.busybox.ref));
    await waitPodRunning(node, 'web');
    assert.equal((await readPodFile(node, 'web', 'db/password')).toString(), secretValue);
    assert.equal((await readPodFile(node, 'web', 'luks/db.key')).length, 32);
    const modes = await node.kubectl(['-n', shop.namespace, 'exec', 'web', '--', 'stat', '-L', '-c', '%a %n', `${shop.mountPath}/db/password`, `${shop.mountPath}/luks/db.key`]);
    assert.match(modes, /^440 .*password\n400 .*db\.key/);
  });

  it('a pod whose ServiceAccount no KeyPolicy names stays ContainerCreating, with an Event naming NotAuthorized, and gets no files [practice:implicit-deny]', async () => {
    await node.kubectl(['apply', '-f', '-'], keywardPod('intruder', 'intruder', node.images.busybox.ref));
    const message = await expectMountRefused(node, 'intruder', 'NotAuthorized');
    assert.doesNotMatch(message, new RegExp(secretValue));
    const uid = await node.kubectl(['-n', shop.namespace, 'get', 'pod', 'intruder', '-o', 'jsonpath={.metadata.uid}']);
    const volumeDir = join(node.kubeletRootDir, 'pods', uid, 'volumes', 'kubernetes.io~csi', 'keys', 'mount');
    assert.deepEqual(existsSync(volumeDir) ? readdirSync(volumeDir) : [], []);
    await node.kubectl(['-n', shop.namespace, 'delete', 'pod', 'intruder', '--wait=false']);
  });

  it('syncSecret: the Kubernetes Secret the driver syncs is itself stored encrypted by the KMS plugin', async () => {
    await applyProviderClass(node, releaseNamespace, secretValue, true);
    await node.kubectl(['apply', '-f', '-'], keywardPod('synced', shop.serviceAccount, node.images.busybox.ref));
    await waitPodRunning(node, 'synced');
    const synced = await eventually('the synced Secret', 30_000, () => node.kubectl(['-n', shop.namespace, 'get', 'secret', 'shop-synced', '-o', 'jsonpath={.data.password}']).catch(() => undefined), 1000);
    assert.equal(Buffer.from(synced, 'base64').toString(), secretValue);
    const raw = await readEtcdKey(node.controlPlane.etcdEndpoint, secretEtcdKey(shop.namespace, 'shop-synced'), node.controlPlane.etcdPki);
    assert.equal(parseKmsV2Value(raw!)?.keyId, (await kmsStatus(kms.socketPath)).keyId);
    assert.ok(!raw!.includes(Buffer.from(secretValue)));
    await node.kubectl(['-n', shop.namespace, 'delete', 'pod', 'synced', '--wait=true']);
  });

  it('rotation: a new key version and a changed sealed value reach the running pod; a revoked grant stops further updates [practice:rotation]', async () => {
    const keyBefore = await readPodFile(node, 'web', 'luks/db.key');
    const before = await primaryVersion(node, shop.namespace, shop.volumeRing);
    await node.kubectl(['-n', shop.namespace, 'patch', 'keyring', shop.volumeRing, '--type=merge', '-p', `{"spec":{"rotationRequest":"node-test-${Date.now()}"}}`]);
    await eventually('the volume ring rotated', 30_000, async () => ((await primaryVersion(node, shop.namespace, shop.volumeRing)) === before + 1 ? true : undefined), 500);
    // The provider re-reads rings at most every 2 s, the driver remounts every poll interval.
    await waitFileChange('luks/db.key after rotation', keyBefore, () => readPodFile(node, 'web', 'luks/db.key'), (rotationPollSeconds * 3 + 5) * 1000);

    await applyProviderClass(node, releaseNamespace, 'changed-password');
    const changed = await waitFileChange('db/password after a new sealed value', Buffer.from(secretValue), () => readPodFile(node, 'web', 'db/password'), (rotationPollSeconds * 3 + 5) * 1000);
    assert.equal(changed.toString(), 'changed-password');

    // Revoked: the driver's remount is refused, so the files stay as they were.
    await node.kubectl(['-n', shop.namespace, 'patch', 'keypolicy', 'web-keys', '--type=json', '-p', '[{"op":"remove","path":"/spec/rules/0"}]']);
    await applyProviderClass(node, releaseNamespace, 'never-delivered');
    await new Promise((resolve) => setTimeout(resolve, (rotationPollSeconds * 3 + 2) * 1000));
    assert.equal((await readPodFile(node, 'web', 'db/password')).toString(), 'changed-password');
  });

  it('the KMS plugin container killed: kubelet restarts it, kube-apiserver recovers by itself, no Secret is lost [practice:continuity]', async () => {
    await restoreWebGrant();
    const countSecrets = async (): Promise<number> => (JSON.parse(await node.kubectl(['get', 'secrets', '-A', '-o', 'json'])) as { items: unknown[] }).items.length;
    const before = await countSecrets();
    const restarts = async (): Promise<number> => Number(await node.kubectl(['-n', 'kube-system', 'get', 'pods', '-l', 'app.kubernetes.io/component=kms-plugin', '-o', 'jsonpath={.items[0].status.containerStatuses[?(@.name=="kms-plugin")].restartCount}']));
    const restartsBefore = await restarts();
    killContainerProcess('kms-plugin');
    await eventually('kubelet restarting the plugin', 60_000, async () => ((await restarts()) > restartsBefore ? true : undefined), 1000);
    await waitPodReady(node, 'kube-system', 'app.kubernetes.io/component=kms-plugin');
    await eventually('kube-apiserver KMS health ok', 90_000, async () => ((await apiserverKmsHealthStatus(node.controlPlane)) === 200 ? true : undefined), 1000);
    await eventually('a Secret write', 30_000, () => node.kubectl(['-n', 'default', 'create', 'secret', 'generic', 'after-plugin-kill', '--from-literal=k=v']).catch(() => undefined), 1000);
    assert.equal(await countSecrets(), before + 1, 'every Secret still reads back');
  });

  it('the CSI provider pod deleted mid-mount: the driver retries and the pod starts once the DaemonSet pod is back', async () => {
    await node.kubectl(['-n', releaseNamespace, 'delete', 'pod', '-l', 'app.kubernetes.io/component=csi-provider', '--wait=false']);
    await node.kubectl(['apply', '-f', '-'], keywardPod('web-2', shop.serviceAccount, node.images.busybox.ref));
    await waitPodRunning(node, 'web-2', 120_000);
    assert.equal((await readPodFile(node, 'web-2', 'luks/db.key')).length, 32);
  });

  it('the operator killed during a rotation: KeyRing changes are refused while none serves, nothing is destroyed, the rotation completes exactly once', async () => {
    const ring = shop.secretRing;
    const before = await primaryVersion(node, shop.namespace, ring);
    const versionsBefore = await node.kubectl(['-n', shop.namespace, 'get', 'keyring', ring, '-o', 'jsonpath={.status.versions[*].state}']);
    const operatorPod = 'app.kubernetes.io/component=operator';
    const restarts = async (): Promise<number> =>
      Number((await node.kubectl(['get', 'pods', '-n', releaseNamespace, '-l', operatorPod, '-o', 'jsonpath={.items[0].status.containerStatuses[0].restartCount}'])) || 0);
    const restartsBefore = await restarts();
    await node.kubectl(['-n', shop.namespace, 'patch', 'keyring', ring, '--type=merge', '-p', `{"spec":{"rotationRequest":"during-crash-${Date.now()}"}}`]);
    killContainerProcess('operator');
    await assert.rejects(
      node.kubectl(['-n', shop.namespace, 'patch', 'keyring', ring, '--type=merge', '-p', '{"spec":{"rotationRequest":"while-down"}}']),
      /webhook/,
    );
    // Ready again only counts once the kubelet has seen the kill: the pod reads Ready until then.
    await eventually('the operator container restarted', 120_000, async () => ((await restarts()) > restartsBefore ? true : undefined), 500);
    await waitPodReady(node, releaseNamespace, operatorPod, 120_000);
    await eventually('the rotation done', 60_000, async () => ((await primaryVersion(node, shop.namespace, ring)) === before + 1 ? true : undefined), 1000);
    await waitKeyRingReady(node, shop.namespace, ring);
    assert.equal(await primaryVersion(node, shop.namespace, ring), before + 1, 'rotated exactly once');
    const states = await node.kubectl(['-n', shop.namespace, 'get', 'keyring', ring, '-o', 'jsonpath={.status.versions[*].state}']);
    assert.equal(states, `${versionsBefore} Enabled`, 'no version destroyed or disabled');
  });

  it('helm test passes; helm upgrade keeps the keys; helm uninstall leaves KeyRings and the token and nothing else', async () => {
    await release.helm(['test', 'keyward', ...release.kubeArgs, '--timeout', '120s']);
    const keyIds = async (): Promise<string> => node.kubectl(['get', 'keyrings', '-A', '-o', 'jsonpath={range .items[*]}{.metadata.name}={.status.versions[*].keyId};{end}']);
    const idsBefore = await keyIds();
    await release.helm(['upgrade', 'keyward', chartDir, ...release.kubeArgs, ...release.values, '--set', 'operator.logLevel=debug', '--wait', '--timeout', '120s']);
    await waitPodReady(node, releaseNamespace, 'app.kubernetes.io/component=operator');
    assert.equal(await keyIds(), idsBefore);
    await release.helm(['uninstall', 'keyward', ...release.kubeArgs, '--wait', '--timeout', '120s']);
    assert.equal(await keyIds(), idsBefore, 'KeyRings stay (Retain)');
    assert.ok(readdirSync(token.tokenDir).length > 0, 'the token stays');
    // Pods go with their owners, a moment after them.
    await eventually('the release pods gone', 60_000, async () => ((await node.kubectl(['get', 'pods', '-A', '-l', 'app.kubernetes.io/instance=keyward', '-o', 'name'])).trim() === '' ? true : undefined), 1000);
    const left = await node.kubectl(['get', 'all,secrets,configmaps,serviceaccounts,roles,rolebindings,clusterroles,clusterrolebindings,validatingwebhookconfigurations,mutatingwebhookconfigurations,poddisruptionbudgets,jobs', '-A', '-l', 'app.kubernetes.io/instance=keyward', '-o', 'name']);
    assert.equal(left.trim(), '');
    // Secrets still decrypt: the static-pod plugin is not the release's.
    await node.kubectl(['get', 'secrets', '-A']);
  });

  async function restoreWebGrant(): Promise<void> {
    await node.kubectl(['-n', shop.namespace, 'patch', 'keypolicy', 'web-keys', '--type=json', '-p', JSON.stringify([{ op: 'add', path: '/spec/rules/0', value: { name: 'web-secrets', subjects: [{ kind: 'ServiceAccount', namespace: shop.namespace, name: shop.serviceAccount }], keyRings: [shop.secretRing], operations: ['decrypt'] } }])]);
  }
});

interface RingStatus {
  primaryVersion?: number;
  versions?: { number: number; keyId?: string; etcdObjects?: number; etcdObjectsProvenAt?: string }[];
  reEncryption?: { phase: string; targetVersion: number; completedAt?: string };
  conditions?: { type: string; status: string }[];
}

/** Prints the ring's key-use records and scan reports as JSON, run with the image's node and the container's token and PIN. */
function hsmRecordsScript(ring: { namespace: string; name: string }): string {
  return `
const { HsmToken } = await import('/app/dist/core/hsm/hsmToken.js');
const { HsmRecords } = await import('/app/dist/core/hsm/hsmRecords.js');
const { readPinFile } = await import('/app/dist/core/hsm/pinFile.js');
const { RingStore } = await import('/app/dist/core/hsm/ringStore.js');
const { KeyUseRecords } = await import('/app/dist/core/keyUse/keyUseRecords.js');
const token = HsmToken.open({ modulePath: '/usr/lib/softhsm/libsofthsm2.so', tokenLabel: 'keyward', pin: readPinFile('/etc/keyward/user.pin') });
const ring = await new RingStore(token).resolve(${JSON.stringify(ring.name)}, ${JSON.stringify(ring.namespace)});
const records = new KeyUseRecords(new HsmRecords(token));
console.log(JSON.stringify({ uses: await records.uses(ring.ringId), reports: await records.scanReports(ring.ringId) }));
token.close();
`;
}
