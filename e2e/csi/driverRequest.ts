// What the Secrets Store CSI driver sends a provider, for tests and the quickstart where no kubelet
// runs: pods exist as API objects (they stay Pending), their tokens come from TokenRequest bound to
// the pod, and MountRequests carry the attributes kubelet and the driver would set.
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { CoreV1Api } from '@kubernetes/client-node';
import type { MountRequestSchema } from '../../proto/gen/csi/v1alpha1/service_pb.js';

export interface TestPod {
  namespace: string;
  name: string;
  uid: string;
  serviceAccountName: string;
}

/** What kubelet passes in csi.storage.k8s.io/serviceAccount.tokens for one audience. */
export interface PodTokenEntry {
  token: string;
  expirationTimestamp: string;
}

/** Creates the pod (its ServiceAccount too, if missing); no kubelet will run it, even on `nodeName`. */
export async function createPod(core: CoreV1Api, namespace: string, name: string, serviceAccountName: string, nodeName?: string): Promise<TestPod> {
  try {
    await core.createNamespacedServiceAccount({ namespace, body: { metadata: { name: serviceAccountName } } });
  } catch (err) {
    if ((err as { code?: number }).code !== 409) throw err;
  }
  const pod = await core.createNamespacedPod({
    namespace,
    body: {
      metadata: { name },
      spec: {
        serviceAccountName,
        ...(nodeName ? { nodeName } : {}),
        containers: [{ name: 'app', image: 'registry.invalid/app:1' }],
        volumes: [{ name: 'keys', csi: { driver: 'secrets-store.csi.k8s.io', readOnly: true, volumeAttributes: { secretProviderClass: 'keys' } } }],
      },
    },
  });
  return { namespace, name, uid: pod.metadata?.uid ?? '', serviceAccountName };
}

/** A token as kubelet mints it for the CSIDriver's tokenRequests: bound to the pod, for one audience. */
export async function podToken(core: CoreV1Api, pod: TestPod, audience: string, options: { bound?: boolean } = {}): Promise<PodTokenEntry> {
  const boundObjectRef = options.bound === false ? undefined : { apiVersion: 'v1', kind: 'Pod', name: pod.name, uid: pod.uid };
  const request = await core.createNamespacedServiceAccountToken({
    namespace: pod.namespace,
    name: pod.serviceAccountName,
    body: { spec: { audiences: [audience], expirationSeconds: 3600, boundObjectRef } },
  });
  const token = request.status?.token;
  if (!token) throw new Error(`TokenRequest for ${pod.namespace}/${pod.serviceAccountName} returned no token`);
  return { token, expirationTimestamp: new Date(request.status?.expirationTimestamp ?? Date.now() + 3600_000).toISOString() };
}

export interface DriverMountOptions {
  /** The SecretProviderClass's `objects` parameter (YAML). */
  objects: string;
  tokens: Record<string, PodTokenEntry>;
  /** Added to, or overriding, the attributes (the pod author can set any key). */
  attributes?: Record<string, string>;
  secrets?: string;
  permission?: string;
  targetPath?: string;
}

/** The MountRequest the driver sends for `pod`'s volume `keys`. */
export function driverMountRequest(pod: TestPod, options: DriverMountOptions): MessageInitShape<typeof MountRequestSchema> {
  const attributes: Record<string, string> = {
    objects: options.objects,
    secretProviderClass: 'keys',
    'csi.storage.k8s.io/pod.name': pod.name,
    'csi.storage.k8s.io/pod.namespace': pod.namespace,
    'csi.storage.k8s.io/pod.uid': pod.uid,
    'csi.storage.k8s.io/serviceAccount.name': pod.serviceAccountName,
    'csi.storage.k8s.io/ephemeral': 'true',
    'csi.storage.k8s.io/serviceAccount.tokens': JSON.stringify(options.tokens),
    ...options.attributes,
  };
  return {
    attributes: JSON.stringify(attributes),
    secrets: options.secrets ?? 'null',
    permission: options.permission ?? '420',
    targetPath: options.targetPath ?? `/var/lib/kubelet/pods/${pod.uid}/volumes/kubernetes.io~csi/keys/mount`,
    currentObjectVersion: [],
  };
}
