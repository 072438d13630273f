// One logged-in PKCS#11 token with a pool of sessions. A session runs one operation at a time,
// so concurrent callers each borrow their own; the pool re-opens sessions and logs in again when
// the token went away and came back.
import pkcs11js from 'pkcs11js';
import { KeywardError } from '../errors.js';
import {
  acquirePkcs11Module,
  ensurePkcs11ModuleInitialized,
  pkcs11ModuleEpoch,
  reinitializePkcs11Module,
  releasePkcs11Module,
} from './pkcs11Module.js';

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

/** CKS_RO_USER_FUNCTIONS and CKS_RW_USER_FUNCTIONS, which pkcs11js does not export. */
const loggedInReadOnly = 1;
const loggedInReadWrite = 3;

/** A token label as set: PKCS#11 pads it to 32 bytes (with spaces, or NULs by some writers). */
export function tokenLabel(pkcs11: Pkcs11, slot: Handle): string {
  return pkcs11.C_GetTokenInfo(slot).label.replace(/[\s\0]+$/, '');
}

/**
 * The CKR_ code of a PKCS#11 failure. pkcs11js's own C_CreateObject, C_CopyObject and
 * C_SetAttributeValue bypass its error wrapper, so there the code is only in the message.
 */
export function pkcs11Code(err: unknown): number | undefined {
  if (err instanceof pkcs11js.Pkcs11Error) return err.code;
  const match = err instanceof Error ? /\bCKR_\w+:(\d+)/.exec(err.message) : null;
  return match ? Number(match[1]) : undefined;
}

/** pkcs11js's CKR_ constants by value, for metric labels and logs. */
const ckrNames = new Map<number, string>(
  Object.entries(pkcs11js)
    .filter((entry): entry is [string, number] => entry[0].startsWith('CKR_') && typeof entry[1] === 'number')
    .map(([name, value]) => [value, name]),
);

/**
 * The PKCS#11 return code of a failure by name (`CKR_PIN_INCORRECT`), looking through causes; for
 * a failure the module did not report (no token present, say), the KeywardError code.
 */
export function pkcs11CodeName(err: unknown): string {
  for (let cause = err; cause instanceof Error; cause = cause.cause) {
    const code = pkcs11Code(cause);
    if (code !== undefined) return ckrNames.get(code) ?? `CKR_0x${code.toString(16).toUpperCase()}`;
  }
  return err instanceof KeywardError ? err.code : 'Unknown';
}

/**
 * A failed HSM call as a caller-facing error: a stale key or object handle is Unavailable (retry
 * after the pool reconnects), anything else Internal. KeywardErrors pass through.
 */
export function hsmError(err: unknown): KeywardError {
  if (err instanceof KeywardError) return err;
  const code = pkcs11Code(err);
  if (code === pkcs11js.CKR_KEY_HANDLE_INVALID || code === pkcs11js.CKR_OBJECT_HANDLE_INVALID) {
    return new KeywardError('Unavailable', 'the key is not reachable in the HSM right now; retry', { cause: err });
  }
  return new KeywardError('Internal', `HSM operation failed (${(err as Error).message})`, { cause: err });
}

/** Codes with which a module refuses a key of another type or use for a mechanism. */
const wrongKeyCodes: ReadonlySet<number> = new Set([pkcs11js.CKR_KEY_TYPE_INCONSISTENT, pkcs11js.CKR_KEY_FUNCTION_NOT_PERMITTED]);

/**
 * Runs a C_*Init. A key the mechanism refuses (another ring's kind, say) becomes a
 * FailedPrecondition that says what was needed: `the key is not <wanted>`.
 */
export function initOperation(init: () => void, wanted: string): void {
  try {
    init();
  } catch (err) {
    if (!wrongKeyCodes.has(pkcs11Code(err) ?? -1)) throw err;
    throw new KeywardError('FailedPrecondition', `the key is not ${wanted} (${(err as Error).message})`, { cause: err });
  }
}

/**
 * A single-part C_Sign after C_SignInit. SoftHSM2 leaves the operation active after some
 * refusals, which would make every later use of this pooled session fail with
 * CKR_OPERATION_ACTIVE; on failure the operation is ended with C_SignFinal.
 */
export function signOnce(pkcs11: Pkcs11, session: Handle, data: Buffer, outputBytes: number): Buffer {
  try {
    return Buffer.from(pkcs11.C_Sign(session, data, Buffer.alloc(outputBytes)));
  } catch (err) {
    try {
      pkcs11.C_SignFinal(session, Buffer.alloc(outputBytes));
    } catch {
      // Already ended.
    }
    throw err;
  }
}

export class HsmToken {
  private readonly free: Handle[] = [];
  /** Every session this pool opened and has not closed, borrowed or not. */
  private readonly owned = new Set<Handle>();
  private readonly waiters: Array<{ resolve: (session: Handle) => void; reject: (err: unknown) => void }> = [];
  private opened = 0;
  /** Bumped when the sessions are dropped, so a handle from before is never handed out again. */
  private generation = 0;
  private slot: Handle | undefined;
  private closed = false;
  /** The module epoch our sessions and handles belong to. */
  private moduleEpoch = -1;

  private constructor(
    readonly pkcs11: Pkcs11,
    private readonly config: Required<HsmTokenConfig>,
  ) {}

  /**
   * A pool that connects (and logs in) on first use, and again after every failure: for
   * long-running components that must report an HSM problem as a status, not die of it.
   */
  static connectOnDemand(config: HsmTokenConfig): HsmToken {
    return new HsmToken(acquirePkcs11Module(config.modulePath), { poolSize: 4, ...config });
  }

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

  /**
   * A cheap round trip to the token, for health checks: a pooled session answers and is logged in
   * (connecting and logging in first if needed).
   */
  async check(): Promise<void> {
    await this.withSession((session) => {
      const { state, slotID } = this.pkcs11.C_GetSessionInfo(session);
      // A live session alone is no proof: SoftHSM2 answers it from memory with its token's
      // storage gone, and a network HSM's client library may too. The token's own information
      // comes from the token (CKR_GENERAL_ERROR, CKR_DEVICE_ERROR or CKR_TOKEN_NOT_PRESENT).
      this.pkcs11.C_GetTokenInfo(slotID);
      if (state === loggedInReadOnly || state === loggedInReadWrite) return;
      // The token forgot our login (it restarted, say): log in again on the next call.
      this.dropSessions();
      throw new KeywardError('Unavailable', `HSM token '${this.config.tokenLabel}' no longer has this process logged in`);
    });
  }

  /**
   * The epoch object handles found now belong to; a handle from another epoch is void and may
   * even name a different object, so it must never be used.
   */
  get epoch(): number {
    return pkcs11ModuleEpoch(this.config.modulePath);
  }

  /**
   * Bumped whenever this pool's sessions are closed: session objects (working key copies) made
   * before belong to an older generation and are gone.
   */
  get sessionGeneration(): string {
    return `${this.epoch}.${this.generation}`;
  }

  /** After a failure: drop every session and initialise the module again, so the next call reconnects. */
  recover(): void {
    if (this.closed) return;
    this.dropSessions();
    try {
      reinitializePkcs11Module(this.config.modulePath);
    } catch {
      // Still unavailable: the next call tries again and reports why.
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.dropSessions();
    releasePkcs11Module(this.config.modulePath);
  }

  private connect(): void {
    ensurePkcs11ModuleInitialized(this.config.modulePath);
    this.moduleEpoch = this.epoch;
    this.slot = this.findSlot();
    const session = this.openSession(this.slot);
    try {
      // Login is per application, not per session: one login covers every session of the pool.
      this.pkcs11.C_Login(session, pkcs11js.CKU_USER, this.config.pin);
    } catch (err) {
      if (pkcs11Code(err) !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) {
        this.closeSession(session);
        if (pkcs11Code(err) === pkcs11js.CKR_PIN_INCORRECT) {
          throw new KeywardError('PermissionDenied', `HSM login to token '${this.config.tokenLabel}' failed: wrong PIN`, { cause: err });
        }
        throw err;
      }
    }
    this.free.push(session);
    this.opened = 1;
  }

  /** The mechanism types the token's slot offers (C_GetMechanismList). */
  mechanisms(): number[] {
    return this.pkcs11.C_GetMechanismList(this.slot ?? this.findSlot());
  }

  private findSlot(): Handle {
    const slots = this.pkcs11.C_GetSlotList(true);
    for (const slot of slots) {
      if (tokenLabel(this.pkcs11, slot) === this.config.tokenLabel) return slot;
    }
    if (slots.length === 0) {
      // A network HSM's client shows no token at all when it cannot reach its server or lacks permission there.
      throw new KeywardError('Unavailable', `PKCS#11 module ${this.config.modulePath} shows no token at all (for a network HSM: is its server reachable, and may this user use it?)`);
    }
    throw new KeywardError('Unavailable', `no HSM token labelled '${this.config.tokenLabel}' is present`);
  }

  private async acquire(): Promise<Handle> {
    if (this.closed) throw new KeywardError('Unavailable', 'HSM token is closed');
    if (this.opened > 0 && this.moduleEpoch !== this.epoch) this.dropSessions();
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
        return this.openSession(this.slot);
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

  private openSession(slot: Handle): Handle {
    const session = this.pkcs11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    this.owned.add(session);
    return session;
  }

  private closeSession(session: Handle): void {
    this.owned.delete(session);
    try {
      this.pkcs11.C_CloseSession(session);
    } catch {
      // The token is already gone; its sessions went with it.
    }
  }

  /** Closes this pool's sessions one by one: C_CloseAllSessions would also close those of other users of the module. */
  private dropSessions(): void {
    // After a re-initialisation our handles are void and may now name other users' sessions.
    if (this.moduleEpoch === this.epoch) {
      for (const session of [...this.owned]) this.closeSession(session);
    }
    this.owned.clear();
    this.free.length = 0;
    this.opened = 0;
    this.generation++;
    // Waiters get a fresh connection attempt through acquire().
    for (const { resolve, reject } of this.waiters.splice(0)) {
      this.acquire().then(resolve, reject);
    }
  }
}
