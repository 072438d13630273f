// The re-encryption runs in progress, one per ring, in the operator (the leader): each rewrites
// every object of the encrypted resources under the ring's primary version, through a
// StorageVersionMigration where the cluster runs one, otherwise by itself. The reconciler starts
// them and reads their progress; KeyRing status is where a run is remembered across restarts,
// and a restarted run rewrites again only what etcd still holds under an older version (the
// apiserver makes an unchanged write of a current object a no-op).
import type { KubeConfig } from '@kubernetes/client-node';
import type { Logger } from '../../core/observability/logger.js';
import { rewriteResource, type RewriteProgress } from './objectRewriter.js';
import { runStorageMigration, storageMigrationApi } from './storageVersionMigration.js';

export type RewriteMethod = 'StorageVersionMigration' | 'Rewrite';

export interface ReEncryptionRequest {
  ringId: string;
  /** The KeyRing's namespace/name, handed to onProgress. */
  key: string;
  target: number;
  resources: string[];
  maxWritesPerSecond: number;
  /** Auto tries StorageVersionMigration first. */
  method: 'Auto' | RewriteMethod;
}

export interface ReEncryptionProgress extends RewriteProgress {
  target: number;
  method: RewriteMethod;
  done: boolean;
  /** Set when the run could not go on at all (the apiserver refused the listing, say). */
  error?: string;
  /** Why StorageVersionMigration was not used, when Auto fell back. */
  note?: string;
}

interface Job {
  request: ReEncryptionRequest;
  progress: ReEncryptionProgress;
  abort: AbortController;
}

export class ReEncryptionJobs {
  private readonly jobs = new Map<string, Job>();

  constructor(
    private readonly kubeConfig: KubeConfig,
    /** Called with the KeyRing's key as a run progresses, so its status is written again. */
    private readonly onProgress: (key: string) => void,
    private readonly log: Logger,
  ) {}

  progress(ringId: string, target: number): ReEncryptionProgress | undefined {
    const job = this.jobs.get(ringId);
    return job?.request.target === target ? job.progress : undefined;
  }

  /** Starts the run unless one for this target is running or done; one for an older target is cancelled. */
  ensure(request: ReEncryptionRequest): ReEncryptionProgress {
    const existing = this.jobs.get(request.ringId);
    if (existing?.request.target === request.target) return existing.progress;
    existing?.abort.abort();
    const job: Job = {
      request,
      progress: { target: request.target, method: request.method === 'Auto' ? 'StorageVersionMigration' : request.method, done: false, rewritten: 0, failed: 0, failures: [] },
      abort: new AbortController(),
    };
    this.jobs.set(request.ringId, job);
    void this.run(job);
    return job.progress;
  }

  /** Forgets a finished run, so the next ensure() starts over (a retry after failures). */
  forget(ringId: string): void {
    const job = this.jobs.get(ringId);
    if (job && !job.progress.done) return;
    this.jobs.delete(ringId);
  }

  stopAll(): void {
    for (const job of this.jobs.values()) job.abort.abort();
    this.jobs.clear();
  }

  private async run(job: Job): Promise<void> {
    const { request, progress, abort } = job;
    const signal = abort.signal;
    try {
      let migrationApi = request.method === 'Rewrite' ? undefined : await storageMigrationApi(this.kubeConfig);
      if (request.method === 'StorageVersionMigration' && !migrationApi) throw new Error('the cluster does not serve storagemigration.k8s.io');
      for (const resource of request.resources) {
        if (migrationApi) {
          const name = `keyward-${request.ringId.slice(0, 8)}-v${request.target}-${resource}`.toLowerCase().slice(0, 253);
          const outcome = await runStorageMigration(this.kubeConfig, migrationApi, name, resource, { signal });
          if (outcome.result === 'Succeeded') continue;
          if (outcome.result === 'Failed') throw new Error(`StorageVersionMigration ${name} failed: ${outcome.message}`);
          if (request.method === 'StorageVersionMigration') throw new Error(`StorageVersionMigration ${name} was not picked up: is its controller running in kube-controller-manager?`);
          progress.note = 'storagemigration.k8s.io is served but no controller picked the migration up within a minute; rewriting by the operator instead';
          progress.method = 'Rewrite';
          migrationApi = undefined;
        }
        const before = { rewritten: progress.rewritten, failed: progress.failed, failures: [...progress.failures] };
        await rewriteResource(this.kubeConfig, resource, {
          maxWritesPerSecond: request.maxWritesPerSecond,
          signal,
          onProgress: (p) => {
            progress.rewritten = before.rewritten + p.rewritten;
            progress.failed = before.failed + p.failed;
            progress.failures = [...before.failures, ...p.failures].slice(0, 20);
            this.onProgress(request.key);
          },
        });
      }
      if (!migrationApi) progress.method = 'Rewrite';
    } catch (err) {
      if (signal.aborted) return;
      progress.error = (err as Error).message;
      this.log.warn({ ringId: request.ringId, target: request.target, err: progress.error }, 're-encryption stopped');
    }
    progress.done = true;
    this.onProgress(request.key);
  }
}
