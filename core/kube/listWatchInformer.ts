// A list-and-watch cache of one resource over ApiConnection, for the node-side components (the
// operator uses client-node's informer), optionally narrowed by a field selector and with each
// object reduced to what its user keeps (a node's pods are held as their metadata only). It lists, then watches from the list's
// resourceVersion with bookmarks; a watch that ends is resumed where it stopped, and one whose
// version the apiserver no longer has (410 Gone) starts again with a list. Through an apiserver
// outage it keeps serving what it last saw.
import type { Logger } from '../observability/logger.js';
import { ApiStatusError, type ApiConnection } from './apiConnection.js';

interface KubeObject {
  metadata?: { name?: string; namespace?: string; resourceVersion?: string };
}

/** The read side of an informer, as PolicyCache uses it. */
export interface ObjectInformer<T> {
  on(event: 'add' | 'update' | 'delete', handler: (object: T) => void): void;
  /** Resolves after the first list, or its first failure (it keeps retrying). */
  start(): Promise<void>;
  stop(): Promise<void>;
  list(namespace?: string): readonly T[];
  get(name: string, namespace?: string): T | undefined;
}

type WatchEvent<T> = { type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK'; object: T } | { type: 'ERROR'; object: { code?: number; message?: string } };

const retryMs = 1000;
const watchSeconds = 300;

export interface InformerOptions<T> {
  /** e.g. `spec.nodeName=node-1`: only the objects it selects are listed and watched. */
  fieldSelector?: string;
  /** What is kept of each object, so the cache holds no more than its user reads. */
  keep?: (object: T) => T;
}

/** `resource.group` '' is the core API group (/api/v1). */
export function listWatchInformer<T extends KubeObject>(
  api: ApiConnection,
  resource: { group: string; version: string; plural: string },
  log: Logger,
  options: InformerOptions<T> = {},
): ObjectInformer<T> {
  const root = resource.group === '' ? `/api/${resource.version}` : `/apis/${resource.group}/${resource.version}`;
  const path = `${root}/${resource.plural}`;
  const selector = options.fieldSelector === undefined ? '' : `fieldSelector=${encodeURIComponent(options.fieldSelector)}`;
  const keep = options.keep ?? ((object: T) => object);
  const objects = new Map<string, T>();
  const handlers = { add: [] as ((object: T) => void)[], update: [] as ((object: T) => void)[], delete: [] as ((object: T) => void)[] };
  const keyOf = (object: T): string => `${object.metadata?.namespace ?? ''}/${object.metadata?.name ?? ''}`;
  const emit = (event: keyof typeof handlers, object: T): void => {
    for (const handler of handlers[event]) handler(object);
  };
  let resourceVersion = '';
  let stopped = false;
  let watching: AbortController | undefined;

  async function list(): Promise<void> {
    const answer = await api.request<{ items: T[]; metadata: { resourceVersion: string } }>('GET', selector ? `${path}?${selector}` : path);
    const seen = new Set<string>();
    for (const object of answer.items.map(keep)) {
      const key = keyOf(object);
      seen.add(key);
      const known = objects.get(key);
      objects.set(key, object);
      if (!known) emit('add', object);
      else if (known.metadata?.resourceVersion !== object.metadata?.resourceVersion) emit('update', object);
    }
    for (const [key, object] of objects) {
      if (seen.has(key)) continue;
      objects.delete(key);
      emit('delete', object);
    }
    resourceVersion = answer.metadata.resourceVersion;
  }

  function apply(event: WatchEvent<T>): void {
    if (event.type === 'ERROR') throw new ApiStatusError(event.object.code ?? 0, `watch of ${resource.plural}: ${event.object.message ?? 'error'}`);
    resourceVersion = event.object.metadata?.resourceVersion ?? resourceVersion;
    if (event.type === 'BOOKMARK') return;
    const object = keep(event.object);
    const key = keyOf(object);
    if (event.type === 'DELETED') {
      objects.delete(key);
      emit('delete', object);
    } else {
      const known = objects.has(key);
      objects.set(key, object);
      emit(known ? 'update' : 'add', object);
    }
  }

  async function run(listed: () => void): Promise<void> {
    let needList = true;
    while (!stopped) {
      try {
        if (needList) {
          await list();
          needList = false;
          listed();
        }
        watching = new AbortController();
        const query = `?watch=1&allowWatchBookmarks=true&timeoutSeconds=${watchSeconds}&resourceVersion=${encodeURIComponent(resourceVersion)}${selector ? `&${selector}` : ''}`;
        await api.stream(path + query, (line) => apply(JSON.parse(line) as WatchEvent<T>), watching.signal);
      } catch (err) {
        if (stopped) return;
        listed();
        needList ||= err instanceof ApiStatusError && err.statusCode === 410;
        log.warn({ resource: resource.plural, err: (err as Error).message }, needList ? `${resource.plural} list failed; retrying` : `${resource.plural} watch failed; watching again`);
        await new Promise((resolve) => setTimeout(resolve, retryMs).unref());
      }
    }
  }

  return {
    on: (event, handler) => void handlers[event].push(handler),
    start: () => new Promise<void>((resolve) => void run(resolve)),
    stop: () => {
      stopped = true;
      watching?.abort();
      return Promise.resolve();
    },
    list: (namespace) => [...objects.values()].filter((object) => namespace === undefined || object.metadata?.namespace === namespace),
    get: (name, namespace) => objects.get(`${namespace ?? ''}/${name}`),
  };
}
