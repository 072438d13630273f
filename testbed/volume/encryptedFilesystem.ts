// A throw-away ext4 filesystem that supports fscrypt: a sparse image file made with
// `mkfs.ext4 -O encrypt`, on a loop device, mounted under a directory of its own. `remount()`
// simulates a reboot (the filesystem's keyring is emptied on unmount); `stop()` unmounts, detaches
// our loop device (only ours: the one recorded at attach whose backing file is our image) and
// removes the directory. It also undoes itself if the process exits or is interrupted.
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { setupError } from '../../core/errors.js';
import { onExitCleanup } from '../control-plane/componentProcess.js';

export interface EncryptedFilesystem {
  /** Where the filesystem is mounted (its root is root-owned, 0755, and holds lost+found). */
  readonly mountPoint: string;
  /** The image file, to read the raw bytes the disk would hold. */
  readonly image: string;
  /** The loop device this fixture attached, e.g. /dev/loop3. */
  readonly loopDevice: string;
  /** Unmount and mount again: every key added to the filesystem is gone, as after a reboot. */
  remount(): void;
  /** Unmount, detach the loop device, remove the image; safe to call twice. */
  stop(): void;
}

export interface EncryptedFilesystemOptions {
  sizeMiB?: number;
  /** false: a plain ext4 without the encrypt feature, where encryption is refused (default true). */
  encrypt?: boolean;
}

/** Why this machine cannot host the fixture, or undefined when it can. */
export function nodeUnsupportedReason(): string | undefined {
  if (process.getuid?.() !== 0) return 'loop devices and mounts need root';
  if (!existsSync('/dev/loop-control')) return 'no loop device support (/dev/loop-control is missing)';
  if (!has('losetup') || !has('mount')) return 'losetup or mount is missing (util-linux, mount)';
  if (!has('mkfs.ext4')) return 'mkfs.ext4 is missing: apt-get install e2fsprogs';
  // e2fsprogs learned the encrypt feature in 1.43.
  const version = /mke2fs (\d+)\.(\d+)/.exec(spawnSync('mkfs.ext4', ['-V'], { encoding: 'utf8' }).stderr ?? '');
  if (!version || Number(version[1]) * 100 + Number(version[2]) < 143) return 'mkfs.ext4 is older than 1.43 and cannot make an encryptable filesystem';
  if (!existsSync('/sys/fs/ext4/features/encryption')) return 'the kernel\'s ext4 has no encryption support (CONFIG_FS_ENCRYPTION)';
  return undefined;
}

export function createEncryptedFilesystem(options: EncryptedFilesystemOptions = {}): EncryptedFilesystem {
  const reason = nodeUnsupportedReason();
  if (reason) throw setupError(`cannot make an encryptable filesystem here: ${reason}`);
  const dir = mkdtempSync(join(tmpdir(), 'keyward-fscrypt-'));
  // Reachable by other users: tests run the volume commands as an unprivileged uid too.
  chmodSync(dir, 0o755);
  const image = join(dir, 'disk.ext4');
  const mountPoint = join(dir, 'mnt');
  let loopDevice = '';
  let mounted = false;

  const unmount = (): void => {
    if (!mounted) return;
    if (spawnSync('umount', [mountPoint], { stdio: 'ignore' }).status !== 0) {
      // A file still open (a test that failed midway) keeps it busy: detach it lazily.
      execFileSync('umount', ['-l', mountPoint]);
    }
    mounted = false;
  };
  const mount = (): void => {
    execFileSync('mount', ['-t', 'ext4', loopDevice, mountPoint], { stdio: ['ignore', 'ignore', 'pipe'] });
    mounted = true;
  };
  const detach = (): void => {
    if (loopDevice && backingFile(loopDevice) === image) spawnSync('losetup', ['--detach', loopDevice], { stdio: 'ignore' });
    loopDevice = '';
  };
  let stopped = false;
  const stop = (): void => {
    if (stopped) return;
    stopped = true;
    try {
      unmount();
    } finally {
      detach();
      removeHook();
      rmSync(dir, { recursive: true, force: true });
    }
  };
  const removeHook = onExitCleanup(stop);

  try {
    execFileSync('truncate', ['--size', `${options.sizeMiB ?? 64}M`, image]);
    const features = options.encrypt === false ? [] : ['-O', 'encrypt'];
    execFileSync('mkfs.ext4', ['-q', ...features, image], { stdio: ['ignore', 'ignore', 'pipe'] });
    loopDevice = execFileSync('losetup', ['--find', '--show', image], { encoding: 'utf8' }).trim();
    mkdirSync(mountPoint);
    mount();
  } catch (err) {
    stop();
    throw setupError(`cannot make an encryptable filesystem: ${(err as Error).message}`);
  }

  return {
    mountPoint,
    image,
    get loopDevice() {
      return loopDevice;
    },
    remount: () => {
      unmount();
      mount();
    },
    stop,
  };
}

/** The image a loop device is attached to, from sysfs (undefined when it is free). */
function backingFile(device: string): string | undefined {
  const path = `/sys/block/${basename(device)}/loop/backing_file`;
  return existsSync(path) ? readFileSync(path, 'utf8').trim() : undefined;
}

function has(command: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;
}
