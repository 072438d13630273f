// What a volume directory is: present or not, encrypted under which key, the Keyward key version
// recorded on it; and where key operations on its filesystem are aimed.
import { closeSync, existsSync, fsyncSync, readdirSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { type EncryptionPolicy, getPolicy, getXattr, isNotEncryptable, openDirectory, setXattr, withDirectory } from './fscrypt.js';
import { VolumeRefusal } from './volumeRefusal.js';

/** The Keyward key version whose key locks the directory, as a decimal string. */
export const keyVersionAttribute = 'user.keyward.key-version';

export interface VolumeDirectory {
  path: string;
  exists: boolean;
  /** The directory's policy; undefined when it is not encrypted (or does not exist). */
  policy?: EncryptionPolicy;
  /** From the key-version attribute, when recorded. */
  keyVersion?: number;
}

/** ForeignKey for a directory under a key the caller does not hold: `why` follows "locked by <key>, ". */
export function foreignKeyRefusal(volume: VolumeDirectory, policy: EncryptionPolicy, why: string): VolumeRefusal {
  const keyIdentifier = policy.identifier.toString('hex');
  const lockedBy = volume.keyVersion !== undefined ? `key version ${volume.keyVersion}` : `key ${keyIdentifier}`;
  return new VolumeRefusal('ForeignKey', `${volume.path} is locked by ${lockedBy}, ${why}`, { keyVersion: volume.keyVersion, keyIdentifier });
}

/** ForeignKey for a directory under none of the keys the CSI provider delivered. */
export function undeliveredKeyRefusal(volume: VolumeDirectory, policy: EncryptionPolicy): VolumeRefusal {
  return foreignKeyRefusal(volume, policy, volume.keyVersion !== undefined ? 'which was not delivered: it may be disabled or destroyed' : 'which none of the delivered versions gives');
}

/** Reads the directory's state; a filesystem without encryption support is refused as NotEncryptable. */
export function inspectVolume(path: string): VolumeDirectory {
  if (!existsSync(path)) return { path, exists: false };
  return withDirectory(path, (fd) => {
    let policy: EncryptionPolicy | undefined;
    try {
      policy = getPolicy(fd);
    } catch (err) {
      if (isNotEncryptable(err)) throw notEncryptable(path);
      throw err;
    }
    return { path, exists: true, policy, keyVersion: parseVersion(getXattr(fd, keyVersionAttribute)) };
  });
}

/** Refuses a missing directory whose parent's filesystem cannot encrypt, before anything is made. */
export function requireEncryptableParent(path: string): void {
  withDirectory(dirname(path), (fd) => {
    try {
      getPolicy(fd);
    } catch (err) {
      if (isNotEncryptable(err)) throw notEncryptable(path);
      throw err;
    }
  });
}

export function notEncryptable(path: string): VolumeRefusal {
  return new VolumeRefusal('NotEncryptable', `${path} is on a filesystem without encryption support (it needs fscrypt: e.g. ext4 made with -O encrypt)`);
}

export function recordKeyVersion(path: string, version: number): void {
  withDirectory(path, (fd) => setXattr(fd, keyVersionAttribute, String(version)));
}

export function isEmptyDirectory(path: string): boolean {
  return readdirSync(path).length === 0;
}

/**
 * The directory key removal and status calls go through. Not the volume directory itself: an open
 * descriptor on it would be a file using the key, and the key could not leave. Its parent when on
 * the same filesystem, else (a mount root) the directory.
 */
export function keyHandlePath(path: string): string {
  const parent = dirname(path);
  return statSync(parent).dev === statSync(path).dev ? parent : path;
}

/** Flushes a directory's entries (after creating or renaming in it). */
export function fsyncDirectory(path: string): void {
  const fd = openDirectory(path);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function parseVersion(value: string | undefined): number | undefined {
  if (value === undefined || !/^[1-9]\d{0,8}$/.test(value)) return undefined;
  return Number(value);
}
