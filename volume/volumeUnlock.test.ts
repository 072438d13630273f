import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createEncryptedFilesystem, nodeUnsupportedReason, type EncryptedFilesystem } from '../testbed/volume/encryptedFilesystem.js';
import { volumeKeyFiles, type VolumeKeyFiles } from '../testbed/volume/volumeKeys.js';
import { keyIdentifier } from './fscrypt.js';
import { lockVolume, unlockVolume, volumeStatus, VolumeRefusal, type VolumeRefusalCode } from './volumeCommands.js';

const cli = fileURLToPath(new URL('../cli/keyward.js', import.meta.url));

function refusedAs(code: VolumeRefusalCode, message?: RegExp) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof VolumeRefusal, `expected a VolumeRefusal, got ${String(err)}`);
    assert.equal(err.refusal, code);
    if (message) assert.match(err.message, message);
    return true;
  };
}

describe('keyward volume unlock, lock and status', function () {
  let fs: EncryptedFilesystem;
  let keys: VolumeKeyFiles;
  before(function () {
    if (nodeUnsupportedReason()) this.skip();
    fs = createEncryptedFilesystem();
    keys = volumeKeyFiles(3);
  });
  after(() => {
    fs?.stop();
    keys?.remove();
  });

  it('creates and encrypts a new directory with the primary, records its version, and unlocks it after a reboot', () => {
    const dir = join(fs.mountPoint, 'first-use');
    keys.deliver(2, [2, 1]);
    const first = unlockVolume({ dir, keyFile: keys.primary });
    assert.equal(first.code, 'Initialized');
    assert.equal(first.keyVersion, 2);
    assert.equal(first.keyIdentifier, keyIdentifier(keys.keys.get(2)!).toString('hex'));
    assert.equal(statSync(dir).mode & 0o777, 0o700);
    writeFileSync(join(dir, 'data.txt'), 'hello');

    fs.remount();
    assert.deepEqual({ ...volumeStatus(dir), dir: undefined }, { dir: undefined, exists: true, encrypted: true, policyVersion: 2, keyIdentifier: first.keyIdentifier, keyVersion: 2, key: 'absent', keyUsers: 0 });
    assert.notDeepEqual(readdirSync(dir), ['data.txt']);

    // Rotated since: version 3 is primary, 2 still delivered as a previous version.
    keys.deliver(3, [3, 2]);
    const again = unlockVolume({ dir, keyFile: keys.primary });
    assert.deepEqual(again, { code: 'Unlocked', message: `${dir} is unlocked with key version 2`, keyVersion: 2, keyIdentifier: first.keyIdentifier });
    assert.equal(readFileSync(join(dir, 'data.txt'), 'utf8'), 'hello');
    assert.equal(volumeStatus(dir).key, 'present');

    assert.equal(lockVolume(dir).code, 'Locked');
    assert.equal(volumeStatus(dir).key, 'absent');
    assert.equal(lockVolume(dir).code, 'NotHeld', 'locking twice is harmless');
  });

  it('takes the primary version from --key-version when no PATH.v<N> file is delivered', () => {
    const dir = join(fs.mountPoint, 'unversioned');
    keys.deliver(1);
    assert.equal(unlockVolume({ dir, keyFile: keys.primary, keyVersion: 1 }).keyVersion, 1);
    assert.equal(volumeStatus(dir).keyVersion, 1);
  });

  it('refuses ForeignKey, naming the recorded version, when that version is not delivered', () => {
    const dir = join(fs.mountPoint, 'foreign');
    keys.deliver(1, [1]);
    unlockVolume({ dir, keyFile: keys.primary });
    fs.remount();
    keys.deliver(3, [3, 2]);
    assert.throws(() => unlockVolume({ dir, keyFile: keys.primary }), refusedAs('ForeignKey', /locked by key version 1, which was not delivered: it may be disabled or destroyed/));
    assert.equal(volumeStatus(dir).key, 'absent', 'nothing added');
  });

  it('refuses NotEmpty for a directory that already holds plaintext files, changing nothing', () => {
    const dir = join(fs.mountPoint, 'not-empty');
    mkdirSync(dir);
    writeFileSync(join(dir, 'plain.txt'), 'x');
    keys.deliver(1);
    assert.throws(() => unlockVolume({ dir, keyFile: keys.primary }), refusedAs('NotEmpty'));
    assert.equal(volumeStatus(dir).encrypted, false);
    assert.equal(readFileSync(join(dir, 'plain.txt'), 'utf8'), 'x');
  });

  it('refuses KeyUnreadable for a missing or short key file before touching the directory', () => {
    const dir = join(fs.mountPoint, 'bad-key');
    assert.throws(() => unlockVolume({ dir, keyFile: join(keys.dir, 'missing') }), refusedAs('KeyUnreadable', /ENOENT/));
    const short = join(keys.dir, 'short');
    writeFileSync(short, Buffer.alloc(32, 1));
    assert.throws(() => unlockVolume({ dir, keyFile: short }), refusedAs('KeyUnreadable', /32 bytes; a volume key is 64 bytes/));
    assert.ok(!existsSync(dir), 'no directory made');
  });

  it('refuses NotEncryptable on a filesystem without encryption, creating nothing', () => {
    const plain = mkdtempSync(join(tmpdir(), 'keyward-plain-'));
    const plainExt4 = createEncryptedFilesystem({ encrypt: false });
    try {
      keys.deliver(1);
      for (const parent of [plain, plainExt4.mountPoint]) {
        const dir = join(parent, 'volume');
        assert.throws(() => unlockVolume({ dir, keyFile: keys.primary }), refusedAs('NotEncryptable'));
        assert.ok(!existsSync(dir));
        mkdirSync(dir);
        assert.throws(() => unlockVolume({ dir, keyFile: keys.primary }), refusedAs('NotEncryptable'));
      }
    } finally {
      plainExt4.stop();
      rmSync(plain, { recursive: true });
    }
  });

  it('through the CLI: one audit line per command, refusals exit 1 with one line, no key bytes anywhere [practice:audit]', () => {
    const dir = join(fs.mountPoint, 'cli');
    keys.deliver(1, [1]);
    const env = { ...process.env, POD_NAME: 'app-0', POD_NAMESPACE: 'shop', SERVICE_ACCOUNT: 'app' };
    const ok = spawnSync(process.execPath, [cli, 'volume', 'unlock', `--dir=${dir}`, `--key=${keys.primary}`], { encoding: 'utf8', env });
    assert.equal(ok.status, 0, ok.stderr);
    const record = JSON.parse(ok.stdout) as Record<string, unknown>;
    assert.equal(record.stream, 'audit');
    assert.equal(record.operation, 'volumeUnlock');
    assert.equal(record.result, 'allowed');
    assert.equal(record.code, 'Initialized');
    assert.equal(record.volume, dir);
    assert.equal(record.keyVersion, 1);
    assert.equal(record.pod, 'shop/app-0');
    assert.equal(record.actor, 'system:serviceaccount:shop:app');

    writeFileSync(join(dir, 'x'), 'y');
    const status = spawnSync(process.execPath, [cli, 'volume', 'status', `--dir=${dir}`, '-o', 'json'], { encoding: 'utf8' });
    assert.equal(status.status, 0, status.stderr);
    assert.equal((JSON.parse(status.stdout) as { key: string }).key, 'present');

    fs.remount();
    keys.deliver(2, [2]);
    const refused = spawnSync(process.execPath, [cli, 'volume', 'unlock', `--dir=${dir}`, `--key=${keys.primary}`], { encoding: 'utf8', env });
    assert.equal(refused.status, 1);
    assert.equal(refused.stderr.trim().split('\n').length, 1);
    assert.match(refused.stderr, /^keyward volume: ForeignKey: .* locked by key version 1, which was not delivered/);
    const denied = JSON.parse(refused.stdout) as Record<string, unknown>;
    assert.deepEqual([denied.result, denied.code, denied.keyVersion], ['denied', 'ForeignKey', 1]);

    const output = ok.stdout + ok.stderr + refused.stdout + refused.stderr;
    for (const key of keys.keys.values()) {
      assert.ok(!output.includes(key.toString('hex')) && !output.includes(key.toString('base64')), 'no key bytes in output');
    }
  });
});
