// Initialising a token through PKCS#11 (C_InitToken, C_InitPIN), so PINs never appear in a
// process listing. Used by `keyward hsm init` for a development SoftHSM2 token.
import pkcs11js from 'pkcs11js';
import { KeywardError } from '../errors.js';
import { tokenLabel } from './hsmToken.js';
import { acquirePkcs11Module, releasePkcs11Module } from './pkcs11Module.js';

export function initToken(modulePath: string, label: string, soPin: string, userPin: string): void {
  const pkcs11 = acquirePkcs11Module(modulePath);
  try {
    const slots = pkcs11.C_GetSlotList(true);
    if (Buffer.byteLength(label) > 32) throw new KeywardError('InvalidArgument', `token label '${label}' is longer than 32 bytes`);
    if (slots.some((slot) => tokenLabel(pkcs11, slot) === label)) {
      throw new KeywardError('FailedPrecondition', `a token labelled '${label}' already exists`);
    }
    const free = slots.find((slot) => (pkcs11.C_GetTokenInfo(slot).flags & pkcs11js.CKF_TOKEN_INITIALIZED) === 0);
    if (free === undefined) throw new KeywardError('FailedPrecondition', 'the PKCS#11 module offers no uninitialised token slot');
    pkcs11.C_InitToken(free, soPin, label.padEnd(32, ' '));
    // The token keeps this slot until the module is initialised again (SoftHSM2 renumbers then).
    const session = pkcs11.C_OpenSession(free, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    try {
      pkcs11.C_Login(session, pkcs11js.CKU_SO, soPin);
      pkcs11.C_InitPIN(session, userPin);
      pkcs11.C_Logout(session);
    } finally {
      pkcs11.C_CloseSession(session);
    }
  } finally {
    releasePkcs11Module(modulePath);
  }
}
