// One assessor per practice id of core/compliance/practices.ts.
import { implicitDeny, leastPrivilege, operationsByName, policyLag, roles, separationOfDuties, twoPersonIntegrity } from './accessVerdicts.js';
import type { Assessor } from './assessment.js';
import { cnsa, inventoryLabels, keyLocation, noSensitiveMetadata, notBuilt, provenByTests, rotation, softDelete, verifiedRetirement } from './keyVerdicts.js';
import { audit, continuity, monitoring, secureTransport } from './operationsVerdicts.js';

export const assessors: Record<string, Assessor> = {
  'no-plaintext-export': provenByTests('every key is generated in the HSM sensitive and non-extractable, and no code path reads a key value'),
  'key-location': keyLocation,
  'implicit-deny': implicitDeny,
  'operations-by-name': operationsByName,
  'policy-lag': policyLag,
  'separation-of-duties': separationOfDuties,
  roles,
  'least-privilege': leastPrivilege,
  'two-person-integrity': twoPersonIntegrity,
  rotation,
  'soft-delete': softDelete,
  'verified-retirement': verifiedRetirement,
  audit,
  'no-sensitive-metadata': noSensitiveMetadata,
  'inventory-labels': inventoryLabels,
  'backup-escrow': notBuilt('wrapped export of a version under a customer escrow key, and its re-import; the backup and restore operations are granted but nothing performs them'),
  'bring-your-own-key': notBuilt('import of customer key material wrapped under an HSM import key; the import operation is granted but nothing performs it'),
  monitoring,
  'secure-transport': secureTransport,
  'approved-generation': provenByTests("key material and IVs come from the HSM's generator"),
  cnsa,
  continuity,
  latency: provenByTests('every data-plane operation has a measured latency (npm run bench:kms, bench:csi), far below 50 ms'),
};
