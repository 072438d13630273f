import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { aesGcmDecrypt, aesGcmEncrypt, generateAesKey } from './aesGcm.js';
import { HsmToken, pkcs11Code } from './hsmToken.js';
import { useSoftHsmToken } from '../../testbed/hsm/softHsmFixture.js';

describe('AES-256-GCM in a real SoftHSM2 token', () => {
  const hsm = useSoftHsmToken();
  let token: HsmToken;
  before(() => (token = hsm.token));

  it('generates a sensitive, non-extractable key, round-trips through the HSM, and never reveals the key [practice:no-plaintext-export]', async () => {
    const key = await generateAesKey(token, { label: 'k-test', id: randomBytes(16) });
    const attrs = await token.withSession((s) =>
      token.pkcs11.C_GetAttributeValue(s, key, [
        { type: pkcs11js.CKA_SENSITIVE },
        { type: pkcs11js.CKA_EXTRACTABLE },
        { type: pkcs11js.CKA_VALUE_LEN },
      ]),
    );
    assert.equal(attrs[0]?.value?.readUInt8(0), 1, 'CKA_SENSITIVE is true');
    assert.equal(attrs[1]?.value?.readUInt8(0), 0, 'CKA_EXTRACTABLE is false');
    assert.equal(attrs[2]?.value?.readUInt32LE(0), 32, 'a 256-bit key');

    const plaintext = Buffer.from('the quick brown fox jumps over the lazy dog');
    const aad = Buffer.from('key-id-1');
    const sealed = await aesGcmEncrypt(token, key, plaintext, aad);
    assert.equal(sealed.iv.length, 12);
    assert.equal(sealed.sealed.length, plaintext.length + 16);
    assert.ok(!sealed.sealed.includes(plaintext.subarray(0, 8)), 'ciphertext does not contain the plaintext');
    assert.deepEqual(await aesGcmDecrypt(token, key, sealed, aad), plaintext);

    const again = await aesGcmEncrypt(token, key, plaintext, aad);
    assert.notDeepEqual(again.iv, sealed.iv, 'a fresh IV per encryption');

    await assert.rejects(
      token.withSession((s) => token.pkcs11.C_GetAttributeValue(s, key, [{ type: pkcs11js.CKA_VALUE }])),
      (err) => pkcs11Code(err) === pkcs11js.CKR_ATTRIBUTE_SENSITIVE,
      'the HSM refuses to reveal CKA_VALUE',
    );
    await assert.rejects(
      token.withSession((s) =>
        token.pkcs11.C_SetAttributeValue(s, key, [{ type: pkcs11js.CKA_EXTRACTABLE, value: true }]),
      ),
      'the key cannot be made extractable afterwards',
    );
  });

  it('refuses a tampered ciphertext and a wrong AAD', async () => {
    const key = await generateAesKey(token, { label: 'k-tamper', id: randomBytes(16) });
    const aad = Buffer.from('key-id-2');
    const sealed = await aesGcmEncrypt(token, key, Buffer.from('secret value'), aad);
    const tampered = Buffer.from(sealed.sealed);
    tampered[0] = (tampered[0] ?? 0) ^ 1;
    await assert.rejects(aesGcmDecrypt(token, key, { iv: sealed.iv, sealed: tampered }, aad));
    await assert.rejects(aesGcmDecrypt(token, key, sealed, Buffer.from('key-id-3')));
    assert.deepEqual(await aesGcmDecrypt(token, key, sealed, aad), Buffer.from('secret value'));
  });

  it('serves concurrent callers from a pool of sessions', async () => {
    const key = await generateAesKey(token, { label: 'k-pool', id: randomBytes(16) });
    const inputs = Array.from({ length: 64 }, (_, i) => Buffer.from(`message ${i}`));
    const results = await Promise.all(
      inputs.map(async (p) => aesGcmDecrypt(token, key, await aesGcmEncrypt(token, key, p, Buffer.alloc(0)), Buffer.alloc(0))),
    );
    assert.deepEqual(results, inputs);
  });

  it('rejects a wrong PIN with a clear error', () => {
    // Login is per process: log out (close the only user of the module) before trying a wrong PIN.
    token.close();
    assert.throws(
      () => HsmToken.open({ modulePath: hsm.softhsm.modulePath, tokenLabel: hsm.softhsm.label, pin: 'wrong-pin' }),
      /wrong PIN/,
    );
    token = hsm.token = HsmToken.open({ modulePath: hsm.softhsm.modulePath, tokenLabel: hsm.softhsm.label, pin: hsm.softhsm.pin });
  });
});
