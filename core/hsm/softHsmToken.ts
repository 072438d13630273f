// Throw-away SoftHSM2 tokens for tests, benchmarks and the quickstart: each gets its own config
// file, token directory and random PINs, and is removed with everything in it.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setupError } from '../errors.js';
import { findSoftHsmModule } from './pkcs11Module.js';

export interface SoftHsmToken {
  readonly modulePath: string;
  /** Point SOFTHSM2_CONF at this before a process loads the module. */
  readonly configPath: string;
  readonly tokenDir: string;
  readonly label: string;
  readonly pin: string;
  /** The environment a process needs to reach this token. */
  readonly env: { SOFTHSM2_CONF: string };
  remove(): void;
}

export interface SoftHsmTokenOptions {
  label?: string;
  /** Parent directory; a fresh one under the system temp dir by default. */
  parentDir?: string;
  modulePath?: string;
}

/** A SoftHSM2 configuration file's text: file-backed tokens in `tokenDir`, errors only in its log. */
export function softHsmConfig(tokenDir: string): string {
  return `directories.tokendir = ${tokenDir}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`;
}

export function createSoftHsmToken(options: SoftHsmTokenOptions = {}): SoftHsmToken {
  const modulePath = options.modulePath ?? findSoftHsmModule();
  const dir = mkdtempSync(join(options.parentDir ?? tmpdir(), 'keyward-softhsm-'));
  const tokenDir = join(dir, 'tokens');
  const configPath = join(dir, 'softhsm2.conf');
  mkdirSync(tokenDir, { mode: 0o700 });
  writeFileSync(configPath, softHsmConfig(tokenDir), { mode: 0o600 });
  const label = options.label ?? `keyward-${randomBytes(4).toString('hex')}`;
  const pin = randomBytes(16).toString('hex');
  const soPin = randomBytes(16).toString('hex');
  const env = { SOFTHSM2_CONF: configPath };
  try {
    // A throw-away token only: softhsm2-util takes PINs as arguments. Product code initialises
    // tokens through PKCS#11 so that PINs never appear in a process listing.
    execFileSync(
      'softhsm2-util',
      ['--init-token', '--free', '--label', label, '--pin', pin, '--so-pin', soPin, '--module', modulePath],
      { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    const e = err as NodeJS.ErrnoException & { stderr?: Buffer };
    if (e.code === 'ENOENT') {
      throw setupError('SoftHSM2 is not installed: softhsm2-util is not on PATH (Debian: apt-get install softhsm2)');
    }
    throw setupError(`softhsm2-util could not initialise token '${label}': ${e.stderr?.toString().trim() ?? e.message}`);
  }
  return {
    modulePath,
    configPath,
    tokenDir,
    label,
    pin,
    env,
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
