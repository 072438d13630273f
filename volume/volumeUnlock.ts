// `keyward volume unlock`: makes a volume directory readable with the delivered key.
//   missing               -> created (0700), then as empty
//   empty, unencrypted    -> the primary key added, the v2 policy set, its version recorded: Initialized
//   encrypted (v2)        -> the delivered key the policy names added: Unlocked
// Refused, with nothing changed: NotEncryptable, NotEmpty, ForeignKey, KeyUnreadable.
import { mkdirSync, rmdirSync } from 'node:fs';
import { addKey, type EncryptionPolicy, removeKey, setPolicy, withDirectory } from './fscrypt.js';
import { readDeliveredKeys, type DeliveredKey, type DeliveredKeys } from './deliveredKeys.js';
import { inspectVolume, isEmptyDirectory, recordKeyVersion, requireEncryptableParent, undeliveredKeyRefusal, type VolumeDirectory } from './volumeDirectory.js';
import type { VolumeOutcome } from './volumeOutcome.js';
import { VolumeRefusal } from './volumeRefusal.js';

export interface UnlockOptions {
  /** The volume directory (inside the mounted volume, not its root). */
  dir: string;
  /** The primary key file as the CSI provider delivers it; PATH.v<N> siblings are found beside it. */
  keyFile: string;
  /** The primary's version when no PATH.v<N> sibling says it. */
  keyVersion?: number;
}

export function unlockVolume(options: UnlockOptions): VolumeOutcome {
  // Keys first: an unreadable key refuses before anything on disk changes.
  const keys = readDeliveredKeys(options.keyFile, options.keyVersion);
  try {
    let volume = inspectVolume(options.dir);
    let created = false;
    if (!volume.exists) {
      requireEncryptableParent(options.dir);
      mkdirSync(options.dir, { mode: 0o700 });
      created = true;
      volume = inspectVolume(options.dir);
    }
    if (!volume.policy) return initialize(volume, keys.primary, created);
    return unlockEncrypted(volume, volume.policy, keys);
  } finally {
    keys.wipe();
  }
}

function initialize(volume: VolumeDirectory, primary: DeliveredKey, created: boolean): VolumeOutcome {
  if (!isEmptyDirectory(volume.path)) {
    throw new VolumeRefusal('NotEmpty', `${volume.path} already holds unencrypted files; Keyward encrypts only an empty or new directory`);
  }
  withDirectory(volume.path, (fd) => {
    const identifier = addKey(fd, primary.key);
    try {
      setPolicy(fd, identifier);
    } catch (err) {
      // Leave things as found: drop our claim on the key, and the directory we made.
      removeKey(fd, identifier);
      if (created) rmdirSync(volume.path);
      throw err;
    }
  });
  if (primary.version !== undefined) recordKeyVersion(volume.path, primary.version);
  return {
    code: 'Initialized',
    message: `${volume.path} is now encrypted under key version ${primary.version ?? '(unknown)'} and unlocked`,
    keyVersion: primary.version,
    keyIdentifier: primary.identifier.toString('hex'),
  };
}

function unlockEncrypted(volume: VolumeDirectory, policy: EncryptionPolicy, keys: DeliveredKeys): VolumeOutcome {
  const keyIdentifier = policy.identifier.toString('hex');
  if (policy.version !== 2) {
    throw new VolumeRefusal('ForeignKey', `${volume.path} is encrypted with an fscrypt v1 policy, which Keyward never sets`, { keyIdentifier });
  }
  const match = keys.find(policy.identifier);
  if (!match) throw undeliveredKeyRefusal(volume, policy);
  withDirectory(volume.path, (fd) => addKey(fd, match.key));
  // A directory initialised without a known version learns it now.
  const keyVersion = match.version ?? volume.keyVersion;
  if (volume.keyVersion === undefined && match.version !== undefined) recordKeyVersion(volume.path, match.version);
  return { code: 'Unlocked', message: `${volume.path} is unlocked with key version ${keyVersion ?? '(unknown)'}`, keyVersion, keyIdentifier };
}
