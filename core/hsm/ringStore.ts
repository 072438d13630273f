// Key rings in the HSM: one private data object per ring holding its RingState (only readable
// after login; labels carry only the opaque ring id), and one AES-256 key object per version.
// The operator and the admin CLI write through this; the KMS plugin and CSI provider read.
import { randomUUID } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { KeywardError } from '../errors.js';
import { generateAesKey } from './aesGcm.js';
import type { Handle, HsmToken } from './hsmToken.js';
import {
  keyIdFor,
  keyObjectId,
  keyObjectLabel,
  parseKeyObjectLabel,
  parseRingState,
  ringObjectLabel,
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

export class RingStore {
  /** `now` stamps creation and state-change times; the operator passes its own clock. */
  constructor(
    private readonly token: HsmToken,
    private readonly now: () => Date = () => new Date(),
  ) {}

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
    const template: pkcs11js.Template = [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
      { type: pkcs11js.CKA_APPLICATION, value: ringApplication },
    ];
    if (ringId !== undefined) template.push({ type: pkcs11js.CKA_LABEL, value: ringObjectLabel(ringId) });
    return this.findObjects(session, template)
      .map((handle) => ({ handle, state: parseRingState(this.readValue(session, handle)) }))
      .sort((a, b) => b.state.revision - a.state.revision);
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
   * Creates a ring with version 1 primary. Idempotent for a given ringId: the ring is recorded with
   * version 1 PendingGeneration first, so a creation that dies half-way is finished by the next call.
   */
  async create(spec: { name: string; namespace?: string; ringId?: string }): Promise<RingState> {
    const ringId = spec.ringId ?? randomUUID();
    const existing = spec.ringId ? await this.get({ ringId }) : await this.get({ name: spec.name, namespace: spec.namespace ?? '' });
    if (existing) {
      if (spec.ringId) return this.finishPending(existing);
      throw new KeywardError('FailedPrecondition', `${describe({ name: spec.name, namespace: spec.namespace ?? '' })} already exists`);
    }
    const now = this.now().toISOString();
    const ring: RingState = {
      schema: 1,
      ringId,
      revision: 1,
      name: spec.name,
      namespace: spec.namespace ?? '',
      purpose: 'encryption',
      algorithm: 'AES_256_GCM',
      createdAt: now,
      primary: 1,
      versions: [pendingVersion(ringId, 1, now)],
    };
    await this.token.withSession((session) => this.writeState(session, ring));
    return this.finishPending(ring);
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
      for (const v of due) await this.destroyKey(ring.ringId, v.number);
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
    const labels = await this.token.withSession((session) =>
      this.findObjects(session, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY }]).map(
        (handle) => this.token.pkcs11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_LABEL }])[0]?.value?.toString('utf8') ?? '',
      ),
    );
    const rings = new Map((await this.list()).map((ring) => [ring.ringId, ring]));
    return labels
      .map(parseKeyObjectLabel)
      .filter((key): key is VersionRef => key !== undefined)
      .filter((key) => !rings.get(key.ringId)?.versions.some((v) => v.number === key.version && v.state !== 'Destroyed'));
  }

  /** The key object of one version, or undefined when it is gone. */
  async keyHandle(ringId: string, number: number): Promise<Handle | undefined> {
    return this.token.withSession(
      (session) =>
        this.findObjects(session, [
          { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
          { type: pkcs11js.CKA_ID, value: keyObjectId(ringId, number) },
        ])[0],
    );
  }

  /**
   * Generates the key of every PendingGeneration version, unless an interrupted attempt already
   * did (key object ids are deterministic), then enables it and makes the newest one primary.
   */
  private async finishPending(ring: RingState): Promise<RingState> {
    const pending = ring.versions.filter((v) => v.state === 'PendingGeneration');
    if (pending.length === 0) return ring;
    for (const { number } of pending) {
      if ((await this.keyHandle(ring.ringId, number)) === undefined) {
        await generateAesKey(this.token, { label: keyObjectLabel(ring.ringId, number), id: keyObjectId(ring.ringId, number) });
      }
    }
    const now = this.now().toISOString();
    return this.save({
      ...ring,
      primary: Math.max(ring.primary, ...pending.map((v) => v.number)),
      versions: ring.versions.map((v) => (v.state === 'PendingGeneration' ? { ...v, state: 'Enabled', stateChangedAt: now } : v)),
    });
  }

  private async destroyKey(ringId: string, number: number): Promise<void> {
    const handle = await this.keyHandle(ringId, number);
    if (handle !== undefined) await this.token.withSession((session) => this.token.pkcs11.C_DestroyObject(session, handle));
  }

  private writeState(session: Handle, ring: RingState): void {
    this.token.pkcs11.C_CreateObject(session, [
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
      this.writeState(session, next);
      for (const { handle } of existing) this.token.pkcs11.C_DestroyObject(session, handle);
      return next;
    });
  }
}

function pendingVersion(ringId: string, number: number, now: string): RingVersion {
  return { number, state: 'PendingGeneration', keyId: keyIdFor(ringId, number), createdAt: now, stateChangedAt: now };
}
