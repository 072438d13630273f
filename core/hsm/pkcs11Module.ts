// Finding and loading a PKCS#11 module. Any vendor module works; SoftHSM2 is the default for
// development and tests, so its usual Debian locations are searched when no path is given.
import { existsSync } from 'node:fs';
import pkcs11js from 'pkcs11js';
import { KeywardError, setupError } from '../errors.js';

export const softHsmModuleCandidates = [
  '/usr/lib/softhsm/libsofthsm2.so',
  '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/local/lib/softhsm/libsofthsm2.so',
];

/** The SoftHSM2 module path, or a SetupError saying how to install it. */
export function findSoftHsmModule(candidates: readonly string[] = softHsmModuleCandidates): string {
  const found = candidates.find((path) => existsSync(path));
  if (!found) {
    throw setupError(
      `SoftHSM2 is not installed: no PKCS#11 module at ${candidates.join(', ')}. ` +
        'Install it (Debian: apt-get install softhsm2) or name a vendor module with --pkcs11-module.',
    );
  }
  return found;
}

interface LoadedModule {
  pkcs11: pkcs11js.PKCS11;
  users: number;
  /** Bumped by every re-initialisation: object and session handles from before are void. */
  epoch: number;
  /** False after a re-initialisation failed (e.g. SoftHSM2 with its token directory gone). */
  initialized: boolean;
}

// A PKCS#11 library is initialised once per process (a second C_Initialize fails with
// CKR_CRYPTOKI_ALREADY_INITIALIZED), so every user of one module path shares it.
const loaded = new Map<string, LoadedModule>();

/** Loads and initialises a PKCS#11 module, or shares the one already loaded; pair with releasePkcs11Module. */
export function acquirePkcs11Module(modulePath: string): pkcs11js.PKCS11 {
  const existing = loaded.get(modulePath);
  if (existing) {
    existing.users++;
    return existing.pkcs11;
  }
  if (!existsSync(modulePath)) {
    throw setupError(`PKCS#11 module not found: ${modulePath}`);
  }
  const pkcs11 = new pkcs11js.PKCS11();
  try {
    pkcs11.load(modulePath);
    initialize(pkcs11);
  } catch (err) {
    throw setupError(`cannot initialise PKCS#11 module ${modulePath}: ${(err as Error).message}`);
  }
  loaded.set(modulePath, { pkcs11, users: 1, epoch: 0, initialized: true });
  return pkcs11;
}

// OS locking: the module may be called from libuv's thread pool by the async variants.
const initialize = (pkcs11: pkcs11js.PKCS11): void => pkcs11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });

export function pkcs11ModuleEpoch(modulePath: string): number {
  return loaded.get(modulePath)?.epoch ?? -1;
}

/**
 * Finalises and initialises a loaded module again. Some modules (SoftHSM2 among them) see a token
 * that went away and came back only after this. Every user's handles become void: users compare
 * pkcs11ModuleEpoch with the one they connected under.
 */
export function reinitializePkcs11Module(modulePath: string): void {
  const entry = loaded.get(modulePath);
  if (!entry) return;
  entry.epoch++;
  if (entry.initialized) {
    try {
      entry.pkcs11.C_Finalize();
    } catch {
      // Already unusable; initialising again is the point.
    }
  }
  entry.initialized = false;
  ensurePkcs11ModuleInitialized(modulePath);
}

/** Initialises a loaded module again if its last re-initialisation failed; Unavailable while it still fails. */
export function ensurePkcs11ModuleInitialized(modulePath: string): void {
  const entry = loaded.get(modulePath);
  if (!entry || entry.initialized) return;
  try {
    initialize(entry.pkcs11);
    entry.initialized = true;
  } catch (err) {
    throw new KeywardError('Unavailable', `PKCS#11 module ${modulePath} cannot be initialised: ${(err as Error).message}`, { cause: err });
  }
}

/** Finalises the module when its last user releases it. */
export function releasePkcs11Module(modulePath: string): void {
  const entry = loaded.get(modulePath);
  if (!entry || --entry.users > 0) return;
  loaded.delete(modulePath);
  try {
    if (entry.initialized) entry.pkcs11.C_Finalize();
  } finally {
    entry.pkcs11.close();
  }
}
