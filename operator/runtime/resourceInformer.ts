// A cluster-wide informer over one of Keyward's custom resources that heals itself: a dropped
// watch (apiserver restart, timeout) ends with an error, and the informer lists again.
import { CustomObjectsApi, makeInformer, type Informer, type KubeConfig, type KubernetesObject, type ObjectCache } from '@kubernetes/client-node';
import type { Logger } from '../../core/observability/logger.js';

export interface ResourceInformer<T extends KubernetesObject> extends ObjectCache<T> {
  on(event: 'add' | 'update' | 'delete', handler: (object: T) => void): void;
  /** Resolves after the first list (or its failure, which is retried). */
  start(): Promise<void>;
  stop(): Promise<void>;
}

const restartMs = 1000;

export function resourceInformer<T extends KubernetesObject>(
  kubeConfig: KubeConfig,
  resource: { group: string; version: string; plural: string },
  log: Logger,
): ResourceInformer<T> {
  const objects = kubeConfig.makeApiClient(CustomObjectsApi);
  const informer: Informer<T> & ObjectCache<T> = makeInformer<T>(kubeConfig, `/apis/${resource.group}/${resource.version}/${resource.plural}`, () =>
    objects.listClusterCustomObject({ ...resource }),
  );
  let stopped = false;
  informer.on('error', (err: unknown) => {
    if (stopped) return;
    log.warn({ err: (err as Error)?.message }, `${resource.plural} watch failed; listing again`);
    setTimeout(() => {
      if (!stopped) informer.start().catch(() => undefined);
    }, restartMs);
  });
  return {
    get: (name, namespace) => informer.get(name, namespace),
    list: (namespace) => informer.list(namespace),
    on: (event, handler) => informer.on(event, handler),
    start: () =>
      informer.start().catch((err: unknown) => log.warn({ resource: resource.plural, err: (err as Error).message }, 'first list failed; retrying')),
    stop: async () => {
      stopped = true;
      await informer.stop();
    },
  };
}
