// Workload volumes encrypted at rest, on a real node: examples/encrypted-volume.yaml applied as a
// user would (only the image names and the node's local volume filled in), its StatefulSet on a
// local PersistentVolume whose ext4 supports encryption (a loop device made by the test), its
// key delivered by the real Secrets Store CSI driver through Keyward's provider. What the disk
// holds is read from the image file itself.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { trackDirectory } from '../../testbed/control-plane/componentProcess.js';
import { eventually } from '../../testbed/eventually.js';
import { buildKeywardImage, type KeywardImage } from '../../testbed/image/keywardImage.js';
import { nodeUnsupportedReason, startTestNode, type TestNode } from '../../testbed/node/testNode.js';
import { createEncryptedFilesystem, nodeUnsupportedReason as encryptionUnsupportedReason, type EncryptedFilesystem } from '../../testbed/volume/encryptedFilesystem.js';
import { createNodeToken, installKeyward } from '../install/keywardOnNode.js';
import { expectMountRefused, primaryVersion, waitKeyRingReady } from '../install/clusterChecks.js';
import { applyEncryptedLocalStorage, encryptedVolumeExample, forNode, rekeyJobExample } from './encryptedVolumeOnNode.js';

const ns = 'records';
const pod = 'ledger-0';
const dataDir = '/data/ledger';
/** Record contents and file names: neither may appear in the disk image. */
const recordText = (i: number): string => `keyward-ledger-record-${i}-plaintext`;
const recordName = (i: number): string => `ledger-entry-${i}.txt`;
const records = 20;

describe('workload volumes encrypted at rest under a Keyward key (real node, fscrypt v2)', function () {
  this.timeout(600_000);
  let dir: string;
  let removeDir: (() => void) | undefined;
  let image: KeywardImage;
  let node: TestNode;
  let fs: EncryptedFilesystem;

  const kubectl = (args: string[], input?: string): Promise<string> => node.kubectl(['-n', ns, ...args], input);
  const exec = (container: string, script: string): Promise<string> => kubectl(['exec', pod, '-c', container, '--', 'sh', '-c', script]);
  const scale = async (replicas: number): Promise<void> => {
    await kubectl(['scale', 'statefulset', 'ledger', `--replicas=${replicas}`]);
    if (replicas === 0) await kubectl(['wait', '--for=delete', `pod/${pod}`, '--timeout=90s']).catch(() => undefined);
    else await eventually(`${pod} Ready`, 120_000, () => kubectl(['wait', '--for=condition=Ready', `pod/${pod}`, '--timeout=5s']).then(() => true, () => undefined), 1000);
  };
  const readAllRecords = async (): Promise<string[]> => (await exec('ledger', `for i in $(seq 1 ${records}); do cat ${dataDir}/ledger-entry-$i.txt; done`)).trim().split('\n');
  const expectedRecords = Array.from({ length: records }, (_, i) => recordText(i + 1));
  /** The pod's init container state, for a pod that must not start. */
  const unlockFailure = (): Promise<string | undefined> =>
    kubectl(['get', 'pod', pod, '-o', 'jsonpath={.status.initContainerStatuses[0].lastState.terminated.message}{.status.initContainerStatuses[0].state.terminated.message}']).then((m) => m || undefined, () => undefined);

  before(async function () {
    if (nodeUnsupportedReason() || encryptionUnsupportedReason()) this.skip();
    dir = mkdtempSync(join(tmpdir(), 'keyward-volume-'));
    removeDir = trackDirectory(dir);
    image = await buildKeywardImage();
    node = await startTestNode({ images: [image.dockerArchive], rotationPollInterval: '5s' });
    const token = createNodeToken(join(node.dir, 'softhsm'));
    await installKeyward(node, image.ref, token, join(dir, 'helm'));
    fs = createEncryptedFilesystem({ sizeMiB: 64 });
    await applyEncryptedLocalStorage(node, fs, 64);
  });

  after(async () => {
    await node?.stop();
    fs?.stop();
    removeDir?.();
  });

  it('the example StatefulSet starts with its directory encrypted, and its records are ciphertext on disk, names included', async () => {
    await node.kubectl(['apply', '-f', '-'], forNode(encryptedVolumeExample, node, image.ref));
    await waitKeyRingReady(node, ns, 'volume-keys');
    // Rotations below are the platform team's, granted to the admin user kubectl runs as.
    await kubectl(['apply', '-f', '-'], `apiVersion: keyward.dev/v1alpha1
kind: KeyPolicy
metadata: { name: platform-admins }
spec:
  rules:
    - name: admins
      subjects: [{ kind: User, name: keyward-admin }]
      keyRings: [volume-keys]
      roles: [Administrator]
`);
    await eventually(`${pod} Ready`, 180_000, () => kubectl(['wait', '--for=condition=Ready', `pod/${pod}`, '--timeout=5s']).then(() => true, () => undefined), 1000);
    await exec('ledger', `for i in $(seq 1 ${records}); do echo keyward-ledger-record-$i-plaintext > ${dataDir}/ledger-entry-$i.txt; done; sync`);
    assert.deepEqual(await readAllRecords(), expectedRecords);

    const status = JSON.parse(await exec('lock-on-exit', `node /app/dist/cli/keyward.js volume status --dir=${dataDir} -o json`)) as Record<string, unknown>;
    assert.equal(status.encrypted, true, 'the directory has an fscrypt policy');
    assert.equal(status.keyVersion, 1);
    // The unlock is audited with the workload (the init container's log is its audit stream).
    const audit = await kubectl(['logs', pod, '-c', 'unlock']);
    assert.match(audit, /"operation":"volumeUnlock"/);
    assert.match(audit, /"pod":"records\/ledger-0"/);

    const disk = readFileSync(fs.image);
    for (let i = 1; i <= records; i++) {
      assert.equal(disk.indexOf(recordText(i)), -1, `record ${i} is not on the disk in plain text`);
      assert.equal(disk.indexOf(recordName(i)), -1, `file name ${recordName(i)} is not on the disk in plain text`);
    }
  });

  it('with no pod of the workload running, the data on the node is locked: names are ciphertext and contents unreadable', async () => {
    await scale(0);
    const onNode = join(fs.mountPoint, 'ledger');
    const names = readdirSync(onNode);
    assert.ok(names.length >= records, 'the entries are still there');
    assert.ok(names.every((n) => !n.startsWith('ledger-entry-')), `names are ciphertext: ${names.slice(0, 3).join(', ')}`);
    // ENOKEY, which Node reports by number only.
    assert.throws(() => readFileSync(join(onNode, names[0]!)), (err: NodeJS.ErrnoException) => err.errno === -126);
  });

  it('a new pod of the workload reads every record', async () => {
    await scale(1);
    assert.deepEqual(await readAllRecords(), expectedRecords);
  });

  it('another ServiceAccount is refused the key, and on the same volume without it sees only ciphertext', async () => {
    await kubectl(['create', 'serviceaccount', 'snoop']);
    const snoopPod = (name: string, withKey: boolean): string => `apiVersion: v1
kind: Pod
metadata: { name: ${name} }
spec:
  serviceAccountName: snoop
  automountServiceAccountToken: false
  restartPolicy: Never
  securityContext: { runAsUser: 65532, runAsGroup: 65532 }
  containers:
    - name: snoop
      image: ${node.images.busybox.ref}
      imagePullPolicy: Never
      command: [sh, -c, 'ls ${dataDir}; cat ${dataDir}/* 2>&1; true']
      volumeMounts: [{ name: data, mountPath: /data }${withKey ? ', { name: key, mountPath: /run/keyward/volume, readOnly: true }' : ''}]
  volumes:
    - { name: data, persistentVolumeClaim: { claimName: data-ledger-0 } }
${withKey ? '    - { name: key, csi: { driver: secrets-store.csi.k8s.io, readOnly: true, volumeAttributes: { secretProviderClass: ledger-volume-key } } }\n' : ''}`;
    // With the workload's SecretProviderClass: the provider refuses the Mount, the pod never starts.
    await kubectl(['apply', '-f', '-'], snoopPod('snoop-key', true));
    assert.match(await expectMountRefused(node, 'snoop-key', 'NotAuthorized', 60_000, ns), /NotAuthorized/);
    await kubectl(['delete', 'pod', 'snoop-key', '--wait=false']);

    // Without the key, while no pod of the workload runs (same uid even, so only encryption protects it).
    await scale(0);
    await kubectl(['apply', '-f', '-'], snoopPod('snoop-disk', false));
    await eventually('snoop-disk done', 120_000, async () => ((await kubectl(['get', 'pod', 'snoop-disk', '-o', 'jsonpath={.status.phase}'])) === 'Succeeded' ? true : undefined), 1000);
    const seen = await kubectl(['logs', 'snoop-disk']);
    for (let i = 1; i <= records; i++) {
      assert.ok(!seen.includes(recordName(i)) && !seen.includes(recordText(i)), `record ${i} not seen by another ServiceAccount`);
    }
    assert.match(seen, /Required key not available|No such file/);
    await kubectl(['delete', 'pod', 'snoop-disk']);
  });

  it('after a reboot (filesystem remounted, its keys gone) the next pod of the workload unlocks again', async () => {
    fs.remount();
    await scale(1);
    assert.deepEqual(await readAllRecords(), expectedRecords);
  });

  it('after a rotation the pod still gets the version its data needs; with that version disabled it does not start and says why; re-key moves the data to the new version', async () => {
    await kubectl(['patch', 'keyring', 'volume-keys', '--type=merge', '-p', '{"spec":{"rotationRequest":"volume-rotation-1"}}']);
    await eventually('the volume ring rotated', 60_000, async () => ((await primaryVersion(node, ns, 'volume-keys')) === 2 ? true : undefined), 500);
    // A restart after the rotation: data.key is now version 2, the directory is under version 1 (data.key.v1).
    await kubectl(['delete', 'pod', pod, '--wait=true']);
    await scale(1);
    assert.deepEqual(await readAllRecords(), expectedRecords);

    // Version 1 disabled while the directory is still under it: the pod does not start, naming it.
    await kubectl(['patch', 'keyring', 'volume-keys', '--type=merge', '-p', '{"spec":{"versions":[{"number":1,"state":"Disabled"}]}}']);
    await eventually('version 1 Disabled', 60_000, async () => ((await kubectl(['get', 'keyring', 'volume-keys', '-o', 'jsonpath={.status.versions[?(@.number==1)].state}'])) === 'Disabled' ? true : undefined), 500);
    await kubectl(['delete', 'pod', pod, '--wait=true']);
    const message = await eventually('the unlock refusal in the pod status', 120_000, unlockFailure, 1000);
    assert.match(message, /ForeignKey/);
    assert.match(message, /version 1/);

    // Enabled again, the pod starts; then the documented re-key Job moves the data to version 2.
    await kubectl(['patch', 'keyring', 'volume-keys', '--type=merge', '-p', '{"spec":{"versions":[{"number":1,"state":"Enabled"}]}}']);
    await kubectl(['delete', 'pod', pod, '--wait=false']);
    await scale(1);
    await scale(0);
    await node.kubectl(['apply', '-f', '-'], forNode(rekeyJobExample, node, image.ref));
    await kubectl(['wait', '--for=condition=Complete', 'job/ledger-rekey', '--timeout=120s']);
    assert.match(await kubectl(['logs', 'job/ledger-rekey']), /"operation":"volumeRekey"/);

    // Version 1 is no longer needed: disabled, the workload still starts and reads everything.
    await kubectl(['patch', 'keyring', 'volume-keys', '--type=merge', '-p', '{"spec":{"versions":[{"number":1,"state":"Disabled"}]}}']);
    await scale(1);
    assert.deepEqual(await readAllRecords(), expectedRecords);
    const status = JSON.parse(await exec('lock-on-exit', `node /app/dist/cli/keyward.js volume status --dir=${dataDir} -o json`)) as Record<string, unknown>;
    assert.equal(status.keyVersion, 2);
  });
});
