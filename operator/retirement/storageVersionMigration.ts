// Re-encryption through the cluster's own StorageVersionMigration (storagemigration.k8s.io), where
// the apiserver serves it and kube-controller-manager runs its controller: the controller rewrites
// every object of a resource, as objectRewriter.ts does, with the apiserver's own pacing.
import type { KubeConfig } from '@kubernetes/client-node';
import { apiRequest, isHttpStatus, retryTransient } from './objectRewriter.js';

const group = 'storagemigration.k8s.io';
const pollMs = 2000;

interface Condition {
  type?: string;
  status?: string;
  message?: string;
}

/** The served version of the API (v1 first, then v1beta1), or undefined where the cluster lacks it. */
export async function storageMigrationApi(kubeConfig: KubeConfig): Promise<string | undefined> {
  try {
    const info = await apiRequest<{ versions?: Array<{ groupVersion?: string }> }>(kubeConfig, 'GET', `/apis/${group}`);
    const served = new Set((info.versions ?? []).map((v) => v.groupVersion));
    return [`${group}/v1`, `${group}/v1beta1`].find((v) => served.has(v));
  } catch (err) {
    if (isHttpStatus(err, 404)) return undefined;
    throw err;
  }
}

export type MigrationOutcome = { result: 'Succeeded' } | { result: 'Failed'; message: string } | { result: 'NoController' };

/**
 * Creates (or finds, after a restart) the migration `name` of one resource and waits for it. A
 * migration nobody picks up within `pickupMs` (the API is served but the controller is off) is
 * deleted and reported as NoController, so the caller rewrites by itself.
 */
export async function runStorageMigration(
  kubeConfig: KubeConfig,
  apiVersion: string,
  name: string,
  resource: string,
  options: { signal: AbortSignal; pickupMs?: number },
): Promise<MigrationOutcome> {
  const dot = resource.indexOf('.');
  const groupResource = dot < 0 ? { group: '', resource } : { group: resource.slice(dot + 1), resource: resource.slice(0, dot) };
  const path = `/apis/${apiVersion}/storageversionmigrations`;
  try {
    await retryTransient(options.signal, () => apiRequest(kubeConfig, 'POST', path, { apiVersion, kind: 'StorageVersionMigration', metadata: { name }, spec: { resource: groupResource } }));
  } catch (err) {
    if (!isHttpStatus(err, 409)) throw err;
  }
  const createdAt = Date.now();
  for (;;) {
    options.signal.throwIfAborted();
    const migration = await retryTransient(options.signal, () => apiRequest<{ status?: { conditions?: Condition[] } }>(kubeConfig, 'GET', `${path}/${name}`));
    const conditions = migration.status?.conditions ?? [];
    const holds = (type: string): Condition | undefined => conditions.find((c) => c.type === type && c.status === 'True');
    if (holds('Succeeded')) return { result: 'Succeeded' };
    const failed = holds('Failed');
    if (failed) return { result: 'Failed', message: failed.message ?? 'the StorageVersionMigration failed' };
    if (conditions.length === 0 && Date.now() - createdAt > (options.pickupMs ?? 60_000)) {
      await apiRequest(kubeConfig, 'DELETE', `${path}/${name}`).catch(() => undefined);
      return { result: 'NoController' };
    }
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}
