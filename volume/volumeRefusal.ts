// A refused volume command: a short stable code and a one-line message. Nothing was changed.
import { KeywardError } from '../core/errors.js';
import type { VolumeOutcome } from './volumeOutcome.js';

export type VolumeRefusalCode =
  | 'NotEncryptable' // the directory's filesystem cannot encrypt (no fscrypt, or ext4 without the encrypt feature)
  | 'NotEmpty' // first use of a directory that already holds unencrypted files
  | 'NotEncrypted' // lock, hold or rekey of a directory that is not encrypted
  | 'ForeignKey' // encrypted under a key none of the delivered versions gives
  | 'KeyUnreadable' // a key file is missing, unreadable or not 64 bytes
  | 'RekeyInconsistent'; // a rekey's leftovers do not match any state a rekey passes through

export class VolumeRefusal extends KeywardError {
  constructor(
    readonly refusal: VolumeRefusalCode,
    message: string,
    /** What is known of the directory's key, for the audit record. */
    readonly details: Pick<VolumeOutcome, 'keyVersion' | 'keyIdentifier'> = {},
  ) {
    super('FailedPrecondition', `${refusal}: ${message}`);
    this.name = 'VolumeRefusal';
  }
}
