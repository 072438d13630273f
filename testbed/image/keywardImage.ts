// The Keyward image for tests and the quickstart: built from the repository's Dockerfile by
// testbed/image/build.sh (daemonless, no registry), or reused when the build inputs are unchanged.
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setupError } from '../../core/errors.js';

const buildScript = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'testbed', 'image', 'build.sh');

export interface KeywardImage {
  /** image name as `ctr -n k8s.io images import` registers it, e.g. localhost/keyward/keyward:dev-0123abcd4567 */
  ref: string;
  /** OCI archive (gzip layers), for skopeo or umoci */
  ociArchive: string;
  /** docker-archive, for `ctr images import` */
  dockerArchive: string;
}

export interface BuildOptions {
  /** where build.sh's progress lines go (default: standard error) */
  progress?: (line: string) => void;
}

/** Runs build.sh and returns what its last line names; a SetupError with the script's last lines when it fails. */
export function buildKeywardImage(options: BuildOptions = {}): Promise<KeywardImage> {
  const progress = options.progress ?? ((line: string) => console.error(line));
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [buildScript], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    const tail: string[] = [];
    let partial = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      const lines = (partial + chunk).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        progress(line);
        tail.push(line);
        if (tail.length > 20) tail.shift();
      }
    });
    child.on('error', (err) => reject(setupError(`cannot run ${buildScript}: ${err.message}`)));
    child.on('close', (code) => {
      if (partial) tail.push(partial);
      if (code !== 0) {
        reject(setupError(`${buildScript} exited with ${code}:\n${tail.join('\n')}`));
        return;
      }
      try {
        resolve(parseResult(stdout));
      } catch (err) {
        reject(err instanceof Error ? err : new Error(String(err)));
      }
    });
  });
}

function parseResult(stdout: string): KeywardImage {
  const last = stdout.trim().split('\n').pop() ?? '';
  let parsed: Partial<Record<'image' | 'ociArchive' | 'dockerArchive', unknown>>;
  try {
    parsed = JSON.parse(last) as typeof parsed;
  } catch {
    throw setupError(`${buildScript} did not end with its JSON line; it printed: ${last.slice(0, 300)}`);
  }
  const { image, ociArchive, dockerArchive } = parsed;
  if (typeof image !== 'string' || typeof ociArchive !== 'string' || typeof dockerArchive !== 'string') {
    throw setupError(`${buildScript} printed an incomplete result: ${last.slice(0, 300)}`);
  }
  return { ref: image, ociArchive, dockerArchive };
}
