// A watch for benchmarks that outlives the apiserver ending it: every added or changed object is
// handed on, and a watch that ends is started again from the last resourceVersion seen.
import { Watch, type KubeConfig, type KubernetesObject } from '@kubernetes/client-node';

export async function watchObjects<T extends KubernetesObject>(
  kubeConfig: KubeConfig,
  path: string,
  options: { resourceVersion?: string; fieldSelector?: string },
  onObject: (object: T) => void,
  progress: (line: string) => void,
): Promise<{ stop(): void }> {
  const watch = new Watch(kubeConfig);
  let resourceVersion = options.resourceVersion;
  let stopped = false;
  let controller: AbortController | undefined;
  const start = async (): Promise<void> => {
    controller = await watch.watch(
      path,
      { allowWatchBookmarks: true, ...(options.fieldSelector ? { fieldSelector: options.fieldSelector } : {}), ...(resourceVersion ? { resourceVersion } : {}) },
      (type: string, object: T) => {
        resourceVersion = object.metadata?.resourceVersion ?? resourceVersion;
        if (type === 'ADDED' || type === 'MODIFIED') onObject(object);
      },
      (err: unknown) => {
        if (stopped) return;
        progress(`watch of ${path} ended (${(err as Error | null)?.message ?? 'closed'}); watching again`);
        setTimeout(() => void start().catch((e: unknown) => progress(`watch failed: ${(e as Error).message}`)), 100);
      },
    );
  };
  await start();
  return {
    stop: () => {
      stopped = true;
      controller?.abort();
    },
  };
}
