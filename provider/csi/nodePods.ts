// The pods of this node, watched (a field selector on the node name the downward API gives) so
// that a pod's identity ends with the pod: when a pod is deleted, or its name comes back with
// another uid, the provider forgets what it cached for the old uid as soon as the watch says so,
// instead of serving its token until a cache lifetime runs out. Only pod metadata is kept.
import type { ApiConnection } from '../../core/kube/apiConnection.js';
import { listWatchInformer, type ObjectInformer } from '../../core/kube/listWatchInformer.js';
import type { Logger } from '../../core/observability/logger.js';

interface PodMetadata {
  metadata: { name?: string; namespace?: string; uid?: string; resourceVersion?: string };
}

export class NodePods {
  private readonly informer: ObjectInformer<PodMetadata>;
  /** The uid last seen under each namespace/name, to notice a name that returned with a new uid. */
  private readonly uids = new Map<string, string>();
  private readonly goneHandlers: ((uid: string) => void)[] = [];

  constructor(api: ApiConnection, nodeName: string, log: Logger) {
    this.informer = listWatchInformer<PodMetadata>(api, { group: '', version: 'v1', plural: 'pods' }, log, {
      fieldSelector: `spec.nodeName=${nodeName}`,
      keep: ({ metadata: { name, namespace, uid, resourceVersion } }) => ({ metadata: { name, namespace, uid, resourceVersion } }),
    });
    const seen = (pod: PodMetadata): void => {
      const key = `${pod.metadata.namespace ?? ''}/${pod.metadata.name ?? ''}`;
      const before = this.uids.get(key);
      if (before !== undefined && before !== pod.metadata.uid) this.gone(before);
      if (pod.metadata.uid !== undefined) this.uids.set(key, pod.metadata.uid);
    };
    this.informer.on('add', seen);
    this.informer.on('update', seen);
    this.informer.on('delete', (pod) => {
      this.uids.delete(`${pod.metadata.namespace ?? ''}/${pod.metadata.name ?? ''}`);
      if (pod.metadata.uid !== undefined) this.gone(pod.metadata.uid);
    });
  }

  /** Called with the uid of each pod that is gone from the node. */
  onGone(handler: (uid: string) => void): void {
    this.goneHandlers.push(handler);
  }

  /** Resolves after the first list, or its first failure (the informer keeps retrying). */
  start(): Promise<void> {
    return this.informer.start();
  }

  stop(): Promise<void> {
    return this.informer.stop();
  }

  private gone(uid: string): void {
    for (const handler of this.goneHandlers) handler(uid);
  }
}
