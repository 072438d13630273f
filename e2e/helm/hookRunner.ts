// Helm's hooks on a control plane without a node: helm waits for its hook Jobs and test Pods to
// finish, and no kubelet will run them. This plays the kubelet and the Job controller: each hook
// object helm creates is run here by `run` (the test runs the container's own command locally)
// and its status is written as they would write it, so helm sees the real outcome.
import { setTimeout as sleep } from 'node:timers/promises';
import { BatchV1Api, CoreV1Api, PatchStrategy, setHeaderOptions, type KubeConfig, type V1Job, type V1Pod } from '@kubernetes/client-node';

export interface HookRun {
  kind: 'Job' | 'Pod';
  name: string;
  code: number;
  output: string;
}

export interface HookRunners {
  job?: (job: V1Job) => Promise<Omit<HookRun, 'kind' | 'name'>>;
  pod?: (pod: V1Pod) => Promise<Omit<HookRun, 'kind' | 'name'>>;
}

const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
const isHook = (o: V1Job | V1Pod): boolean => Boolean(o.metadata?.annotations?.['helm.sh/hook']);

/** Settles `helmCall` while running the hooks it creates in `namespace`; never rejects. */
export async function withHooksRun<T>(kubeConfig: KubeConfig, namespace: string, helmCall: Promise<T>, runners: HookRunners): Promise<{ result: T | Error; runs: HookRun[] }> {
  const batch = kubeConfig.makeApiClient(BatchV1Api);
  const core = kubeConfig.makeApiClient(CoreV1Api);
  const seen = new Set<string>();
  const runs: HookRun[] = [];
  let done = false;
  const settled = helmCall.then(
    (value) => value,
    (err: unknown) => (err instanceof Error ? err : new Error(String(err))),
  );
  void settled.finally(() => {
    done = true;
  });
  const now = (): string => new Date().toISOString();
  const loop = async (): Promise<void> => {
    while (!done) {
      if (runners.job) {
        for (const job of (await batch.listNamespacedJob({ namespace })).items.filter(isHook)) {
          const uid = job.metadata?.uid ?? '';
          if (seen.has(uid) || job.status?.conditions?.length) continue;
          seen.add(uid);
          const outcome = await runners.job(job);
          runs.push({ kind: 'Job', name: job.metadata?.name ?? '', ...outcome });
          const started = job.metadata?.creationTimestamp ? new Date(job.metadata.creationTimestamp).toISOString() : now();
          const status =
            outcome.code === 0
              ? {
                  startTime: started,
                  completionTime: now(),
                  succeeded: 1,
                  conditions: [
                    { type: 'SuccessCriteriaMet', status: 'True', reason: 'CompletionsReached', message: 'Reached expected number of succeeded pods', lastTransitionTime: now(), lastProbeTime: now() },
                    { type: 'Complete', status: 'True', reason: 'CompletionsReached', message: 'Reached expected number of succeeded pods', lastTransitionTime: now(), lastProbeTime: now() },
                  ],
                }
              : {
                  startTime: started,
                  failed: 1,
                  conditions: [
                    { type: 'FailureTarget', status: 'True', reason: 'BackoffLimitExceeded', message: 'Job has reached the specified backoff limit', lastTransitionTime: now(), lastProbeTime: now() },
                    { type: 'Failed', status: 'True', reason: 'BackoffLimitExceeded', message: 'Job has reached the specified backoff limit', lastTransitionTime: now(), lastProbeTime: now() },
                  ],
                };
          await batch.patchNamespacedJobStatus({ name: job.metadata?.name ?? '', namespace, body: { status } }, mergePatch);
        }
      }
      if (runners.pod) {
        for (const pod of (await core.listNamespacedPod({ namespace })).items.filter(isHook)) {
          const uid = pod.metadata?.uid ?? '';
          if (seen.has(uid) || (pod.status?.phase && pod.status.phase !== 'Pending')) continue;
          seen.add(uid);
          const outcome = await runners.pod(pod);
          runs.push({ kind: 'Pod', name: pod.metadata?.name ?? '', ...outcome });
          await core.patchNamespacedPodStatus({ name: pod.metadata?.name ?? '', namespace, body: { status: { phase: outcome.code === 0 ? 'Succeeded' : 'Failed' } } }, mergePatch);
        }
      }
      await sleep(200);
    }
  };
  const [result] = await Promise.all([settled, loop()]);
  return { result, runs };
}
