// A bounded cache whose entries expire: token reviews and HSM results are reused for a short,
// fixed time and never beyond it, so a revoked token or a rotated key is seen within the TTL.
// Concurrent loads of one key share a single call (many pods of one workload start at once).
// Bounded in entries and, with `weigh`, in bytes: an entry heavier than the whole budget is not
// kept at all (it would otherwise flush every other entry on its way through).

export interface TtlCacheOptions<K = unknown, V = unknown> {
  /** Upper bound on any entry's life; a loader may ask for less. */
  ttlMs: number;
  /** Past this many entries the oldest are dropped. */
  maxEntries: number;
  /** Past this total weight the oldest are dropped too (e.g. bytes, with `weigh`). */
  maxWeight?: number;
  /** An entry's weight: count the key as well when it is large. */
  weigh?: (value: V, key: K) => number;
  now?: () => number;
  /** Called with each entry that leaves the cache, to wipe key material. */
  onEvict?: (value: unknown) => void;
}

export interface Loaded<V> {
  value: V;
  /** Shorter life for this entry, in ms from now (e.g. a token that expires sooner). */
  ttlMs?: number;
}

export class TtlCache<K, V> {
  private readonly entries = new Map<K, { value: V; expiresAt: number; weight: number }>();
  private weight = 0;
  private readonly loading = new Map<K, Promise<V>>();
  private readonly now: () => number;

  constructor(private readonly options: TtlCacheOptions<K, V>) {
    this.now = options.now ?? Date.now;
  }

  get size(): number {
    return this.entries.size;
  }

  /** The entries' total weight (bytes, for the byte-bounded caches). */
  get totalWeight(): number {
    return this.weight;
  }

  /** The live entry for `key`, if any. */
  get(key: K): V | undefined {
    const entry = this.entries.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt > this.now()) return entry.value;
    this.delete(key);
    return undefined;
  }

  set(key: K, value: V, ttlMs = this.options.ttlMs): void {
    const life = Math.min(ttlMs, this.options.ttlMs);
    if (!(life > 0)) return;
    this.delete(key);
    const weight = this.options.weigh?.(value, key) ?? 0;
    if (weight > (this.options.maxWeight ?? Infinity)) return;
    this.entries.set(key, { value, expiresAt: this.now() + life, weight });
    this.weight += weight;
    while (this.entries.size > this.options.maxEntries || this.weight > (this.options.maxWeight ?? Infinity)) {
      const oldest = this.entries.keys().next().value as K;
      this.delete(oldest);
    }
  }

  delete(key: K): void {
    const entry = this.entries.get(key);
    if (!entry) return;
    this.entries.delete(key);
    this.weight -= entry.weight;
    this.options.onEvict?.(entry.value);
  }

  /** Drops every entry whose value matches; returns how many. */
  deleteWhere(matches: (value: V) => boolean): number {
    let dropped = 0;
    for (const [key, entry] of [...this.entries]) {
      if (!matches(entry.value)) continue;
      this.delete(key);
      dropped++;
    }
    return dropped;
  }

  clear(): void {
    for (const key of [...this.entries.keys()]) this.delete(key);
  }

  /**
   * The live entry, or the loader's result, cached. `hit` says which. A failed load is not cached:
   * the next call tries again.
   */
  async getOrLoad(key: K, load: () => Promise<Loaded<V>>): Promise<{ value: V; hit: boolean }> {
    const cached = this.get(key);
    if (cached !== undefined) return { value: cached, hit: true };
    let pending = this.loading.get(key);
    if (!pending) {
      pending = load().then(({ value, ttlMs }) => {
        this.set(key, value, ttlMs);
        return value;
      });
      this.loading.set(key, pending);
      const settled = (): void => {
        this.loading.delete(key);
      };
      pending.then(settled, settled);
    }
    return { value: await pending, hit: false };
  }
}
