// `keyward volume rekey`: moves a volume directory DIR from one key to another by copying it into
// a sibling encrypted under the new key and swapping the two by renames in the (unencrypted) parent.
// Run it while nothing else writes to DIR (e.g. an init container before the workload starts).
//
// The states a rekey passes through, each durable (fsynced) before the next begins; a run after a
// crash at any point reads which state it is in and carries on from there:
//   1. start      DIR (old key)
//   2. copying    DIR (old key), DIR.rekey (new key, no key-version attribute: incomplete, discarded)
//   3. copied     DIR (old key), DIR.rekey (new key, key-version attribute = the new version)
//   4. movedAside DIR.old (old key), DIR.rekey (complete)
//   5. swapped    DIR (new key), DIR.old (old key)
//   6. done       DIR (new key); this user's claim on the old key dropped
// Anything else (e.g. DIR.old beside a DIR still under the old key) is refused as RekeyInconsistent.
import { type Stats, closeSync, fsyncSync, lstatSync, lchownSync, lutimesSync, mkdirSync, openSync, readdirSync, readlinkSync, readSync, renameSync, rmSync, symlinkSync, writeSync, chmodSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { KeywardError } from '../core/errors.js';
import { addKey, type FscryptError, removeKey, setPolicy, withDirectory } from './fscrypt.js';
import { readDeliveredKeys, readKeyFile, type DeliveredKey } from './deliveredKeys.js';
import { foreignKeyRefusal, fsyncDirectory, inspectVolume, keyHandlePath, recordKeyVersion, undeliveredKeyRefusal, type VolumeDirectory } from './volumeDirectory.js';
import type { VolumeOutcome } from './volumeOutcome.js';
import { VolumeRefusal } from './volumeRefusal.js';

export type RekeyStep = 'copyStarted' | 'copied' | 'movedAside' | 'swapped';

export interface RekeyOptions {
  dir: string;
  /** The key DIR is encrypted under now. */
  fromKeyFile: string;
  toKeyFile: string;
  /** The Keyward version of the new key, recorded on DIR. */
  toVersion: number;
  /** Called once each step is durable (tests stop here to simulate a crash). */
  afterStep?: (step: RekeyStep) => void;
}

export function rekeyVolume(options: RekeyOptions): VolumeOutcome {
  const from = readKeyFile(options.fromKeyFile);
  let to: DeliveredKey | undefined;
  try {
    to = readKeyFile(options.toKeyFile, options.toVersion);
    if (from.identifier.equals(to.identifier)) throw new KeywardError('InvalidArgument', '--from-key and --to-key hold the same key');
    return new Rekey(options, from, to).run();
  } finally {
    from.key.fill(0);
    to?.key.fill(0);
  }
}

export interface RekeyToPrimaryOptions {
  dir: string;
  /** The primary key file as the CSI provider delivers it, with its PATH.v<N> siblings (versions >= 1). */
  keyFile: string;
  afterStep?: (step: RekeyStep) => void;
}

/**
 * `rekey --key FILE`: from whichever delivered version DIR (or, after a crash, DIR.old) is under,
 * to the primary. The same Job works after every rotation: no version numbers to edit.
 */
export function rekeyToPrimary(options: RekeyToPrimaryOptions): VolumeOutcome {
  const keys = readDeliveredKeys(options.keyFile);
  try {
    const to = keys.primary;
    if (to.version === undefined) {
      throw new VolumeRefusal('KeyUnreadable', `no ${basename(options.keyFile)}.v<N> file beside ${options.keyFile} names its version: deliver the volumeKey with versions "1" or more`);
    }
    const from = [inspectVolume(options.dir), inspectVolume(`${options.dir}.old`)]
      .map((volume) => (volume.policy ? keys.find(volume.policy.identifier) : undefined))
      .find((key) => key !== undefined && key !== to);
    if (from) return new Rekey({ dir: options.dir, fromKeyFile: from.path, toKeyFile: to.path, toVersion: to.version, afterStep: options.afterStep }, from, to).run();
    const current = inspectVolume(options.dir);
    if (current.policy?.identifier.equals(to.identifier)) {
      return { code: 'AlreadyRekeyed', message: `${options.dir} is encrypted under key version ${to.version} (already)`, keyVersion: to.version, keyIdentifier: to.identifier.toString('hex') };
    }
    if (!current.policy) throw new VolumeRefusal('NotEncrypted', `${options.dir} is not encrypted by Keyward`);
    throw undeliveredKeyRefusal(current, current.policy);
  } finally {
    keys.wipe();
  }
}

class Rekey {
  private readonly copy: string;
  private readonly aside: string;
  private readonly parent: string;
  private stepsTaken = 0;

  constructor(
    private readonly options: RekeyOptions,
    private readonly from: DeliveredKey,
    private readonly to: DeliveredKey,
  ) {
    this.copy = `${options.dir}.rekey`;
    this.aside = `${options.dir}.old`;
    this.parent = dirname(options.dir);
  }

  run(): VolumeOutcome {
    const dir = this.options.dir;
    // Checked before any key is added: refusals change nothing.
    this.refuseForeign(inspectVolume(dir));
    this.refuseForeign(inspectVolume(this.aside));
    withDirectory(this.parent, (fd) => {
      addKey(fd, this.from.key);
      addKey(fd, this.to.key);
    });
    for (;;) {
      const current = inspectVolume(dir);
      const copy = inspectVolume(this.copy);
      const aside = inspectVolume(this.aside);
      if (this.isNew(current)) {
        if (copy.exists) throw this.inconsistent(`${this.copy} is left beside ${dir}, which is already under the new key`);
        if (aside.exists) {
          rmSync(this.aside, { recursive: true });
          fsyncDirectory(this.parent);
          this.stepsTaken++;
        }
        return this.finish();
      }
      if (this.isOld(current)) {
        if (aside.exists) throw this.inconsistent(`${this.aside} is left beside ${dir}, which is still under the old key`);
        if (this.isComplete(copy)) {
          renameSync(dir, this.aside);
          this.durable('movedAside');
        } else {
          this.copyTree(copy.exists);
        }
        continue;
      }
      if (!current.exists && this.isOld(aside) && this.isComplete(copy)) {
        renameSync(this.copy, dir);
        this.durable('swapped');
        continue;
      }
      if (!current.exists) throw new VolumeRefusal('NotEncrypted', `${dir} does not exist${aside.exists ? ` (${this.aside} does, without a complete copy beside it)` : ''}`);
      throw new VolumeRefusal('NotEncrypted', `${dir} is not encrypted by Keyward`);
    }
  }

  /** A directory under a key that is neither the old nor the new one is someone else's. */
  private refuseForeign(volume: VolumeDirectory): void {
    if (!volume.policy || this.isOld(volume) || this.isNew(volume)) return;
    throw foreignKeyRefusal(volume, volume.policy, 'not by the key in --from-key');
  }

  private isOld(volume: VolumeDirectory): boolean {
    return volume.policy?.version === 2 && volume.policy.identifier.equals(this.from.identifier);
  }

  private isNew(volume: VolumeDirectory): boolean {
    return volume.policy?.version === 2 && volume.policy.identifier.equals(this.to.identifier);
  }

  /** The copy is complete once it carries the new version: the attribute is written last. */
  private isComplete(copy: VolumeDirectory): boolean {
    return this.isNew(copy) && copy.keyVersion === this.options.toVersion;
  }

  private inconsistent(message: string): VolumeRefusal {
    return new VolumeRefusal('RekeyInconsistent', `${message}; look at both before removing either`);
  }

  private durable(step: RekeyStep): void {
    fsyncDirectory(this.parent);
    this.stepsTaken++;
    this.options.afterStep?.(step);
  }

  /** DIR into a fresh DIR.rekey under the new key; an incomplete earlier copy is discarded first. */
  private copyTree(discardFirst: boolean): void {
    if (discardFirst) rmSync(this.copy, { recursive: true });
    const top = lstatSync(this.options.dir);
    mkdirSync(this.copy, { mode: 0o700 });
    withDirectory(this.copy, (fd) => setPolicy(fd, this.to.identifier));
    this.durable('copyStarted');
    copyEntries(this.options.dir, this.copy);
    copyMetadata(this.copy, top);
    recordKeyVersion(this.copy, this.options.toVersion);
    fsyncDirectory(this.copy);
    this.durable('copied');
  }

  private finish(): VolumeOutcome {
    // Nothing is under the old key any more: drop this user's claim on it.
    try {
      withDirectory(keyHandlePath(this.options.dir), (fd) => removeKey(fd, this.from.identifier));
    } catch (err) {
      if ((err as FscryptError).code !== 'ENOKEY') throw err;
    }
    const version = this.options.toVersion;
    return {
      code: this.stepsTaken === 0 ? 'AlreadyRekeyed' : 'Rekeyed',
      message: `${this.options.dir} is encrypted under key version ${version}${this.stepsTaken === 0 ? ' (already)' : ''}`,
      keyVersion: version,
      keyIdentifier: this.to.identifier.toString('hex'),
    };
  }
}

/** Directories, regular files and symbolic links, with modes, times (to the microsecond) and (as root) owners; each flushed. */
function copyEntries(from: string, to: string): void {
  for (const name of readdirSync(from)) {
    const source = join(from, name);
    const target = join(to, name);
    const stat = lstatSync(source);
    if (stat.isDirectory()) {
      mkdirSync(target, { mode: 0o700 });
      copyEntries(source, target);
      fsyncDirectory(target);
    } else if (stat.isFile()) {
      copyFileContents(source, target);
    } else if (stat.isSymbolicLink()) {
      symlinkSync(readlinkSync(source), target);
    } else {
      throw new KeywardError('FailedPrecondition', `cannot rekey ${basename(from)}/${name}: only directories, regular files and symbolic links are copied`);
    }
    copyMetadata(target, stat);
  }
}

function copyFileContents(source: string, target: string): void {
  const input = openSync(source, 'r');
  const output = openSync(target, 'wx', 0o600);
  const buffer = Buffer.alloc(1 << 16);
  try {
    for (let n = readSync(input, buffer); n > 0; n = readSync(input, buffer)) {
      for (let written = 0; written < n; ) written += writeSync(output, buffer, written, n - written);
    }
    fsyncSync(output);
  } finally {
    buffer.fill(0);
    closeSync(input);
    closeSync(output);
  }
}

function copyMetadata(target: string, stat: Stats): void {
  if (process.geteuid?.() === 0) lchownSync(target, stat.uid, stat.gid);
  if (!stat.isSymbolicLink()) chmodSync(target, stat.mode & 0o7777);
  // Seconds as a float: a Date would drop everything below the millisecond.
  lutimesSync(target, stat.atimeMs / 1000, stat.mtimeMs / 1000);
}
