// The state of one key ring as kept in the HSM: its versions, their lifecycle states and which one
// is primary. The HSM is the source of truth, so the node side can start without the apiserver.
import { createHash } from 'node:crypto';
import { KeywardError } from '../errors.js';

export const versionStates = ['PendingGeneration', 'Enabled', 'Disabled', 'DestroyScheduled', 'Destroyed'] as const;
export type VersionState = (typeof versionStates)[number];

/** The algorithm of every version of a ring, as kept in the HSM (the CRD spells them with dashes). */
export const ringAlgorithms = ['AES_256_GCM', 'HMAC_SHA_384', 'ECDSA_P384'] as const;
export type RingAlgorithm = (typeof ringAlgorithms)[number];
export type RingPurpose = 'encryption' | 'derivation' | 'signing';

export const purposeOf: Record<RingAlgorithm, RingPurpose> = { AES_256_GCM: 'encryption', HMAC_SHA_384: 'derivation', ECDSA_P384: 'signing' };

/**
 * Whether each version of a ring of this algorithm is a key pair: a private key and a public key
 * object with the same label and id. Only secret-key algorithms say no, so a ring of an algorithm
 * this version does not know is treated as possibly having both halves.
 */
export function hasPublicKey(algorithm: RingAlgorithm): boolean {
  return algorithm !== 'AES_256_GCM' && algorithm !== 'HMAC_SHA_384';
}

export interface RingVersion {
  number: number;
  state: VersionState;
  /** Public and opaque; what the KMS plugin reports and the apiserver stores in etcd. */
  keyId: string;
  createdAt: string;
  stateChangedAt: string;
  /** DestroyScheduled: when the material may be destroyed. Destroyed: when it was. */
  destroyAt?: string;
}

export interface RingState {
  schema: 1;
  /** Unique per ring ever created (a KeyRing's uid, or random for CLI rings): key ids derive from it. */
  ringId: string;
  /** Bumped on every write; the HSM object with the highest revision is the ring's state. */
  revision: number;
  /** Random per write, so a writer knows the state it read is the one still standing (ringPersistence). */
  writeId?: string;
  name: string;
  /** Empty for rings made with the CLI outside any namespace. */
  namespace: string;
  purpose: RingPurpose;
  /** Rings written before derivation rings existed are AES_256_GCM (see parseRingState). */
  algorithm: RingAlgorithm;
  createdAt: string;
  primary: number;
  versions: RingVersion[];
  /** The last on-demand rotation request carried out, so a retried request rotates only once. */
  lastRotationRequest?: string;
  /**
   * When the ring gave up its name: its KeyRing was deleted, or another ring was created under the
   * name. A released ring keeps its keys (for Retain) but no name lookup finds it (see resolveName).
   */
  released?: string;
}

const keyIdPattern = /^kw1-[A-Za-z0-9_-]{32}$/;

/**
 * The public key id of one version. A hash of the ring's unique id and the version number: it
 * changes on every rotation and never repeats, even for a ring re-created under the same name.
 */
export function keyIdFor(ringId: string, version: number): string {
  const digest = createHash('sha256').update(`keyward.dev/key-id\0${ringId}\0${version}`).digest('base64url');
  return `kw1-${digest.slice(0, 32)}`;
}

/** Refuses a key id that is empty, too long or not of Keyward's form, naming which. */
export function assertKeyIdWellFormed(keyId: string): void {
  if (keyId.length === 0) throw new KeywardError('InvalidArgument', 'key_id is empty');
  if (keyId.length > 1024) throw new KeywardError('InvalidArgument', `key_id is ${keyId.length} bytes; the limit is 1024`);
  if (!keyIdPattern.test(keyId)) throw new KeywardError('InvalidArgument', 'key_id is malformed: not a Keyward key id (kw1-...)');
}

/** CKA_ID of a version's key object: deterministic, so a retried generation finds the first one. */
export function keyObjectId(ringId: string, version: number): Buffer {
  return createHash('sha256').update(`keyward.dev/key-object\0${ringId}\0${version}`).digest().subarray(0, 16);
}

export const ringObjectLabel = (ringId: string): string => `keyward/ring/${ringId}`;
export const keyObjectLabel = (ringId: string, version: number): string => `keyward/key/${ringId}/${version}`;

/** One version of one ring, as reported (destroyed versions, orphan keys). */
export interface VersionRef {
  ringId: string;
  version: number;
}

/** The ring id and version a Keyward key object's label names, or undefined for other objects. */
export function parseKeyObjectLabel(label: string): VersionRef | undefined {
  const match = /^keyward\/key\/(.+)\/([1-9][0-9]*)$/.exec(label);
  return match?.[1] && match[2] ? { ringId: match[1], version: Number(match[2]) } : undefined;
}

/** How a caller names a ring: by its id (the operator) or by namespace and name (the CLI). */
export type RingRef = { ringId: string } | { name: string; namespace?: string };

/** A ring as the caller named it, for messages. */
export const describeRing = (ref: RingRef): string =>
  'ringId' in ref ? `ring id ${ref.ringId}` : `ring '${ref.namespace ? `${ref.namespace}/` : ''}${ref.name}'`;

export function primaryVersion(ring: RingState): RingVersion {
  const primary = ring.versions.find((v) => v.number === ring.primary);
  if (!primary) throw new KeywardError('Internal', `ring ${ring.ringId} names primary version ${ring.primary}, which it does not have`);
  return primary;
}

/** Refuses to use a ring for an operation of another algorithm, naming what the ring is and what is needed. */
export function assertRingAlgorithm(ring: RingState, algorithm: RingAlgorithm, operation: string): void {
  if (ring.algorithm === algorithm) return;
  const name = describeRing({ name: ring.name, namespace: ring.namespace });
  throw new KeywardError(
    'FailedPrecondition',
    `${name} has purpose ${ring.purpose} (${ring.algorithm}); ${operation} needs purpose ${purposeOf[algorithm]} (${algorithm})`,
  );
}

/** Refuses to give a public key of a ring of secret keys (encryption, derivation): they have no public half. */
export function assertHasPublicKey(ring: RingState): void {
  if (hasPublicKey(ring.algorithm)) return;
  const name = describeRing({ name: ring.name, namespace: ring.namespace });
  const message = `${name} has purpose ${ring.purpose} (${ring.algorithm}): its keys are secret keys without a public key; signing rings (ECDSA_P384) have one`;
  throw new KeywardError('FailedPrecondition', message);
}

/** A ring state object that does not parse: never skipped, since the ring it describes is unknown. */
export class RingStateCorruptError extends KeywardError {
  constructor(
    readonly ringId: string,
    why: string,
  ) {
    super('Internal', `the state of ring id ${ringId} in the HSM is corrupt (${why}); restore the token from a backup or delete the object labelled ${ringObjectLabel(ringId)}`);
    this.name = 'RingStateCorruptError';
  }
}

/** The state in a ring state object's value; `ringId` is the one its label names. */
export function parseRingState(value: Buffer, ringId: string): RingState {
  let state: Partial<RingState>;
  try {
    state = JSON.parse(value.toString('utf8')) as Partial<RingState>;
  } catch {
    throw new RingStateCorruptError(ringId, 'not JSON');
  }
  if (state === null || typeof state !== 'object' || state.schema !== 1 || typeof state.ringId !== 'string' || !Array.isArray(state.versions)) {
    throw new RingStateCorruptError(ringId, 'not a ring state of schema 1');
  }
  if (state.ringId !== ringId) throw new RingStateCorruptError(ringId, `it names ring id ${state.ringId}`);
  if (!Number.isInteger(state.revision)) throw new RingStateCorruptError(ringId, 'no revision');
  // An algorithm this version does not know is kept as read: listing rings must not fail over it;
  // generating its keys does (ringPersistence), and using it fails assertRingAlgorithm.
  const algorithm = state.algorithm ?? 'AES_256_GCM';
  return { ...state, algorithm, purpose: state.purpose ?? purposeOf[algorithm] } as RingState;
}
