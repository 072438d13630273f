// Where build.sh put the control-plane binaries: a cache outside the repository keyed by version.
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setupError } from '../../core/errors.js';

const sourceDir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'testbed', 'control-plane');

export interface ControlPlaneVersions {
  kubernetes: string;
  etcd: string;
  helm: string;
}

export function controlPlaneVersions(): ControlPlaneVersions {
  const text = readFileSync(join(sourceDir, 'versions.env'), 'utf8');
  const value = (name: string): string => {
    const match = new RegExp(`^${name}=(\\S+)$`, 'm').exec(text);
    if (!match?.[1]) throw setupError(`versions.env lacks ${name}`);
    return match[1];
  };
  return { kubernetes: value('KUBERNETES_VERSION'), etcd: value('ETCD_VERSION'), helm: value('HELM_VERSION') };
}

export function cacheRoot(): string {
  return process.env.KEYWARD_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'keyward');
}

export interface ControlPlaneBinaries {
  etcd: string;
  kubeApiserver: string;
  kubeControllerManager: string;
  kubeScheduler: string;
  kubectl: string;
  helm: string;
}

/** Paths of the cached binaries; a SetupError naming the build command when any is missing. */
export function controlPlaneBinaries(): ControlPlaneBinaries {
  const v = controlPlaneVersions();
  const root = cacheRoot();
  const k8s = join(root, 'k8s', v.kubernetes);
  const binaries: ControlPlaneBinaries = {
    etcd: join(root, 'etcd', v.etcd, 'etcd'),
    kubeApiserver: join(k8s, 'kube-apiserver'),
    kubeControllerManager: join(k8s, 'kube-controller-manager'),
    kubeScheduler: join(k8s, 'kube-scheduler'),
    kubectl: join(k8s, 'kubectl'),
    helm: join(root, 'helm', v.helm, 'helm'),
  };
  const missing = (Object.values(binaries) as string[]).filter((path) => !existsSync(path));
  if (missing.length > 0) {
    throw setupError(`control-plane binaries are not built (missing ${missing.join(', ')}): run 'npm run control-plane:build'`);
  }
  return binaries;
}
