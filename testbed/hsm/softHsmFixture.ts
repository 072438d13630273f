// A throw-away SoftHSM2 token with a logged-in session pool for one mocha suite: made in
// before(), closed and removed in after().
import { randomBytes } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { HsmToken, type Handle } from '../../core/hsm/hsmToken.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';

export interface SoftHsmFixture {
  softhsm: SoftHsmToken;
  token: HsmToken;
}

export function useSoftHsmToken(): SoftHsmFixture {
  const fixture = {} as SoftHsmFixture;
  before(() => {
    fixture.softhsm = createSoftHsmToken();
    // SoftHSM2 reads its configuration when the module initialises, so this comes first.
    process.env.SOFTHSM2_CONF = fixture.softhsm.configPath;
    const { modulePath, label, pin } = fixture.softhsm;
    fixture.token = HsmToken.open({ modulePath, tokenLabel: label, pin });
  });
  after(() => {
    fixture.token?.close();
    fixture.softhsm?.remove();
  });
  return fixture;
}

/** One attribute of a key object, as the module returns it (it throws for a sensitive value). */
export function keyAttribute(token: HsmToken, key: Handle, type: number): Promise<Buffer | undefined> {
  return token.withSession((session) => token.pkcs11.C_GetAttributeValue(session, key, [{ type }])[0]?.value);
}

/** A boolean attribute (CK_BBOOL) of a key object. */
export async function keyFlag(token: HsmToken, key: Handle, type: number): Promise<boolean> {
  return (await keyAttribute(token, key, type))?.readUInt8(0) === 1;
}

/**
 * A session HMAC key whose value the test knows: token keys never reveal theirs, so this is the
 * only way to check an HSM result against Node's own HMAC.
 */
export async function knownHmacKey(token: HsmToken): Promise<{ handle: Handle; value: Buffer }> {
  const value = randomBytes(48);
  const handle = await token.withSession((s) =>
    token.pkcs11.C_CreateObject(s, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
      { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_GENERIC_SECRET },
      { type: pkcs11js.CKA_TOKEN, value: false },
      { type: pkcs11js.CKA_SIGN, value: true },
      { type: pkcs11js.CKA_VALUE, value },
    ]),
  );
  return { handle, value };
}
