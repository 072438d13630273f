// Who is mounting: the pod's ServiceAccount token, reviewed by the apiserver (TokenReview with the
// configured audience) and found bound to the very pod the attributes name. The attributes are
// the pod author's to write, so the namespace, ServiceAccount, pod name and UID they claim count
// only when the reviewed token says the same.
//
// Reviews are cached by a hash of the token for at most `ttlMs` (default 5 min, less a random
// fifth) and never past the token's own expiry; a refusal is cached for 10 s, so a bad token cannot make every mount
// cost an apiserver call. Refusals have their own, smaller cache, so a flood of made-up tokens
// cannot push out the reviews of real pods; both are bounded in entries and bytes. Through a brief apiserver outage a cached review keeps serving; a token
// with no live review is refused with TokenReviewUnavailable.
import { createHash } from 'node:crypto';
import type { Requester } from '../../core/policy/policySet.js';
import type { ClaimedPod, PodToken } from './mountRequest.js';
import { TtlCache } from './ttlCache.js';

/** What TokenReview says of a token; the apiserver's TokenReviewStatus, trimmed. */
export interface TokenReviewOutcome {
  authenticated: boolean;
  /** The apiserver's reason for not authenticating; it never quotes the token. */
  error?: string;
  audiences: readonly string[];
  username: string;
  groups: readonly string[];
  extra: Readonly<Record<string, readonly string[]>>;
}

/** Calls TokenReview; throws when the apiserver cannot answer. */
export type TokenReviewer = (token: string, audience: string) => Promise<TokenReviewOutcome>;

export const identityRefusalCodes = [
  'TokenExpired',
  'TokenWrongAudience',
  'TokenNotAuthenticated',
  'TokenNotPodBound',
  'TokenForAnotherPod',
  'IdentityMismatch',
  'TokenReviewUnavailable',
  'PodDeleted',
] as const;
export type IdentityRefusalCode = (typeof identityRefusalCodes)[number];

/** A pod whose identity the apiserver vouched for. */
export interface VerifiedPod {
  namespace: string;
  name: string;
  uid: string;
  serviceAccountName: string;
  /** As the policy sees it: the reviewed username and groups. */
  requester: Requester;
}

export type IdentityResult =
  | { ok: true; pod: VerifiedPod; cached: boolean }
  | { ok: false; code: IdentityRefusalCode; message: string; cached: boolean };

export interface PodIdentityOptions {
  audience: string;
  ttlMs?: number;
  /** Accepted reviews kept at most (default 20,000, within 8 MiB). */
  maxEntries?: number;
  /** Refusals kept at most (default 4,000, within 2 MiB). */
  maxRefusals?: number;
  now?: () => number;
}

/** The pod claims a bound ServiceAccount token carries (kube-apiserver's serviceaccount authenticator). */
const podNameExtra = 'authentication.kubernetes.io/pod-name';
const podUidExtra = 'authentication.kubernetes.io/pod-uid';
const serviceAccountUser = /^system:serviceaccount:([^:]+):([^:]+)$/;
const refusalTtlMs = 10_000;

type Review = { ok: true; outcome: TokenReviewOutcome } | { ok: false; code: IdentityRefusalCode; message: string };

/** A review's bytes in memory, over-estimated: its strings at two bytes a character, plus headers, plus the 43-character key. */
function reviewBytes(review: Review): number {
  const text = review.ok ? JSON.stringify(review.outcome) : review.message;
  return 512 + 2 * text.length;
}

const podUidOf = (outcome: TokenReviewOutcome): string => outcome.extra[podUidExtra]?.[0] ?? '';

export class PodIdentity {
  private readonly reviews: TtlCache<string, Review>;
  private readonly refusals: TtlCache<string, Review>;
  /** Pods seen deleted, by uid, for as long as a review of theirs could live. */
  private readonly deletedPods: TtlCache<string, true>;
  private readonly audience: string;
  private readonly ttlMs: number;
  private readonly now: () => number;

  constructor(
    private readonly reviewer: TokenReviewer,
    options: PodIdentityOptions,
  ) {
    this.audience = options.audience;
    this.now = options.now ?? Date.now;
    this.ttlMs = options.ttlMs ?? 5 * 60_000;
    this.reviews = new TtlCache({ ttlMs: this.ttlMs, maxEntries: options.maxEntries ?? 20_000, maxWeight: 8 * 1024 * 1024, weigh: reviewBytes, now: this.now });
    this.refusals = new TtlCache({ ttlMs: refusalTtlMs, maxEntries: options.maxRefusals ?? 4_000, maxWeight: 2 * 1024 * 1024, weigh: reviewBytes, now: this.now });
    this.deletedPods = new TtlCache({ ttlMs: this.ttlMs, maxEntries: 10_000, now: this.now });
  }

  /**
   * The pod with this uid is gone: its cached reviews are dropped, and a review of its token that
   * was in flight, or is answered from an apiserver cache, is refused too.
   */
  forgetPod(uid: string): void {
    this.deletedPods.set(uid, true);
    this.reviews.deleteWhere((review) => review.ok && podUidOf(review.outcome) === uid);
  }

  /** How many reviews are cached, accepted or refused; a gauge. */
  get cachedReviews(): number {
    return this.reviews.size + this.refusals.size;
  }

  async verify(token: PodToken, claimed: ClaimedPod): Promise<IdentityResult> {
    // Unverified claims, only to refuse early with a clear message; acceptance needs the review.
    const claims = jwtClaims(token.value);
    const expiresAt = Math.min(token.expiresAt.getTime(), jwtExpiry(claims) ?? Infinity);
    const left = expiresAt - this.now();
    if (left <= 0) return { ok: false, code: 'TokenExpired', message: `the ServiceAccount token expired at ${new Date(expiresAt).toISOString()}`, cached: false };
    const audiences = jwtAudiences(claims);
    if (audiences && !audiences.includes(this.audience)) {
      return { ok: false, code: 'TokenWrongAudience', message: `the token is for audience ${quoteList(audiences)}, not '${this.audience}'`, cached: false };
    }

    const key = createHash('sha256').update(this.audience).update('\0').update(token.value).digest('base64url');
    let review = this.refusals.get(key);
    let hit = review !== undefined;
    if (review === undefined) {
      try {
        ({ value: review, hit } = await this.reviews.getOrLoad(key, async () => {
          const reviewed = await this.review(token.value);
          if (!reviewed.ok) {
            this.refusals.set(key, reviewed);
            return { value: reviewed, ttlMs: 0 };
          }
          // A random fifth off each review's life, so the reviews of pods started together do not
          // all expire in the same second.
          return { value: reviewed, ttlMs: Math.min(left, this.ttlMs * (1 - Math.random() / 5)) };
        }));
      } catch (err) {
        return { ok: false, code: 'TokenReviewUnavailable', message: `TokenReview failed and no review of this token is cached: ${(err as Error).message}`, cached: false };
      }
    }
    if (!review.ok) return { ...review, cached: hit };
    return this.match(review.outcome, claimed, hit);
  }

  private async review(token: string): Promise<Review> {
    const outcome = await this.reviewer(token, this.audience);
    if (!outcome.authenticated) {
      const why = outcome.error ? `: ${outcome.error.slice(0, 200)}` : '';
      return { ok: false, code: 'TokenNotAuthenticated', message: `the apiserver did not authenticate the token for audience '${this.audience}'${why}` };
    }
    if (!outcome.audiences.includes(this.audience)) {
      return { ok: false, code: 'TokenWrongAudience', message: `the token is for audience ${quoteList(outcome.audiences)}, not '${this.audience}'` };
    }
    if (!serviceAccountUser.test(outcome.username)) {
      return { ok: false, code: 'TokenNotPodBound', message: `the token is ${JSON.stringify(outcome.username)}'s, not a ServiceAccount's` };
    }
    if (!outcome.extra[podNameExtra]?.[0] || !outcome.extra[podUidExtra]?.[0]) {
      return { ok: false, code: 'TokenNotPodBound', message: 'the token is not bound to a pod (a legacy or TokenRequest token without a pod)' };
    }
    return { ok: true, outcome };
  }

  private match(outcome: TokenReviewOutcome, claimed: ClaimedPod, cached: boolean): IdentityResult {
    const [, namespace = '', serviceAccountName = ''] = serviceAccountUser.exec(outcome.username) ?? [];
    const name = outcome.extra[podNameExtra]?.[0] ?? '';
    const uid = podUidOf(outcome);
    if (namespace !== claimed.namespace || serviceAccountName !== claimed.serviceAccountName) {
      return {
        ok: false,
        code: 'IdentityMismatch',
        message: `the attributes claim ServiceAccount ${claimed.namespace}/${claimed.serviceAccountName}, the token is ${namespace}/${serviceAccountName}'s`,
        cached,
      };
    }
    if (name !== claimed.name || uid !== claimed.uid) {
      return {
        ok: false,
        code: 'TokenForAnotherPod',
        message: `the token is bound to pod ${namespace}/${name} (uid ${uid}), not ${claimed.namespace}/${claimed.name} (uid ${claimed.uid})`,
        cached,
      };
    }
    if (this.deletedPods.get(uid)) {
      return { ok: false, code: 'PodDeleted', message: `pod ${namespace}/${name} (uid ${uid}) was deleted; its token no longer mounts`, cached };
    }
    const requester = { username: outcome.username, groups: outcome.groups };
    return { ok: true, pod: { namespace, name, uid, serviceAccountName, requester }, cached };
  }
}

const quoteList = (values: readonly string[]): string => values.map((v) => JSON.stringify(v.slice(0, 80))).join(', ') || 'none';

/** The JWT's claims, unverified; undefined when the payload is not a JSON object. */
function jwtClaims(jwt: string): Record<string, unknown> | undefined {
  try {
    const claims: unknown = JSON.parse(Buffer.from(jwt.split('.')[1] ?? '', 'base64url').toString('utf8'));
    return typeof claims === 'object' && claims !== null && !Array.isArray(claims) ? (claims as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function jwtExpiry(claims: Record<string, unknown> | undefined): number | undefined {
  const exp = claims?.exp;
  return typeof exp === 'number' && Number.isFinite(exp) ? exp * 1000 : undefined;
}

function jwtAudiences(claims: Record<string, unknown> | undefined): string[] | undefined {
  const aud = claims?.aud;
  if (typeof aud === 'string') return [aud];
  return Array.isArray(aud) && aud.every((a) => typeof a === 'string') ? aud : undefined;
}
