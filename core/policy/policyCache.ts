// Every KeyPolicy of the cluster from an informer (client-node's in the operator, the lean one in
// the CSI provider), and the PolicySet built from them; both sides decide from this one cache.
// A namespace's part of the set is rebuilt on the first decision after a change to one of its
// policies' specs (status writes do not count), so enforcement lags a policy change by the watch
// delivery and one namespace's rebuild.
import type { ObjectInformer } from '../kube/listWatchInformer.js';
import { PolicySet } from './policySet.js';
import { policyDocument, type KeyPolicy } from '../api/keyPolicy.js';

export class PolicyCache {
  private current = new PolicySet([]);
  /** Namespaces whose policies changed since the set was last built. */
  private readonly stale = new Set<string>();
  /** The spec generation last seen of each policy, to tell spec changes from status writes. */
  private readonly generations = new Map<string, number | undefined>();
  private readonly handlers: ((policy: KeyPolicy) => void)[] = [];

  constructor(private readonly informer: ObjectInformer<KeyPolicy>) {
    const changed = (policy: KeyPolicy, gone = false): void => {
      const key = `${policy.metadata.namespace}/${policy.metadata.name}`;
      const generation = policy.metadata.generation;
      if (!gone && this.generations.has(key) && this.generations.get(key) === generation) return;
      if (gone) this.generations.delete(key);
      else this.generations.set(key, generation);
      this.stale.add(policy.metadata.namespace ?? '');
      for (const handler of this.handlers) handler(policy);
    };
    this.informer.on('add', (policy) => changed(policy));
    this.informer.on('update', (policy) => changed(policy));
    this.informer.on('delete', (policy) => changed(policy, true));
  }

  start(): Promise<void> {
    return this.informer.start();
  }

  stop(): Promise<void> {
    return this.informer.stop();
  }

  /** Called with each added, deleted or spec-changed policy, after the set is marked stale. */
  onChange(handler: (policy: KeyPolicy) => void): void {
    this.handlers.push(handler);
  }

  list(namespace?: string): readonly KeyPolicy[] {
    return this.informer.list(namespace);
  }

  get(name: string, namespace: string): KeyPolicy | undefined {
    return this.informer.get(name, namespace);
  }

  policySet(): PolicySet {
    for (const namespace of this.stale) this.current = this.current.withNamespace(namespace, this.informer.list(namespace).map(policyDocument));
    this.stale.clear();
    return this.current;
  }
}
