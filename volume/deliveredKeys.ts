// The volume keys the CSI provider delivered into the pod: the primary at PATH and, when the
// SecretProviderClass asks for previous versions, PATH.v<N> for the primary and each previous
// version N. Each is read into a Buffer of our own (wiped by wipe()), never logged.
import { closeSync, openSync, readdirSync, readSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { keyIdentifier, volumeKeyBytes } from './fscrypt.js';
import { VolumeRefusal } from './volumeRefusal.js';

export interface DeliveredKey {
  path: string;
  /** The key version, when known (from its PATH.v<N> name, or --key-version for the primary). */
  version?: number;
  key: Buffer;
  /** The fscrypt v2 identifier of `key` (public: it is what a directory's policy names). */
  identifier: Buffer;
}

export interface DeliveredKeys {
  primary: DeliveredKey;
  /** Every distinct key, the primary first. */
  all: DeliveredKey[];
  /** The delivered key a policy names, if any. */
  find(identifier: Buffer): DeliveredKey | undefined;
  /** Zeroes every key copy. */
  wipe(): void;
}

/** Reads exactly 64 bytes from `path` into a fresh Buffer; anything else is KeyUnreadable. */
export function readKeyFile(path: string, version?: number): DeliveredKey {
  // One byte more than a key, so a longer file is told apart from a key.
  const key = Buffer.alloc(volumeKeyBytes + 1);
  let length = 0;
  try {
    const fd = openSync(path, 'r');
    try {
      for (let n = -1; n !== 0 && length < key.length; length += n) n = readSync(fd, key, length, key.length - length, null);
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    key.fill(0);
    throw new VolumeRefusal('KeyUnreadable', `cannot read key file ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  if (length !== volumeKeyBytes) {
    key.fill(0);
    throw new VolumeRefusal('KeyUnreadable', `key file ${path} holds ${length > volumeKeyBytes ? 'more than 64' : length} bytes; a volume key is ${volumeKeyBytes} bytes`);
  }
  const exact = key.subarray(0, volumeKeyBytes);
  return { path, version, key: exact, identifier: keyIdentifier(exact) };
}

/** The versioned siblings of `primaryPath` (PATH.v<N>), by version. */
function versionFiles(primaryPath: string): { path: string; version: number }[] {
  const name = basename(primaryPath);
  const dir = dirname(primaryPath);
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    return [];
  }
  return entries
    .filter((entry) => entry.startsWith(`${name}.v`) && /^[1-9]\d{0,8}$/.test(entry.slice(name.length + 2)))
    .map((entry) => ({ path: join(dir, entry), version: Number(entry.slice(name.length + 2)) }))
    .sort((a, b) => b.version - a.version);
}

/**
 * The primary at `primaryPath` and its PATH.v<N> siblings. The primary's version is the N of the
 * sibling holding the same key, else `primaryVersion` (for a delivery without previous versions).
 */
export function readDeliveredKeys(primaryPath: string, primaryVersion?: number): DeliveredKeys {
  const all: DeliveredKey[] = [];
  const wipe = (): void => all.forEach((k) => k.key.fill(0));
  try {
    const primary = readKeyFile(primaryPath, primaryVersion);
    all.push(primary);
    for (const file of versionFiles(primaryPath)) {
      const delivered = readKeyFile(file.path, file.version);
      if (delivered.identifier.equals(primary.identifier)) {
        primary.version = file.version;
        delivered.key.fill(0);
      } else {
        all.push(delivered);
      }
    }
    return { primary, all, find: (identifier) => all.find((k) => k.identifier.equals(identifier)), wipe };
  } catch (err) {
    wipe();
    throw err;
  }
}
