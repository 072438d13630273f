// Volume key files for tests, laid out as the CSI provider delivers them: PATH for the primary and
// PATH.v<N> for each version. In a private directory removed at process exit.
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { trackDirectory } from '../control-plane/componentProcess.js';

export interface VolumeKeyFiles {
  dir: string;
  /** The primary's path. */
  primary: string;
  /** The key bytes by version. */
  keys: Map<number, Buffer>;
  /** Writes PATH (the primary's bytes) and PATH.v<N> for each of `versions` (none: PATH only). */
  deliver(primary: number, versions?: number[]): void;
  /** Writes one version alone to a file of its own and returns its path. */
  single(version: number): string;
  remove(): void;
}

/** Random 64-byte keys for versions 1..count; files owned by `owner` (a uid) when given. */
export function volumeKeyFiles(count: number, owner?: number): VolumeKeyFiles {
  const dir = mkdtempSync(join(tmpdir(), 'keyward-volume-keys-'));
  const remove = trackDirectory(dir);
  chmodSync(dir, 0o755);
  const keys = new Map<number, Buffer>();
  for (let v = 1; v <= count; v++) keys.set(v, randomBytes(64));
  const primary = join(dir, 'volume-key');
  const write = (path: string, version: number): void => {
    rmSync(path, { force: true });
    writeFileSync(path, keys.get(version)!, { mode: 0o600 });
    if (owner !== undefined) chownSync(path, owner, owner);
  };
  return {
    dir,
    primary,
    keys,
    deliver: (primaryVersion, versions = []) => {
      for (const v of keys.keys()) rmSync(`${primary}.v${v}`, { force: true });
      write(primary, primaryVersion);
      for (const v of versions) write(`${primary}.v${v}`, v);
    },
    single: (version) => {
      const path = join(dir, `key-${version}`);
      write(path, version);
      return path;
    },
    remove,
  };
}
