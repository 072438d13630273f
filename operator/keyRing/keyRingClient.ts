// What the KeyRing reconciler writes to the apiserver: status and the finalizer through
// server-side apply (each under its own field manager, so neither clobbers other writers), and
// Events for every lifecycle action; all over keep-alive connections.
import { randomBytes } from 'node:crypto';
import { CoreV1Api, CustomObjectsApi, PatchStrategy, setHeaderOptions, type KubeConfig } from '@kubernetes/client-node';
import { keepAliveApiClient } from '../../core/kube/keepAliveApiClient.js';
import { keyRingResource, type KeyRing, type KeyRingStatus } from '../../core/api/keyRing.js';

export const keyRingFinalizer = 'keyward.dev/hsm-keys';
const statusManager = 'keyward-operator';
const finalizerManager = 'keyward-operator-finalizer';
const reportingComponent = 'keyward-operator';
const apply = setHeaderOptions('Content-Type', PatchStrategy.ServerSideApply);

export type EventType = 'Normal' | 'Warning';

export class KeyRingClient {
  private readonly objects: CustomObjectsApi;
  private readonly core: CoreV1Api;

  constructor(kubeConfig: KubeConfig, private readonly instance: string) {
    this.objects = keepAliveApiClient(kubeConfig, CustomObjectsApi);
    this.core = keepAliveApiClient(kubeConfig, CoreV1Api);
  }

  async applyStatus(keyRing: KeyRing, status: KeyRingStatus): Promise<void> {
    const { name = '', namespace = '' } = keyRing.metadata;
    await this.objects.patchNamespacedCustomObjectStatus(
      { ...keyRingResource, namespace, name, body: { ...identity(keyRing), status }, fieldManager: statusManager, force: true },
      apply,
    );
  }

  /** Adds or removes our finalizer; other finalizers are left alone. */
  async setFinalizer(keyRing: KeyRing, present: boolean): Promise<void> {
    const { name = '', namespace = '' } = keyRing.metadata;
    const body = { ...identity(keyRing), metadata: { name, namespace, finalizers: present ? [keyRingFinalizer] : [] } };
    await this.objects.patchNamespacedCustomObject({ ...keyRingResource, namespace, name, body, fieldManager: finalizerManager, force: true }, apply);
  }

  /** Records a lifecycle action on the KeyRing; an Event that cannot be written is not worth failing for. */
  async event(keyRing: KeyRing, type: EventType, reason: string, message: string): Promise<void> {
    const { name = '', namespace = '', uid, resourceVersion } = keyRing.metadata;
    const now = new Date();
    try {
      await this.core.createNamespacedEvent({
        namespace,
        body: {
          metadata: { name: `${name}.${randomBytes(8).toString('hex')}`, namespace },
          involvedObject: { apiVersion: keyRing.apiVersion, kind: 'KeyRing', name, namespace, uid, resourceVersion },
          type,
          reason,
          message,
          source: { component: reportingComponent },
          reportingComponent,
          reportingInstance: this.instance,
          firstTimestamp: now,
          lastTimestamp: now,
          count: 1,
        },
      });
    } catch {
      // Events are best effort, as in client-go's recorder.
    }
  }
}

const identity = (keyRing: KeyRing) => ({
  apiVersion: `${keyRingResource.group}/${keyRingResource.version}`,
  kind: 'KeyRing',
  metadata: { name: keyRing.metadata.name, namespace: keyRing.metadata.namespace },
});
