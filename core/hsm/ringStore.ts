// Key rings in the HSM: the lifecycle rules (ringLifecycle) applied to the state kept in the token
// (ringPersistence). This module only orders the steps, so that a change interrupted half-way is
// finished by the next call. The operator and the admin CLI write through this; the KMS plugin and
// CSI provider read.
import { randomUUID } from 'node:crypto';
import { KeywardError } from '../errors.js';
import type { Handle, HsmToken } from './hsmToken.js';
import { ObjectHandleCache } from './objectHandleCache.js';
import {
  assertKnownAlgorithm,
  assertSameAlgorithm,
  changeVersionState,
  dueForDestruction,
  enablePending,
  hasMaterial,
  newRing,
  pendingVersions,
  recordDestroyed,
  releaseName,
  resolveName,
  scheduleDestruction,
  startRotation,
  unaccountedKeys,
  type RingSpec,
} from './ringLifecycle.js';
import { RingPersistence } from './ringPersistence.js';
import { assertHasPublicKey, describeRing, type RingRef, type RingState, type VersionRef, type VersionState } from './ringState.js';

export class RingStore {
  private readonly objects: RingPersistence;

  /** `now` stamps creation and state-change times; the operator passes its own clock. */
  constructor(
    token: HsmToken,
    private readonly now: () => Date = () => new Date(),
  ) {
    this.objects = new RingPersistence(token, new ObjectHandleCache(token));
  }

  async list(): Promise<RingState[]> {
    return this.objects.newestStates();
  }

  /** A ring by id (whether or not it holds a name), or by name through resolve(). */
  async get(ref: RingRef): Promise<RingState | undefined> {
    if ('ringId' in ref) return this.objects.newestState(ref.ringId);
    return this.resolve(ref.name, ref.namespace ?? '');
  }

  /**
   * The ring a name means, by the one rule every component uses (resolveName): the ring holding
   * it, never one released from it. Searches the whole token; callers that list anyway apply
   * resolveName to their listing.
   */
  async resolve(name: string, namespace = ''): Promise<RingState | undefined> {
    return resolveName(await this.list(), name, namespace);
  }

  /**
   * Releases a ring from its name, for good: its KeyRing is deleted (with either deletionPolicy).
   * Idempotent; a ring without state has nothing to release.
   */
  async release(ringId: string): Promise<RingState | undefined> {
    const ring = await this.get({ ringId });
    return ring && this.saveIfChanged(ring, releaseName(ring, this.now()));
  }

  /**
   * Makes `ringId` the only ring holding its name, releasing any other: the operator's KeyRing
   * owns the name even when an earlier KeyRing's deletion was never finalized. Returns the ring ids
   * released.
   */
  async claimName(ringId: string): Promise<string[]> {
    const rings = await this.list();
    const ring = rings.find((r) => r.ringId === ringId);
    if (!ring) throw new KeywardError('NotFound', `ring id ${ringId} does not exist in the HSM`);
    const others = rings.filter((r) => r.ringId !== ringId && r.name === ring.name && r.namespace === ring.namespace && r.released === undefined);
    for (const other of others) await this.objects.saveState(releaseName(other, this.now()));
    return others.map((r) => r.ringId);
  }

  async require(ref: RingRef): Promise<RingState> {
    const ring = await this.get(ref);
    if (!ring) throw new KeywardError('NotFound', `${describeRing(ref)} does not exist in the HSM`);
    return ring;
  }

  /**
   * Creates a ring with version 1 primary, of `algorithm` (AES_256_GCM when unset). Idempotent for a
   * given ringId: the ring is recorded with version 1 PendingGeneration first, so a creation that
   * dies half-way is finished by the next call.
   */
  async create(spec: RingSpec & { ringId?: string }): Promise<RingState> {
    assertKnownAlgorithm(spec);
    if (spec.ringId !== undefined) return (await this.ensure({ ...spec, ringId: spec.ringId })).ring;
    const ref = { name: spec.name, namespace: spec.namespace ?? '' };
    if (await this.get(ref)) throw new KeywardError('FailedPrecondition', `${describeRing(ref)} already exists`);
    return this.createNew({ ...spec, ringId: randomUUID() });
  }

  /** create() for a given ringId, also saying whether this call made the ring (rather than found it). */
  async ensure(spec: RingSpec & { ringId: string }): Promise<{ ring: RingState; created: boolean }> {
    assertKnownAlgorithm(spec);
    const existing = await this.get({ ringId: spec.ringId });
    if (existing) {
      assertSameAlgorithm(existing, spec.algorithm);
      return { ring: await this.finishPending(existing), created: false };
    }
    return { ring: await this.createNew(spec), created: true };
  }

  private async createNew(spec: RingSpec & { ringId: string }): Promise<RingState> {
    const ring = newRing(spec, this.now());
    await this.objects.createState(ring);
    // A ring's keys are generated only after its state is recorded, and ring state is never
    // removed, so a ring id without state has no key to look for.
    return this.finishPending(ring, { keysAbsent: true });
  }

  /**
   * Generates the next version in the HSM and makes it primary. With a `request`, rotates only if
   * that request was not carried out before, so a retried on-demand rotation happens once.
   */
  async rotate(ref: RingRef, options: { request?: string } = {}): Promise<RingState> {
    const ring = await this.finishPending(await this.require(ref));
    const rotating = startRotation(ring, options.request, this.now());
    if (rotating === ring) return ring;
    return this.finishPending(await this.objects.saveState(rotating));
  }

  /**
   * Moves a version along its lifecycle (see changeVersionState). DestroyScheduled needs
   * `destroyAt`; Destroyed is reached only through destroyDue.
   */
  async setVersionState(ref: RingRef, number: number, state: VersionState, options: { destroyAt?: Date } = {}): Promise<RingState> {
    const ring = await this.require(ref);
    return this.saveIfChanged(ring, changeVersionState(ring, { ref, number, state, destroyAt: options.destroyAt }, this.now()));
  }

  /** For a ring whose owner is deleted with deletionPolicy Destroy (see scheduleDestruction). */
  async scheduleRingDestruction(ref: RingRef, destroyAt: Date): Promise<RingState> {
    const ring = await this.finishPending(await this.require(ref));
    return this.saveIfChanged(ring, scheduleDestruction(ring, destroyAt, this.now()));
  }

  /** Destroys the material of every DestroyScheduled version whose time has come, in one ring or all. */
  async destroyDue(now = this.now(), ringId?: string): Promise<VersionRef[]> {
    const destroyed: VersionRef[] = [];
    const rings = ringId === undefined ? await this.list() : [await this.get({ ringId })].filter((r) => r !== undefined);
    for (const ring of rings) {
      const due = dueForDestruction(ring, now);
      if (due.length === 0) continue;
      // The material goes first: a crash after this leaves a DestroyScheduled version without a
      // key, which the next pass records as Destroyed.
      for (const v of due) await this.objects.destroyVersionKey(ring, v.number);
      await this.objects.saveState(recordDestroyed(ring, due, this.now()));
      destroyed.push(...due.map((v) => ({ ringId: ring.ringId, version: v.number })));
    }
    return destroyed;
  }

  /** Keyward key objects that no ring state accounts for: reported, never deleted. */
  async orphanKeys(): Promise<VersionRef[]> {
    // Keys first: a ring's state is written before its keys, so every key seen here whose ring
    // exists is accounted for in the list read afterwards.
    const keys = await this.objects.keyObjectVersions();
    return unaccountedKeys(keys, await this.list());
  }

  /** The key of one version to compute with (the private key of a key pair), or undefined when it is gone. */
  async keyHandle(ringId: string, number: number): Promise<Handle | undefined> {
    return this.objects.keyHandle(ringId, number);
  }

  /**
   * SubjectPublicKeyInfo DER of one version's public key. Undefined when the ring does not exist,
   * has no such version, the version is not generated yet or is destroyed, or its public key object
   * is gone. Refused for rings of secret keys (encryption, derivation): they have no public half.
   */
  async publicKey(ringId: string, number: number): Promise<Buffer | undefined> {
    const ring = await this.get({ ringId });
    if (!ring) return undefined;
    assertHasPublicKey(ring);
    const version = ring.versions.find((v) => v.number === number);
    if (!version || !hasMaterial(version)) return undefined;
    return this.objects.publicKey(ringId, number);
  }

  /**
   * Generates the key of every PendingGeneration version (unless an interrupted attempt already
   * did), then enables them and makes the newest one primary.
   */
  private async finishPending(ring: RingState, options: { keysAbsent?: boolean } = {}): Promise<RingState> {
    const pending = pendingVersions(ring);
    if (pending.length === 0) return ring;
    for (const { number } of pending) await this.objects.ensureVersionKey(ring, number, options);
    return this.objects.saveState(enablePending(ring, this.now()));
  }

  private async saveIfChanged(before: RingState, after: RingState): Promise<RingState> {
    return after === before ? before : this.objects.saveState(after);
  }
}
