// The operations a KeyPolicy grants, and the roles: each role is a fixed, named set of operations
// (after the CSA CCKS roles). There are no wildcards: a policy names every operation it grants,
// so an operation added in a later version is granted by no existing policy.

/** What an operation does to a ring; separation of duties forbids `use` with `management`. */
export type OperationKind = 'use' | 'read' | 'management' | 'audit';

export const operations = {
  encrypt: { kind: 'use', doc: 'Encrypt with the primary version (KMS plugin Encrypt, `keyward encrypt`).' },
  decrypt: { kind: 'use', doc: 'Decrypt data sealed under any Enabled version (KMS plugin Decrypt, CSI secret objects).' },
  deriveKey: { kind: 'use', doc: 'Derive a workload key from a derivation ring (CSI dataKey and volumeKey objects).' },
  sign: { kind: 'use', doc: 'Sign with the primary version of a signing ring.' },
  verify: { kind: 'read', doc: 'Verify a signature with a signing ring; needs only public material.' },
  getPublicKey: { kind: 'read', doc: 'Read the public half of a signing ring (CSI publicKey objects).' },
  getMetadata: { kind: 'read', doc: "Read a ring's versions, states and key ids; never key material." },
  rotate: { kind: 'management', doc: 'Ask for a new primary version (spec.rotationRequest) or change the rotation schedule or algorithm.' },
  disableVersion: { kind: 'management', doc: 'Set an Enabled version to Disabled.' },
  enableVersion: { kind: 'management', doc: 'Set a Disabled version back to Enabled.' },
  scheduleDestroy: { kind: 'management', doc: "Request a version's destruction, or deletionPolicy Destroy; takes effect only once a second person approves." },
  cancelDestroy: { kind: 'management', doc: 'Cancel a destruction request or a scheduled destruction; set deletionPolicy back to Retain.' },
  approveDestroy: { kind: 'management', doc: "Approve another person's destruction request (two-person rule)." },
  import: { kind: 'management', doc: 'Import customer key material as a new version (bring your own key).' },
  backup: { kind: 'management', doc: 'Export a version wrapped under a customer escrow key.' },
  restore: { kind: 'management', doc: 'Re-import a wrapped backup.' },
  readAudit: { kind: 'audit', doc: "Read the ring's audit records." },
} as const satisfies Record<string, { kind: OperationKind; doc: string }>;

export type Operation = keyof typeof operations;
export const operationNames = Object.keys(operations) as Operation[];

const ofKind = (kind: OperationKind): Operation[] => operationNames.filter((op) => operations[op].kind === kind);
export const useOperations: readonly Operation[] = ofKind('use');
export const managementOperations: readonly Operation[] = ofKind('management');

const administration: Operation[] = [
  'rotate',
  'disableVersion',
  'enableVersion',
  'scheduleDestroy',
  'cancelDestroy',
  'approveDestroy',
  'import',
  'backup',
  'restore',
  'getMetadata',
  'getPublicKey',
];

export const roles = {
  Administrator: { operations: administration, doc: 'Manages the key lifecycle; never uses the key (CSA: key administrator).' },
  BreakGlassAdministrator: {
    operations: administration,
    doc: 'The Administrator set for emergencies: every grant must expire within 24 h, and each use is audited as break-glass.',
  },
  Auditor: { operations: ['readAudit', 'getMetadata'], doc: 'Reads audit records and metadata; neither uses nor manages the key.' },
  ReadOnly: { operations: ['getMetadata', 'getPublicKey', 'verify'], doc: 'Reads metadata and public material only.' },
  EncryptDecrypt: { operations: ['encrypt', 'decrypt', 'getMetadata'], doc: 'Uses the key to protect and read data (CSA: key user).' },
  WriteOnly: { operations: ['encrypt', 'getMetadata'], doc: 'Protects data it can never read back.' },
} as const satisfies Record<string, { operations: readonly Operation[]; doc: string }>;

export type Role = keyof typeof roles;
export const roleNames = Object.keys(roles) as Role[];
export const breakGlassRole: Role = 'BreakGlassAdministrator';
/** The longest a break-glass grant may run, counted from when it is admitted. */
export const breakGlassMaxMs = 24 * 60 * 60 * 1000;

/** The operations of some roles plus some named operations, in the table's order. */
export function expandGrant(grantedRoles: readonly Role[] = [], granted: readonly Operation[] = []): Operation[] {
  const set = new Set<Operation>(granted);
  for (const role of grantedRoles) for (const op of roles[role].operations) set.add(op);
  return operationNames.filter((op) => set.has(op));
}

/** Whether a set of operations mixes using a key with managing it. */
export function mixesUseAndManagement(ops: Iterable<Operation>): boolean {
  let use = false;
  let management = false;
  for (const op of ops) {
    if (operations[op].kind === 'use') use = true;
    if (operations[op].kind === 'management') management = true;
  }
  return use && management;
}
