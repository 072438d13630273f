// A throw-away SoftHSM2 token with a logged-in session pool for one mocha suite: made in
// before(), closed and removed in after().
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
