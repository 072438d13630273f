// Debian's chromium, headless, on a local file: a screenshot, the DOM after load, and the console
// messages (CSP violations, script errors) from its log. Each run gets its own profile directory,
// removed afterwards; only the process started here is ever killed.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

export const chromiumAvailable = (): boolean => spawnSync('sh', ['-c', 'command -v chromium'], { stdio: 'ignore' }).status === 0;

export interface ChromiumRun {
  stdout: string;
  /** Lines Chromium logged for the page's console (INFO:CONSOLE ...). */
  consoleMessages: string[];
}

/** Runs chromium headless with `flags` on `file`; rejects on a non-zero exit or after `timeoutMs`. */
export function headlessChromium(file: string, flags: string[], timeoutMs = 60_000): Promise<ChromiumRun> {
  const profile = mkdtempSync(join(tmpdir(), 'keyward-chromium-'));
  // As root Chromium needs --no-sandbox; the page is our own file with no script.
  const args = ['--headless', '--no-sandbox', '--disable-gpu', `--user-data-dir=${profile}`, '--enable-logging=stderr', '--v=0', ...flags, pathToFileURL(file).href];
  return new Promise<ChromiumRun>((resolve, reject) => {
    const child = spawn('chromium', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => {
      if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
      reject(new Error(`chromium did not finish within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      rmSync(profile, { recursive: true, force: true });
      if (code !== 0) reject(new Error(`chromium exited ${code}: ${stderr.trim().split('\n').slice(-5).join('\n')}`));
      else resolve({ stdout, consoleMessages: stderr.split('\n').filter((line) => line.includes(':CONSOLE')) });
    });
  });
}
