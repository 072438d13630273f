// `keyward volume lock` and `keyward volume hold`: drop this user's claim on the key of a volume
// directory. The key belongs to the filesystem and is shared by every process; it leaves (and the
// data is locked) once no user holds a claim and no file under it is open.
import { removeKey, type FscryptError, withDirectory } from './fscrypt.js';
import { inspectVolume, keyHandlePath } from './volumeDirectory.js';
import type { VolumeOutcome } from './volumeOutcome.js';
import { VolumeRefusal } from './volumeRefusal.js';

export function lockVolume(dir: string): VolumeOutcome {
  const { policy, keyVersion, identifier } = encryptedVolume(dir);
  const keyIdentifier = identifier.toString('hex');
  const details = { keyVersion, keyIdentifier };
  let removal;
  try {
    // Through the parent: a descriptor on the directory itself would keep the key in use.
    removal = withDirectory(keyHandlePath(dir), (fd) => removeKey(fd, policy.identifier));
  } catch (err) {
    // ENOKEY: this user holds no claim (never unlocked here, or already locked).
    if ((err as FscryptError).code === 'ENOKEY') return { code: 'NotHeld', message: `${dir}: this user holds no claim on its key (already locked here)`, ...details };
    throw err;
  }
  if (removal.filesBusy) return { code: 'FilesBusy', message: `${dir}: key removed, but files still open keep their data readable until they are closed`, ...details };
  if (removal.otherUsers) return { code: 'OtherUsers', message: `${dir}: this user's claim dropped; other users still hold the key`, ...details };
  return { code: 'Locked', message: `${dir} is locked`, ...details };
}

/** Refuses a directory that is not there or not encrypted under a v2 policy. */
export function encryptedVolume(dir: string) {
  const volume = inspectVolume(dir);
  if (!volume.exists) throw new VolumeRefusal('NotEncrypted', `${dir} does not exist`);
  if (!volume.policy || volume.policy.version !== 2) throw new VolumeRefusal('NotEncrypted', `${dir} is not encrypted by Keyward`);
  return { policy: volume.policy, keyVersion: volume.keyVersion, identifier: volume.policy.identifier };
}
