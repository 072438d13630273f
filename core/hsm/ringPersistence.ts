// Ring state and keys as PKCS#11 objects; the only ring module that speaks PKCS#11, so the rules
// need no token. Per ring a private data object (read only after login, labelled with the opaque
// ring id) holding its RingState; per version the key objects of the ring's algorithm: an AES-256-GCM
// or HMAC-SHA-384 key, or an ECDSA P-384 key pair whose halves share the version's label and id.
import { randomUUID } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { KeywardError } from '../errors.js';
import { generateAesKey } from './aesGcm.js';
import { generateEcdsaKeyPair, publicKeyDer } from './ecdsaSigning.js';
import { generateHmacKey } from './hmacDerivation.js';
import { pkcs11Code, type Handle, type HsmToken } from './hsmToken.js';
import type { KeyHalf, ObjectHandleCache } from './objectHandleCache.js';
import {
  hasPublicKey,
  keyObjectId,
  keyObjectLabel,
  parseKeyObjectLabel,
  parseRingState,
  ringObjectLabel,
  type RingState,
  type VersionRef,
} from './ringState.js';

const ringApplication = 'keyward.dev/ring-state';

const keyHalves: readonly KeyHalf[] = ['key', 'public'];
type VersionObjects = Partial<Record<KeyHalf, Handle>>;

const halfOfClass = new Map<number, KeyHalf>([
  [pkcs11js.CKO_SECRET_KEY, 'key'],
  [pkcs11js.CKO_PRIVATE_KEY, 'key'],
  [pkcs11js.CKO_PUBLIC_KEY, 'public'],
]);

type StoredState = { handle: Handle; state: RingState };

export class RingPersistence {
  constructor(
    private readonly token: HsmToken,
    private readonly cache: ObjectHandleCache,
  ) {}

  /** The newest state of every ring. */
  async newestStates(): Promise<RingState[]> {
    const newest = new Map<string, RingState>();
    for (const { state } of await this.token.withSession((session) => this.readStates(session))) {
      if (!newest.has(state.ringId)) newest.set(state.ringId, state);
    }
    return [...newest.values()];
  }

  /** The newest state of one ring, or undefined when it has none. */
  async newestState(ringId: string): Promise<RingState | undefined> {
    return this.token.withSession((session) => this.readStates(session, ringId)[0]?.state);
  }

  /** Records the first state of a ring that has none; refused when another writer recorded one first. */
  async createState(ring: RingState): Promise<void> {
    await this.token.withSession((session) => {
      if (this.searchStates(session, ring.ringId).length > 0) throw changedConcurrently(ring.ringId);
      this.cache.replaceStates(ring.ringId, [this.writeState(session, ring)]);
    });
  }

  /**
   * Records `ring` as the next revision of its state, if the ring is still at the revision `ring`
   * was read at: a compare-and-set, so one writer (operator leader, CLI, janitor) never overwrites
   * another's change unseen. Data objects' values cannot be changed in place (SoftHSM2 refuses), so
   * a write adds the next revision and then removes the older ones. Readers take the newest
   * revision, so a crash between the two steps loses nothing; the next write removes the leftover.
   */
  async saveState(ring: RingState): Promise<RingState> {
    return this.token.withSession((session) => {
      const existing = this.readStates(session, ring.ringId);
      const newest = existing[0]?.state.revision;
      // Ring state is never removed: none found means another writer's replacement is in flight.
      if (newest === undefined) throw changedConcurrently(ring.ringId);
      // The revision number alone is not enough: a withdrawn write (below) may have carried it.
      if (newest !== ring.revision || existing[0]?.state.writeId !== ring.writeId) throw changedConcurrently(ring.ringId);
      const next = { ...ring, revision: newest + 1, writeId: randomUUID() };
      const written = this.writeState(session, next);
      // Another process may have passed the same check meanwhile: whoever finds a second object of
      // the new revision withdraws its own, so at most one write of a revision stands.
      const rivals = this.searchStates(session, ring.ringId).filter(({ handle, state }) => !handle.equals(written) && state.revision >= next.revision);
      if (rivals.length > 0) {
        this.token.pkcs11.C_DestroyObject(session, written);
        this.cache.forgetStates(ring.ringId);
        throw changedConcurrently(ring.ringId);
      }
      this.cache.replaceStates(ring.ringId, [written, ...existing.map(({ handle }) => handle)]);
      for (const { handle } of existing) this.destroyIfPresent(session, handle);
      this.cache.replaceStates(ring.ringId, [written]);
      return next;
    });
  }

  /** Destroys an older revision, unless another writer's save removed it first. */
  private destroyIfPresent(session: Handle, handle: Handle): void {
    try {
      this.token.pkcs11.C_DestroyObject(session, handle);
    } catch (err) {
      if (pkcs11Code(err) !== pkcs11js.CKR_OBJECT_HANDLE_INVALID) throw err;
    }
  }

  /** The key of one version to compute with (the private key of a key pair), or undefined when it is gone. */
  async keyHandle(ringId: string, number: number): Promise<Handle | undefined> {
    return this.token.withSession((session) => this.versionObjects(session, ringId, number, ['key']).key);
  }

  /** SubjectPublicKeyInfo DER of one version's public key object, or undefined when it is gone. */
  async publicKey(ringId: string, number: number): Promise<Buffer | undefined> {
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
   * Generates one version's key objects, unless an interrupted attempt already did (key object ids
   * are deterministic). `keysAbsent`: the caller knows the ring has no keys yet, so there is
   * nothing to look for.
   */
  async ensureVersionKey(ring: RingState, number: number, options: { keysAbsent?: boolean } = {}): Promise<void> {
    if (!options.keysAbsent) {
      const found = await this.token.withSession((session) => {
        const objects = this.versionObjects(session, ring.ringId, number, ['key']);
        // A public key without its private key (from a module that does not make pairs in one
        // step) would stand beside the new pair's under the same id: it goes first.
        if (objects.key === undefined && objects.public !== undefined) {
          this.token.pkcs11.C_DestroyObject(session, objects.public);
          this.cache.forgetKeyObject(ring.ringId, number, 'public');
        }
        return objects.key !== undefined;
      });
      if (found) return;
    }
    const sessions = this.token.sessionGeneration;
    const generated = await generateKey(this.token, ring, number);
    // Handles made under sessions closed meanwhile name nothing now.
    if (sessions !== this.token.sessionGeneration) return;
    for (const half of keyHalves) {
      const handle = generated[half];
      if (handle !== undefined) this.cache.rememberKeyObject(ring.ringId, number, half, handle);
    }
  }

  /**
   * Destroys a version's key, and the public half of a key pair. The private key goes first: should
   * we die before the public one goes, the version stays DestroyScheduled and the next pass finds it.
   */
  async destroyVersionKey(ring: RingState, number: number): Promise<void> {
    await this.token.withSession((session) => {
      const objects = this.versionObjects(session, ring.ringId, number, hasPublicKey(ring.algorithm) ? keyHalves : ['key']);
      for (const half of keyHalves) {
        const handle = objects[half];
        if (handle === undefined) continue;
        this.token.pkcs11.C_DestroyObject(session, handle);
        this.cache.forgetKeyObject(ring.ringId, number, half);
      }
    });
  }

  /** The version every Keyward key object in the token belongs to, once per object. */
  async keyObjectVersions(): Promise<VersionRef[]> {
    // One search of every object, not one per key class: each search reads the whole token.
    const labels = await this.token.withSession((session) =>
      this.findObjects(session, []).flatMap((handle) => {
        try {
          const [keyClass, label] = this.token.pkcs11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_CLASS }, { type: pkcs11js.CKA_LABEL }]);
          return halfOfClass.has(keyClass?.value?.readUInt32LE(0) ?? -1) ? [label?.value?.toString('utf8') ?? ''] : [];
        } catch (err) {
          if (isStaleHandle(err) || isHalfWritten(err)) return []; // destroyed since the search, or never finished
          throw err;
        }
      }),
    );
    return labels.map(parseKeyObjectLabel).filter((key) => key !== undefined);
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

  /** A state object's label and value; a label that is not a ring state label gives no ring id. */
  private readStateObject(session: Handle, handle: Handle): { label: string; value: Buffer } {
    const [label, value] = this.token.pkcs11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_LABEL }, { type: pkcs11js.CKA_VALUE }]);
    return { label: label?.value?.toString('utf8') ?? '', value: value?.value ?? Buffer.alloc(0) };
  }

  /** Every state object of one ring (or of all rings), newest revision first; remembered in the cache. */
  private readStates(session: Handle, ringId?: string): StoredState[] {
    if (ringId !== undefined) {
      const handles = this.cache.stateHandles(ringId);
      const states = handles && this.readKnownStates(session, ringId, handles);
      if (states) return states;
    }
    const found = this.searchStates(session, ringId);
    this.cache.forgetStates(ringId);
    for (const { handle, state } of found) this.cache.rememberState(state.ringId, handle);
    return found;
  }

  /**
   * One search for the state objects of one ring (or of all rings), newest revision first. An
   * object that does not parse is refused as corrupt, naming its ring: skipping it could make a
   * ring's older revision, or another ring holding its name, stand in for it.
   */
  private searchStates(session: Handle, ringId?: string): StoredState[] {
    const template: pkcs11js.Template = [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
      { type: pkcs11js.CKA_APPLICATION, value: ringApplication },
    ];
    if (ringId !== undefined) template.push({ type: pkcs11js.CKA_LABEL, value: ringObjectLabel(ringId) });
    // An object gone between the search and its read is an older revision another writer removed
    // after adding the next; that one may have been missed, so a few more searches are made.
    for (let attempt = 1; ; attempt++) {
      let vanished = false;
      const found = this.findObjects(session, template).flatMap((handle) => {
        try {
          const { label, value } = this.readStateObject(session, handle);
          return [{ handle, state: parseRingState(value, ringIdOfLabel(label)) }];
        } catch (err) {
          if (!isStaleHandle(err)) throw err;
          vanished = true;
          return [];
        }
      });
      if (!vanished || attempt === 3) return found.sort((a, b) => b.state.revision - a.state.revision);
    }
  }

  /** The states behind handles seen before, or undefined when one is gone or is no longer the ring's. */
  private readKnownStates(session: Handle, ringId: string, handles: Handle[]): StoredState[] | undefined {
    const states: StoredState[] = [];
    for (const handle of handles) {
      let object: { label: string; value: Buffer };
      try {
        object = this.readStateObject(session, handle);
      } catch (err) {
        if (isStaleHandle(err)) return undefined;
        throw err;
      }
      // A handle reused for another object: search again. The ring's own object must parse.
      if (object.label !== ringObjectLabel(ringId)) return undefined;
      states.push({ handle, state: parseRingState(object.value, ringId) });
    }
    return states.sort((a, b) => b.state.revision - a.state.revision);
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
   * The objects of one version asked for, by half: handles seen before while they still check out,
   * otherwise one search by CKA_ID, which finds both halves of a key pair at once. After a search
   * the answer holds every half found, asked for or not.
   */
  private versionObjects(session: Handle, ringId: string, number: number, halves: readonly KeyHalf[]): VersionObjects {
    const id = keyObjectId(ringId, number);
    const known: VersionObjects = {};
    for (const half of halves) {
      const handle = this.cache.keyObject(ringId, number, half);
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
      if (handle === undefined) this.cache.forgetKeyObject(ringId, number, half);
      else this.cache.rememberKeyObject(ringId, number, half, handle);
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
      if (isStaleHandle(err) || isHalfWritten(err)) return false;
      throw err;
    }
  }

  /** Which half of a version an object found by its id is, or undefined for another kind or one just destroyed. */
  private halfOf(session: Handle, handle: Handle): KeyHalf | undefined {
    try {
      const [keyClass] = this.token.pkcs11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_CLASS }]);
      return halfOfClass.get(keyClass?.value?.readUInt32LE(0) ?? -1);
    } catch (err) {
      if (isStaleHandle(err) || isHalfWritten(err)) return undefined;
      throw err;
    }
  }
}

/**
 * A handle seen before that no longer names a live object of the kind expected: destroyed, from
 * closed sessions, or reused for an object without the attribute. Only PKCS#11 answers count: a
 * value that does not parse is corruption (see searchStates), never a reason to search again.
 */
function isStaleHandle(err: unknown): boolean {
  const code = pkcs11Code(err);
  return code === pkcs11js.CKR_OBJECT_HANDLE_INVALID || code === pkcs11js.CKR_ATTRIBUTE_TYPE_INVALID || code === pkcs11js.CKR_ATTRIBUTE_SENSITIVE;
}

/**
 * A key object SoftHSM2 left half-written when its creator was killed inside C_GenerateKey: its
 * attributes do not read. Keyward never finished it, so it is none of its keys.
 */
function isHalfWritten(err: unknown): boolean {
  return pkcs11Code(err) === pkcs11js.CKR_ATTRIBUTE_VALUE_INVALID;
}

/** The ring id a state object's label names (the whole label when it is not of Keyward's form, for the message). */
function ringIdOfLabel(label: string): string {
  const prefix = ringObjectLabel('');
  return label.startsWith(prefix) ? label.slice(prefix.length) : label;
}

const changedConcurrently = (ringId: string): KeywardError =>
  new KeywardError('FailedPrecondition', `the state of ring id ${ringId} changed concurrently (another operator, CLI or janitor wrote it); retry`);

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
