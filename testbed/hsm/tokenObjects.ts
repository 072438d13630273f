// Every object a logged-in user sees in a token (C_FindObjects with an empty template, token and
// session objects alike), with the metadata attributes an HSM inventory shows.
import pkcs11js from 'pkcs11js';
import type { Handle, HsmToken } from '../../core/hsm/hsmToken.js';

export interface ObjectMetadata {
  label?: Buffer;
  id?: Buffer;
  application?: Buffer;
  /** CKA_VALUE where the token gives it (data objects, public keys); never for a sensitive key. */
  value?: Buffer;
}

/** One attribute, or undefined when the object has no such attribute or will not reveal it. */
function attribute(token: HsmToken, session: Handle, object: Handle, type: number): Buffer | undefined {
  try {
    return token.pkcs11.C_GetAttributeValue(session, object, [{ type }])[0]?.value;
  } catch {
    return undefined;
  }
}

export function everyObject(token: HsmToken): Promise<ObjectMetadata[]> {
  return token.withSession((session) => {
    token.pkcs11.C_FindObjectsInit(session, []);
    const handles: Handle[] = [];
    try {
      for (let batch = token.pkcs11.C_FindObjects(session, 100); batch.length > 0; batch = token.pkcs11.C_FindObjects(session, 100)) handles.push(...batch);
    } finally {
      token.pkcs11.C_FindObjectsFinal(session);
    }
    return handles.map((h) => ({
      label: attribute(token, session, h, pkcs11js.CKA_LABEL),
      id: attribute(token, session, h, pkcs11js.CKA_ID),
      application: attribute(token, session, h, pkcs11js.CKA_APPLICATION),
      value: attribute(token, session, h, pkcs11js.CKA_VALUE),
    }));
  });
}
