// The CSI provider's socket under attack: the provider process, with the chart's Node flags, on a
// SoftHSM2 token and a real control plane, serving real pods' Mounts (bench/load, csi-hostile)
// while hostile workers send large distinct requests with made-up tokens, bursts of concurrent
// near-limit requests, the tokens of pods deleted after their first Mount, and malformed requests.
// One JSON line: legitimate p99 and failures, refusals by code, the provider's peak RSS against the
// driver's 100 MiB budget, and whether it survived. Progress on stderr.
import { CoreV1Api, CustomObjectsApi } from '@kubernetes/client-node';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSoftHsmToken } from '../core/hsm/softHsmToken.js';
import { keepAliveApiClient } from '../core/kube/keepAliveApiClient.js';
import { csiProviderNodeFlags } from '../e2e/csi/csiProviderProcess.js';
import { installCrds } from '../e2e/operator/crds.js';
import { CSIDriverProvider } from '../proto/gen/csi/v1alpha1/service_pb.js';
import { logTail, trackDirectory } from '../testbed/control-plane/componentProcess.js';
import { startControlPlane, type ControlPlane } from '../testbed/control-plane/controlPlane.js';
import { grpcClient } from '../testbed/grpcClient.js';
import { appServiceAccount, createPods, createPolicies, createRings, namespace, providerKubeconfig, startProvider, type DriverRequest, type ProviderProcess } from './csiWorkload.js';
import { buildGoClient, runGoClient } from './goClient.js';
import { watchPeakRss } from './procStats.js';
import { emit, load1m, round, warnIfBusy } from './report.js';

const envNumber = (name: string, fallback: number): number => Number(process.env[`KEYWARD_BENCH_${name}`] ?? fallback);
const seconds = envNumber('SECONDS', 30);
const livePods = envNumber('PODS', 50);
const deletedPods = envNumber('DELETED_PODS', 10);
/** A node of 110 pods remounting once a minute makes about 2 Mounts/s; this is ten times that. */
const legitRate = envNumber('LEGIT_RATE', 20);
const workers = envNumber('WORKERS', 4);
const burst = envNumber('BURST', 30);
const targets = { rssMib: 100, legitP99Ms: 50 };
/** The chart's Node flags, or KEYWARD_BENCH_PROVIDER_NODE_FLAGS to try others. */
const providerNodeFlags = process.env.KEYWARD_BENCH_PROVIDER_NODE_FLAGS?.split(/\s+/).filter(Boolean) ?? csiProviderNodeFlags;
/** The pods are on the provider's node, so it sees them deleted. */
const nodeName = 'bench-node';
const progress = (line: string): void => console.error(`[bench:csi-hostile] ${line}`);

async function main(): Promise<void> {
  warnIfBusy(progress);
  const bin = buildGoClient('csi-hostile');
  const dir = mkdtempSync(join(tmpdir(), 'keyward-bench-csi-hostile-'));
  const removeDir = trackDirectory(dir);
  let cp: ControlPlane | undefined;
  let provider: ProviderProcess | undefined;
  try {
    cp = await startControlPlane({ progress });
    await installCrds(cp.kubeConfig);
    const hsm = createSoftHsmToken({ parentDir: dir, label: 'keyward-bench-csi-hostile' });
    const sealed = await createRings(hsm, 0);
    const core = keepAliveApiClient(cp.kubeConfig, CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: namespace } } });
    await createPolicies(keepAliveApiClient(cp.kubeConfig, CustomObjectsApi), []);
    const kubeconfigPath = await providerKubeconfig(cp, dir);
    const pods = (prefix: string, count: number): { name: string; serviceAccount: string; ciphertext: Buffer }[] =>
      Array.from({ length: count }, (_, i) => ({ name: `${prefix}-${i}`, serviceAccount: appServiceAccount, ciphertext: sealed.app }));
    const live = await createPods(core, pods('live', livePods), 'live pods', { concurrency: 8, progress, nodeName });
    const gone = await createPods(core, pods('gone', deletedPods), 'pods to delete', { concurrency: 8, progress, nodeName });

    provider = await startProvider({ hsm, kubeconfigPath, dir, name: 'provider', settings: { tokenReviewTtlS: 300, materialTtlS: 300, ringRefreshS: 2 }, nodeFlags: providerNodeFlags, nodeName });
    // The doomed pods are served once, as their kubelet would have, so their reviews are cached; then they go.
    const driver = grpcClient(CSIDriverProvider, `unix:${provider.socketPath}`);
    try {
      for (const request of gone) {
        const served = await driver.mount({ attributes: request.attributes, secrets: request.secrets, targetPath: request.target_path, permission: request.permission });
        if (served.error?.code) throw new Error(`a pod's first Mount was refused: ${served.error.code}`);
      }
    } finally {
      driver.close();
    }
    for (let i = 0; i < deletedPods; i++) await core.deleteNamespacedPod({ name: `gone-${i}`, namespace, gracePeriodSeconds: 0 });
    progress(`${deletedPods} pods deleted after their first Mount`);

    const file = (name: string, requests: DriverRequest[]): string => {
      const path = join(dir, `${name}.json`);
      writeFileSync(path, JSON.stringify(requests));
      return path;
    };
    progress(`${seconds} s: ${legitRate} legitimate Mounts/s from ${livePods} pods, ${workers} hostile workers, bursts of ${burst}`);
    const peak = watchPeakRss(provider.pid, 100);
    const report = await runGoClient(bin, [
      `-socket=${provider.socketPath}`,
      `-legit=${file('live', live)}`,
      ...(deletedPods > 0 ? [`-deleted=${file('gone', gone)}`] : []),
      `-duration=${seconds}s`,
      `-legit-rate=${legitRate}`,
      `-workers=${workers}`,
      `-burst=${burst}`,
    ]);
    const peakMib = peak();
    const survived = provider.process.running;
    if (!survived) progress(`the provider died; the end of its log:\n${logTail(provider.logFile)}`);
    const legitFailures = Object.values(report.legit_failures as Record<string, number>).reduce((a, b) => a + b, 0);
    const legitP99 = (report.legit as { p99_ms: number }).p99_ms;
    emit({
      ...report,
      provider_survived: survived,
      provider_rss_peak_mib: round(peakMib, 1),
      targets: { crashes: 0, legit_failures: 0, rss_mib: targets.rssMib, legit_p99_ms: targets.legitP99Ms },
      targets_met: survived && legitFailures === 0 && peakMib <= targets.rssMib && legitP99 <= targets.legitP99Ms,
      node_flags: provider.nodeFlags,
      load_1m: load1m(),
    });
  } finally {
    await provider?.process.stop();
    await cp?.stop();
    removeDir();
  }
}

try {
  await main();
} catch (err) {
  console.error(`[bench:csi-hostile] FAILED: ${(err as Error).message}`);
  process.exitCode = 1;
}
