import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createEncryptedFilesystem, nodeUnsupportedReason, type EncryptedFilesystem } from '../testbed/volume/encryptedFilesystem.js';
import { volumeKeyFiles, type VolumeKeyFiles } from '../testbed/volume/volumeKeys.js';
import { keyIdentifier } from './fscrypt.js';
import { rekeyToPrimary, rekeyVolume, unlockVolume, volumeStatus, VolumeRefusal, type RekeyStep } from './volumeCommands.js';

const cli = fileURLToPath(new URL('../cli/keyward.js', import.meta.url));

/** Every entry under `root`: type, mode, and content hash or link target; mtimes to the millisecond. */
function snapshot(root: string): Record<string, string> {
  const entries: Record<string, string> = {};
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir).sort()) {
      const path = join(dir, name);
      const stat = lstatSync(path);
      const mode = (stat.mode & 0o7777).toString(8);
      if (stat.isDirectory()) {
        entries[relative(root, path)] = `dir ${mode}`;
        walk(path);
      } else if (stat.isSymbolicLink()) {
        entries[relative(root, path)] = `link ${readlinkSync(path)}`;
      } else {
        entries[relative(root, path)] = `file ${mode} ${Math.round(stat.mtimeMs)} ${createHash('sha256').update(readFileSync(path)).digest('hex')}`;
      }
    }
  };
  walk(root);
  return entries;
}

function populate(dir: string): void {
  writeFileSync(join(dir, 'small.txt'), 'hello');
  writeFileSync(join(dir, 'empty'), '');
  writeFileSync(join(dir, 'large.bin'), randomBytes(300_000));
  mkdirSync(join(dir, 'nested/deeper'), { recursive: true });
  writeFileSync(join(dir, 'nested/deeper/notes.md'), '# notes\n'.repeat(100));
  chmodSync(join(dir, 'nested/deeper/notes.md'), 0o640);
  symlinkSync('nested/deeper/notes.md', join(dir, 'link-to-notes'));
}

describe('keyward volume rekey', function () {
  let fs: EncryptedFilesystem;
  let keys: VolumeKeyFiles;
  let from: string;
  let to: string;
  before(function () {
    if (nodeUnsupportedReason()) this.skip();
    fs = createEncryptedFilesystem({ sizeMiB: 128 });
    keys = volumeKeyFiles(3);
    from = keys.single(1);
    to = keys.single(2);
  });
  after(() => {
    fs?.stop();
    keys?.remove();
  });

  /** A directory encrypted under version 1, holding a small tree; returns its snapshot. */
  function volumeUnderVersion1(name: string): { dir: string; before: Record<string, string> } {
    const dir = join(fs.mountPoint, name);
    keys.deliver(1, [1]);
    unlockVolume({ dir, keyFile: keys.primary });
    populate(dir);
    return { dir, before: snapshot(dir) };
  }

  it('--key: from the delivered version the directory is under to the primary, however many rotations since; then AlreadyRekeyed [practice:rotation]', () => {
    const { dir, before } = volumeUnderVersion1('to-primary');
    // Two rotations later the provider delivers version 3 as the primary, and 3 and 1 as files.
    keys.deliver(3, [3, 1]);
    const outcome = rekeyToPrimary({ dir, keyFile: keys.primary });
    assert.equal(outcome.code, 'Rekeyed');
    assert.equal(outcome.keyVersion, 3);
    assert.deepEqual(snapshot(dir), before);
    assert.equal(volumeStatus(dir).keyIdentifier, keyIdentifier(keys.keys.get(3)!).toString('hex'));
    assert.equal(rekeyToPrimary({ dir, keyFile: keys.primary }).code, 'AlreadyRekeyed');
  });

  it('--key refuses a directory under a version not delivered, and a delivery without version files, changing nothing', () => {
    const { dir, before } = volumeUnderVersion1('to-primary-refused');
    keys.deliver(3, [3, 2]);
    assert.throws(() => rekeyToPrimary({ dir, keyFile: keys.primary }), (err: unknown) => err instanceof VolumeRefusal && err.refusal === 'ForeignKey' && /key version 1/.test(err.message));
    keys.deliver(3);
    assert.throws(() => rekeyToPrimary({ dir, keyFile: keys.primary }), (err: unknown) => err instanceof VolumeRefusal && err.refusal === 'KeyUnreadable');
    keys.deliver(1, [1]);
    unlockVolume({ dir, keyFile: keys.primary });
    assert.deepEqual(snapshot(dir), before);
    assert.equal(volumeStatus(dir).keyVersion, 1);
  });

  it('moves every file, with its content, mode and times, under the new key; the old key no longer unlocks', () => {
    const { dir, before } = volumeUnderVersion1('round-trip');
    const outcome = rekeyVolume({ dir, fromKeyFile: from, toKeyFile: to, toVersion: 2 });
    assert.equal(outcome.code, 'Rekeyed');
    assert.deepEqual(snapshot(dir), before);
    assert.ok(!existsSync(`${dir}.rekey`) && !existsSync(`${dir}.old`));
    const status = volumeStatus(dir);
    assert.equal(status.keyIdentifier, keyIdentifier(keys.keys.get(2)!).toString('hex'));
    assert.equal(status.keyVersion, 2);

    fs.remount();
    keys.deliver(1, [1]);
    assert.throws(() => unlockVolume({ dir, keyFile: keys.primary }), /ForeignKey: .* locked by key version 2, which was not delivered/);
    keys.deliver(2, [2, 1]);
    assert.equal(unlockVolume({ dir, keyFile: keys.primary }).keyVersion, 2);
    assert.deepEqual(snapshot(dir), before);
  });

  it('refuses ForeignKey, changing nothing, when --from-key is not the key the directory is under', () => {
    const { dir, before } = volumeUnderVersion1('wrong-old-key');
    assert.throws(
      () => rekeyVolume({ dir, fromKeyFile: keys.single(3), toKeyFile: to, toVersion: 2 }),
      (err: unknown) => err instanceof VolumeRefusal && err.refusal === 'ForeignKey' && /locked by key version 1, not by the key in --from-key/.test(err.message),
    );
    assert.ok(!existsSync(`${dir}.rekey`));
    assert.deepEqual(snapshot(dir), before);
  });

  for (const step of ['copyStarted', 'copied', 'movedAside', 'swapped'] as RekeyStep[]) {
    it(`resumes after a crash once '${step}' is durable, and after a reboot`, () => {
      const { dir, before } = volumeUnderVersion1(`crash-${step}`);
      const crash = new Error(`crash after ${step}`);
      assert.throws(
        () =>
          rekeyVolume({
            dir,
            fromKeyFile: from,
            toKeyFile: to,
            toVersion: 2,
            afterStep: (reached) => {
              if (reached === step) throw crash;
            },
          }),
        (err) => err === crash,
      );
      // A half-done copy may hold some files already.
      if (step === 'copyStarted') writeFileSync(join(`${dir}.rekey`, 'partial'), 'left by the crash');
      fs.remount();
      assert.equal(rekeyVolume({ dir, fromKeyFile: from, toKeyFile: to, toVersion: 2 }).code, 'Rekeyed');
      assert.deepEqual(snapshot(dir), before);
      assert.ok(!existsSync(`${dir}.rekey`) && !existsSync(`${dir}.old`));
      assert.equal(volumeStatus(dir).keyVersion, 2);
    });
  }

  it('run again once done: AlreadyRekeyed, audited through the CLI', () => {
    const { dir, before } = volumeUnderVersion1('twice');
    rekeyVolume({ dir, fromKeyFile: from, toKeyFile: to, toVersion: 2 });
    const run = spawnSync(process.execPath, [cli, 'volume', 'rekey', `--dir=${dir}`, `--from-key=${from}`, `--to-key=${to}`, '--to-version=2'], { encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
    const record = JSON.parse(run.stdout) as Record<string, unknown>;
    assert.deepEqual([record.operation, record.result, record.code, record.keyVersion], ['volumeRekey', 'allowed', 'AlreadyRekeyed', 2]);
    assert.deepEqual(snapshot(dir), before);
  });
});
