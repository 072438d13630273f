// Handles of ring state and key objects found or made before, so a known ring is reached without a
// search. Apart from the persistence because a handle here is only a hint, which every use checks.
import type { Handle, HsmToken } from './hsmToken.js';

/** The objects of one version: its secret or private key, and the public key of a key pair. */
export type KeyHalf = 'key' | 'public';

/**
 * SoftHSM2, like any module without an index, answers C_FindObjects by looking at every object of
 * the token (its file backend opens each object's file), so one search costs O(objects): about
 * 50 ms at 500 rings, against 0.1 ms to read one object by its handle. Every use of a handle from
 * here reads the object and checks it is the one expected; an object destroyed meanwhile, by any
 * process, fails that read and sends the caller back to a search, which refreshes what it finds.
 * Bounded by the objects seen: entries go when their objects are found gone, and all go with the
 * sessions they were found under.
 */
export class ObjectHandleCache {
  private sessions = '';
  /** Every state object (revision) of a ring seen. */
  private readonly states = new Map<string, Handle[]>();
  /** Key objects by `ringId/version` (the secret or private key) and `ringId/version/public`. */
  private readonly keys = new Map<string, Handle>();

  constructor(private readonly token: Pick<HsmToken, 'sessionGeneration'>) {}

  stateHandles(ringId: string): Handle[] | undefined {
    return this.current().states.get(ringId);
  }

  rememberState(ringId: string, handle: Handle): void {
    const { states } = this.current();
    states.set(ringId, [...(states.get(ringId) ?? []), handle]);
  }

  replaceStates(ringId: string, handles: Handle[]): void {
    this.current().states.set(ringId, handles);
  }

  /** Forgets the state objects of one ring, or of every ring. */
  forgetStates(ringId?: string): void {
    if (ringId === undefined) this.current().states.clear();
    else this.current().states.delete(ringId);
  }

  keyObject(ringId: string, number: number, half: KeyHalf): Handle | undefined {
    return this.current().keys.get(keyName(ringId, number, half));
  }

  rememberKeyObject(ringId: string, number: number, half: KeyHalf, handle: Handle): void {
    this.current().keys.set(keyName(ringId, number, half), handle);
  }

  forgetKeyObject(ringId: string, number: number, half: KeyHalf): void {
    this.current().keys.delete(keyName(ringId, number, half));
  }

  /** This cache, emptied first when the token's sessions were closed since it was filled. */
  private current(): this {
    const sessions = this.token.sessionGeneration;
    if (this.sessions !== sessions) {
      this.states.clear();
      this.keys.clear();
      this.sessions = sessions;
    }
    return this;
  }
}

const keyName = (ringId: string, number: number, half: KeyHalf): string => (half === 'key' ? `${ringId}/${number}` : `${ringId}/${number}/public`);
