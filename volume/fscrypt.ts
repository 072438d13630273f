// Typed access to Keyward's fscrypt addon (native/fscrypt.c) and the v2 key identifier.
// Every call takes a descriptor of a directory opened with openDirectory(); errors are Errors
// whose `code` is the errno name (EOPNOTSUPP, ENOTTY, ENOKEY, EEXIST, ENOTEMPTY, EACCES, ...).
import { hkdfSync } from 'node:crypto';
import { closeSync, constants, existsSync, openSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { setupError } from '../core/errors.js';

/** fscrypt v2 master keys as Keyward delivers them: 64 bytes (AES-256-XTS needs two 256-bit keys). */
export const volumeKeyBytes = 64;
export const keyIdentifierBytes = 16;

/** A directory's encryption policy. For a v1 policy, `identifier` is its 8-byte descriptor. */
export interface EncryptionPolicy {
  version: 1 | 2;
  contentsMode: number;
  filenamesMode: number;
  flags: number;
  identifier: Buffer;
}

/** What FS_IOC_REMOVE_ENCRYPTION_KEY did: `removed` when the key left the filesystem. */
export interface KeyRemoval {
  removed: boolean;
  /** Files still open kept their data readable; the key goes when they are closed. */
  filesBusy: boolean;
  /** Only this user's claim was dropped: other users still hold the key. */
  otherUsers: boolean;
}

export interface KeyStatus {
  status: 'absent' | 'present' | 'incompletelyRemoved';
  /** How many users hold a claim on the key. */
  userCount: number;
  /** This process's user holds a claim. */
  addedBySelf: boolean;
}

/** An error from the addon or the kernel. */
export interface FscryptError extends Error {
  code: string;
  errno?: number;
  syscall?: string;
}

interface Binding {
  addKey(fd: number, key: Buffer): Buffer;
  removeKey(fd: number, identifier: Buffer): KeyRemoval;
  keyStatus(fd: number, identifier: Buffer): KeyStatus;
  getPolicy(fd: number): EncryptionPolicy | undefined;
  setPolicy(fd: number, identifier: Buffer): void;
  getXattr(fd: number, name: string): string | undefined;
  setXattr(fd: number, name: string, value: string): void;
}

export const addonPath = fileURLToPath(new URL('../../native/build/Release/fscrypt.node', import.meta.url));

let binding: Binding | undefined;

/** Loaded on first use, so commands that never touch a volume do not need the addon. */
function addon(): Binding {
  if (!binding) {
    if (!existsSync(addonPath)) throw setupError(`the fscrypt addon is not built (${addonPath}): run npm run native:build`);
    binding = createRequire(import.meta.url)(addonPath) as Binding;
  }
  return binding;
}

/**
 * The identifier the kernel gives a v2 key: HKDF-SHA512 with no salt, info "fscrypt\0" and the
 * key-identifier context (1), 16 bytes. Lets a caller match keys to a policy without adding them.
 */
export function keyIdentifier(key: Buffer): Buffer {
  const info = Buffer.from('fscrypt\0\x01', 'latin1');
  return Buffer.from(hkdfSync('sha512', key, Buffer.alloc(0), info, keyIdentifierBytes));
}

/** Adds the key to the filesystem for this user (unlocking every directory under it); returns its identifier. */
export function addKey(fd: number, key: Buffer): Buffer {
  return addon().addKey(fd, key);
}

/** Drops this user's claim on the key; the key leaves the filesystem when no claim and no open file remain. */
export function removeKey(fd: number, identifier: Buffer): KeyRemoval {
  return addon().removeKey(fd, identifier);
}

export function keyStatus(fd: number, identifier: Buffer): KeyStatus {
  return addon().keyStatus(fd, identifier);
}

/** The directory's policy, or undefined when it is not encrypted. */
export function getPolicy(fd: number): EncryptionPolicy | undefined {
  return addon().getPolicy(fd);
}

/** Encrypts the (empty) directory: v2, AES-256-XTS contents, AES-256-CTS names padded to 32 bytes. */
export function setPolicy(fd: number, identifier: Buffer): void {
  addon().setPolicy(fd, identifier);
}

/** A `user.` extended attribute of the directory, or undefined when it has none. */
export function getXattr(fd: number, name: string): string | undefined {
  return addon().getXattr(fd, name);
}

export function setXattr(fd: number, name: string, value: string): void {
  addon().setXattr(fd, name, value);
}

/** Filesystems where encryption cannot work: no fscrypt ioctls, or ext4 without the encrypt feature. */
export function isNotEncryptable(err: unknown): boolean {
  const code = (err as FscryptError).code;
  return code === 'EOPNOTSUPP' || code === 'ENOTTY';
}

/** Opens a directory for the calls above (read-only, no following into a file). */
export function openDirectory(path: string): number {
  return openSync(path, constants.O_RDONLY | constants.O_DIRECTORY);
}

export function withDirectory<T>(path: string, use: (fd: number) => T): T {
  const fd = openDirectory(path);
  try {
    return use(fd);
  } finally {
    closeSync(fd);
  }
}
