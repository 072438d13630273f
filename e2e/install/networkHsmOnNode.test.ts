// The chart against a network HSM, configured only through its `hsm` values: p11-kit's server
// exports the node's SoftHSM2 token on a socket (the stand-in for a network HSM), and every pod
// loads p11-kit's client module, mounted from the host, instead of SoftHSM2. Debian 12's p11-kit
// (0.24) cannot carry AES-GCM parameters, so the install's HSM check refuses it naming
// CKM_AES_GCM; with the check turned off, what the module does carry works end to end: the
// operator generates a derivation ring over the socket and a pod gets its derived key.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dump, load } from 'js-yaml';
import { buildKeywardImage, type KeywardImage } from '../../testbed/image/keywardImage.js';
import { startNetworkHsm, type NetworkHsm } from '../../testbed/hsm/networkHsm.js';
import { chartDir, helmIn } from '../helm/helm.js';
import { nodeUnsupportedReason, startTestNode, type TestNode } from '../../testbed/node/testNode.js';
import { readPodFile, waitKeyRingReady, waitPodRunning } from './clusterChecks.js';
import { createNodeToken, imageUid, nodeValues, releaseNamespace, waitKeywardReady, type NodeToken } from './keywardOnNode.js';
import { trackDirectory } from '../../testbed/control-plane/componentProcess.js';

interface NetworkHsmValues {
  hsm: {
    extraEnv: { name: string; value: string }[];
    extraVolumes: { name: string; hostPath: { path: string } }[];
  };
}

describe('Keyward on a real node with a network HSM (p11-kit client module, chart values only)', function () {
  this.timeout(600_000);
  let dir: string;
  let removeDir: (() => void) | undefined;
  let image: KeywardImage;
  let node: TestNode;
  let token: NodeToken;
  let hsm: NetworkHsm;
  let valuesFile: string;
  const helmArgs = (): string[] => ['--kubeconfig', node.kubeconfigPath, '--namespace', releaseNamespace];

  before(async function () {
    if (nodeUnsupportedReason() || spawnSync('sh', ['-c', 'command -v p11-kit']).status !== 0) this.skip();
    dir = mkdtempSync(join(tmpdir(), 'keyward-network-hsm-node-'));
    removeDir = trackDirectory(dir);
    image = await buildKeywardImage();
    node = await startTestNode({ images: [image.dockerArchive] });
    token = createNodeToken(join(node.dir, 'softhsm'));
    hsm = await startNetworkHsm({ token, socketOwner: { uid: imageUid, gid: imageUid }, parentDir: node.dir });
    // The documented values, with this node's socket directory in place of /run/keyward-hsm.
    const values = load(readFileSync(join(import.meta.dirname, '..', '..', '..', 'e2e', 'hsm', 'network-hsm-values.yaml'), 'utf8')) as NetworkHsmValues;
    const socketDir = join(hsm.socketPath, '..');
    values.hsm.extraVolumes.find((v) => v.name === 'hsm-socket')!.hostPath.path = socketDir;
    values.hsm.extraEnv.find((e) => e.name === 'P11_KIT_SERVER_ADDRESS')!.value = `unix:path=/run/keyward-hsm/${hsm.socketPath.split('/').pop()}`;
    valuesFile = join(dir, 'network-hsm-values.yaml');
    writeFileSync(valuesFile, dump(values));
    await node.kubectl(['create', 'namespace', releaseNamespace]);
    await node.kubectl(['-n', releaseNamespace, 'create', 'secret', 'generic', 'keyward-hsm-pin', `--from-file=pin=${token.pinFile}`]);
  });

  after(async () => {
    await hsm?.stop();
    await node?.stop();
    removeDir?.();
  });

  it('helm install refuses the module at its HSM check, naming CKM_AES_GCM, and installs nothing', async () => {
    const helm = helmIn(join(dir, 'helm'));
    const install = helm(['install', 'keyward', chartDir, ...helmArgs(), ...nodeValues(node, image.ref, token), '-f', valuesFile, '--wait', '--timeout', '120s']);
    await assert.rejects(install, /CKM_AES_GCM/);
    const left = await node.kubectl(['get', 'deployments,daemonsets,validatingwebhookconfigurations', '-A', '-l', 'app.kubernetes.io/instance=keyward', '-o', 'name']);
    assert.equal(left.trim(), '');
    await helm(['uninstall', 'keyward', ...helmArgs(), '--ignore-not-found']).catch(() => undefined);
  });

  it('with the check off, the operator generates a derivation ring over the socket and a pod gets its derived key', async () => {
    const helm = helmIn(join(dir, 'helm'));
    await helm(['install', 'keyward', chartDir, ...helmArgs(), ...nodeValues(node, image.ref, token), '-f', valuesFile, '--set', 'hsm.check.enabled=false', '--wait', '--timeout', '120s']);
    await waitKeywardReady(node);
    await node.kubectl(['apply', '-f', '-'], `apiVersion: v1
kind: Namespace
metadata: { name: shop }
---
apiVersion: v1
kind: ServiceAccount
metadata: { name: web, namespace: shop }
---
apiVersion: keyward.dev/v1alpha1
kind: KeyRing
metadata: { name: volume-keys, namespace: shop }
spec: { purpose: derivation }
---
apiVersion: keyward.dev/v1alpha1
kind: KeyPolicy
metadata: { name: web-keys, namespace: shop }
spec:
  rules:
    - { name: web-volume, subjects: [{ kind: ServiceAccount, namespace: shop, name: web }], keyRings: [volume-keys], operations: [deriveKey] }
---
apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata: { name: shop-keys, namespace: shop }
spec:
  provider: keyward
  parameters:
    objects: |
      - { type: dataKey, name: db-volume, keyRing: volume-keys, path: luks/db.key, mode: "0400" }
`);
    await waitKeyRingReady(node, 'shop', 'volume-keys');
    const operatorModule = await node.kubectl(['-n', releaseNamespace, 'get', 'deploy', 'keyward-operator', '-o', 'jsonpath={.spec.template.spec.containers[0].args}']);
    assert.match(operatorModule, /p11-kit-client\.so/, 'the operator loads the network client module');
    await node.kubectl(['apply', '-f', '-'], `apiVersion: v1
kind: Pod
metadata: { name: web, namespace: shop }
spec:
  serviceAccountName: web
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
    - { name: app, image: ${node.images.busybox.ref}, imagePullPolicy: Never, command: [sleep, '36000'], volumeMounts: [{ name: keys, mountPath: /mnt/keyward, readOnly: true }] }
  volumes:
    - { name: keys, csi: { driver: secrets-store.csi.k8s.io, readOnly: true, volumeAttributes: { secretProviderClass: shop-keys } } }
`);
    await waitPodRunning(node, 'web');
    assert.equal((await readPodFile(node, 'web', 'luks/db.key')).length, 32);
  });
});
