import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { KeywardError } from '../errors.js';
import { aesGcmDecrypt, aesGcmEncrypt, generateAesKey } from './aesGcm.js';
import { counterModeInput, counterModeKey, derivedKeyBytes, deriveKey, generateHmacKey } from './hmacDerivation.js';
import { pkcs11Code, type Handle, type HsmToken } from './hsmToken.js';
import { WorkingKeys } from './workingKeys.js';
import { keyAttribute, keyFlag, knownHmacKey, useSoftHsmToken } from '../../testbed/hsm/softHsmFixture.js';

describe('HMAC-SHA-384 derivation keys in a real SoftHSM2 token', () => {
  const hsm = useSoftHsmToken();
  let token: HsmToken;
  before(() => (token = hsm.token));

  const attribute = (key: Handle, type: number): Promise<Buffer | undefined> => keyAttribute(token, key, type);
  const flag = (key: Handle, type: number): Promise<boolean> => keyFlag(token, key, type);

  it('generates a 48-byte generic secret token key for signing only, sensitive and non-extractable [practice:no-plaintext-export] [practice:approved-generation]', async () => {
    const id = randomBytes(16);
    const key = await generateHmacKey(token, { label: 'k-hmac', id });
    assert.equal((await attribute(key, pkcs11js.CKA_KEY_TYPE))?.readUInt32LE(0), pkcs11js.CKK_GENERIC_SECRET);
    assert.equal((await attribute(key, pkcs11js.CKA_VALUE_LEN))?.readUInt32LE(0), 48);
    assert.equal((await attribute(key, pkcs11js.CKA_LABEL))?.toString('utf8'), 'k-hmac');
    assert.deepEqual(await attribute(key, pkcs11js.CKA_ID), id);
    for (const [type, name] of [
      [pkcs11js.CKA_TOKEN, 'CKA_TOKEN'],
      [pkcs11js.CKA_PRIVATE, 'CKA_PRIVATE'],
      [pkcs11js.CKA_SENSITIVE, 'CKA_SENSITIVE'],
      [pkcs11js.CKA_ALWAYS_SENSITIVE, 'CKA_ALWAYS_SENSITIVE'],
      [pkcs11js.CKA_NEVER_EXTRACTABLE, 'CKA_NEVER_EXTRACTABLE'],
      [pkcs11js.CKA_MODIFIABLE, 'CKA_MODIFIABLE'],
      [pkcs11js.CKA_SIGN, 'CKA_SIGN'],
      [pkcs11js.CKA_VERIFY, 'CKA_VERIFY'],
    ] as const) {
      assert.equal(await flag(key, type), true, `${name} is true`);
    }
    for (const [type, name] of [
      [pkcs11js.CKA_EXTRACTABLE, 'CKA_EXTRACTABLE'],
      [pkcs11js.CKA_ENCRYPT, 'CKA_ENCRYPT'],
      [pkcs11js.CKA_DECRYPT, 'CKA_DECRYPT'],
      [pkcs11js.CKA_WRAP, 'CKA_WRAP'],
      [pkcs11js.CKA_UNWRAP, 'CKA_UNWRAP'],
      [pkcs11js.CKA_DERIVE, 'CKA_DERIVE'],
    ] as const) {
      assert.equal(await flag(key, type), false, `${name} is false`);
    }
    await assert.rejects(
      attribute(key, pkcs11js.CKA_VALUE),
      (err) => pkcs11Code(err) === pkcs11js.CKR_ATTRIBUTE_SENSITIVE,
      'the HSM refuses to reveal CKA_VALUE',
    );
    await assert.rejects(
      token.withSession((s) => token.pkcs11.C_SetAttributeValue(s, key, [{ type: pkcs11js.CKA_EXTRACTABLE, value: true }])),
      'the key cannot be made extractable afterwards',
    );
  });

  it('computes HMAC-SHA-384 of the context, as Node computes it with the same key', async () => {
    const { handle: known, value } = await knownHmacKey(token);
    for (const context of [Buffer.from('namespace/shop/serviceaccount/orders'), Buffer.from([0]), randomBytes(4096)]) {
      assert.deepEqual(await deriveKey(token, known, context), createHmac('sha384', value).update(context).digest());
    }
    // A view into a larger buffer: only the viewed bytes are the context.
    const backing = Buffer.from('xxcontextyy');
    const view = new Uint8Array(backing.buffer, backing.byteOffset + 2, 7);
    assert.deepEqual(await deriveKey(token, known, view), createHmac('sha384', value).update('context').digest());
  });

  describe('SP 800-108 counter mode', () => {
    /** K(i) = HMAC-SHA-384(key, [i]_32 || label || 0x00 || context || [L]_32), written out from the standard. */
    const expected = (value: Buffer, label: string, context: Buffer, length: number): Buffer => {
      const blocks: Buffer[] = [];
      for (let i = 1; 48 * (i - 1) < length; i++) {
        const be32 = (n: number): Buffer => Buffer.from([n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff]);
        blocks.push(createHmac('sha384', value).update(Buffer.concat([be32(i), Buffer.from(label), Buffer.of(0), context, be32(8 * length)])).digest());
      }
      return Buffer.concat(blocks).subarray(0, length);
    };

    it('lays out the PRF input as [i]_32 || label || 0x00 || context || [L]_32', () => {
      assert.equal(counterModeInput(2, 'ab', Buffer.from([7, 8]), 512).toString('hex'), '00000002' + '6162' + '00' + '0708' + '00000200');
      assert.throws(() => counterModeInput(1, 'a\0b', Buffer.from('c'), 8), /holds no NUL/);
      assert.throws(() => counterModeInput(1, '', Buffer.from('c'), 8), /non-empty/);
    });

    it('computes the blocks in the HSM as Node computes them with the same key, for 1, 2 and 3 blocks', async () => {
      const { handle: known, value } = await knownHmacKey(token);
      const context = Buffer.from('namespace/shop/serviceaccount/app');
      for (const length of [16, 48, 64, 100]) {
        const key = await counterModeKey(token, known, 'keyward.dev/test/v1', context, length);
        assert.equal(key.length, length);
        assert.deepEqual(key, expected(value, 'keyward.dev/test/v1', context, length), `${length} bytes`);
      }
      // L is part of every block: a 64-byte key does not begin with the 48-byte one.
      const short = await counterModeKey(token, known, 'keyward.dev/test/v1', context, 48);
      const long = await counterModeKey(token, known, 'keyward.dev/test/v1', context, 64);
      assert.notDeepEqual(long.subarray(0, 48), short);
    });

    it('refuses a length out of range', async () => {
      const key = await generateHmacKey(token, { label: 'k-counter', id: randomBytes(16) });
      for (const length of [0, -1, 1.5, 1025]) {
        await assert.rejects(counterModeKey(token, key, 'l', Buffer.from('c'), length), (err) => err instanceof KeywardError && err.code === 'InvalidArgument');
      }
    });
  });

  it('refuses an empty context, naming it', async () => {
    const key = await generateHmacKey(token, { label: 'k-empty', id: randomBytes(16) });
    await assert.rejects(
      deriveKey(token, key, new Uint8Array(0)),
      (err) => err instanceof KeywardError && err.code === 'InvalidArgument' && /context is empty/.test(err.message),
    );
  });

  it('derives the same key for the same context, different keys for other contexts and other keys', async () => {
    const first = await generateHmacKey(token, { label: 'k-first', id: randomBytes(16) });
    const second = await generateHmacKey(token, { label: 'k-second', id: randomBytes(16) });
    const context = new TextEncoder().encode('workload-a');
    const derived = await deriveKey(token, first, context);
    assert.equal(derived.length, derivedKeyBytes);
    assert.deepEqual(await deriveKey(token, first, context), derived, 'stable');
    assert.notDeepEqual(await deriveKey(token, first, new TextEncoder().encode('workload-b')), derived, 'per context');
    assert.notDeepEqual(await deriveKey(token, second, context), derived, 'per key');
  });

  it('derives with a working copy as with the token key', async () => {
    const tokenKey = await generateHmacKey(token, { label: 'k-copy', id: randomBytes(16) });
    const keys = new WorkingKeys(token);
    const copy = await keys.get(tokenKey);
    assert.notDeepEqual(copy, tokenKey, 'a separate session object');
    assert.equal(await flag(copy, pkcs11js.CKA_TOKEN), false);
    assert.equal(await flag(copy, pkcs11js.CKA_SENSITIVE), true);
    assert.equal(await flag(copy, pkcs11js.CKA_EXTRACTABLE), false);
    await assert.rejects(attribute(copy, pkcs11js.CKA_VALUE), (err) => pkcs11Code(err) === pkcs11js.CKR_ATTRIBUTE_SENSITIVE);
    const context = Buffer.from('ctx');
    assert.deepEqual(await deriveKey(token, copy, context), await deriveKey(token, tokenKey, context));
    await keys.retainOnly([]);
  });

  it('refuses to derive with an AES key and to run AES-GCM with an HMAC key, naming the problem', async () => {
    const aes = await generateAesKey(token, { label: 'k-aes', id: randomBytes(16) });
    const hmac = await generateHmacKey(token, { label: 'k-hmac-misuse', id: randomBytes(16) });
    const refused = (pattern: RegExp) => (err: unknown) =>
      err instanceof KeywardError && err.code === 'FailedPrecondition' && pattern.test(err.message);
    await assert.rejects(deriveKey(token, aes, Buffer.from('ctx')), refused(/not an HMAC-SHA-384 derivation key/));
    await assert.rejects(aesGcmEncrypt(token, hmac, Buffer.from('data'), Buffer.alloc(0)), refused(/not an AES-256-GCM encryption key/));
    await assert.rejects(
      aesGcmDecrypt(token, hmac, { iv: randomBytes(12), sealed: randomBytes(32) }, Buffer.alloc(0)),
      refused(/not an AES-256-GCM encryption key/),
    );
    // The sessions that refused are still good for the next operation.
    const sealed = await aesGcmEncrypt(token, aes, Buffer.from('data'), Buffer.alloc(0));
    assert.deepEqual(await aesGcmDecrypt(token, aes, sealed, Buffer.alloc(0)), Buffer.from('data'));
    assert.equal((await deriveKey(token, hmac, Buffer.from('ctx'))).length, derivedKeyBytes);
  });
});
