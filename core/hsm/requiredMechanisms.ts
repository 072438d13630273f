// The PKCS#11 mechanisms each KeyRing purpose needs from a module. A module that lacks one, such
// as a network HSM client that cannot carry a mechanism's parameters, is named when Keyward is
// installed (`keyward hsm check`) rather than at the first encryption.
import pkcs11js from 'pkcs11js';

export const requiredMechanisms = {
  'encryption (KMS plugin, sealed secrets)': { CKM_AES_KEY_GEN: pkcs11js.CKM_AES_KEY_GEN, CKM_AES_GCM: pkcs11js.CKM_AES_GCM },
  'derivation (data keys)': { CKM_GENERIC_SECRET_KEY_GEN: pkcs11js.CKM_GENERIC_SECRET_KEY_GEN, CKM_SHA384_HMAC: pkcs11js.CKM_SHA384_HMAC },
  'signing (ECDSA P-384)': { CKM_EC_KEY_PAIR_GEN: pkcs11js.CKM_EC_KEY_PAIR_GEN, CKM_ECDSA: pkcs11js.CKM_ECDSA },
} as const;

/** For each purpose the token cannot serve, the mechanisms it lacks; empty when it serves all. */
export function missingMechanisms(offered: readonly number[]): string[] {
  const have = new Set(offered);
  return Object.entries(requiredMechanisms).flatMap(([purpose, mechanisms]) => {
    const missing = Object.entries(mechanisms).filter(([, value]) => !have.has(value)).map(([name]) => name);
    return missing.length > 0 ? [`${purpose}: ${missing.join(', ')}`] : [];
  });
}
