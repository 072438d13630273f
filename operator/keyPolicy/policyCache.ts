// Every KeyPolicy of the cluster from a watch, and the PolicySet built from them. The set is
// rebuilt on the first decision after a change, so enforcement lags a policy change by the watch
// delivery alone.
import type { KubeConfig } from '@kubernetes/client-node';
import type { Logger } from '../../core/observability/logger.js';
import { PolicySet } from '../../core/policy/policySet.js';
import { keyPolicyResource, policyDocument, type KeyPolicy } from '../api/keyPolicy.js';
import { resourceInformer, type ResourceInformer } from '../runtime/resourceInformer.js';

export class PolicyCache {
  private readonly informer: ResourceInformer<KeyPolicy>;
  private current: PolicySet | undefined;

  constructor(kubeConfig: KubeConfig, log: Logger) {
    this.informer = resourceInformer<KeyPolicy>(kubeConfig, keyPolicyResource, log);
    for (const event of ['add', 'update', 'delete'] as const) this.informer.on(event, () => (this.current = undefined));
  }

  start(): Promise<void> {
    return this.informer.start();
  }

  stop(): Promise<void> {
    return this.informer.stop();
  }

  /** Called with each added, changed or deleted policy, after the set is invalidated. */
  onChange(handler: (policy: KeyPolicy) => void): void {
    for (const event of ['add', 'update', 'delete'] as const) this.informer.on(event, handler);
  }

  list(namespace?: string): readonly KeyPolicy[] {
    return this.informer.list(namespace);
  }

  get(name: string, namespace: string): KeyPolicy | undefined {
    return this.informer.get(name, namespace);
  }

  policySet(): PolicySet {
    return (this.current ??= new PolicySet(this.informer.list().map(policyDocument)));
  }
}
