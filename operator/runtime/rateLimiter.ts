// How long a failed key waits before its next try. The controller default combines a per-key
// exponential backoff (one broken object backs off alone) with an overall token bucket (a storm of
// failures cannot flood the apiserver or the HSM), taking the longer of the two, as client-go does.

export interface RateLimiter {
  /** Milliseconds the key should wait before its next try; each call counts as one more failure. */
  when(key: string): number;
  /** Clears the key's failure history (after a success). */
  forget(key: string): void;
  /** Failures recorded for the key since it was last forgotten. */
  retries(key: string): number;
}

export interface ExponentialBackoffOptions {
  baseDelayMs?: number;
  maxDelayMs?: number;
}

/** base, 2·base, 4·base, ... per key, capped at maxDelayMs. Defaults: 5 ms up to 5 min. */
export function exponentialBackoff({ baseDelayMs = 5, maxDelayMs = 300_000 }: ExponentialBackoffOptions = {}): RateLimiter {
  const failures = new Map<string, number>();
  return {
    when(key) {
      const count = failures.get(key) ?? 0;
      failures.set(key, count + 1);
      // 2^count overflows to Infinity long after the cap is reached; min keeps it finite.
      return Math.min(maxDelayMs, baseDelayMs * 2 ** Math.min(count, 62));
    },
    forget(key) {
      failures.delete(key);
    },
    retries(key) {
      return failures.get(key) ?? 0;
    },
  };
}

export interface TokenBucketOptions {
  perSecond?: number;
  burst?: number;
  /** Monotonic milliseconds; injectable so tests need no wall clock. */
  now?: () => number;
}

/**
 * One bucket for all keys: `burst` tries at once, then `perSecond`. Each call reserves a token,
 * possibly one not yet refilled, and returns how long until it is. Defaults: 10/s, burst 100.
 */
export function tokenBucket({ perSecond = 10, burst = 100, now = () => performance.now() }: TokenBucketOptions = {}): RateLimiter {
  let tokens = burst;
  let last = now();
  return {
    when() {
      const t = now();
      tokens = Math.min(burst, tokens + ((t - last) / 1000) * perSecond) - 1;
      last = t;
      return tokens >= 0 ? 0 : (-tokens / perSecond) * 1000;
    },
    forget() {},
    retries() {
      return 0;
    },
  };
}

/** The longest wait any of the limiters asks for; every limiter records every failure. */
export function maxOf(...limiters: RateLimiter[]): RateLimiter {
  return {
    when: (key) => Math.max(0, ...limiters.map((l) => l.when(key))),
    forget: (key) => limiters.forEach((l) => l.forget(key)),
    retries: (key) => Math.max(0, ...limiters.map((l) => l.retries(key))),
  };
}

/** Per key 5 ms doubling to 5 min, overall 10 tries/s with a burst of 100. */
export function defaultControllerRateLimiter(): RateLimiter {
  return maxOf(exponentialBackoff(), tokenBucket());
}
