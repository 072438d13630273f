// KeyRing (keyward.dev/v1alpha1): one logical key with numbered versions kept in the HSM. This
// file is the one definition: generateCrds.ts writes crds/keyward.dev_keyrings.yaml from
// `keyRingCrd`, and the TypeScript types below are derived from the same schema objects.
import type { V1ObjectMeta } from '@kubernetes/client-node';
import { conditionSchema, type FromSchema, type ObjectSchema, type ValidationRule } from './schema.js';

export const keyRingResource = { group: 'keyward.dev', version: 'v1alpha1', plural: 'keyrings' } as const;

/** How long a destruction approval stays usable (admission and the reconciler both enforce it). */
export const defaultApprovalWindowMs = 60 * 60 * 1000;

const purposes = ['encryption', 'derivation', 'signing'] as const;
// Only what the operator generates: the schema refuses the rest at admission. CNSA 1.0 also allows
// RSA-3072/4096 signing; add them here when the reconciler can make such keys.
const algorithms = ['AES-256-GCM', 'HMAC-SHA-384', 'ECDSA-P384'] as const;
export type KeyPurpose = (typeof purposes)[number];
export type KeyAlgorithm = (typeof algorithms)[number];

/** The CNSA 1.0 algorithms each purpose allows; the first is what the operator uses when spec.algorithm is unset. */
export const algorithmsByPurpose: Readonly<Record<KeyPurpose, readonly [KeyAlgorithm, ...KeyAlgorithm[]]>> = {
  encryption: ['AES-256-GCM'],
  derivation: ['HMAC-SHA-384'],
  signing: ['ECDSA-P384'],
};

const allowedAlgorithmsText = Object.entries(algorithmsByPurpose)
  .map(([purpose, allowed]) => `${purpose}: ${allowed.join(', ')}`)
  .join('; ');
// The same table as a CEL map literal, e.g. {'encryption': ['AES-256-GCM'], ...}.
const algorithmsByPurposeCel = `{${Object.entries(algorithmsByPurpose)
  .map(([purpose, allowed]) => `'${purpose}': [${allowed.map((a) => `'${a}'`).join(', ')}]`)
  .join(', ')}}`;

// Durations are whole hours, minutes and seconds, e.g. 720h or 36h30m: a subset of Go's syntax
// that CEL's duration() parses and that cannot overflow it. The format is checked in CEL, not by
// an OpenAPI pattern: CEL rules run even when a pattern fails, so each rule must guard itself
// anyway, and a CEL message can say what is expected instead of quoting a regular expression.
const isDuration = "self != '' && self.matches('^([0-9]{1,6}h)?([0-9]{1,6}m)?([0-9]{1,6}s)?$')";
const durationMaxLength = 32;

/** A duration field's rules: its format, then `bound`, a CEL condition on duration(self). */
const durationRules = (bound: string, limit: string): ValidationRule[] => [
  { rule: isDuration, message: 'must be a duration in hours, minutes and seconds, such as 720h or 36h30m' },
  { rule: `!(${isDuration}) || (${bound})`, message: `must be ${limit}`, messageExpression: `'must be ${limit}, not ' + self` },
];

const unchangeable = (field: string): ValidationRule => ({
  rule: 'self == oldSelf',
  message: `${field} cannot be changed once set; create a new KeyRing instead`,
});

// Two-person destruction: who asked and who approved, as the apiserver authenticated them. The
// admission webhook writes these and restores them if a request changes them.
const destroyRequestSchema = {
  type: 'object',
  description:
    'Who requested this destruction and who approved it, written by Keyward admission from the authenticated ' +
    'identities; a value you write is replaced. The operator acts only on a request approved by a second person.',
  required: ['requestedBy', 'requestedAt'],
  properties: {
    requestedBy: { type: 'string', maxLength: 512, description: 'The user that requested destruction.' },
    requestedAt: { type: 'string', format: 'date-time', description: 'When it was requested.' },
    approvedBy: { type: 'string', maxLength: 512, description: 'The second user, who approved it.' },
    approvedAt: { type: 'string', format: 'date-time', description: 'When it was approved; an approval is void if not used within the approval window (1h by default).' },
  },
} as const satisfies ObjectSchema;

const approveDestroySchema = {
  type: 'boolean',
  description: 'Set to true by a second person holding approveDestroy to approve the pending destruction request.',
} as const;

/** A key version number: 1 for the first, one more for each rotation. */
const versionNumber = <D extends string>(description: D) => ({ type: 'integer', format: 'int32', minimum: 1, description }) as const;

// Break-glass retirement: disabling or destroying a version etcd may still need, by a BreakGlassAdministrator.
const retirementOverrideSchema = {
  type: 'object',
  description:
    'Written by Keyward admission when a break-glass grant disables or schedules the destruction of a version that etcd ' +
    'has not been proven to no longer use; a value you write is replaced. The operator carries such a request out only with this stamp.',
  required: ['by', 'at'],
  properties: {
    by: { type: 'string', maxLength: 512, description: 'The user whose break-glass grant overrode retirement.' },
    at: { type: 'string', format: 'date-time', description: 'When the override was stamped.' },
    reason: { type: 'string', maxLength: 1024, description: 'What retirement said at the time: the objects still counted, or that none was proven.' },
  },
} as const satisfies ObjectSchema;

const desiredVersionSchema = {
  type: 'object',
  description: 'The state an administrator wants for one non-primary key version.',
  required: ['number', 'state'],
  properties: {
    number: versionNumber('The version number, as in status.versions[].number.'),
    state: {
      type: 'string',
      enum: ['Enabled', 'Disabled', 'DestroyScheduled'],
      description:
        'Enabled: usable. Disabled: kept but refused for use until enabled again. DestroyScheduled: disabled, ' +
        'and its material is destroyed after spec.destroyScheduledDuration unless set back to Disabled or Enabled first. ' +
        'The operator refuses transitions it cannot make (e.g. from Destroyed) with a condition. ' +
        'DestroyScheduled is a request: it takes effect once a second person approves it (approveDestroy).',
    },
    approveDestroy: approveDestroySchema,
    destroyRequest: destroyRequestSchema,
    retirementOverride: retirementOverrideSchema,
  },
} as const satisfies ObjectSchema;

const reEncryptionSpecSchema = {
  type: 'object',
  description:
    'Re-encryption of etcd after a rotation, for a ring the KMS plugin serves: once every kube-apiserver uses the new ' +
    'primary, the operator has every object of the encrypted resources rewritten under it, so older versions can retire.',
  properties: {
    enabled: { type: 'boolean', default: true, description: 'Rewrite after each rotation (true by default); false leaves old objects as they are.' },
    maxWritesPerSecond: {
      type: 'integer',
      format: 'int32',
      minimum: 1,
      maximum: 2000,
      default: 100,
      description: 'At most this many rewrites per second, so the apiserver and etcd are never swamped (100 by default).',
    },
    method: {
      type: 'string',
      enum: ['Auto', 'StorageVersionMigration', 'Rewrite'],
      default: 'Auto',
      description:
        'Auto (the default): a StorageVersionMigration where the cluster serves storagemigration.k8s.io and its controller ' +
        'runs, otherwise the operator rewrites each object itself. Rewrite: always the operator.',
    },
  },
} as const satisfies ObjectSchema;

const keyRingSpecSchema = {
  type: 'object',
  description: 'What the key is for and how its versions are rotated, disabled and destroyed.',
  required: ['purpose'],
  'x-kubernetes-validations': [
    {
      rule: `!has(self.algorithm) || self.algorithm in ${algorithmsByPurposeCel}[self.purpose]`,
      message: `spec.algorithm does not suit spec.purpose (${allowedAlgorithmsText})`,
      messageExpression: `'spec.algorithm ' + self.algorithm + ' does not suit spec.purpose ' + self.purpose + ' (${allowedAlgorithmsText})'`,
      fieldPath: '.algorithm',
      reason: 'FieldValueInvalid',
    },
  ],
  properties: {
    purpose: {
      type: 'string',
      enum: purposes,
      description:
        'What the key does: encryption (encrypt and decrypt), derivation (derive keys with HMAC) or signing ' +
        '(sign and verify). Cannot be changed once set.',
      'x-kubernetes-validations': [unchangeable('spec.purpose')],
    },
    algorithm: {
      type: 'string',
      enum: algorithms,
      description:
        `The algorithm of new versions; it must suit the purpose (${allowedAlgorithmsText}). When unset the ` +
        'operator uses the first one listed for the purpose. Changing it affects only versions created afterwards.',
    },
    rotationPeriod: {
      type: 'string',
      maxLength: durationMaxLength,
      description:
        'How often the operator creates a new primary version: a duration in hours, minutes and seconds such ' +
        'as 720h (30 days), at least 24h. When unset, versions are created only on request (spec.rotationRequest).',
      'x-kubernetes-validations': durationRules("duration(self) >= duration('24h')", 'at least 24h (one day)'),
    },
    destroyScheduledDuration: {
      type: 'string',
      maxLength: durationMaxLength,
      default: '720h',
      description:
        'How long a version stays DestroyScheduled before its material is destroyed: a duration in hours, ' +
        'minutes and seconds between 24h and 2880h (1 to 120 days); 720h (30 days) when unset. Cannot be changed once set.',
      'x-kubernetes-validations': [
        ...durationRules("duration(self) >= duration('24h') && duration(self) <= duration('2880h')", 'between 24h and 2880h (1 to 120 days)'),
        unchangeable('spec.destroyScheduledDuration'),
      ],
    },
    deletionPolicy: {
      type: 'string',
      enum: ['Retain', 'Destroy'],
      default: 'Retain',
      description:
        'What happens to the key material in the HSM when the KeyRing is deleted. Retain (the default): it stays ' +
        'in the HSM. Destroy: every version is scheduled for destruction after spec.destroyScheduledDuration; ' +
        'Destroy is a request that takes effect only once a second person approves it (spec.approveDestroy).',
    },
    approveDestroy: { ...approveDestroySchema, description: 'Set to true by a second person holding approveDestroy to approve deletionPolicy Destroy.' },
    deletionDestroyRequest: {
      ...destroyRequestSchema,
      description:
        'Who set deletionPolicy Destroy and who approved it; written by Keyward admission. The approval is a standing ' +
        'one: it is used when the KeyRing is deleted, however much later, and setting deletionPolicy back to Retain withdraws it.',
    },
    rotationRequest: {
      type: 'string',
      minLength: 1,
      maxLength: 128,
      description:
        'Asks for one rotation now. Set it to a value not used before (a timestamp, say): the operator creates ' +
        'a new primary version once for each new value and records the value in status.lastRotationRequest.',
    },
    reEncryption: reEncryptionSpecSchema,
    versions: {
      type: 'array',
      maxItems: 1000,
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['number'],
      description:
        'Desired states of non-primary versions, one entry per version number. Versions not listed keep ' +
        'their state; the primary version is always Enabled.',
      items: desiredVersionSchema,
    },
  },
} as const satisfies ObjectSchema;

const keyRingVersionStatusSchema = {
  type: 'object',
  description: 'One version of the key as the operator last saw it in the HSM.',
  required: ['number', 'state'],
  properties: {
    number: versionNumber('The version number: 1 for the first, one more for each rotation.'),
    keyId: {
      type: 'string',
      maxLength: 128,
      description: 'Public opaque identifier of this version, as ciphertexts and audit records name it.',
    },
    state: {
      type: 'string',
      enum: ['PendingGeneration', 'Enabled', 'Disabled', 'DestroyScheduled', 'Destroyed', 'PendingImport', 'ImportFailed'],
      description:
        'PendingGeneration: being created in the HSM. Enabled: usable. Disabled: kept, refused for use. ' +
        'DestroyScheduled: disabled, material destroyed at destroyTime. Destroyed: material gone. ' +
        'PendingImport: waiting for imported material. ImportFailed: the import was refused (see conditions).',
    },
    algorithm: {
      type: 'string',
      enum: algorithms,
      description: 'The algorithm of this version.',
    },
    createTime: {
      type: 'string',
      format: 'date-time',
      description: 'When this version was created in the HSM.',
    },
    destroyTime: {
      type: 'string',
      format: 'date-time',
      description: 'For DestroyScheduled: when the material will be destroyed. For Destroyed: when it was.',
    },
    hsmToken: {
      type: 'string',
      maxLength: 32,
      description: 'Label of the PKCS#11 token holding this version.',
    },
    hsmObjectId: {
      type: 'string',
      pattern: '^[0-9a-f]+$',
      maxLength: 128,
      description: 'Opaque PKCS#11 object id (CKA_ID) of this version in the token, in lowercase hex.',
    },
    etcdObjects: {
      type: 'integer',
      format: 'int64',
      minimum: 0,
      description: 'For a ring the KMS plugin serves: how many objects in etcd this version still protects, by the latest complete scan.',
    },
    etcdObjectsProvenAt: {
      type: 'string',
      format: 'date-time',
      description: 'When the scan behind etcdObjects started (it read one consistent snapshot of etcd).',
    },
    lastDecryptTime: { type: 'string', format: 'date-time', description: 'When a KMS plugin last decrypted with this version.' },
    lastUseTime: { type: 'string', format: 'date-time', description: 'When the CSI provider last used this version (derivation, opening a sealed value).' },
  },
} as const satisfies ObjectSchema;

const reEncryptionStatusSchema = {
  type: 'object',
  description: 'Re-encryption of etcd under the primary version, for a ring the KMS plugin serves; one run per rotation.',
  required: ['targetVersion', 'phase'],
  properties: {
    targetVersion: versionNumber('The primary version objects are rewritten under.'),
    phase: {
      type: 'string',
      enum: ['WaitingForApiserver', 'Rewriting', 'Verifying', 'Complete', 'Failed', 'Off'],
      description:
        'WaitingForApiserver: not every kube-apiserver encrypts with the target yet. Rewriting: objects are being rewritten. ' +
        'Verifying: waiting for a scan of etcd. Complete: the scan found nothing under older versions. Failed: some objects ' +
        'could not be rewritten (see message). Off: spec.reEncryption.enabled is false.',
    },
    method: { type: 'string', enum: ['StorageVersionMigration', 'Rewrite'], description: 'How objects are rewritten.' },
    apiserverSwitchedAt: { type: 'string', format: 'date-time', description: 'When the last kube-apiserver began encrypting with the target version.' },
    startedAt: { type: 'string', format: 'date-time', description: 'When rewriting began.' },
    completedAt: { type: 'string', format: 'date-time', description: 'When rewriting ended.' },
    rewrittenObjects: { type: 'integer', format: 'int64', minimum: 0, description: 'Objects rewritten (or found already current) so far.' },
    failedObjects: { type: 'integer', format: 'int64', minimum: 0, description: 'Objects that could not be rewritten.' },
    message: { type: 'string', maxLength: 4096, description: 'Progress or failure in words, naming objects that could not be rewritten.' },
  },
} as const satisfies ObjectSchema;

const keyRingStatusSchema = {
  type: 'object',
  description: 'What the operator last observed and did; written by the operator only.',
  properties: {
    conditions: {
      type: 'array',
      maxItems: 16,
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['type'],
      description: 'Current state, one entry per condition type; Ready is True when the primary version is usable.',
      items: conditionSchema,
    },
    observedGeneration: {
      type: 'integer',
      format: 'int64',
      minimum: 0,
      description: 'The metadata.generation the operator last acted on.',
    },
    ringId: {
      type: 'string',
      maxLength: 128,
      description: 'Opaque identifier of the ring in the HSM; never a name taken from the resource.',
    },
    primaryVersion: versionNumber('The version number new encryptions, derivations and signatures use.'),
    nextRotationTime: {
      type: 'string',
      format: 'date-time',
      description: 'When the operator will next rotate, from spec.rotationPeriod; unset without one.',
    },
    lastRotationRequest: {
      type: 'string',
      maxLength: 128,
      description: 'The last spec.rotationRequest value the operator acted on.',
    },
    versions: {
      type: 'array',
      maxItems: 1000,
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['number'],
      description: 'Every version of the key, destroyed ones included, by number.',
      items: keyRingVersionStatusSchema,
    },
    reEncryption: reEncryptionStatusSchema,
  },
} as const satisfies ObjectSchema;

// metadata is left out: the apiserver validates it and refuses a schema that describes it.
const keyRingSchema = {
  type: 'object',
  description: 'KeyRing is one logical key with numbered versions, generated and kept in an HSM.',
  required: ['spec'],
  properties: {
    apiVersion: {
      type: 'string',
      description: 'The versioned schema of this object: keyward.dev/v1alpha1.',
    },
    kind: {
      type: 'string',
      description: 'The type of this object: KeyRing.',
    },
    spec: keyRingSpecSchema,
    status: keyRingStatusSchema,
  },
} as const satisfies ObjectSchema;

export const keyRingCrd = {
  apiVersion: 'apiextensions.k8s.io/v1',
  kind: 'CustomResourceDefinition',
  metadata: { name: `${keyRingResource.plural}.${keyRingResource.group}` },
  spec: {
    group: keyRingResource.group,
    scope: 'Namespaced',
    names: {
      kind: 'KeyRing',
      listKind: 'KeyRingList',
      plural: keyRingResource.plural,
      singular: 'keyring',
      shortNames: ['kr'],
      categories: ['keyward'],
    },
    versions: [
      {
        name: keyRingResource.version,
        served: true,
        storage: true,
        schema: { openAPIV3Schema: keyRingSchema },
        subresources: { status: {} },
        additionalPrinterColumns: [
          { name: 'Ready', type: 'string', jsonPath: '.status.conditions[?(@.type=="Ready")].status', description: 'Status of the Ready condition.' },
          { name: 'Purpose', type: 'string', jsonPath: '.spec.purpose', description: 'What the key does.' },
          { name: 'Primary', type: 'integer', jsonPath: '.status.primaryVersion', description: 'The primary version number.' },
          // A string, not a date: kubectl shows future dates as <invalid>.
          { name: 'Next Rotation', type: 'string', jsonPath: '.status.nextRotationTime', description: 'When the next rotation is due.' },
          { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
        ],
      },
    ],
  },
} as const;

export type KeyRingSpec = FromSchema<typeof keyRingSpecSchema>;
export type KeyRingDesiredVersion = FromSchema<typeof desiredVersionSchema>;
export type DestroyRequest = FromSchema<typeof destroyRequestSchema>;
export type KeyRingStatus = FromSchema<typeof keyRingStatusSchema>;
export type KeyRingVersionStatus = FromSchema<typeof keyRingVersionStatusSchema>;
export type KeyRingVersionState = KeyRingVersionStatus['state'];
export type ReEncryptionStatus = FromSchema<typeof reEncryptionStatusSchema>;
export type RetirementOverride = FromSchema<typeof retirementOverrideSchema>;

export interface KeyRing {
  apiVersion: `${typeof keyRingResource.group}/${typeof keyRingResource.version}`;
  kind: 'KeyRing';
  metadata: V1ObjectMeta;
  spec: KeyRingSpec;
  status?: KeyRingStatus;
}
