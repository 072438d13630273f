// Building blocks for Keyward's CRD schemas: the subset of the Kubernetes structural OpenAPI v3
// schema the CRDs use, a mapping from such a schema to the TypeScript type of the objects it
// admits, and the metav1.Condition shape. Types and CRD YAML both come from one schema object.

/** One CEL rule (x-kubernetes-validations); `oldSelf` in the rule makes it a transition rule. */
// A type, not an interface, so that it counts as JSON for the YAML writer.
export type ValidationRule = {
  readonly rule: string;
  readonly message?: string;
  /** A CEL expression giving the message; `message` is the fallback if it fails. */
  readonly messageExpression?: string;
  /** Where the error points, relative to the node carrying the rule, e.g. `.algorithm`. */
  readonly fieldPath?: string;
  readonly reason?: 'FieldValueInvalid' | 'FieldValueForbidden' | 'FieldValueRequired' | 'FieldValueDuplicate';
};

// Every node needs a description: it is what `kubectl explain` shows.
interface SchemaNode {
  readonly description: string;
  readonly 'x-kubernetes-validations'?: readonly ValidationRule[];
}

export interface StringSchema extends SchemaNode {
  readonly type: 'string';
  readonly enum?: readonly string[];
  readonly default?: string;
  readonly format?: 'date-time';
  readonly pattern?: string;
  readonly minLength?: number;
  readonly maxLength?: number;
}

export interface BooleanSchema extends SchemaNode {
  readonly type: 'boolean';
  readonly default?: boolean;
}

export interface IntegerSchema extends SchemaNode {
  readonly type: 'integer';
  readonly format?: 'int32' | 'int64';
  readonly minimum?: number;
  readonly maximum?: number;
  readonly default?: number;
}

export interface ObjectSchema extends SchemaNode {
  readonly type: 'object';
  readonly properties?: Readonly<Record<string, Schema>>;
  readonly required?: readonly string[];
}

export interface ArraySchema extends SchemaNode {
  readonly type: 'array';
  readonly items: Schema;
  readonly minItems?: number;
  readonly maxItems?: number;
  readonly 'x-kubernetes-list-type'?: 'atomic' | 'set' | 'map';
  readonly 'x-kubernetes-list-map-keys'?: readonly string[];
}

export type Schema = StringSchema | BooleanSchema | IntegerSchema | ObjectSchema | ArraySchema;

/**
 * The TypeScript type of the objects a schema (declared `as const`) admits, as the apiserver
 * returns them: required and defaulted properties are present, the others optional.
 */
export type FromSchema<S> = S extends { readonly type: 'string'; readonly enum: readonly (infer E)[] }
  ? E
  : S extends { readonly type: 'string' }
    ? string
    : S extends { readonly type: 'integer' }
      ? number
      : S extends { readonly type: 'boolean' }
        ? boolean
      : S extends { readonly type: 'array'; readonly items: infer I }
        ? FromSchema<I>[]
        : S extends { readonly type: 'object'; readonly properties: infer P }
          ? ObjectFromSchema<P, RequiredKeys<S> | DefaultedKeys<P>>
          : S extends { readonly type: 'object' }
            ? Record<string, unknown>
            : never;

type RequiredKeys<S> = S extends { readonly required: readonly (infer R)[] } ? R : never;
type DefaultedKeys<P> = { [K in keyof P]: P[K] extends { readonly default: unknown } ? K : never }[keyof P];
// One flat object type, so editors show the fields rather than an intersection.
type ObjectFromSchema<P, Present> = Flatten<
  { -readonly [K in keyof P as K extends Present ? K : never]: FromSchema<P[K]> } & {
    -readonly [K in keyof P as K extends Present ? never : K]?: FromSchema<P[K]>;
  }
>;
type Flatten<T> = T extends infer O ? { [K in keyof O]: O[K] } : never;

/** metav1.Condition, item schema for a `status.conditions` list keyed by `type`. */
export const conditionSchema = {
  type: 'object',
  description: 'One aspect of the current state of the resource, in the metav1.Condition shape.',
  required: ['type', 'status', 'lastTransitionTime', 'reason', 'message'],
  properties: {
    type: {
      type: 'string',
      description: 'What this condition is about, in CamelCase, e.g. Ready.',
      maxLength: 316,
      pattern: '^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$',
    },
    status: {
      type: 'string',
      description: 'Whether the condition holds: True, False or Unknown.',
      enum: ['True', 'False', 'Unknown'],
    },
    observedGeneration: {
      type: 'integer',
      format: 'int64',
      minimum: 0,
      description: 'The metadata.generation this condition was computed from.',
    },
    lastTransitionTime: {
      type: 'string',
      format: 'date-time',
      description: 'When status last changed value.',
    },
    reason: {
      type: 'string',
      description: 'A CamelCase word for why the condition has this status; stable, for programs.',
      minLength: 1,
      maxLength: 1024,
      pattern: '^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$',
    },
    message: {
      type: 'string',
      description: 'Details for people; may be empty. Never carries key material.',
      maxLength: 32768,
    },
  },
} as const satisfies ObjectSchema;

export type Condition = FromSchema<typeof conditionSchema>;
