// Where testbed/node/build.sh put what the test node runs: binaries and images in the cache outside
// the repository, listed in its manifest. Checked against the repository so a stale build is
// named instead of used.
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setupError } from '../../core/errors.js';
import { cacheRoot, controlPlaneVersions } from '../control-plane/binaries.js';

const repoDir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const buildHint =
  "run 'npm run node:build' (testbed/node/build.sh; kubelet, kube-scheduler and kube-proxy come from 'npm run control-plane:build')";

export interface ImageArchive {
  /** docker-archive for `ctr images import` */
  archive: string;
  /** the name it imports as; pods use it with imagePullPolicy: Never */
  ref: string;
}

export interface NodeArtifacts {
  kubelet: string;
  kubeScheduler: string;
  kubeProxy: string;
  driver: string;
  driverCrds: string[];
  driverRbac: string[];
  pause: string;
  registrar: string;
  images: { pause: ImageArchive; busybox: ImageArchive };
}

interface Manifest extends NodeArtifacts {
  versions: { kubernetes: string; secretsStoreCsiDriver: string; nodeTools: string; busybox: string };
}

function driverVersion(): string {
  const text = readFileSync(join(repoDir, 'testbed', 'control-plane', 'versions.env'), 'utf8');
  const match = /^SECRETS_STORE_CSI_DRIVER_VERSION=(\S+)$/m.exec(text);
  if (!match?.[1]) throw setupError('versions.env lacks SECRETS_STORE_CSI_DRIVER_VERSION');
  return match[1];
}

/** The hash build.sh keys pause and registrar by: sha256 over `sha256sum` lines of the sorted files. */
export function nodeToolsHash(): string {
  const root = join(repoDir, 'testbed', 'node', 'go', 'nodetools');
  const files = readdirSync(root, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => `./${join(entry.parentPath, entry.name).slice(root.length + 1)}`)
    .sort();
  const lines = files
    .map((file) => `${createHash('sha256').update(readFileSync(join(root, file))).digest('hex')}  ${file}\n`)
    .join('');
  return createHash('sha256').update(lines).digest('hex').slice(0, 12);
}

/** Paths of the node's binaries and images; a SetupError naming the build command when any is missing or stale. */
export function nodeArtifacts(): NodeArtifacts {
  const manifestPath = join(cacheRoot(), 'node', 'manifest.json');
  if (!existsSync(manifestPath)) throw setupError(`node artifacts are not built (no ${manifestPath}): ${buildHint}`);
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest;

  const wanted = {
    kubernetes: controlPlaneVersions().kubernetes,
    secretsStoreCsiDriver: driverVersion(),
    nodeTools: nodeToolsHash(),
  };
  const stale = (Object.keys(wanted) as (keyof typeof wanted)[])
    .filter((key) => manifest.versions?.[key] !== wanted[key])
    .map((key) => `${key} ${String(manifest.versions?.[key])} instead of ${wanted[key]}`);
  if (stale.length > 0) throw setupError(`node artifacts in ${manifestPath} are stale (${stale.join(', ')}): ${buildHint}`);

  const artifacts: NodeArtifacts = {
    kubelet: manifest.kubelet,
    kubeScheduler: manifest.kubeScheduler,
    kubeProxy: manifest.kubeProxy,
    driver: manifest.driver,
    driverCrds: manifest.driverCrds,
    driverRbac: manifest.driverRbac,
    pause: manifest.pause,
    registrar: manifest.registrar,
    images: manifest.images,
  };
  const paths = [
    artifacts.kubelet, artifacts.kubeScheduler, artifacts.kubeProxy, artifacts.driver,
    ...artifacts.driverCrds, ...artifacts.driverRbac, artifacts.pause, artifacts.registrar,
    artifacts.images.pause.archive, artifacts.images.busybox.archive,
  ];
  const missing = paths.filter((path) => !existsSync(path));
  if (missing.length > 0) throw setupError(`node artifacts are missing (${missing.join(', ')}): ${buildHint}`);
  return artifacts;
}
