import assert from 'node:assert/strict';
import type { MountObject } from './mountRequest.js';
import { createObjectVersioner, type ServedFile } from './objectVersion.js';

describe('CSI object versions', () => {
  const key = Buffer.alloc(32, 7);
  const version = createObjectVersioner(key);
  const scope = '6f1c1b7e-3c2a-4a59-9a3e-2f0d4c1b9e77';
  const secret: MountObject = { type: 'secret', name: 'db-password', keyRing: 'app-secrets', path: 'db/password', mode: 0o400, ciphertext: Buffer.from('sealed-v1') };
  const dataKey: MountObject = { type: 'dataKey', name: 'db-volume', keyRing: 'volume-keys', path: 'db.key', mode: 0o400, previousVersions: 1 };
  const files = (contents = 'hunter2'): ServedFile[] => [{ path: 'db/password', mode: 0o400, contents: Buffer.from(contents) }];
  const keyFiles: ServedFile[] = [
    { path: 'db.key', mode: 0o400, contents: Buffer.alloc(32, 2) },
    { path: 'db.key.v2', mode: 0o400, contents: Buffer.alloc(32, 2) },
    { path: 'db.key.v1', mode: 0o400, contents: Buffer.alloc(32, 1) },
  ];

  it('is stable while the object and its content stay the same', () => {
    const first = version(scope, secret, files());
    assert.equal(version(scope, { ...secret, ciphertext: Buffer.from('sealed-v1') }, files()), first);
    assert.equal(createObjectVersioner(Buffer.from(key))(scope, secret, files()), first, 'depends on the key, not on the instance');
    assert.equal(version(scope, dataKey, [...keyFiles].reverse()), version(scope, dataKey, keyFiles), 'file order does not matter');
  });

  it('changes when the content changes', () => {
    const before = version(scope, secret, files('hunter2'));
    assert.notEqual(version(scope, secret, files('hunter3')), before);
    assert.notEqual(version(scope, secret, files('')), before);
    const rotated = keyFiles.map((f) => (f.path === 'db.key' ? { ...f, contents: Buffer.alloc(32, 3) } : f));
    assert.notEqual(version(scope, dataKey, rotated), version(scope, dataKey, keyFiles));
    assert.notEqual(version(scope, dataKey, [...keyFiles, { path: 'db.key.v3', mode: 0o400, contents: Buffer.alloc(32, 3) }]), version(scope, dataKey, keyFiles));
  });

  it('changes when the configuration or the files around the content change', () => {
    const before = version(scope, secret, files());
    const changed: [string, string][] = [
      ['ciphertext', version(scope, { ...secret, ciphertext: Buffer.from('sealed-v2') }, files())],
      ['keyRing', version(scope, { ...secret, keyRing: 'other' }, files())],
      ['object mode', version(scope, { ...secret, mode: 0o440 }, files())],
      ['object path', version(scope, { ...secret, path: 'db/pw' }, files())],
      ['name', version(scope, { ...secret, name: 'db-pw' }, files())],
      ['file mode', version(scope, secret, [{ ...files()[0]!, mode: 0o440 }])],
      ['file path', version(scope, secret, [{ ...files()[0]!, path: 'db/pw' }])],
      ['type', version(scope, { type: 'publicKey', name: secret.name, keyRing: secret.keyRing, path: secret.path, mode: secret.mode }, files())],
      ['scope (another pod)', version('0a0a0a0a-1b1b-4c4c-8d8d-2e2e2e2e2e2e', secret, files())],
      ['key (another process)', createObjectVersioner()(scope, secret, files())],
    ];
    for (const [what, after] of changed) assert.notEqual(after, before, what);
    assert.notEqual(version(scope, { ...dataKey, previousVersions: 2 }, keyFiles), version(scope, dataKey, keyFiles), 'previousVersions');
    const volumeKey: MountObject = { ...dataKey, type: 'volumeKey' };
    assert.notEqual(version(scope, volumeKey, keyFiles), version(scope, dataKey, keyFiles), 'type volumeKey');
    assert.notEqual(version(scope, { ...volumeKey, previousVersions: 2 }, keyFiles), version(scope, volumeKey, keyFiles), 'a volumeKey\'s previousVersions');
  });

  it('keeps field boundaries: moving bytes between fields changes the version', () => {
    const a = version(scope, secret, [{ path: 'ab', mode: 0o400, contents: Buffer.from('c') }]);
    const b = version(scope, secret, [{ path: 'a', mode: 0o400, contents: Buffer.from('bc') }]);
    assert.notEqual(a, b);
  });

  it('is an opaque base64url string that carries nothing of the content', () => {
    const v = version(scope, secret, files('hunter2'));
    assert.match(v, /^[A-Za-z0-9_-]{43}$/);
    assert.ok(!v.includes(Buffer.from('hunter2').toString('base64url').slice(0, 8)));
  });

  it('refuses a short key', () => {
    assert.throws(() => createObjectVersioner(Buffer.alloc(16)), /at least 32 bytes; got 16/);
  });
});
