// What the provider reads from the HSM for a mount: rings by name, keys derived for a workload
// (data keys, and volume keys for fscrypt), sealed secrets opened, public keys. Ring states come
// from one listing of the token, refreshed at most every `ringRefreshMs` (default 2 s) while
// mounts arrive, so a rotation reaches the next mount within that time and ring lookups cost no
// HSM call per mount. Derived keys and opened secrets are kept in memory for `materialTtlMs`
// (default 5 min, never longer), so a workload that remounts every minute costs the HSM about one
// call per object per TTL; public keys, which are not secret and never change for a version, are
// kept as long as the version lives.
import { createHash } from 'node:crypto';
import { KeywardError } from '../../core/errors.js';
import { counterModeKey, deriveKey, derivedKeyBytes } from '../../core/hsm/hmacDerivation.js';
import { pkcs11Code, type Handle, type HsmToken } from '../../core/hsm/hsmToken.js';
import { resolveName } from '../../core/hsm/ringLifecycle.js';
import type { RingStore } from '../../core/hsm/ringStore.js';
import type { RingState, RingVersion } from '../../core/hsm/ringState.js';
import { openSealedSecret } from '../../core/formats/sealedSecret.js';
import { TtlCache } from './ttlCache.js';

export interface KeyMaterialOptions {
  ringRefreshMs?: number;
  materialTtlMs?: number;
  maxEntries?: number;
  /** Bytes of derived keys and opened secrets kept at most (default 16 MiB). */
  maxBytes?: number;
  now?: () => number;
}

/** HSM calls made for one mount, for the calls-per-mount metric. */
export interface HsmCallCount {
  hsmCalls: number;
}

/** Bytes of a data key: the first 256 bits of the HMAC-SHA-384 output, an AES-256 key. */
export const dataKeyBytes = 32;
const dataKeyDomain = 'keyward.dev/csi/data-key/v1';
/** Bytes of a volume key: fscrypt v2's AES-256-XTS takes two 256-bit keys. */
export const volumeKeyBytes = 64;
/**
 * The SP 800-108 label of volume keys. Every HMAC input of a volume key starts with its block
 * counter (00 00 00 01 or 02) and every data key's with its domain's length (00 00 00 1b), so no
 * volume key is computed from the same input as any data key, of any workload or name.
 */
export const volumeKeyLabel = 'keyward.dev/csi/volume-key/v1';
/** Whose key it is: every pod of a namespace's ServiceAccount gets the same key for a name. */
export interface Workload {
  namespace: string;
  serviceAccountName: string;
  objectName: string;
}
/** A ring name that was not found triggers a fresh listing at most this often. */
const missRefreshMs = 250;

export class KeyMaterial {
  private rings: readonly RingState[] = [];
  private listedAt = -Infinity;
  private listing: Promise<void> | undefined;
  private readonly ringRefreshMs: number;
  private readonly now: () => number;
  private readonly secrets: TtlCache<string, Buffer>;
  private readonly publicKeys: TtlCache<string, Buffer>;

  constructor(
    private readonly token: HsmToken,
    private readonly store: RingStore,
    options: KeyMaterialOptions = {},
  ) {
    this.ringRefreshMs = options.ringRefreshMs ?? 2000;
    this.now = options.now ?? Date.now;
    const wipe = (value: unknown): void => void (value as Buffer).fill(0);
    const maxEntries = options.maxEntries ?? 50_000;
    // Bounded in bytes too: opened secrets may be 64 KiB each, and the DaemonSet has 100 MiB. An
    // entry costs its bytes, the Buffer's header and its key (a ring id and a digest, under 200).
    const weigh = (value: Buffer): number => value.length + 256;
    this.secrets = new TtlCache({ ttlMs: options.materialTtlMs ?? 5 * 60_000, maxEntries, maxWeight: options.maxBytes ?? 16 * 1024 * 1024, weigh, now: this.now, onEvict: wipe });
    this.publicKeys = new TtlCache({ ttlMs: 24 * 60 * 60_000, maxEntries, maxWeight: 2 * 1024 * 1024, weigh, now: this.now });
  }

  /** Cached secret entries (derived keys and opened secrets); a gauge. */
  get cachedSecrets(): number {
    return this.secrets.size;
  }

  /**
   * The ring `namespace/name` means, by the rule every component uses (resolveName): the ring
   * holding the name, so a name reused after a KeyRing's deletion means the new KeyRing's ring.
   */
  async ring(namespace: string, name: string, calls: HsmCallCount): Promise<RingState | undefined> {
    const now = this.now();
    if (now - this.listedAt >= this.ringRefreshMs) await this.list(calls);
    let ring = resolveName(this.rings, name, namespace);
    if (!ring && this.now() - this.listedAt >= missRefreshMs) {
      await this.list(calls);
      ring = resolveName(this.rings, name, namespace);
    }
    return ring;
  }

  private list(calls: HsmCallCount): Promise<void> {
    this.listing ??= (async () => {
      try {
        calls.hsmCalls++;
        this.rings = await this.guard(() => this.store.list());
        this.listedAt = this.now();
      } finally {
        this.listing = undefined;
      }
    })();
    return this.listing;
  }

  /**
   * HMAC-SHA-384 in the HSM under `version` of a derivation ring, over a context naming the
   * namespace, the ServiceAccount and the object: the same for every pod of that workload, and
   * unrelated for any other. The caller gets its own copy.
   */
  async dataKey(ring: RingState, version: RingVersion, workload: Workload, calls: HsmCallCount): Promise<{ key: Buffer; hit: boolean }> {
    const context = lengthPrefixed([dataKeyDomain, workload.namespace, workload.serviceAccountName, workload.objectName]);
    return this.derived(`dataKey/${ring.ringId}/${version.number}/${digest(context)}`, ring, version, calls, async (handle) => {
      calls.hsmCalls++;
      const derived = await this.guard(() => deriveKey(this.token, handle, context));
      const key = Buffer.from(derived.subarray(0, dataKeyBytes));
      derived.fill(0);
      return key;
    });
  }

  /**
   * 64 bytes in SP 800-108 counter mode under `version` of a derivation ring (two HMAC-SHA-384
   * calls in the HSM), with the volume-key label and a context naming the namespace, the
   * ServiceAccount and the object: per workload like a data key, and unrelated to every data key.
   */
  async volumeKey(ring: RingState, version: RingVersion, workload: Workload, calls: HsmCallCount): Promise<{ key: Buffer; hit: boolean }> {
    const context = lengthPrefixed([workload.namespace, workload.serviceAccountName, workload.objectName]);
    return this.derived(`volumeKey/${ring.ringId}/${version.number}/${digest(context)}`, ring, version, calls, async (handle) => {
      calls.hsmCalls += Math.ceil(volumeKeyBytes / derivedKeyBytes);
      return this.guard(() => counterModeKey(this.token, handle, volumeKeyLabel, context, volumeKeyBytes));
    });
  }

  /** A derived key from the secrets cache, or made with the version's key handle; the caller gets its own copy. */
  private async derived(cacheKey: string, ring: RingState, version: RingVersion, calls: HsmCallCount, derive: (handle: Handle) => Promise<Buffer>): Promise<{ key: Buffer; hit: boolean }> {
    const { value, hit } = await this.secrets.getOrLoad(cacheKey, async () => ({ value: await derive(await this.keyHandle(ring, version, calls)) }));
    return { key: Buffer.from(value), hit };
  }

  /** Opens a sealed secret (core/formats/sealedSecret.ts) with the ring's key, in the HSM. */
  async secret(ring: RingState, sealed: Uint8Array, calls: HsmCallCount): Promise<{ plaintext: Buffer; hit: boolean }> {
    // The ring's revision is part of the key: a version disabled since is seen at once.
    const cacheKey = `secret/${ring.ringId}/${ring.revision}/${digest(sealed)}`;
    const { value, hit } = await this.secrets.getOrLoad(cacheKey, async () => {
      calls.hsmCalls++;
      return { value: await this.guard(() => openSealedSecret(this.token, this.store, ring, sealed)) };
    });
    return { plaintext: Buffer.from(value), hit };
  }

  /** The SubjectPublicKeyInfo (DER) of a version of a ring with a public half. */
  async publicKey(ring: RingState, version: RingVersion, calls: HsmCallCount): Promise<{ der: Buffer; hit: boolean }> {
    const { value, hit } = await this.publicKeys.getOrLoad(`${ring.ringId}/${version.number}`, async () => {
      calls.hsmCalls++;
      const der = await this.guard(() => this.store.publicKey(ring.ringId, version.number));
      if (!der) throw new KeywardError('FailedPrecondition', `version ${version.number} of ring '${ring.name}' has no public key in the HSM`);
      return { value: der };
    });
    return { der: value, hit };
  }

  private async keyHandle(ring: RingState, version: RingVersion, calls: HsmCallCount) {
    calls.hsmCalls++;
    const handle = await this.guard(() => this.store.keyHandle(ring.ringId, version.number));
    if (handle === undefined) throw new KeywardError('FailedPrecondition', `version ${version.number} of ring '${ring.name}' has no key in the HSM`);
    return handle;
  }

  /** After the module failed, the next call reconnects (some modules need re-initialising). */
  private async guard<T>(step: () => Promise<T>): Promise<T> {
    try {
      return await step();
    } catch (err) {
      if (pkcs11Code(err) !== undefined || (err instanceof KeywardError && err.code === 'Unavailable')) this.token.recover();
      throw err;
    }
  }
}

function lengthPrefixed(fields: readonly string[]): Buffer {
  return Buffer.concat(
    fields.flatMap((field) => {
      const data = Buffer.from(field, 'utf8');
      const length = Buffer.alloc(4);
      length.writeUInt32BE(data.length);
      return [length, data];
    }),
  );
}

const digest = (data: Uint8Array): string => createHash('sha256').update(data).digest('base64url');
