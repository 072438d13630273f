// An earlier revision of Keyward, built so a benchmark can run it beside the working tree (A/B in
// one run, on one machine load). The revision's files come from Git; it is compiled with this
// tree's node_modules, which must still hold what that revision imports. Cached by revision.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = join(fileURLToPath(import.meta.url), '..', '..', '..');
const cacheRoot = process.env.KEYWARD_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'keyward');

/** The path of the revision's `keyward` CLI (dist/cli/keyward.js), building it on first use. */
export function baselineCli(revision: string, log: (line: string) => void): string {
  const commit = execFileSync('git', ['rev-parse', '--verify', `${revision}^{commit}`], { cwd: repoRoot, encoding: 'utf8' }).trim();
  const dir = join(cacheRoot, 'bench', `baseline-${commit.slice(0, 12)}`);
  const cli = join(dir, 'dist', 'cli', 'keyward.js');
  if (existsSync(cli)) return cli;
  log(`building baseline ${commit.slice(0, 12)} into ${dir}`);
  mkdirSync(join(cacheRoot, 'bench'), { recursive: true });
  const work = mkdtempSync(`${dir}.tmp-`);
  try {
    const archive = execFileSync('git', ['archive', '--format=tar', commit], { cwd: repoRoot, maxBuffer: 256 * 1024 * 1024 });
    execFileSync('tar', ['-x', '-C', work], { input: archive });
    symlinkSync(join(repoRoot, 'node_modules'), join(work, 'node_modules'));
    execFileSync(join(repoRoot, 'node_modules', '.bin', 'tsc'), ['-p', join(work, 'tsconfig.json')], { stdio: ['ignore', 'inherit', 'inherit'] });
    renameSync(work, dir);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return cli;
}
