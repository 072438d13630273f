// The KMS plugin's view of its ring, refreshed from the HSM every few seconds: which version is
// primary, the key handle of every version, and whether a real encrypt+decrypt round trip with
// the primary works. During an HSM outage the last good view is kept, so Status keeps its key_id.
import { randomBytes } from 'node:crypto';
import { KeywardError } from '../../core/errors.js';
import { aesGcmDecrypt, aesGcmEncrypt } from '../../core/hsm/aesGcm.js';
import type { Handle, HsmToken } from '../../core/hsm/hsmToken.js';
import { WorkingKeys } from '../../core/hsm/workingKeys.js';
import type { RingStore } from '../../core/hsm/ringStore.js';
import { assertRingAlgorithm, primaryVersion, type RingRef, type RingState, type RingVersion } from '../../core/hsm/ringState.js';

export interface VersionView {
  version: RingVersion;
  /** The key to compute with (a working copy for enabled versions); undefined once destroyed. */
  handle: Handle | undefined;
}

export interface RingSnapshot {
  ring: RingState;
  primary: VersionView & { handle: Handle };
  byKeyId: ReadonlyMap<string, VersionView>;
  loadedAt: number;
  /** The HSM sessions the handles belong to (see HsmToken.sessionGeneration). */
  sessions: string;
}

export interface RingHealth {
  ok: boolean;
  /** "ok", or a short reason. */
  reason: string;
  checkedAt: number;
}

export interface RingViewOptions {
  refreshMs?: number;
  /** A health result older than this no longer counts as healthy. */
  healthTtlMs?: number;
}

/** A version of a ring released from the plugin's ring name: for Decrypt of what it sealed, only. */
export interface ReleasedVersion {
  ring: RingState;
  view: VersionView;
}

/** Released versions looked up, at most: a lookup searches the token, so its answer is kept. */
const maxReleasedVersions = 64;

export class RingView {
  private current: RingSnapshot | undefined;
  private released = new Map<string, ReleasedVersion | undefined>();
  private releasedSessions = '';
  private lastHealth: RingHealth = { ok: false, reason: 'not checked yet', checkedAt: 0 };
  private timer: NodeJS.Timeout | undefined;
  private refreshing: Promise<void> | undefined;
  private readonly refreshMs: number;
  private readonly healthTtlMs: number;
  private readonly workingKeys: WorkingKeys;
  /** Called after every refresh; metrics hook in here. */
  onRefresh: (snapshot: RingSnapshot | undefined, health: RingHealth) => void = () => undefined;

  constructor(
    private readonly token: HsmToken,
    private readonly store: RingStore,
    private readonly ref: RingRef,
    options: RingViewOptions = {},
  ) {
    this.refreshMs = options.refreshMs ?? 2000;
    this.healthTtlMs = options.healthTtlMs ?? 3 * this.refreshMs + 1000;
    this.workingKeys = new WorkingKeys(token);
  }

  /** Loads once, then keeps refreshing in the background; never fails (an outage is a health state). */
  async start(): Promise<void> {
    await this.refresh();
    const loop = (): void => {
      this.timer = setTimeout(() => void this.refresh().finally(loop), this.refreshMs);
      this.timer.unref();
    };
    loop();
  }

  stop(): void {
    clearTimeout(this.timer);
  }

  /** The last good view, even from before an outage: for Status and metrics. */
  snapshot(): RingSnapshot | undefined {
    return this.current;
  }

  /** The view to operate with: its key handles must belong to the module as it is now. */
  usableSnapshot(): RingSnapshot {
    const current = this.current;
    if (!current) throw new KeywardError('Unavailable', `the ring is not loaded: ${this.health().reason}`);
    if (current.sessions !== this.token.sessionGeneration) throw new KeywardError('Unavailable', 'the HSM connection is being re-established; retry');
    return current;
  }

  health(): RingHealth {
    const h = this.lastHealth;
    if (h.ok && Date.now() - h.checkedAt > this.healthTtlMs) {
      return { ok: false, reason: 'HSM health check is overdue', checkedAt: h.checkedAt };
    }
    return h;
  }

  /**
   * A version, named by its key id, of a ring that held this plugin's ring name before the name
   * passed to a new KeyRing's ring. Encryption only ever uses the ring holding the name; what the
   * old ring sealed stays readable while its keys are kept (deletionPolicy Retain), so Secrets
   * written before the KeyRing was re-created are not lost.
   */
  async releasedVersion(keyId: string): Promise<ReleasedVersion | undefined> {
    if (!('name' in this.ref)) return undefined;
    if (this.releasedSessions !== this.token.sessionGeneration) {
      this.released = new Map();
      this.releasedSessions = this.token.sessionGeneration;
    }
    if (this.released.has(keyId)) return this.released.get(keyId);
    const { name, namespace = '' } = this.ref;
    let found: ReleasedVersion | undefined;
    for (const ring of await this.store.list()) {
      if (ring.released === undefined || ring.name !== name || ring.namespace !== namespace) continue;
      const version = ring.versions.find((v) => v.keyId === keyId);
      if (!version) continue;
      const handle = version.state === 'Destroyed' ? undefined : await this.store.keyHandle(ring.ringId, version.number);
      found = { ring, view: { version, handle } };
      break;
    }
    if (this.released.size >= maxReleasedVersions) this.released.delete(this.released.keys().next().value as string);
    this.released.set(keyId, found);
    return found;
  }

  /** Refreshes now; concurrent callers share one refresh. */
  refresh(): Promise<void> {
    this.refreshing ??= this.load().finally(() => (this.refreshing = undefined));
    return this.refreshing;
  }

  private async load(): Promise<void> {
    try {
      const sessions = this.token.sessionGeneration;
      // By id once known: a lookup by name searches the whole token (O(objects) in SoftHSM2). Once
      // the known ring is released from its name, the name is resolved again (RingStore.resolve).
      const known = this.current?.ring.ringId;
      const byId = known !== undefined ? await this.store.get({ ringId: known }) : undefined;
      // A released ring is managed by no one: it is never served again, not even as a last good view.
      if (byId?.released !== undefined) this.current = undefined;
      const ring = byId !== undefined && byId.released === undefined ? byId : await this.store.get(this.ref);
      if (!ring) throw new KeywardError('NotFound', 'the ring does not exist in the HSM');
      assertRingAlgorithm(ring, 'AES_256_GCM', 'the KMS plugin');
      const byKeyId = new Map<string, VersionView>();
      const enabledKeys: Handle[] = [];
      for (const version of ring.versions) {
        const tokenKey = version.state === 'Destroyed' ? undefined : await this.store.keyHandle(ring.ringId, version.number);
        if (tokenKey !== undefined && version.state === 'Enabled') {
          enabledKeys.push(tokenKey);
          byKeyId.set(version.keyId, { version, handle: await this.workingKeys.get(tokenKey) });
        } else {
          byKeyId.set(version.keyId, { version, handle: tokenKey });
        }
      }
      await this.workingKeys.retainOnly(enabledKeys);
      const primary = byKeyId.get(primaryVersion(ring).keyId);
      if (primary?.handle === undefined) throw new KeywardError('FailedPrecondition', `primary version ${ring.primary} has no key in the HSM`);
      await this.probe(primary.handle);
      if (sessions !== this.token.sessionGeneration) throw new KeywardError('Unavailable', 'the HSM sessions were reset during the refresh');
      this.current = { ring, primary: { ...primary, handle: primary.handle }, byKeyId, loadedAt: Date.now(), sessions };
      this.lastHealth = { ok: true, reason: 'ok', checkedAt: Date.now() };
    } catch (err) {
      this.lastHealth = { ok: false, reason: healthReason(err), checkedAt: Date.now() };
      // Some modules see a token that went away and came back only after re-initialising.
      this.token.recover();
    }
    this.onRefresh(this.current, this.lastHealth);
  }

  /** A real round trip through the HSM with the primary key, on random data. */
  private async probe(key: Handle): Promise<void> {
    const data = randomBytes(32);
    const aad = Buffer.from('keyward-health-probe');
    const back = await aesGcmDecrypt(this.token, key, await aesGcmEncrypt(this.token, key, data, aad), aad);
    if (!back.equals(data)) throw new KeywardError('Internal', 'HSM round trip returned different data');
  }
}

function healthReason(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return `HSM check failed: ${message}`.slice(0, 200);
}
