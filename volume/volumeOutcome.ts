// What a volume command did, for its one line of output and its audit record.
export interface VolumeOutcome {
  /** Initialized, Unlocked, Locked, FilesBusy, OtherUsers, NotHeld, Rekeyed, AlreadyRekeyed. */
  code: string;
  /** One line for people; names versions and identifiers, never key bytes. */
  message: string;
  /** The Keyward key version that locks the directory, when known. */
  keyVersion?: number;
  /** The fscrypt key identifier (hex) that locks the directory: public, it is in the policy on disk. */
  keyIdentifier?: string;
}
