// The Go load generators (bench/load/cmd/kms-load, csi-load, api-load, ...): built once per source
// version into the Keyward cache by bench/buildGoClient.sh, run to completion, their JSON report parsed.
import { execFileSync, spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = join(fileURLToPath(import.meta.url), '..', '..', '..');

export function buildGoClient(name: 'kms-load' | 'csi-load' | 'kms-hostile' | 'csi-hostile' | 'api-load'): string {
  const out = execFileSync('bash', [join(repoRoot, 'bench', 'buildGoClient.sh'), name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  const bin = out.trim().split('\n').pop();
  if (!bin) throw new Error(`bench/buildGoClient.sh ${name} printed no binary path`);
  return bin;
}

/** Runs a load generator to completion and returns the JSON report it prints last. */
export function runGoClient(bin: string, args: string[]): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.once('error', reject);
    child.once('exit', (code) => {
      if (code !== 0) return reject(new Error(`${bin} exited with code ${code}: ${stderr.trim()}`));
      try {
        resolve(JSON.parse(stdout.trim().split('\n').pop() ?? '') as Record<string, unknown>);
      } catch {
        reject(new Error(`${bin} printed no JSON report: ${stdout.trim()}`));
      }
    });
  });
}
