import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, closeSync, mkdirSync, openSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createEncryptedFilesystem, nodeUnsupportedReason, type EncryptedFilesystem } from '../testbed/volume/encryptedFilesystem.js';
import { addKey, addonPath, getPolicy, getXattr, keyIdentifier, keyStatus, removeKey, setPolicy, setXattr, withDirectory, type FscryptError } from './fscrypt.js';

const contentMarker = 'KEYWARD-PLAINTEXT-CONTENT-MARKER';
const nameMarker = 'keyward-plaintext-name-marker';

const identifierOf = keyIdentifier;
// libuv has no name for ENOKEY (126): Node reports it by number.
const isNoKey = (err: NodeJS.ErrnoException): boolean => err.errno === -126;

const code = (fn: () => unknown): string | undefined => {
  try {
    fn();
    return undefined;
  } catch (err) {
    return (err as FscryptError).code;
  }
};

describe('fscrypt addon on a real ext4 -O encrypt filesystem', function () {
  let fs: EncryptedFilesystem;
  before(function () {
    const reason = nodeUnsupportedReason();
    if (reason) this.skip();
    fs = createEncryptedFilesystem();
  });
  after(() => fs?.stop());

  it('gives the identifier the v2 HKDF computes, sets and reads a v2 AES-256-XTS/CTS policy', () => {
    const dir = join(fs.mountPoint, 'identifier');
    mkdirSync(dir);
    const key = randomBytes(64);
    withDirectory(dir, (fd) => {
      assert.equal(getPolicy(fd), undefined, 'a fresh directory is not encrypted');
      const identifier = addKey(fd, key);
      assert.deepEqual(identifier, keyIdentifier(key));
      setPolicy(fd, identifier);
      assert.deepEqual(getPolicy(fd), { version: 2, contentsMode: 1, filenamesMode: 4, flags: 3, identifier });
      assert.deepEqual(keyStatus(fd, identifier), { status: 'present', userCount: 1, addedBySelf: true });
    });
    const open = openSync(join(dir, 'open-file'), 'w');
    try {
      const removal = withDirectory(fs.mountPoint, (fd) => removeKey(fd, identifierOf(key)));
      assert.deepEqual(removal, { removed: false, filesBusy: true, otherUsers: false }, 'an open file keeps the key in use');
      assert.equal(withDirectory(fs.mountPoint, (fd) => keyStatus(fd, identifierOf(key))).status, 'incompletelyRemoved');
    } finally {
      closeSync(open);
    }
  });

  it('keeps names and contents off the disk, locks on remount, and unlocks with the key again', () => {
    const dir = join(fs.mountPoint, 'secret');
    mkdirSync(dir);
    const key = randomBytes(64);
    const identifier = withDirectory(dir, (fd) => {
      const id = addKey(fd, key);
      setPolicy(fd, id);
      return id;
    });
    writeFileSync(join(dir, nameMarker), contentMarker.repeat(200));
    fs.remount();

    const raw = readFileSync(fs.image);
    assert.equal(raw.indexOf(contentMarker), -1, 'contents are ciphertext on disk');
    assert.equal(raw.indexOf(nameMarker), -1, 'names are ciphertext on disk');

    const names = readdirSync(dir);
    assert.equal(names.length, 1);
    assert.notEqual(names[0], nameMarker, 'without the key, names are ciphertext');
    assert.throws(() => readFileSync(join(dir, names[0]!)), isNoKey);
    assert.equal(withDirectory(fs.mountPoint, (fd) => keyStatus(fd, identifier)).status, 'absent');

    withDirectory(fs.mountPoint, (fd) => addKey(fd, key));
    assert.equal(readFileSync(join(dir, nameMarker), 'utf8'), contentMarker.repeat(200));
    assert.deepEqual(withDirectory(fs.mountPoint, (fd) => removeKey(fd, identifier)), { removed: true, filesBusy: false, otherUsers: false });
    assert.notEqual(readdirSync(dir)[0], nameMarker, 'locked again once the key is removed');
  });

  it('reports kernel refusals by errno name', () => {
    const full = join(fs.mountPoint, 'full');
    mkdirSync(full);
    writeFileSync(join(full, 'file'), 'x');
    const key = randomBytes(64);
    withDirectory(full, (fd) => {
      const identifier = addKey(fd, key);
      assert.equal(code(() => setPolicy(fd, identifier)), 'ENOTEMPTY');
      removeKey(fd, identifier);
      assert.equal(code(() => removeKey(fd, identifier)), 'ENOKEY');
      assert.equal(code(() => addKey(fd, Buffer.alloc(32))), 'EINVAL', 'the binding takes 64-byte keys only');
      assert.equal(code(() => setXattr(fd, 'trusted.keyward', '1')), 'EINVAL', 'only user. attributes');
    });
    const plain = mkdtempSync(join(tmpdir(), 'keyward-plain-'));
    try {
      withDirectory(plain, (fd) => assert.match(code(() => getPolicy(fd)) ?? '', /^(EOPNOTSUPP|ENOTTY)$/));
    } finally {
      rmSync(plain, { recursive: true });
    }
  });

  it('reads and writes user. attributes on a directory', () => {
    const dir = join(fs.mountPoint, 'attributes');
    mkdirSync(dir);
    withDirectory(dir, (fd) => {
      assert.equal(getXattr(fd, 'user.keyward.key-version'), undefined);
      setXattr(fd, 'user.keyward.key-version', '7');
      assert.equal(getXattr(fd, 'user.keyward.key-version'), '7');
    });
  });

  it('lets an unprivileged user (uid 65532) add a v2 key, encrypt its own directory and remove its claim', () => {
    const dir = join(fs.mountPoint, 'unprivileged');
    mkdirSync(dir);
    chownSync(dir, 65532, 65532);
    const key = randomBytes(64);
    const script = `
      const b = require(${JSON.stringify(addonPath)});
      const fs = require('node:fs');
      const fd = fs.openSync(process.argv[1], fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
      const id = b.addKey(fd, Buffer.from(process.argv[2], 'hex'));
      b.setPolicy(fd, id);
      fs.writeFileSync(process.argv[1] + '/data', 'kept');
      fs.closeSync(fd);
      const parent = fs.openSync(process.argv[1] + '/..', fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
      console.log(JSON.stringify({ id: id.toString('hex'), removal: b.removeKey(parent, id) }));`;
    const run = spawnSync('setpriv', ['--reuid=65532', '--regid=65532', '--clear-groups', process.execPath, '-e', script, dir, key.toString('hex')], { encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
    const result = JSON.parse(run.stdout) as { id: string; removal: unknown };
    assert.equal(result.id, keyIdentifier(key).toString('hex'));
    assert.deepEqual(result.removal, { removed: true, filesBusy: false, otherUsers: false });
    assert.notDeepEqual(readdirSync(dir), ['data'], 'locked after the unprivileged user removed its key');
  });
});
