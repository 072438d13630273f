// The encrypted-volume example on a test node, as the e2e test and bench:volume set it up: the
// node's storage (a StorageClass and a local PersistentVolume on an ext4 that can encrypt, on a
// loop device), and the manifests of examples/ with this node's images, which are imported into
// containerd and never pulled.
import { readFileSync } from 'node:fs';
import type { TestNode } from '../../testbed/node/testNode.js';
import type { EncryptedFilesystem } from '../../testbed/volume/encryptedFilesystem.js';

const examples = new URL('../../../examples/', import.meta.url);
export const encryptedVolumeExample = readFileSync(new URL('encrypted-volume.yaml', examples), 'utf8');
export const rekeyJobExample = readFileSync(new URL('encrypted-volume-rekey.yaml', examples), 'utf8');

/** A manifest of examples/ with the node's Keyward image and busybox, pull policy Never. */
export function forNode(manifest: string, node: TestNode, keywardImage: string): string {
  return manifest
    .replaceAll('ghcr.io/keyward/keyward:0.1.0', keywardImage)
    .replaceAll('busybox:1.36', node.images.busybox.ref)
    .replace(/^( *)image: (\S+)$/gm, '$1image: $2\n$1imagePullPolicy: Never');
}

/** StorageClass `encrypted-local` and one local PersistentVolume on `fs`, bound to the node. */
export async function applyEncryptedLocalStorage(node: TestNode, fs: EncryptedFilesystem, sizeMiB: number): Promise<void> {
  await node.kubectl(['apply', '-f', '-'], `apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: { name: encrypted-local }
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
---
apiVersion: v1
kind: PersistentVolume
metadata: { name: encrypted-local-0 }
spec:
  capacity: { storage: ${sizeMiB}Mi }
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: encrypted-local
  local: { path: ${fs.mountPoint} }
  nodeAffinity:
    required:
      nodeSelectorTerms: [{ matchExpressions: [{ key: kubernetes.io/hostname, operator: In, values: [${node.name}] }] }]
`);
}
