import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { aesGcmDecrypt, aesGcmEncrypt, generateAesKey } from './aesGcm.js';
import { HsmToken, pkcs11Code, type Handle } from './hsmToken.js';
import { keyAttribute, useSoftHsmToken } from '../../testbed/hsm/softHsmFixture.js';
import { WorkingKeys } from './workingKeys.js';

describe('Working copies of HSM keys', () => {
  const hsm = useSoftHsmToken();
  let token: HsmToken;
  before(() => (token = hsm.token));

  const attribute = (key: Handle, type: number): Promise<Buffer | undefined> => keyAttribute(token, key, type);

  it('computes like the token key, stays sensitive and non-extractable, and is never revealed [practice:no-plaintext-export]', async () => {
    const tokenKey = await generateAesKey(token, { label: 'k-copy', id: randomBytes(16) });
    const keys = new WorkingKeys(token);
    const copy = await keys.get(tokenKey);
    assert.notDeepEqual(copy, tokenKey, 'a separate session object');
    assert.deepEqual(await keys.get(tokenKey), copy, 'made once, then reused');
    assert.equal((await attribute(copy, pkcs11js.CKA_TOKEN))?.readUInt8(0), 0, 'a session object');
    assert.equal((await attribute(copy, pkcs11js.CKA_SENSITIVE))?.readUInt8(0), 1);
    assert.equal((await attribute(copy, pkcs11js.CKA_EXTRACTABLE))?.readUInt8(0), 0);
    await assert.rejects(attribute(copy, pkcs11js.CKA_VALUE), (err) => pkcs11Code(err) === pkcs11js.CKR_ATTRIBUTE_SENSITIVE);

    const aad = Buffer.from('aad');
    const plaintext = randomBytes(40);
    assert.deepEqual(await aesGcmDecrypt(token, tokenKey, await aesGcmEncrypt(token, copy, plaintext, aad), aad), plaintext);

    await keys.retainOnly([]);
    await assert.rejects(attribute(copy, pkcs11js.CKA_TOKEN), (err) => pkcs11Code(err) === pkcs11js.CKR_OBJECT_HANDLE_INVALID);
    assert.ok(await attribute(tokenKey, pkcs11js.CKA_TOKEN), 'the token key itself is untouched');
  });

  it('falls back to the token key where the module refuses a copy', async () => {
    const locked = await token.withSession((s) =>
      token.pkcs11.C_GenerateKey(s, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
        { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_SENSITIVE, value: true },
        { type: pkcs11js.CKA_EXTRACTABLE, value: false },
        { type: pkcs11js.CKA_MODIFIABLE, value: false },
        { type: pkcs11js.CKA_ENCRYPT, value: true },
      ]),
    );
    assert.deepEqual(await new WorkingKeys(token).get(locked), locked);
  });
});
