// Notes which key versions a node-side component uses, in memory, and writes them per ring to the
// HSM as a KeyUseRecord (keyUseRecords.ts) for the operator. Noting a use is a Map update and
// never does I/O or throws: the KMS plugin notes thousands of calls a second. Writes happen on a
// timer: every `flushMs` when something changed; within about a second when a key id is used for
// the first time or Status reports a new key id (the operator waits for that before it
// re-encrypts etcd), but never more than once a second per ring; and every `heartbeatMs` anyway,
// so a live writer shows by its updatedAt. A failed write is retried on the next tick.
import { hostname } from 'node:os';
import { Counter, Gauge, type Registry } from 'prom-client';
import { maxRecordBytes } from '../hsm/hsmRecords.js';
import type { Logger } from '../observability/logger.js';
import type { KeyUseComponent, KeyUseRecord, KeyUseRecords, VersionUse } from './keyUseRecords.js';

export interface KeyUseRecorderOptions {
  component: KeyUseComponent;
  /** The node name; see keyUseHost. */
  host: string;
  log: Logger;
  /** The component's metrics registry, for write failures and the last write time. */
  registry?: Registry;
  /** A changed record is written at most this late (default 15 s). */
  flushMs?: number;
  /** An unchanged record is rewritten this often (default 60 s). */
  heartbeatMs?: number;
  /** The timer's period, and the least time between two writes of one ring (default 1 s). */
  tickMs?: number;
  /** Versions kept per ring (default 1000, a ring's most). */
  maxVersionsPerRing?: number;
  /** Rings kept (default 1000). */
  maxRings?: number;
  now?: () => number;
}

/** When each use last happened, in ms; 0 for never. */
interface VersionTimes {
  encrypt: number;
  decrypt: number;
  use: number;
}

interface RingUse {
  ringId: string;
  versions: Map<string, VersionTimes>;
  statusKeyId: string | undefined;
  lastStatusAt: number;
  /** Something changed since the last write. */
  dirty: boolean;
  /** A change the operator waits for: written on the next tick. */
  urgent: boolean;
  attemptedAt: number;
  writtenAt: number;
  /** The record a previous run of this process left has been merged in (a restart keeps history). */
  resumed: boolean;
}

type UseKind = keyof VersionTimes;

/** Room left in a record for its envelope, ring id, host and status fields. */
const recordOverheadBytes = 2048;

/** The host a component reports: the name given (--node-name), else NODE_NAME, else the hostname. */
export function keyUseHost(given?: string): string {
  return given || process.env.NODE_NAME || hostname();
}

/** The record writer's name, `component@host`, within the HSM label's alphabet and length. */
export function keyUseWriter(component: KeyUseComponent, host: string): string {
  return `${component}@${host.replace(/[^A-Za-z0-9._:-]/g, '-')}`.slice(0, 128);
}

export class KeyUseRecorder {
  private readonly rings = new Map<string, RingUse>();
  private readonly writer: string;
  private readonly flushMs: number;
  private readonly heartbeatMs: number;
  private readonly tickMs: number;
  private readonly maxVersions: number;
  private readonly maxRings: number;
  private readonly now: () => number;
  private readonly failures: Counter | undefined;
  private readonly lastWrite: Gauge | undefined;
  private timer: NodeJS.Timeout | undefined;
  private wake: NodeJS.Timeout | undefined;
  private wakeAt: number | undefined;
  private flushing: Promise<void> | undefined;
  private failing = false;
  private capWarned = false;
  private stopped = false;

  constructor(
    private readonly records: Pick<KeyUseRecords, 'writeUse' | 'uses'>,
    private readonly options: KeyUseRecorderOptions,
  ) {
    this.writer = keyUseWriter(options.component, options.host);
    this.flushMs = options.flushMs ?? 15_000;
    this.heartbeatMs = options.heartbeatMs ?? 60_000;
    this.tickMs = options.tickMs ?? 1000;
    this.maxVersions = options.maxVersionsPerRing ?? 1000;
    this.maxRings = options.maxRings ?? 1000;
    this.now = options.now ?? Date.now;
    if (options.registry) {
      this.failures = new Counter({
        name: 'keyward_key_use_write_failures_total',
        help: 'Key-use records that could not be written to the HSM (retried on the next tick).',
        registers: [options.registry],
      });
      this.lastWrite = new Gauge({
        name: 'keyward_key_use_last_write_timestamp_seconds',
        help: 'When a key-use record was last written to the HSM.',
        registers: [options.registry],
      });
    }
  }

  /** Starts the timer; the process may exit while it runs. */
  start(): void {
    if (this.timer || this.stopped) return;
    this.timer = setInterval(() => void this.flushDue(), this.tickMs);
    this.timer.unref();
  }

  /** Stops the timer and writes what changed, once. Never throws. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    clearTimeout(this.wake);
    await this.flushing;
    await this.write([...this.rings.values()].filter((ring) => ring.dirty));
  }

  /** Status answered with `keyId`, the key kube-apiserver is to encrypt with. */
  status(ringId: string, keyId: string): void {
    const ring = this.ring(ringId);
    if (!ring) return;
    ring.lastStatusAt = this.now();
    ring.dirty = true;
    if (ring.statusKeyId !== keyId) {
      ring.statusKeyId = keyId;
      this.urge(ring);
    }
  }

  encrypted(ringId: string, keyId: string): void {
    this.note(ringId, keyId, 'encrypt');
  }

  decrypted(ringId: string, keyId: string): void {
    this.note(ringId, keyId, 'decrypt');
  }

  /** Any other use: a key derived with the version, a sealed secret opened with it. */
  used(ringId: string, keyId: string): void {
    this.note(ringId, keyId, 'use');
  }

  /** Writes every ring that is due now; the timer calls this, tests may too. Never throws. */
  flushDue(): Promise<void> {
    if (this.flushing || this.stopped) return this.flushing ?? Promise.resolve();
    const now = this.now();
    const due = [...this.rings.values()].filter((ring) => {
      const sinceAttempt = now - ring.attemptedAt;
      if (sinceAttempt < this.tickMs) return false;
      return (ring.urgent && ring.dirty) || (ring.dirty && now - ring.writtenAt >= this.flushMs) || now - ring.writtenAt >= this.heartbeatMs;
    });
    if (due.length === 0) return Promise.resolve();
    this.flushing = this.write(due).finally(() => {
      this.flushing = undefined;
      // Urged while this write ran, or failed: not left for a later tick.
      for (const ring of this.rings.values()) if (ring.urgent) this.wakeFor(ring);
    });
    return this.flushing;
  }

  private note(ringId: string, keyId: string, kind: UseKind): void {
    const ring = this.ring(ringId);
    if (!ring) return;
    let times = ring.versions.get(keyId);
    if (!times) {
      if (ring.versions.size >= this.maxVersions) this.evictLeastRecent(ring);
      times = { encrypt: 0, decrypt: 0, use: 0 };
      ring.versions.set(keyId, times);
      this.urge(ring);
    }
    times[kind] = this.now();
    ring.dirty = true;
  }

  private ring(ringId: string): RingUse | undefined {
    let ring = this.rings.get(ringId);
    if (ring) return ring;
    if (this.rings.size >= this.maxRings) {
      if (!this.capWarned) this.options.log.warn({ maxRings: this.maxRings }, 'key use of more rings than the recorder keeps: the others are not recorded');
      this.capWarned = true;
      return undefined;
    }
    ring = { ringId, versions: new Map(), statusKeyId: undefined, lastStatusAt: 0, dirty: true, urgent: false, attemptedAt: -Infinity, writtenAt: -Infinity, resumed: false };
    this.rings.set(ringId, ring);
    return ring;
  }

  /** Makes room by forgetting the version used least recently (only at the cap, so rarely). */
  private evictLeastRecent(ring: RingUse): void {
    let oldest: [string, number] | undefined;
    for (const [keyId, times] of ring.versions) {
      const last = Math.max(times.encrypt, times.decrypt, times.use);
      if (!oldest || last < oldest[1]) oldest = [keyId, last];
    }
    if (oldest) ring.versions.delete(oldest[0]);
  }

  private urge(ring: RingUse): void {
    ring.urgent = true;
    ring.dirty = true;
    this.wakeFor(ring);
  }

  /** A flush as soon as the ring may be written again, rather than on a later tick: the operator is waiting. */
  private wakeFor(ring: RingUse): void {
    if (!this.timer || this.stopped) return;
    const now = this.now();
    // A few ms late, so a timer firing early does not find the ring still too recent.
    const at = Math.max(now, ring.attemptedAt + this.tickMs + 5);
    if (this.wakeAt !== undefined && this.wakeAt <= at) return;
    clearTimeout(this.wake);
    this.wakeAt = at;
    this.wake = setTimeout(() => {
      this.wakeAt = undefined;
      void this.flushDue();
    }, at - now);
    this.wake.unref();
  }

  private async write(rings: RingUse[]): Promise<void> {
    for (const ring of rings) {
      const wasUrgent = ring.urgent;
      ring.dirty = false;
      ring.urgent = false;
      ring.attemptedAt = this.now();
      try {
        if (!ring.resumed) await this.resume(ring);
        await this.records.writeUse(this.record(ring), this.writer);
        ring.writtenAt = ring.attemptedAt;
        this.lastWrite?.set(ring.writtenAt / 1000);
        if (this.failing) this.options.log.info({ ringId: ring.ringId }, 'key-use records are written again');
        this.failing = false;
      } catch (err) {
        // Kept for the next tick; logged once per outage.
        ring.dirty = true;
        ring.urgent ||= wasUrgent;
        this.failures?.inc();
        if (!this.failing) this.options.log.warn({ ringId: ring.ringId, reason: (err as Error).message }, 'key-use record not written to the HSM; retrying every tick');
        this.failing = true;
      }
    }
  }

  /** Takes in the uses this writer recorded before it restarted, so the last use of a version is not lost. */
  private async resume(ring: RingUse): Promise<void> {
    const previous = (await this.records.uses(ring.ringId)).find((r) => r.component === this.options.component && r.host === this.options.host);
    for (const [keyId, use] of Object.entries(previous?.versions ?? {})) {
      const times = ring.versions.get(keyId) ?? { encrypt: 0, decrypt: 0, use: 0 };
      const at = (iso: string | undefined): number => (iso && Number.isFinite(Date.parse(iso)) ? Date.parse(iso) : 0);
      times.encrypt = Math.max(times.encrypt, at(use.lastEncryptAt));
      times.decrypt = Math.max(times.decrypt, at(use.lastDecryptAt));
      times.use = Math.max(times.use, at(use.lastUseAt));
      if (!ring.versions.has(keyId) && ring.versions.size < this.maxVersions) ring.versions.set(keyId, times);
    }
    ring.resumed = true;
  }

  /** The ring's record, its most recently used versions first when they do not all fit. */
  private record(ring: RingUse): KeyUseRecord {
    const iso = (ms: number): string => new Date(ms).toISOString();
    const entries = [...ring.versions].map(([keyId, t]) => ({ keyId, t, last: Math.max(t.encrypt, t.decrypt, t.use) })).sort((a, b) => b.last - a.last);
    const versions: Record<string, VersionUse> = {};
    let bytes = recordOverheadBytes;
    let omitted = 0;
    for (const { keyId, t } of entries) {
      const use: VersionUse = {};
      if (t.encrypt > 0) use.lastEncryptAt = iso(t.encrypt);
      if (t.decrypt > 0) use.lastDecryptAt = iso(t.decrypt);
      if (t.use > 0) use.lastUseAt = iso(t.use);
      const size = keyId.length + JSON.stringify(use).length + 4;
      if (bytes + size > maxRecordBytes) {
        omitted++;
        continue;
      }
      bytes += size;
      versions[keyId] = use;
    }
    return {
      schema: 1,
      ringId: ring.ringId,
      component: this.options.component,
      host: this.options.host,
      updatedAt: new Date(this.now()).toISOString(),
      ...(ring.statusKeyId !== undefined ? { statusKeyId: ring.statusKeyId, lastStatusAt: iso(ring.lastStatusAt) } : {}),
      versions,
      ...(omitted > 0 ? { omittedVersions: omitted } : {}),
    };
  }
}
