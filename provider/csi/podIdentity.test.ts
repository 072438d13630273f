// PodIdentity's own logic, with the TokenReview answer scripted: which review outcomes become
// which refusals, and how long a review is reused (including through an apiserver outage).
// The real TokenReview path runs in e2e/csi/csiProvider.test.ts.
import assert from 'node:assert/strict';
import type { ClaimedPod, PodToken } from './mountRequest.js';
import { PodIdentity, type TokenReviewOutcome } from './podIdentity.js';
import { TtlCache } from './ttlCache.js';

const audience = 'keyward';
const pod: ClaimedPod = { namespace: 'shop', name: 'web-1', uid: '0b4c6a1e-1111-2222-3333-444455556666', serviceAccountName: 'app' };
const bound: TokenReviewOutcome = {
  authenticated: true,
  audiences: [audience],
  username: 'system:serviceaccount:shop:app',
  groups: ['system:serviceaccounts', 'system:serviceaccounts:shop', 'system:authenticated'],
  extra: { 'authentication.kubernetes.io/pod-name': ['web-1'], 'authentication.kubernetes.io/pod-uid': [pod.uid] },
};

function jwt(claims: object): string {
  const part = (o: object): string => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${part({ alg: 'RS256' })}.${part(claims)}.c2lnbmF0dXJl`;
}

function token(claims: object = { aud: [audience], exp: Math.floor((clock + 3600_000) / 1000) }, expiresAt = new Date(clock + 3600_000)): PodToken {
  const t = { audience, expiresAt, source: 'attributes' as const };
  Object.defineProperty(t, 'value', { value: jwt(claims), enumerable: false });
  return t as PodToken;
}

let clock = Date.parse('2026-11-23T10:00:00Z');

describe('CSI pod identity: TokenReview bound to the pod', () => {
  let answer: TokenReviewOutcome | Error;
  let reviews: number;
  const identity = (ttlMs = 300_000): PodIdentity =>
    new PodIdentity(
      () => {
        reviews++;
        return answer instanceof Error ? Promise.reject(answer) : Promise.resolve(answer);
      },
      { audience, ttlMs, now: () => clock },
    );

  beforeEach(() => {
    answer = bound;
    reviews = 0;
  });

  it('accepts a token the apiserver binds to the claimed pod, as the policy requester', async () => {
    const result = await identity().verify(token(), pod);
    assert.ok(result.ok);
    assert.equal(result.pod.serviceAccountName, 'app');
    assert.deepEqual(result.pod.requester, { username: bound.username, groups: bound.groups });
  });

  const refusals: [string, Partial<TokenReviewOutcome>, ClaimedPod, string][] = [
    ['not authenticated (forged, revoked, pod deleted)', { authenticated: false, error: 'invalid bearer token' }, pod, 'TokenNotAuthenticated'],
    ['authenticated for another audience', { audiences: ['https://kubernetes.default.svc'] }, pod, 'TokenWrongAudience'],
    ["a user's token", { username: 'alice' }, pod, 'TokenNotPodBound'],
    ['a ServiceAccount token bound to no pod', { extra: {} }, pod, 'TokenNotPodBound'],
    ['attributes claiming another ServiceAccount', {}, { ...pod, serviceAccountName: 'admin' }, 'IdentityMismatch'],
    ['attributes claiming another namespace', {}, { ...pod, namespace: 'kube-system' }, 'IdentityMismatch'],
    ['attributes naming another pod', {}, { ...pod, name: 'web-2' }, 'TokenForAnotherPod'],
    ['attributes with another pod uid', {}, { ...pod, uid: '99999999-1111-2222-3333-444455556666' }, 'TokenForAnotherPod'],
  ];
  for (const [what, outcome, claimed, code] of refusals) {
    it(`refuses ${what} with ${code}`, async () => {
      answer = { ...bound, ...outcome };
      const result = await identity().verify(token(), claimed);
      assert.equal(result.ok, false);
      assert.equal(!result.ok && result.code, code);
      assert.ok(!result.ok && !result.message.includes(token().value), 'the message never quotes the token');
    });
  }

  it('refuses an expired token, or one for another audience, without asking the apiserver', async () => {
    const expired = await identity().verify(token(undefined, new Date(clock - 1000)), pod);
    assert.equal(!expired.ok && expired.code, 'TokenExpired');
    const expiredClaim = await identity().verify(token({ aud: [audience], exp: Math.floor(clock / 1000) - 5 }), pod);
    assert.equal(!expiredClaim.ok && expiredClaim.code, 'TokenExpired');
    const otherAudience = await identity().verify(token({ aud: ['vault'], exp: Math.floor(clock / 1000) + 600 }), pod);
    assert.equal(!otherAudience.ok && otherAudience.code, 'TokenWrongAudience');
    assert.equal(reviews, 0);
  });

  it('reuses a review until its TTL, through an apiserver outage, and never past the TTL [practice:continuity]', async () => {
    const id = identity(60_000);
    const t = token();
    assert.ok((await id.verify(t, pod)).ok);
    answer = new Error('the apiserver is unreachable (ECONNREFUSED)');
    clock += 47_000; // the TTL less at most a fifth
    const cached = await id.verify(t, pod);
    assert.ok(cached.ok && cached.cached, 'served from the cache during the outage');
    clock += 14_000;
    const expired = await id.verify(t, pod);
    assert.equal(!expired.ok && expired.code, 'TokenReviewUnavailable');
    assert.equal(reviews, 2);
    answer = bound;
    assert.ok((await id.verify(t, pod)).ok, 'a failed review is not cached');
  });

  it('never reuses a review past the token expiry', async () => {
    const id = identity(300_000);
    const t = token({ aud: [audience], exp: Math.floor(clock / 1000) + 30 }, new Date(clock + 30_000));
    assert.ok((await id.verify(t, pod)).ok);
    clock += 31_000;
    const result = await id.verify(t, pod);
    assert.equal(!result.ok && result.code, 'TokenExpired');
  });

  it('caches a refusal briefly, so a bad token cannot make every mount a TokenReview', async () => {
    answer = { ...bound, authenticated: false };
    const id = identity();
    const t = token();
    await id.verify(t, pod);
    await id.verify(t, pod);
    assert.equal(reviews, 1);
    clock += 11_000;
    await id.verify(t, pod);
    assert.equal(reviews, 2);
  });

  it('keeps refusals apart: a flood of made-up tokens does not push out the review of a real pod', async () => {
    const id = new PodIdentity(
      (t) => {
        reviews++;
        const forged = Buffer.from(t.split('.')[1] ?? '', 'base64url').toString().includes('forged');
        return Promise.resolve(forged ? { ...bound, authenticated: false, error: 'invalid bearer token' } : bound);
      },
      { audience, maxEntries: 10, maxRefusals: 10, now: () => clock },
    );
    const good = token();
    assert.ok((await id.verify(good, pod)).ok);
    for (let i = 0; i < 100; i++) {
      const forged = token({ aud: [audience], exp: Math.floor((clock + 3600_000) / 1000), jti: `forged-${i}` });
      assert.equal((await id.verify(forged, pod)).ok, false);
    }
    assert.equal(id.cachedReviews, 11, 'at most 10 refusals kept, and the good review');
    const again = await id.verify(good, pod);
    assert.ok(again.ok && again.cached, 'still cached');
    assert.equal(reviews, 101);
  });

  it('checks the claims on every mount, even when the review is cached', async () => {
    const id = identity();
    const t = token();
    assert.ok((await id.verify(t, pod)).ok);
    const other = await id.verify(t, { ...pod, name: 'web-2' });
    assert.equal(!other.ok && other.code, 'TokenForAnotherPod');
    assert.equal(reviews, 1);
  });
});

describe('TtlCache', () => {
  it('bounds entries, expires them, shares concurrent loads and wipes what leaves', async () => {
    let now = 0;
    const evicted: number[] = [];
    const cache = new TtlCache<string, number>({ ttlMs: 100, maxEntries: 2, now: () => now, onEvict: (v) => evicted.push(v as number) });
    let loads = 0;
    const load = (value: number) => () => {
      loads++;
      return new Promise<{ value: number }>((resolve) => setTimeout(() => resolve({ value }), 5));
    };
    const [a, b] = await Promise.all([cache.getOrLoad('a', load(1)), cache.getOrLoad('a', load(2))]);
    assert.deepEqual([a.value, b.value, loads], [1, 1, 1]);
    assert.deepEqual(await cache.getOrLoad('a', load(3)), { value: 1, hit: true });
    cache.set('b', 2);
    cache.set('c', 3);
    assert.equal(cache.size, 2);
    assert.deepEqual(evicted, [1], 'the oldest entry left');
    now = 100;
    assert.equal(cache.get('b'), undefined, 'expired at its TTL');
    cache.set('d', 4, 1_000_000);
    now = 201;
    assert.equal(cache.get('d'), undefined, 'a longer TTL is capped at the cache TTL');
    await assert.rejects(cache.getOrLoad('e', () => Promise.reject(new Error('down'))));
    assert.equal((await cache.getOrLoad('e', load(5))).hit, false, 'a failed load is not cached');
  });

  it('bounds the total weight', () => {
    const cache = new TtlCache<string, Buffer>({ ttlMs: 1000, maxEntries: 100, maxWeight: 100, weigh: (v) => v.length });
    cache.set('a', Buffer.alloc(60));
    cache.set('b', Buffer.alloc(30));
    assert.equal(cache.size, 2);
    cache.set('c', Buffer.alloc(30));
    assert.deepEqual([cache.get('a'), cache.size], [undefined, 2], 'the oldest left to make room');
    cache.set('b', Buffer.alloc(10));
    cache.set('d', Buffer.alloc(60));
    assert.equal(cache.size, 3, 'a replaced entry no longer weighs its old size');
  });

  it('weighs keys when asked, and keeps no entry heavier than the whole budget', () => {
    const cache = new TtlCache<string, Buffer>({ ttlMs: 1000, maxEntries: 100, maxWeight: 100, weigh: (v, k) => v.length + k.length });
    cache.set('a', Buffer.alloc(40));
    cache.set('b'.repeat(50), Buffer.alloc(5));
    assert.equal(cache.totalWeight, 96);
    cache.set('huge', Buffer.alloc(101));
    assert.deepEqual([cache.size, cache.get('huge'), cache.totalWeight], [2, undefined, 96], 'the others stay');
  });
});
