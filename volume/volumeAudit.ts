// One audit record per volume command (unlock, lock, rekey, and each refusal): the directory, the
// key version and identifier, the workload when the pod spec passes it (downward API), the outcome.
import { randomUUID } from 'node:crypto';
import type { AuditLog, AuditRecord } from '../core/audit/auditLog.js';
import { KeywardError } from '../core/errors.js';
import type { VolumeOutcome } from './volumeOutcome.js';
import { VolumeRefusal } from './volumeRefusal.js';

/** The pod running the command, from flags or the downward API (POD_NAME, POD_NAMESPACE, SERVICE_ACCOUNT). */
export interface Workload {
  podName?: string;
  podNamespace?: string;
  serviceAccount?: string;
}

/** hold records its final removal as volumeLock. */
export type VolumeOperation = 'volumeUnlock' | 'volumeLock' | 'volumeRekey';

export function workloadFromEnv(env: NodeJS.ProcessEnv = process.env): Workload {
  return { podName: env.POD_NAME || undefined, podNamespace: env.POD_NAMESPACE || undefined, serviceAccount: env.SERVICE_ACCOUNT || undefined };
}

function actorOf(workload: Workload): string {
  if (workload.serviceAccount && workload.podNamespace) return `system:serviceaccount:${workload.podNamespace}:${workload.serviceAccount}`;
  // By uid: a pod's user often has no passwd entry, so no name to look up.
  return `os-user:${process.getuid?.() ?? 'unknown'}`;
}

/** Runs the command and records its outcome: allowed, denied (a refusal) or failed; then rethrows. */
export async function audited(audit: AuditLog, operation: VolumeOperation, dir: string, workload: Workload, run: () => VolumeOutcome | Promise<VolumeOutcome>): Promise<VolumeOutcome> {
  const base: AuditRecord = {
    requestId: randomUUID(),
    actor: actorOf(workload),
    operation,
    result: 'allowed',
    volume: dir,
    ...(workload.podName ? { pod: workload.podNamespace ? `${workload.podNamespace}/${workload.podName}` : workload.podName } : {}),
  };
  try {
    const outcome = await run();
    audit.record({ ...base, code: outcome.code, keyVersion: outcome.keyVersion, keyIdentifier: outcome.keyIdentifier });
    return outcome;
  } catch (err) {
    if (err instanceof VolumeRefusal) {
      audit.record({ ...base, result: 'denied', code: err.refusal, reason: err.message, ...err.details });
    } else {
      const code = err instanceof KeywardError ? err.code : ((err as NodeJS.ErrnoException).code ?? 'Internal');
      audit.record({ ...base, result: 'failed', code, reason: (err as Error).message });
    }
    throw err;
  } finally {
    await audit.flush();
  }
}
