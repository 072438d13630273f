// `keyward volume status`: what a volume directory is, read only.
import { keyStatus, type KeyStatus, withDirectory } from './fscrypt.js';
import { inspectVolume, keyHandlePath } from './volumeDirectory.js';

export interface VolumeStatus {
  dir: string;
  exists: boolean;
  encrypted: boolean;
  /** 1 or 2 when encrypted. */
  policyVersion?: number;
  keyIdentifier?: string;
  /** From the key-version attribute. */
  keyVersion?: number;
  /** Whether the key is on the filesystem (the data readable). */
  key?: KeyStatus['status'];
  /** How many users hold a claim on it. */
  keyUsers?: number;
}

/** `keyward volume status`: reads only; refuses NotEncryptable like the other commands. */
export function volumeStatus(dir: string): VolumeStatus {
  const volume = inspectVolume(dir);
  if (!volume.exists) return { dir, exists: false, encrypted: false };
  if (!volume.policy) return { dir, exists: true, encrypted: false };
  const status: VolumeStatus = { dir, exists: true, encrypted: true, policyVersion: volume.policy.version, keyIdentifier: volume.policy.identifier.toString('hex'), keyVersion: volume.keyVersion };
  if (volume.policy.version === 2) {
    const key = withDirectory(keyHandlePath(dir), (fd) => keyStatus(fd, volume.policy!.identifier));
    status.key = key.status;
    status.keyUsers = key.userCount;
  }
  return status;
}


/** One `name: value` line per known field, or one JSON line. */
export function formatStatus(status: VolumeStatus, output: 'text' | 'json'): string {
  if (output === 'json') return `${JSON.stringify(status)}\n`;
  return Object.entries(status)
    .filter(([, value]) => value !== undefined)
    .map(([name, value]) => `${name}: ${String(value)}\n`)
    .join('');
}
