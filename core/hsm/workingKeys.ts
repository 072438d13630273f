// Working copies of token keys as session objects, made inside the HSM with C_CopyObject. A copy
// keeps the key sensitive and non-extractable and vanishes with its session. SoftHSM2 re-reads a
// token object's file on every use (an open, read and locks per operation); its session objects
// live in memory, which roughly halves the cost of an AES-GCM operation (see pkcs11.md).
import pkcs11js from 'pkcs11js';
import { pkcs11Code, type Handle, type HsmToken } from './hsmToken.js';

/** PKCS#11 2.40's CKR_ACTION_PROHIBITED, which pkcs11js does not export. */
const ckrActionProhibited = 0x1b;

/** Codes with which a module refuses to copy a key (e.g. SoftHSM2 for an unmodifiable object). */
const copyRefusedCodes = new Set<number>([
  pkcs11js.CKR_ATTRIBUTE_READ_ONLY,
  ckrActionProhibited,
  pkcs11js.CKR_FUNCTION_NOT_SUPPORTED,
  pkcs11js.CKR_TEMPLATE_INCONSISTENT,
]);

const copyTemplate = [
  { type: pkcs11js.CKA_TOKEN, value: false },
  { type: pkcs11js.CKA_MODIFIABLE, value: false },
];

export class WorkingKeys {
  /** Token key handle (hex) → its session copy, or the token key itself when copying is refused. */
  private copies = new Map<string, Handle>();
  /** The sessions the copies belong to; when they are dropped the copies are gone. */
  private sessions = '';

  constructor(private readonly token: HsmToken) {}

  /** The handle to compute with for a token key: its working copy where the module allows one. */
  async get(tokenKey: Handle): Promise<Handle> {
    this.forgetIfSessionsChanged();
    const known = this.copies.get(tokenKey.toString('hex'));
    if (known) return known;
    const handle = await this.token.withSession((session) => {
      try {
        return this.token.pkcs11.C_CopyObject(session, tokenKey, copyTemplate);
      } catch (err) {
        if (copyRefusedCodes.has(pkcs11Code(err) ?? -1)) return tokenKey;
        throw err;
      }
    });
    this.forgetIfSessionsChanged();
    this.copies.set(tokenKey.toString('hex'), handle);
    return handle;
  }

  /** Destroys the copies of every token key not in `keep`. */
  async retainOnly(keep: Handle[]): Promise<void> {
    this.forgetIfSessionsChanged();
    const wanted = new Set(keep.map((handle) => handle.toString('hex')));
    for (const [tokenKey, handle] of [...this.copies]) {
      if (wanted.has(tokenKey)) continue;
      this.copies.delete(tokenKey);
      if (handle.toString('hex') !== tokenKey) await this.token.withSession((session) => this.token.pkcs11.C_DestroyObject(session, handle));
    }
  }

  private forgetIfSessionsChanged(): void {
    if (this.sessions === this.token.sessionGeneration) return;
    this.copies.clear();
    this.sessions = this.token.sessionGeneration;
  }
}
