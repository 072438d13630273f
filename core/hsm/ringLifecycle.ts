// The ring lifecycle as pure functions over RingState: what each change makes of a ring, and which
// changes are refused. Apart from the token, so the rules read in one place and are tested without
// an HSM. A function returns the very ring it was given when there is nothing to change.
import { KeywardError } from '../errors.js';
import {
  describeRing,
  keyIdFor,
  purposeOf,
  ringAlgorithms,
  type RingAlgorithm,
  type RingRef,
  type RingState,
  type RingVersion,
  type VersionRef,
  type VersionState,
} from './ringState.js';

export interface RingSpec {
  name: string;
  namespace?: string;
  algorithm?: RingAlgorithm;
}

/** The lifecycle moves a version may make; anything else is refused. */
const allowedTransitions: Record<VersionState, VersionState[]> = {
  PendingGeneration: ['Enabled'],
  Enabled: ['Disabled'],
  Disabled: ['Enabled', 'DestroyScheduled'],
  DestroyScheduled: ['Disabled', 'Destroyed'],
  Destroyed: [],
};

/** Callers may pass what a user typed: refuse it before a ring is recorded with a version it cannot generate. */
export function assertKnownAlgorithm({ algorithm }: RingSpec): void {
  if (algorithm === undefined || (ringAlgorithms as readonly string[]).includes(algorithm)) return;
  throw new KeywardError('InvalidArgument', `algorithm ${String(algorithm)} is not one of ${ringAlgorithms.join(', ')}`);
}

/** A ring found with another algorithm than the one asked for is refused: its keys cannot change kind. */
export function assertSameAlgorithm(ring: RingState, algorithm: RingAlgorithm | undefined): void {
  if (algorithm === undefined || ring.algorithm === algorithm) return;
  throw new KeywardError('FailedPrecondition', `ring id ${ring.ringId} exists with algorithm ${ring.algorithm}, not ${algorithm}`);
}

/** A new ring of `algorithm` (AES_256_GCM when unset), whose version 1 is primary and waits for its key. */
export function newRing(spec: RingSpec & { ringId: string }, now: Date): RingState {
  const algorithm = spec.algorithm ?? 'AES_256_GCM';
  const at = now.toISOString();
  return {
    schema: 1,
    ringId: spec.ringId,
    revision: 1,
    name: spec.name,
    namespace: spec.namespace ?? '',
    purpose: purposeOf[algorithm],
    algorithm,
    createdAt: at,
    primary: 1,
    versions: [pendingVersion(spec.ringId, 1, at)],
  };
}

/** The versions recorded whose key is not known to exist yet. */
export function pendingVersions(ring: RingState): RingVersion[] {
  return ring.versions.filter((v) => v.state === 'PendingGeneration');
}

/** Once the keys of the pending versions exist: they become Enabled and the newest of them primary. */
export function enablePending(ring: RingState, now: Date): RingState {
  const pending = pendingVersions(ring);
  if (pending.length === 0) return ring;
  const at = now.toISOString();
  return {
    ...ring,
    primary: Math.max(ring.primary, ...pending.map((v) => v.number)),
    versions: ring.versions.map((v) => (v.state === 'PendingGeneration' ? { ...v, state: 'Enabled', stateChangedAt: at } : v)),
  };
}

/**
 * A rotation: the next version, pending until its key is generated. With a `request`, the ring as
 * it is when that request was carried out before, so a retried on-demand rotation happens once.
 */
export function startRotation(ring: RingState, request: string | undefined, now: Date): RingState {
  if (request !== undefined && ring.lastRotationRequest === request) return ring;
  const next = Math.max(...ring.versions.map((v) => v.number)) + 1;
  return {
    ...ring,
    versions: [...ring.versions, pendingVersion(ring.ringId, next, now.toISOString())],
    lastRotationRequest: request ?? ring.lastRotationRequest,
  };
}

export interface VersionStateChange {
  /** The ring as the caller named it, to name it back in a refusal. */
  ref: RingRef;
  number: number;
  state: VersionState;
  /** When the material may be destroyed; needed to become DestroyScheduled. */
  destroyAt?: Date;
}

/**
 * Moves a version along its lifecycle; the primary can be neither disabled nor destroyed.
 * Destroyed is reached only through recordDestroyed, once the material is gone.
 */
export function changeVersionState(ring: RingState, { ref, number, state, destroyAt }: VersionStateChange, now: Date): RingState {
  const version = ring.versions.find((v) => v.number === number);
  if (!version) throw new KeywardError('NotFound', `${describeRing(ref)} has no version ${number}`);
  if (version.state === state) return ring;
  if (!allowedTransitions[version.state].includes(state) || state === 'Destroyed') {
    throw new KeywardError('FailedPrecondition', `version ${number} is ${version.state}; it cannot become ${state}`);
  }
  if (number === ring.primary && state !== 'Enabled') {
    throw new KeywardError('FailedPrecondition', `version ${number} is the primary; rotate before disabling it`);
  }
  if (state === 'DestroyScheduled' && destroyAt === undefined) {
    throw new KeywardError('InvalidArgument', 'scheduling destruction needs the time it may happen');
  }
  const at = now.toISOString();
  const changed = { state, stateChangedAt: at, destroyAt: state === 'DestroyScheduled' ? destroyAt?.toISOString() : undefined };
  return { ...ring, versions: ring.versions.map((v) => (v.number === number ? { ...v, ...changed } : v)) };
}

/**
 * For a ring whose owner is deleted with deletionPolicy Destroy: every version that still has
 * material, the primary included, becomes DestroyScheduled at `destroyAt`; nothing goes at once.
 */
export function scheduleDestruction(ring: RingState, destroyAt: Date, now: Date): RingState {
  const at = now.toISOString();
  const scheduled = (v: RingVersion): RingVersion =>
    v.state === 'Destroyed' || v.state === 'DestroyScheduled' ? v : { ...v, state: 'DestroyScheduled', stateChangedAt: at, destroyAt: destroyAt.toISOString() };
  if (ring.versions.every((v) => scheduled(v) === v)) return ring;
  return { ...ring, versions: ring.versions.map(scheduled) };
}

/** The DestroyScheduled versions whose time has come. */
export function dueForDestruction(ring: RingState, now: Date): RingVersion[] {
  return ring.versions.filter((v) => v.state === 'DestroyScheduled' && v.destroyAt !== undefined && Date.parse(v.destroyAt) <= now.getTime());
}

/** Once their material is gone: the versions become Destroyed, their destroyAt saying when. */
export function recordDestroyed(ring: RingState, destroyed: readonly RingVersion[], now: Date): RingState {
  const at = now.toISOString();
  const numbers = new Set(destroyed.map((v) => v.number));
  return { ...ring, versions: ring.versions.map((v) => (numbers.has(v.number) ? { ...v, state: 'Destroyed', stateChangedAt: at, destroyAt: at } : v)) };
}

/**
 * The one rule for which ring a name means, for every component: the ring holding the name, i.e.
 * the one recorded under it and not released from it. The operator releases a ring when its
 * KeyRing is deleted and when another ring is created under its name, so the holder is the ring
 * of the KeyRing that exists now; no holder means no ring (never an older one). Two holders can
 * only come from rings written before names were released: refused until the operator releases one.
 */
export function resolveName(rings: readonly RingState[], name: string, namespace: string): RingState | undefined {
  const holders = rings.filter((ring) => ring.name === name && ring.namespace === namespace && ring.released === undefined);
  if (holders.length > 1) {
    const ids = holders.map((ring) => ring.ringId).join(', ');
    throw new KeywardError('FailedPrecondition', `${describeRing({ name, namespace })} is held by more than one ring (ids ${ids}); the operator releases all but its KeyRing's on its next reconcile`);
  }
  return holders[0];
}

/** The ring released from its name (see resolveName); keys and versions are untouched. */
export function releaseName(ring: RingState, now: Date): RingState {
  return ring.released === undefined ? { ...ring, released: now.toISOString() } : ring;
}

/** Whether a version has key material to use: generated and not destroyed. */
export function hasMaterial(version: RingVersion): boolean {
  return version.state !== 'PendingGeneration' && version.state !== 'Destroyed';
}

/**
 * Of the key objects found (one per object: both halves of a key pair name the same version), the
 * versions no ring accounts for, once each: of no ring, or of a version the ring lacks or destroyed.
 */
export function unaccountedKeys(keys: readonly VersionRef[], rings: readonly RingState[]): VersionRef[] {
  const byId = new Map(rings.map((ring) => [ring.ringId, ring]));
  const orphans = new Map<string, VersionRef>();
  for (const key of keys) {
    if (byId.get(key.ringId)?.versions.some((v) => v.number === key.version && v.state !== 'Destroyed')) continue;
    orphans.set(`${key.ringId}/${key.version}`, key);
  }
  return [...orphans.values()];
}

function pendingVersion(ringId: string, number: number, now: string): RingVersion {
  return { number, state: 'PendingGeneration', keyId: keyIdFor(ringId, number), createdAt: now, stateChangedAt: now };
}
