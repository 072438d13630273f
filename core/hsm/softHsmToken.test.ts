import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { findSoftHsmModule } from './pkcs11Module.js';
import { createSoftHsmToken } from './softHsmToken.js';

describe('SoftHSM2 throw-away tokens', () => {
  it('creates a token with its own config, token directory and random PIN, and removes it', () => {
    const a = createSoftHsmToken();
    const b = createSoftHsmToken();
    try {
      assert.notEqual(a.configPath, b.configPath);
      assert.notEqual(a.pin, b.pin);
      assert.ok(a.pin.length >= 16);
      assert.match(readFileSync(a.configPath, 'utf8'), new RegExp(`directories.tokendir = ${a.tokenDir}`));
      assert.equal(statSync(a.tokenDir).mode & 0o077, 0, 'token directory is private');
    } finally {
      a.remove();
      b.remove();
    }
    assert.ok(!existsSync(a.configPath) && !existsSync(a.tokenDir));
  });

  it('says how to install SoftHSM2 when its module is missing', () => {
    assert.throws(() => findSoftHsmModule(['/nonexistent/libsofthsm2.so']), /SoftHSM2 is not installed.*apt-get install softhsm2/);
  });
});
