// Key rings in the HSM: one private data object per ring holding its RingState (only readable
// after login; labels carry only the opaque ring id), and the key objects of each version, of the
// ring's algorithm: an AES-256-GCM key for encryption rings, an HMAC-SHA-384 key for derivation
// rings, an ECDSA P-384 key pair for signing rings (a private and a public key object, both with
// the version's label and id, so they are found, counted and destroyed together).
// The operator and the admin CLI write through this; the KMS plugin and CSI provider read.
import { randomUUID } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { KeywardError } from '../errors.js';
import { generateAesKey } from './aesGcm.js';
import { generateEcdsaKeyPair, publicKeyDer } from './ecdsaSigning.js';
import { generateHmacKey } from './hmacDerivation.js';
import { pkcs11Code, type Handle, type HsmToken } from './hsmToken.js';
import {
  hasPublicKey,
  keyIdFor,
  keyObjectId,
  keyObjectLabel,
  parseKeyObjectLabel,
  parseRingState,
  purposeOf,
  ringAlgorithms,
  ringObjectLabel,
  type RingAlgorithm,
  type RingState,
  type RingVersion,
  type VersionState,
} from './ringState.js';

const ringApplication = 'keyward.dev/ring-state';

export type RingRef = { ringId: string } | { name: string; namespace?: string };

const describe = (ref: RingRef): string =>
  'ringId' in ref ? `ring id ${ref.ringId}` : `ring '${ref.namespace ? `${ref.namespace}/` : ''}${ref.name}'`;

/** The lifecycle moves a version may make; anything else is refused. */
const allowedTransitions: Record<VersionState, VersionState[]> = {
  PendingGeneration: ['Enabled'],
  Enabled: ['Disabled'],
  Disabled: ['Enabled', 'DestroyScheduled'],
  DestroyScheduled: ['Disabled', 'Destroyed'],
  Destroyed: [],
};

export interface VersionRef {
  ringId: string;
  version: number;
}

/**
 * Handles of objects this store found or made, so that a known ring's state and keys are reached
 * without a search. SoftHSM2, like any module without an index, answers C_FindObjects by looking at
 * every object of the token (its file backend opens each object's file), so one search costs
 * O(objects): about 50 ms at 500 rings, against 0.1 ms to read one object by its handle. A handle
 * here is only a hint: every use reads the object and checks it is the one expected; an object
 * destroyed meanwhile, by any process, fails that read and sends us back to a search. Handles are
 * dropped with the sessions they were found under, and every search refreshes what it finds.
 */
interface KnownHandles {
  sessions: string;
  /** Every state object (revision) of a ring seen. */
  states: Map<string, Handle[]>;
  /** Key objects by `ringId/version` (the secret or private key) and `ringId/version/public`. */
  keys: Map<string, Handle>;
}

/** The objects of one version: its secret or private key, and the public key of a key pair. */
type KeyHalf = 'key' | 'public';
const keyHalves: readonly KeyHalf[] = ['key', 'public'];
type VersionObjects = Partial<Record<KeyHalf, Handle>>;

const halfOfClass = new Map<number, KeyHalf>([
  [pkcs11js.CKO_SECRET_KEY, 'key'],
  [pkcs11js.CKO_PRIVATE_KEY, 'key'],
  [pkcs11js.CKO_PUBLIC_KEY, 'public'],
]);

const cacheName = (ringId: string, number: number, half: KeyHalf): string => (half === 'key' ? `${ringId}/${number}` : `${ringId}/${number}/public`);

export class RingStore {
  private known: KnownHandles = { sessions: '', states: new Map(), keys: new Map() };

  /** `now` stamps creation and state-change times; the operator passes its own clock. */
  constructor(
    private readonly token: HsmToken,
    private readonly now: () => Date = () => new Date(),
  ) {}

  private handles(): KnownHandles {
    const sessions = this.token.sessionGeneration;
    if (this.known.sessions !== sessions) this.known = { sessions, states: new Map(), keys: new Map() };
    return this.known;
  }

  private findObjects(session: Handle, template: pkcs11js.Template): Handle[] {
    const pkcs11 = this.token.pkcs11;
    const found: Handle[] = [];
    pkcs11.C_FindObjectsInit(session, template);
    try {
      for (let batch = pkcs11.C_FindObjects(session, 1000); batch.length > 0; batch = pkcs11.C_FindObjects(session, 1000)) {
        found.push(...batch);
      }
      return found;
    } finally {
      pkcs11.C_FindObjectsFinal(session);
    }
  }

  private readValue(session: Handle, handle: Handle): Buffer {
    const [attribute] = this.token.pkcs11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_VALUE }]);
    return attribute?.value ?? Buffer.alloc(0);
  }

  /** Every state object of one ring (or of all rings), newest revision first. */
  private readStates(session: Handle, ringId?: string): Array<{ handle: Handle; state: RingState }> {
    const known = this.handles();
    if (ringId !== undefined) {
      const handles = known.states.get(ringId);
      const states = handles && this.readKnownStates(session, ringId, handles);
      if (states) return states;
    }
    const template: pkcs11js.Template = [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
      { type: pkcs11js.CKA_APPLICATION, value: ringApplication },
    ];
    if (ringId !== undefined) template.push({ type: pkcs11js.CKA_LABEL, value: ringObjectLabel(ringId) });
    const found = this.findObjects(session, template)
      .map((handle) => ({ handle, state: parseRingState(this.readValue(session, handle)) }))
      .sort((a, b) => b.state.revision - a.state.revision);
    if (ringId === undefined) known.states.clear();
    else known.states.delete(ringId);
    for (const { handle, state } of found) known.states.set(state.ringId, [...(known.states.get(state.ringId) ?? []), handle]);
    return found;
  }

  /** The states behind handles seen before, or undefined when one is gone or is not the ring's. */
  private readKnownStates(session: Handle, ringId: string, handles: Handle[]): Array<{ handle: Handle; state: RingState }> | undefined {
    try {
      const states = handles.map((handle) => ({ handle, state: parseRingState(this.readValue(session, handle)) }));
      if (states.some(({ state }) => state.ringId !== ringId)) return undefined;
      return states.sort((a, b) => b.state.revision - a.state.revision);
    } catch (err) {
      if (isStaleHandle(err)) return undefined;
      throw err;
    }
  }

  async list(): Promise<RingState[]> {
    const newest = new Map<string, RingState>();
    for (const { state } of await this.token.withSession((session) => this.readStates(session))) {
      if (!newest.has(state.ringId)) newest.set(state.ringId, state);
    }
    return [...newest.values()];
  }

  async get(ref: RingRef): Promise<RingState | undefined> {
    if ('ringId' in ref) {
      return this.token.withSession((session) => this.readStates(session, ref.ringId)[0]?.state);
    }
    const namespace = ref.namespace ?? '';
    return (await this.list()).find((ring) => ring.name === ref.name && ring.namespace === namespace);
  }

  async require(ref: RingRef): Promise<RingState> {
    const ring = await this.get(ref);
    if (!ring) throw new KeywardError('NotFound', `${describe(ref)} does not exist in the HSM`);
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
    if (await this.get(ref)) throw new KeywardError('FailedPrecondition', `${describe(ref)} already exists`);
    return this.createNew({ ...spec, ringId: randomUUID() });
  }

  /**
   * create() for a given ringId, also saying whether this call made the ring (rather than found it).
   * A ring found with another algorithm than the one asked for is refused: its keys cannot change kind.
   */
  async ensure(spec: RingSpec & { ringId: string }): Promise<{ ring: RingState; created: boolean }> {
    assertKnownAlgorithm(spec);
    const existing = await this.get({ ringId: spec.ringId });
    if (existing) {
      if (spec.algorithm !== undefined && existing.algorithm !== spec.algorithm) {
        const message = `ring id ${spec.ringId} exists with algorithm ${existing.algorithm}, not ${spec.algorithm}`;
        throw new KeywardError('FailedPrecondition', message);
      }
      return { ring: await this.finishPending(existing), created: false };
    }
    return { ring: await this.createNew(spec), created: true };
  }

  private async createNew(spec: RingSpec & { ringId: string }): Promise<RingState> {
    const { ringId } = spec;
    const algorithm = spec.algorithm ?? 'AES_256_GCM';
    const now = this.now().toISOString();
    const ring: RingState = {
      schema: 1,
      ringId,
      revision: 1,
      name: spec.name,
      namespace: spec.namespace ?? '',
      purpose: purposeOf[algorithm],
      algorithm,
      createdAt: now,
      primary: 1,
      versions: [pendingVersion(ringId, 1, now)],
    };
    await this.token.withSession((session) => this.handles().states.set(ringId, [this.writeState(session, ring)]));
    // A ring's keys are generated only after its state is recorded, and ring state is never
    // removed, so a ring id without state has no key to look for.
    return this.finishPending(ring, { keysAbsent: true });
  }

  /**
   * Generates the next version in the HSM and makes it primary. With a `request`, rotates only if
   * that request was not carried out before, so a retried on-demand rotation happens once.
   */
  async rotate(ref: RingRef, options: { request?: string } = {}): Promise<RingState> {
    let ring = await this.finishPending(await this.require(ref));
    if (options.request !== undefined && ring.lastRotationRequest === options.request) return ring;
    const next = Math.max(...ring.versions.map((v) => v.number)) + 1;
    ring = await this.save({
      ...ring,
      versions: [...ring.versions, pendingVersion(ring.ringId, next, this.now().toISOString())],
      lastRotationRequest: options.request ?? ring.lastRotationRequest,
    });
    return this.finishPending(ring);
  }

  /**
   * Moves a version along its lifecycle; the primary can be neither disabled nor destroyed.
   * DestroyScheduled needs `destroyAt`; Destroyed is reached only through destroyDue.
   */
  async setVersionState(ref: RingRef, number: number, state: VersionState, options: { destroyAt?: Date } = {}): Promise<RingState> {
    const ring = await this.require(ref);
    const version = ring.versions.find((v) => v.number === number);
    if (!version) throw new KeywardError('NotFound', `${describe(ref)} has no version ${number}`);
    if (version.state === state) return ring;
    if (!allowedTransitions[version.state].includes(state) || state === 'Destroyed') {
      throw new KeywardError('FailedPrecondition', `version ${number} is ${version.state}; it cannot become ${state}`);
    }
    if (number === ring.primary && state !== 'Enabled') {
      throw new KeywardError('FailedPrecondition', `version ${number} is the primary; rotate before disabling it`);
    }
    if (state === 'DestroyScheduled' && options.destroyAt === undefined) {
      throw new KeywardError('InvalidArgument', 'scheduling destruction needs the time it may happen');
    }
    const now = this.now().toISOString();
    const destroyAt = state === 'DestroyScheduled' ? options.destroyAt?.toISOString() : undefined;
    return this.save({
      ...ring,
      versions: ring.versions.map((v) => (v.number === number ? { ...v, state, stateChangedAt: now, destroyAt } : v)),
    });
  }

  /**
   * For a ring whose owner is deleted with deletionPolicy Destroy: every version that still has
   * material, the primary included, becomes DestroyScheduled at `destroyAt`; nothing goes at once.
   */
  async scheduleRingDestruction(ref: RingRef, destroyAt: Date): Promise<RingState> {
    const ring = await this.finishPending(await this.require(ref));
    const now = this.now().toISOString();
    const scheduled = (v: RingVersion): RingVersion =>
      v.state === 'Destroyed' || v.state === 'DestroyScheduled' ? v : { ...v, state: 'DestroyScheduled', stateChangedAt: now, destroyAt: destroyAt.toISOString() };
    if (ring.versions.every((v) => scheduled(v) === v)) return ring;
    return this.save({ ...ring, versions: ring.versions.map(scheduled) });
  }

  /** Destroys the material of every DestroyScheduled version whose time has come, in one ring or all. */
  async destroyDue(now = this.now(), ringId?: string): Promise<VersionRef[]> {
    const destroyed: VersionRef[] = [];
    const rings = ringId === undefined ? await this.list() : [await this.get({ ringId })].filter((r) => r !== undefined);
    for (const ring of rings) {
      const due = ring.versions.filter((v) => v.state === 'DestroyScheduled' && v.destroyAt !== undefined && Date.parse(v.destroyAt) <= now.getTime());
      if (due.length === 0) continue;
      // The material goes first: a crash after this leaves a DestroyScheduled version without a
      // key, which the next pass records as Destroyed.
      for (const v of due) await this.destroyKey(ring, v.number);
      const at = this.now().toISOString();
      const numbers = new Set(due.map((v) => v.number));
      await this.save({
        ...ring,
        versions: ring.versions.map((v) => (numbers.has(v.number) ? { ...v, state: 'Destroyed', stateChangedAt: at, destroyAt: at } : v)),
      });
      destroyed.push(...due.map((v) => ({ ringId: ring.ringId, version: v.number })));
    }
    return destroyed;
  }

  /** Keyward key objects that no ring state accounts for: reported, never deleted. */
  async orphanKeys(): Promise<VersionRef[]> {
    // Keys first: a ring's state is written before its keys, so every key seen here whose ring
    // exists is accounted for in the list read afterwards.
    // One search of every object, not one per key class: each search reads the whole token.
    const labels = await this.token.withSession((session) =>
      this.findObjects(session, []).flatMap((handle) => {
        try {
          const [keyClass, label] = this.token.pkcs11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_CLASS }, { type: pkcs11js.CKA_LABEL }]);
          return halfOfClass.has(keyClass?.value?.readUInt32LE(0) ?? -1) ? [label?.value?.toString('utf8') ?? ''] : [];
        } catch (err) {
          if (isStaleHandle(err)) return []; // destroyed since the search
          throw err;
        }
      }),
    );
    const rings = new Map((await this.list()).map((ring) => [ring.ringId, ring]));
    // Both halves of a key pair carry the version's label: one version, one report.
    const orphans = new Map<string, VersionRef>();
    for (const key of labels.map(parseKeyObjectLabel)) {
      if (key === undefined || rings.get(key.ringId)?.versions.some((v) => v.number === key.version && v.state !== 'Destroyed')) continue;
      orphans.set(`${key.ringId}/${key.version}`, key);
    }
    return [...orphans.values()];
  }

  /** The key of one version to compute with (the private key of a key pair), or undefined when it is gone. */
  async keyHandle(ringId: string, number: number): Promise<Handle | undefined> {
    return this.token.withSession((session) => this.versionObjects(session, ringId, number, ['key']).key);
  }

  /**
   * SubjectPublicKeyInfo DER of one version's public key. Undefined when the ring does not exist,
   * has no such version, the version is not generated yet or is destroyed, or its public key object
   * is gone. Refused for rings of secret keys (encryption, derivation): they have no public half.
   */
  async publicKey(ringId: string, number: number): Promise<Buffer | undefined> {
    const ring = await this.get({ ringId });
    if (!ring) return undefined;
    if (!hasPublicKey(ring.algorithm)) {
      const name = describe({ name: ring.name, namespace: ring.namespace });
      const message = `${name} has purpose ${ring.purpose} (${ring.algorithm}): its keys are secret keys without a public key; signing rings (ECDSA_P384) have one`;
      throw new KeywardError('FailedPrecondition', message);
    }
    const version = ring.versions.find((v) => v.number === number);
    if (!version || version.state === 'PendingGeneration' || version.state === 'Destroyed') return undefined;
    const handle = await this.token.withSession((session) => this.versionObjects(session, ringId, number, ['public']).public);
    if (handle === undefined) return undefined;
    try {
      return await publicKeyDer(this.token, handle);
    } catch (err) {
      if (pkcs11Code(err) === pkcs11js.CKR_OBJECT_HANDLE_INVALID) return undefined; // destroyed since it was found
      throw err;
    }
  }

  /**
   * The objects of one version asked for, by half: handles seen before while they still check out,
   * otherwise one search by CKA_ID, which finds both halves of a key pair at once. After a search
   * the answer holds every half found, asked for or not.
   */
  private versionObjects(session: Handle, ringId: string, number: number, halves: readonly KeyHalf[]): VersionObjects {
    const id = keyObjectId(ringId, number);
    const { keys } = this.handles();
    const known: VersionObjects = {};
    for (const half of halves) {
      const handle = keys.get(cacheName(ringId, number, half));
      if (handle !== undefined && this.isKeyObject(session, handle, id, half)) known[half] = handle;
    }
    if (halves.every((half) => known[half] !== undefined)) return known;
    const found: VersionObjects = {};
    for (const handle of this.findObjects(session, [{ type: pkcs11js.CKA_ID, value: id }])) {
      const half = this.halfOf(session, handle);
      if (half !== undefined) found[half] ??= handle;
    }
    for (const half of keyHalves) {
      const handle = found[half];
      if (handle === undefined) keys.delete(cacheName(ringId, number, half));
      else keys.set(cacheName(ringId, number, half), handle);
    }
    return found;
  }

  /** Whether a handle seen before still names the object of this half with this CKA_ID. */
  private isKeyObject(session: Handle, handle: Handle, id: Buffer, half: KeyHalf): boolean {
    try {
      // Key object ids are hashes of ring id and version: only the version's objects carry one.
      const [ckaId, keyClass] = this.token.pkcs11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_ID }, { type: pkcs11js.CKA_CLASS }]);
      return ckaId?.value?.equals(id) === true && halfOfClass.get(keyClass?.value?.readUInt32LE(0) ?? -1) === half;
    } catch (err) {
      if (isStaleHandle(err)) return false;
      throw err;
    }
  }

  /** Which half of a version an object found by its id is, or undefined for another kind or one just destroyed. */
  private halfOf(session: Handle, handle: Handle): KeyHalf | undefined {
    try {
      const [keyClass] = this.token.pkcs11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_CLASS }]);
      return halfOfClass.get(keyClass?.value?.readUInt32LE(0) ?? -1);
    } catch (err) {
      if (isStaleHandle(err)) return undefined;
      throw err;
    }
  }

  /**
   * Generates the key of every PendingGeneration version, unless an interrupted attempt already
   * did (key object ids are deterministic), then enables it and makes the newest one primary.
   * `keysAbsent`: the caller knows the ring has no keys yet, so there is nothing to look for.
   */
  private async finishPending(ring: RingState, options: { keysAbsent?: boolean } = {}): Promise<RingState> {
    const pending = ring.versions.filter((v) => v.state === 'PendingGeneration');
    if (pending.length === 0) return ring;
    for (const { number } of pending) {
      if (!options.keysAbsent) {
        const found = await this.token.withSession((session) => {
          const objects = this.versionObjects(session, ring.ringId, number, ['key']);
          // A public key without its private key (from a module that does not make pairs in one
          // step) would stand beside the new pair's under the same id: it goes first.
          if (objects.key === undefined && objects.public !== undefined) {
            this.token.pkcs11.C_DestroyObject(session, objects.public);
            this.handles().keys.delete(cacheName(ring.ringId, number, 'public'));
          }
          return objects.key !== undefined;
        });
        if (found) continue;
      }
      const sessions = this.token.sessionGeneration;
      const generated = await generateKey(this.token, ring, number);
      if (sessions === this.token.sessionGeneration) {
        for (const half of keyHalves) {
          const handle = generated[half];
          if (handle !== undefined) this.handles().keys.set(cacheName(ring.ringId, number, half), handle);
        }
      }
    }
    const now = this.now().toISOString();
    return this.save({
      ...ring,
      primary: Math.max(ring.primary, ...pending.map((v) => v.number)),
      versions: ring.versions.map((v) => (v.state === 'PendingGeneration' ? { ...v, state: 'Enabled', stateChangedAt: now } : v)),
    });
  }

  /**
   * Destroys a version's key, and the public half of a key pair. The private key goes first: should
   * we die before the public one goes, the version stays DestroyScheduled and the next pass finds it.
   */
  private async destroyKey(ring: RingState, number: number): Promise<void> {
    await this.token.withSession((session) => {
      const objects = this.versionObjects(session, ring.ringId, number, hasPublicKey(ring.algorithm) ? keyHalves : ['key']);
      for (const half of keyHalves) {
        const handle = objects[half];
        if (handle === undefined) continue;
        this.token.pkcs11.C_DestroyObject(session, handle);
        this.handles().keys.delete(cacheName(ring.ringId, number, half));
      }
    });
  }

  private writeState(session: Handle, ring: RingState): Handle {
    return this.token.pkcs11.C_CreateObject(session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_APPLICATION, value: ringApplication },
      { type: pkcs11js.CKA_LABEL, value: ringObjectLabel(ring.ringId) },
      { type: pkcs11js.CKA_VALUE, value: Buffer.from(JSON.stringify(ring)) },
    ]);
  }

  /**
   * Data objects' values cannot be changed in place (SoftHSM2 refuses), so a write adds the next
   * revision and then removes the older ones. Readers take the newest revision, so a crash
   * between the two steps loses nothing; the next write removes the leftover.
   */
  private async save(ring: RingState): Promise<RingState> {
    return this.token.withSession((session) => {
      const existing = this.readStates(session, ring.ringId);
      const newest = existing[0]?.state.revision;
      if (newest === undefined) throw new KeywardError('NotFound', `ring id ${ring.ringId} vanished from the HSM`);
      const next = { ...ring, revision: newest + 1 };
      const written = this.writeState(session, next);
      const { states } = this.handles();
      states.set(ring.ringId, [written, ...existing.map(({ handle }) => handle)]);
      for (const { handle } of existing) this.token.pkcs11.C_DestroyObject(session, handle);
      states.set(ring.ringId, [written]);
      return next;
    });
  }
}

/** A handle seen before that no longer names a live object: destroyed, or from closed sessions. */
function isStaleHandle(err: unknown): boolean {
  const code = pkcs11Code(err);
  return (
    code === pkcs11js.CKR_OBJECT_HANDLE_INVALID ||
    code === pkcs11js.CKR_ATTRIBUTE_TYPE_INVALID ||
    err instanceof SyntaxError ||
    (err instanceof KeywardError && err.code === 'Internal')
  );
}

export interface RingSpec {
  name: string;
  namespace?: string;
  algorithm?: RingAlgorithm;
}

/** Callers may pass what a user typed: refuse it before a ring is recorded with a version it cannot generate. */
function assertKnownAlgorithm({ algorithm }: RingSpec): void {
  if (algorithm === undefined || (ringAlgorithms as readonly string[]).includes(algorithm)) return;
  throw new KeywardError('InvalidArgument', `algorithm ${String(algorithm)} is not one of ${ringAlgorithms.join(', ')}`);
}

/** Generates one version's key objects, of the ring's algorithm. */
async function generateKey(token: HsmToken, ring: RingState, number: number): Promise<VersionObjects & { key: Handle }> {
  const identity = { label: keyObjectLabel(ring.ringId, number), id: keyObjectId(ring.ringId, number) };
  switch (ring.algorithm) {
    case 'AES_256_GCM':
      return { key: await generateAesKey(token, identity) };
    case 'HMAC_SHA_384':
      return { key: await generateHmacKey(token, identity) };
    case 'ECDSA_P384': {
      const pair = await generateEcdsaKeyPair(token, identity);
      return { key: pair.privateKey, public: pair.publicKey };
    }
    default:
      // A ring written by a newer Keyward: refuse rather than make a key of the wrong kind.
      throw new KeywardError(
        'FailedPrecondition',
        `ring id ${ring.ringId} has algorithm ${String(ring.algorithm satisfies never)}, which this version of Keyward cannot generate`,
      );
  }
}

function pendingVersion(ringId: string, number: number, now: string): RingVersion {
  return { number, state: 'PendingGeneration', keyId: keyIdFor(ringId, number), createdAt: now, stateChangedAt: now };
}
