// The cached helm binary, run with throw-away config, cache and data directories (nothing from
// the user's own helm setup leaks in, nothing is left behind), and the chart rendered to objects.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { loadAllYaml, type KubernetesObject } from '@kubernetes/client-node';
import { controlPlaneBinaries } from '../../testbed/control-plane/binaries.js';

export const repoRoot = join(import.meta.dirname, '..', '..', '..');
export const chartDir = join(repoRoot, 'charts', 'keyward');

export interface HelmOutput {
  stdout: string;
  stderr: string;
}

export type Helm = (args: string[]) => Promise<HelmOutput>;

/** A helm whose state lives under `home`; a failing command rejects with helm's own message. */
export function helmIn(home: string): Helm {
  const binary = controlPlaneBinaries().helm;
  const env = {
    ...process.env,
    HELM_CACHE_HOME: join(home, 'cache'),
    HELM_CONFIG_HOME: join(home, 'config'),
    HELM_DATA_HOME: join(home, 'data'),
    KUBECONFIG: join(home, 'no-kubeconfig'),
  };
  return (args) =>
    new Promise((resolve, reject) => {
      execFile(binary, args, { env, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`helm ${args.join(' ')} failed: ${stderr.trim() || err.message}`));
        else resolve({ stdout, stderr });
      });
    });
}

/** `helm template` of the chart as release `keyward` in `namespace`, as plain JSON objects. */
export async function renderChart(helm: Helm, namespace: string, extraArgs: string[] = []): Promise<KubernetesObject[]> {
  const { stdout } = await helm(['template', 'keyward', chartDir, '--namespace', namespace, ...extraArgs]);
  return parseManifests(stdout);
}

/** Every document of a manifest stream, as plain JSON (no client model classes, no undefined fields). */
export function parseManifests(text: string): KubernetesObject[] {
  return (loadAllYaml(text) as unknown[])
    .filter((doc): doc is KubernetesObject => typeof doc === 'object' && doc !== null)
    .map((doc) => JSON.parse(JSON.stringify(doc)) as KubernetesObject);
}
