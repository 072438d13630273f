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

export class RingStore {
  constructor(private readonly token: HsmToken) {}

  private findObjects(session: Handle, template: pkcs11js.Template): Handle[] {
    const pkcs11 = this.token.pkcs11;
    pkcs11.C_FindObjectsInit(session, template);
    try {
      return pkcs11.C_FindObjects(session, 1000);
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

  /** Creates a ring with version 1 primary. Idempotent for a given ringId. */
  async create(spec: { name: string; namespace?: string; ringId?: string }): Promise<RingState> {
    const ringId = spec.ringId ?? randomUUID();
    const existing = spec.ringId ? await this.get({ ringId }) : await this.get({ name: spec.name, namespace: spec.namespace ?? '' });
    if (existing) {
      if (spec.ringId) return existing;
      throw new KeywardError('FailedPrecondition', `${describe({ name: spec.name, namespace: spec.namespace ?? '' })} already exists`);
    }
    const now = new Date().toISOString();
    const version = await this.generateVersion(ringId, 1, now);
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
      versions: [version],
    };
    await this.token.withSession((session) => this.writeState(session, ring));
    return ring;
  }

  /** Generates the next version in the HSM and makes it primary. */
  async rotate(ref: RingRef): Promise<RingState> {
    const ring = await this.require(ref);
    const next = Math.max(...ring.versions.map((v) => v.number)) + 1;
    const version = await this.generateVersion(ring.ringId, next, new Date().toISOString());
    return this.save({ ...ring, primary: next, versions: [...ring.versions, version] });
  }

  /** Moves a version along its lifecycle; the primary can be neither disabled nor destroyed. */
  async setVersionState(ref: RingRef, number: number, state: VersionState): Promise<RingState> {
    const ring = await this.require(ref);
    const version = ring.versions.find((v) => v.number === number);
    if (!version) throw new KeywardError('NotFound', `${describe(ref)} has no version ${number}`);
    if (version.state === state) return ring;
    if (!allowedTransitions[version.state].includes(state)) {
      throw new KeywardError('FailedPrecondition', `version ${number} is ${version.state}; it cannot become ${state}`);
    }
    if (number === ring.primary && state !== 'Enabled') {
      throw new KeywardError('FailedPrecondition', `version ${number} is the primary; rotate before disabling it`);
    }
    if (state === 'Destroyed') await this.destroyKey(ring.ringId, number);
    const now = new Date().toISOString();
    return this.save({
      ...ring,
      versions: ring.versions.map((v) => (v.number === number ? { ...v, state, stateChangedAt: now } : v)),
    });
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

  /** Generates a version's key unless a previous, interrupted attempt already did. */
  private async generateVersion(ringId: string, number: number, now: string): Promise<RingVersion> {
    if ((await this.keyHandle(ringId, number)) === undefined) {
      await generateAesKey(this.token, { label: keyObjectLabel(ringId, number), id: keyObjectId(ringId, number) });
    }
    return { number, state: 'Enabled', keyId: keyIdFor(ringId, number), createdAt: now, stateChangedAt: now };
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
