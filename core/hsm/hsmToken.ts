// One logged-in PKCS#11 token with a pool of sessions. A session runs one operation at a time,
// so concurrent callers each borrow their own; the pool re-opens sessions and logs in again when
// the token went away and came back.
import pkcs11js from 'pkcs11js';
import { KeywardError } from '../errors.js';
import { acquirePkcs11Module, releasePkcs11Module } from './pkcs11Module.js';

export type Pkcs11 = pkcs11js.PKCS11;
export type Handle = pkcs11js.Handle;

export interface HsmTokenConfig {
  modulePath: string;
  /** Token label; the first token with this label is used. */
  tokenLabel: string;
  pin: string;
  /** Sessions kept open; callers beyond this wait for a free one. */
  poolSize?: number;
}

/** PKCS#11 return codes after which the sessions are gone and must be re-opened. */
const sessionLostCodes = new Set<number>([
  pkcs11js.CKR_SESSION_HANDLE_INVALID,
  pkcs11js.CKR_SESSION_CLOSED,
  pkcs11js.CKR_TOKEN_NOT_PRESENT,
  pkcs11js.CKR_TOKEN_NOT_RECOGNIZED,
  pkcs11js.CKR_DEVICE_REMOVED,
  pkcs11js.CKR_DEVICE_ERROR,
  pkcs11js.CKR_USER_NOT_LOGGED_IN,
  pkcs11js.CKR_SLOT_ID_INVALID,
]);

/** A token label as set: PKCS#11 pads it to 32 bytes (with spaces, or NULs by some writers). */
export function tokenLabel(pkcs11: Pkcs11, slot: Handle): string {
  return pkcs11.C_GetTokenInfo(slot).label.replace(/[\s\0]+$/, '');
}

export function pkcs11Code(err: unknown): number | undefined {
  return err instanceof pkcs11js.Pkcs11Error ? err.code : undefined;
}

export class HsmToken {
  private readonly free: Handle[] = [];
  private readonly waiters: Array<{ resolve: (session: Handle) => void; reject: (err: unknown) => void }> = [];
  private opened = 0;
  /** Bumped when the sessions are dropped, so a handle from before is never handed out again. */
  private generation = 0;
  private slot: Handle | undefined;
  private closed = false;

  private constructor(
    readonly pkcs11: Pkcs11,
    private readonly config: Required<HsmTokenConfig>,
  ) {}

  static open(config: HsmTokenConfig): HsmToken {
    const token = new HsmToken(acquirePkcs11Module(config.modulePath), { poolSize: 4, ...config });
    try {
      token.connect();
    } catch (err) {
      releasePkcs11Module(config.modulePath);
      throw err;
    }
    return token;
  }

  /** Runs fn on a borrowed session; a lost token makes the pool reconnect before the next call. */
  async withSession<T>(fn: (session: Handle) => T | Promise<T>): Promise<T> {
    const session = await this.acquire();
    const generation = this.generation;
    let healthy = true;
    try {
      return await fn(session);
    } catch (err) {
      const code = pkcs11Code(err);
      if (code !== undefined && sessionLostCodes.has(code)) {
        healthy = false;
        this.dropSessions();
        throw new KeywardError('Unavailable', `HSM token '${this.config.tokenLabel}' is unavailable (${(err as Error).message})`, {
          cause: err,
        });
      }
      throw err;
    } finally {
      if (healthy && generation === this.generation) this.release(session);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.dropSessions();
    releasePkcs11Module(this.config.modulePath);
  }

  private connect(): void {
    this.slot = this.findSlot();
    const session = this.pkcs11.C_OpenSession(this.slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    try {
      // Login is per application, not per session: one login covers every session of the pool.
      this.pkcs11.C_Login(session, pkcs11js.CKU_USER, this.config.pin);
    } catch (err) {
      this.pkcs11.C_CloseSession(session);
      if (pkcs11Code(err) === pkcs11js.CKR_PIN_INCORRECT) {
        throw new KeywardError('PermissionDenied', `HSM login to token '${this.config.tokenLabel}' failed: wrong PIN`);
      }
      if (pkcs11Code(err) !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) throw err;
    }
    this.free.push(session);
    this.opened = 1;
  }

  private findSlot(): Handle {
    for (const slot of this.pkcs11.C_GetSlotList(true)) {
      if (tokenLabel(this.pkcs11, slot) === this.config.tokenLabel) return slot;
    }
    throw new KeywardError('Unavailable', `no HSM token labelled '${this.config.tokenLabel}' is present`);
  }

  private async acquire(): Promise<Handle> {
    if (this.closed) throw new KeywardError('Unavailable', 'HSM token is closed');
    if (this.opened === 0) {
      try {
        this.connect();
      } catch (err) {
        if (err instanceof KeywardError) throw err;
        throw new KeywardError('Unavailable', `HSM token '${this.config.tokenLabel}' is unavailable (${(err as Error).message})`, {
          cause: err,
        });
      }
    }
    const session = this.free.pop();
    if (session !== undefined) return session;
    if (this.opened < this.config.poolSize && this.slot !== undefined) {
      this.opened++;
      try {
        return this.pkcs11.C_OpenSession(this.slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
      } catch (err) {
        this.opened--;
        throw err;
      }
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  private release(session: Handle): void {
    const waiter = this.waiters.shift();
    if (waiter) waiter.resolve(session);
    else this.free.push(session);
  }

  private dropSessions(): void {
    if (this.slot !== undefined) {
      try {
        this.pkcs11.C_CloseAllSessions(this.slot);
      } catch {
        // The token is already gone; its sessions went with it.
      }
    }
    this.free.length = 0;
    this.opened = 0;
    this.generation++;
    // Waiters get a fresh connection attempt through acquire().
    for (const { resolve, reject } of this.waiters.splice(0)) {
      this.acquire().then(resolve, reject);
    }
  }
}
