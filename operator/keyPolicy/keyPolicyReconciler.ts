// Writes each KeyPolicy's status: whether it is enforced (Ready, or SeparationOfDuties with the
// subject, ring and policies involved) and every grant expanded, so the effective access is
// visible. The verdict itself needs no status: every enforcement point computes it from the
// policies alone (core/policy/policySet.ts).
import { CustomObjectsApi, PatchStrategy, setHeaderOptions, type KubeConfig } from '@kubernetes/client-node';
import { keepAliveApiClient } from '../../core/kube/keepAliveApiClient.js';
import type { Logger } from '../../core/observability/logger.js';
import { keyPolicyResource, maxStatusGrants, type KeyPolicy, type KeyPolicyStatus } from '../../core/api/keyPolicy.js';
import { withConditions } from '../../core/api/conditions.js';
import type { Reconcile } from '../runtime/controllerLoop.js';
import type { PolicyCache } from '../../core/policy/policyCache.js';

const statusManager = 'keyward-operator';
const apply = setHeaderOptions('Content-Type', PatchStrategy.ServerSideApply);

export function keyPolicyReconciler(deps: { kubeConfig: KubeConfig; policies: PolicyCache; log: Logger; now: () => Date }): Reconcile {
  const objects = keepAliveApiClient(deps.kubeConfig, CustomObjectsApi);
  return async (key) => {
    const [namespace = '', name = ''] = key.split('/');
    const policy = deps.policies.get(name, namespace);
    if (!policy) return;
    const verdict = deps.policies.policySet().verdict(namespace, name);
    if (!verdict) return;
    const generation = policy.metadata.generation ?? 0;
    const grants = verdict.grants.slice(0, maxStatusGrants);
    const truncated = verdict.grants.length > grants.length ? ` (status lists the first ${maxStatusGrants} of ${verdict.grants.length} grants)` : '';
    const ready = verdict.enforced
      ? { type: 'Ready', status: 'True' as const, reason: 'Enforced', message: `enforced: ${verdict.grants.length} grants${truncated}` }
      : { type: 'Ready', status: 'False' as const, reason: 'SeparationOfDuties', message: `not enforced: ${verdict.reason ?? ''}` };
    const status: KeyPolicyStatus = {
      observedGeneration: generation,
      conditions: withConditions(policy.status?.conditions, [ready], generation, deps.now()),
      grants,
    };
    if (sameStatus(policy.status, status)) return;
    if (!verdict.enforced) deps.log.warn({ policy: key, reason: verdict.reason }, 'KeyPolicy not enforced');
    await objects.patchNamespacedCustomObjectStatus(
      {
        ...keyPolicyResource,
        namespace,
        name,
        body: { apiVersion: `${keyPolicyResource.group}/${keyPolicyResource.version}`, kind: 'KeyPolicy', metadata: { name, namespace }, status },
        fieldManager: statusManager,
        force: true,
      },
      apply,
    );
  };
}

/** Whether a write would change nothing (the apiserver returns keys in its own order). */
function sameStatus(current: KeyPolicyStatus | undefined, next: KeyPolicyStatus): boolean {
  const canonical = (value: unknown): unknown =>
    Array.isArray(value)
      ? value.map(canonical)
      : value && typeof value === 'object'
        ? Object.fromEntries(Object.entries(value).sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, v]) => [k, canonical(v)]))
        : value;
  return JSON.stringify(canonical(current ?? {})) === JSON.stringify(canonical(JSON.parse(JSON.stringify(next))));
}

/** A change to one policy can change the verdict of every other policy in its namespace. */
export function policiesToReconcile(policies: PolicyCache, changed: KeyPolicy): string[] {
  const namespace = changed.metadata.namespace ?? '';
  const keys = new Set(policies.list(namespace).map((p) => `${namespace}/${p.metadata.name}`));
  keys.add(`${namespace}/${changed.metadata.name}`);
  return [...keys];
}
