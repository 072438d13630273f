// KeyPolicy (keyward.dev/v1alpha1): who may do what with which KeyRings of its namespace. The
// operations and roles come from core/policy/operations.ts; this file is the CRD's one definition
// (generateCrds.ts writes the YAML) and the TypeScript types are derived from the same schema.
// What CEL cannot see (the clock, other policies) the admission webhook checks.
import type { V1ObjectMeta } from '@kubernetes/client-node';
import { operationNames, operations, roleNames, roles, breakGlassRole, type OperationKind } from '../policy/operations.js';
import type { PolicyDocument } from '../policy/policySet.js';
import { conditionSchema, type FromSchema, type ObjectSchema } from './schema.js';

export const keyPolicyResource = { group: 'keyward.dev', version: 'v1alpha1', plural: 'keypolicies' } as const;

const celList = (items: readonly string[]): string => `[${items.map((i) => `'${i}'`).join(', ')}]`;
const operationsOfKind = (kind: OperationKind): string[] => operationNames.filter((op) => operations[op].kind === kind);
const rolesWithKind = (kind: OperationKind): string[] =>
  roleNames.filter((role) => (roles[role].operations as readonly string[]).some((op) => operationsOfKind(kind).includes(op)));

const dnsLabel = '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$';
// A character class, not a backslash escape: CEL string literals would need the escape doubled.
const dnsSubdomain = '^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$';
// Groups that stand for every user or every ServiceAccount: naming one is a wildcard.
const everyoneGroups = ['system:authenticated', 'system:unauthenticated', 'system:serviceaccounts'];

const subjectSchema = {
  type: 'object',
  description: 'Who is granted: one ServiceAccount (namespace and name), one User or one Group, as the apiserver authenticates them.',
  required: ['kind', 'name'],
  'x-kubernetes-validations': [
    {
      rule: "self.kind != 'ServiceAccount' || has(self.__namespace__)",
      message: 'a ServiceAccount subject needs its namespace',
      fieldPath: '.namespace',
      reason: 'FieldValueRequired',
    },
    {
      rule: "self.kind == 'ServiceAccount' || !has(self.__namespace__)",
      message: 'namespace belongs only to ServiceAccount subjects; Users and Groups are cluster-wide names',
      fieldPath: '.namespace',
      reason: 'FieldValueForbidden',
    },
    {
      rule: "!self.name.contains('*')",
      message: 'wildcards are not allowed: name one ServiceAccount, User or Group',
      fieldPath: '.name',
    },
    {
      rule: `self.kind != 'ServiceAccount' || self.name.matches('${dnsSubdomain}')`,
      message: 'a ServiceAccount name is a lowercase DNS subdomain, such as app-reader',
      fieldPath: '.name',
    },
    {
      rule: "self.kind != 'User' || !self.name.startsWith('system:serviceaccount:')",
      message: 'name a ServiceAccount with kind ServiceAccount, namespace and name, not as a User',
      fieldPath: '.name',
    },
    {
      rule: `self.kind != 'Group' || !(self.name in ${celList(everyoneGroups)} || self.name.startsWith('system:serviceaccounts:'))`,
      message: `groups that stand for everyone (${everyoneGroups.join(', ')}, system:serviceaccounts:<namespace>) are wildcards and cannot be granted`,
      fieldPath: '.name',
    },
  ],
  properties: {
    kind: { type: 'string', enum: ['ServiceAccount', 'User', 'Group'], description: 'ServiceAccount, User or Group.' },
    name: { type: 'string', minLength: 1, maxLength: 253, description: 'The ServiceAccount, user or group name; no wildcards.' },
    namespace: {
      type: 'string',
      maxLength: 63,
      pattern: dnsLabel,
      description: "The ServiceAccount's namespace; only for kind ServiceAccount.",
    },
  },
} as const satisfies ObjectSchema;

const useOps = celList(operationsOfKind('use'));
const managementOps = celList(operationsOfKind('management'));
const ruleMixes = (kind: 'use' | 'management', ops: string): string =>
  `((has(self.operations) && self.operations.exists(o, o in ${ops})) || (has(self.roles) && self.roles.exists(r, r in ${celList(rolesWithKind(kind))})))`;

const ruleSchema = {
  type: 'object',
  description: 'Grants the named operations (and the operations of the named roles) on the named KeyRings to the named subjects.',
  required: ['subjects', 'keyRings'],
  'x-kubernetes-validations': [
    {
      rule: '(has(self.roles) && size(self.roles) > 0) || (has(self.operations) && size(self.operations) > 0)',
      message: 'a rule grants at least one role or operation',
    },
    {
      rule: `!has(self.roles) || !('${breakGlassRole}' in self.roles) || has(self.expiresAt)`,
      message: `${breakGlassRole} grants must carry expiresAt, at most 24h ahead`,
      fieldPath: '.expiresAt',
      reason: 'FieldValueRequired',
    },
    {
      rule: `!(${ruleMixes('use', useOps)} && ${ruleMixes('management', managementOps)})`,
      message:
        `separation of duties: one rule cannot grant both use (${operationsOfKind('use').join(', ')}) and management ` +
        `(${operationsOfKind('management').join(', ')}) of a KeyRing; grant them to different subjects`,
    },
  ],
  properties: {
    name: {
      type: 'string',
      maxLength: 63,
      pattern: dnsLabel,
      description: 'A name for this rule; audit records and status name the rule that decided by it.',
    },
    subjects: { type: 'array', minItems: 1, maxItems: 32, items: subjectSchema, description: 'Who is granted.' },
    keyRings: {
      type: 'array',
      minItems: 1,
      maxItems: 32,
      'x-kubernetes-list-type': 'set',
      description: "Names of KeyRings in this policy's namespace; no wildcards, no other namespaces.",
      'x-kubernetes-validations': [
        { rule: "self.all(r, !r.contains('*'))", message: 'wildcards are not allowed: name each KeyRing' },
        {
          rule: "self.all(r, !r.contains('/'))",
          message: "a KeyPolicy grants only on KeyRings of its own namespace: give the KeyRing's name without a namespace",
        },
        { rule: `self.all(r, r.contains('*') || r.contains('/') || r.matches('${dnsSubdomain}'))`, message: 'a KeyRing name is a lowercase DNS subdomain' },
      ],
      items: { type: 'string', minLength: 1, maxLength: 253, description: 'A KeyRing name.' },
    },
    roles: {
      type: 'array',
      maxItems: roleNames.length,
      'x-kubernetes-list-type': 'set',
      description: `Named fixed sets of operations: ${roleNames.map((r) => `${r} (${roles[r].operations.join(', ')})`).join('; ')}.`,
      items: { type: 'string', enum: roleNames, description: 'A role name.' },
    },
    operations: {
      type: 'array',
      maxItems: operationNames.length,
      'x-kubernetes-list-type': 'set',
      description: `Operations granted by name: ${operationNames.join(', ')}. No wildcards.`,
      items: { type: 'string', enum: operationNames, description: 'An operation name.' },
    },
    expiresAt: {
      type: 'string',
      format: 'date-time',
      description: `When this rule stops granting, with nobody acting. Required with ${breakGlassRole}, and then at most 24h after admission.`,
    },
  },
} as const satisfies ObjectSchema;

const grantSchema = {
  type: 'object',
  description: "One subject's effective operations on one KeyRing from one rule, roles expanded.",
  required: ['subject', 'keyRing', 'operations', 'rule'],
  properties: {
    subject: { type: 'string', maxLength: 330, description: 'The subject, e.g. "ServiceAccount shop/api" or "User alice".' },
    keyRing: { type: 'string', maxLength: 253, description: 'The KeyRing name.' },
    operations: { type: 'array', maxItems: operationNames.length, items: { type: 'string', enum: operationNames, description: 'An operation.' }, description: 'Granted operations.' },
    rule: { type: 'string', maxLength: 400, description: 'The rule that grants them, as namespace/policy#rule.' },
    expiresAt: { type: 'string', format: 'date-time', description: 'When the grant stops.' },
    breakGlass: { type: 'boolean', description: 'Whether uses through this grant are audited as break-glass.' },
  },
} as const satisfies ObjectSchema;

export const maxStatusGrants = 2000;

const keyPolicySchema = {
  type: 'object',
  description: 'KeyPolicy grants named operations on named KeyRings of its namespace to named subjects. Anything not granted is refused.',
  required: ['spec'],
  properties: {
    apiVersion: { type: 'string', description: 'The versioned schema of this object: keyward.dev/v1alpha1.' },
    kind: { type: 'string', description: 'The type of this object: KeyPolicy.' },
    spec: {
      type: 'object',
      description: 'The grants.',
      required: ['rules'],
      properties: {
        rules: { type: 'array', minItems: 1, maxItems: 32, items: ruleSchema, description: 'Each rule grants on its own; a request is allowed when any enforced rule allows it.' },
      },
    },
    status: {
      type: 'object',
      description: 'Whether the policy is enforced, and what it grants, expanded; written by the operator only.',
      properties: {
        conditions: {
          type: 'array',
          maxItems: 8,
          'x-kubernetes-list-type': 'map',
          'x-kubernetes-list-map-keys': ['type'],
          description: 'Ready is True when the policy is enforced; False (SeparationOfDuties) when it is not.',
          items: conditionSchema,
        },
        observedGeneration: { type: 'integer', format: 'int64', minimum: 0, description: 'The metadata.generation the operator last evaluated.' },
        grants: {
          type: 'array',
          maxItems: maxStatusGrants,
          description: `Every subject's operations on every KeyRing, roles expanded (the first ${maxStatusGrants}).`,
          items: grantSchema,
        },
      },
    },
  },
} as const satisfies ObjectSchema;

export const keyPolicyCrd = {
  apiVersion: 'apiextensions.k8s.io/v1',
  kind: 'CustomResourceDefinition',
  metadata: { name: `${keyPolicyResource.plural}.${keyPolicyResource.group}` },
  spec: {
    group: keyPolicyResource.group,
    scope: 'Namespaced',
    names: { kind: 'KeyPolicy', listKind: 'KeyPolicyList', plural: keyPolicyResource.plural, singular: 'keypolicy', shortNames: ['kp'], categories: ['keyward'] },
    versions: [
      {
        name: keyPolicyResource.version,
        served: true,
        storage: true,
        schema: { openAPIV3Schema: keyPolicySchema },
        subresources: { status: {} },
        additionalPrinterColumns: [
          { name: 'Ready', type: 'string', jsonPath: '.status.conditions[?(@.type=="Ready")].status', description: 'Whether the policy is enforced.' },
          { name: 'Reason', type: 'string', jsonPath: '.status.conditions[?(@.type=="Ready")].reason', description: 'Why.' },
          { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
        ],
      },
    ],
  },
} as const;

export type KeyPolicySpec = FromSchema<typeof keyPolicySchema.properties.spec>;
export type KeyPolicyStatus = FromSchema<typeof keyPolicySchema.properties.status>;
export type KeyPolicyRule = FromSchema<typeof ruleSchema>;

export interface KeyPolicy {
  apiVersion: `${typeof keyPolicyResource.group}/${typeof keyPolicyResource.version}`;
  kind: 'KeyPolicy';
  metadata: V1ObjectMeta;
  spec: KeyPolicySpec;
  status?: KeyPolicyStatus;
}

/** The parts of a KeyPolicy that core/policy evaluates. */
export function policyDocument(policy: KeyPolicy): PolicyDocument {
  return {
    namespace: policy.metadata.namespace ?? '',
    name: policy.metadata.name ?? '',
    creationTimestamp: policy.metadata.creationTimestamp ? new Date(policy.metadata.creationTimestamp).toISOString() : undefined,
    rules: policy.spec.rules,
  };
}
