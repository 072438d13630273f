// A KeyRing's status as a function of its ring in the HSM: versions with where and how each key
// is kept, the primary, the next rotation, and conditions with observedGeneration.
import type { KeyRing, KeyRingStatus, KeyRingVersionStatus } from '../../core/api/keyRing.js';
import { withConditions, type ConditionInput } from '../../core/api/conditions.js';
import { keyObjectId, primaryVersion, type RingState } from '../../core/hsm/ringState.js';
import type { RetirementStep } from '../retirement/retirement.js';

/** The algorithm names RingState uses, as the CRD spells them. */
const algorithmNames = { AES_256_GCM: 'AES-256-GCM', HMAC_SHA_384: 'HMAC-SHA-384', ECDSA_P384: 'ECDSA-P384' } as const;

export function versionStatuses(ring: RingState, tokenLabel: string): KeyRingVersionStatus[] {
  return ring.versions.map((v) => ({
    number: v.number,
    keyId: v.keyId,
    state: v.state,
    algorithm: algorithmNames[ring.algorithm],
    createTime: v.createdAt,
    ...(v.destroyAt ? { destroyTime: v.destroyAt } : {}),
    hsmToken: tokenLabel,
    hsmObjectId: keyObjectId(ring.ringId, v.number).toString('hex'),
  }));
}

/** When the primary is due to be replaced, or undefined without a rotation period. */
export function nextRotationTime(ring: RingState, rotationPeriodMs: number | undefined): Date | undefined {
  if (rotationPeriodMs === undefined) return undefined;
  return new Date(Date.parse(primaryVersion(ring).createdAt) + rotationPeriodMs);
}

export function keyRingStatus(
  keyRing: KeyRing,
  ring: RingState,
  options: { tokenLabel: string; rotationPeriodMs?: number; conditions: ConditionInput[]; now: Date; retirement?: RetirementStep },
): KeyRingStatus {
  const facts = options.retirement?.versions;
  const generation = keyRing.metadata.generation ?? 0;
  const next = nextRotationTime(ring, options.rotationPeriodMs);
  return {
    observedGeneration: generation,
    ringId: ring.ringId,
    primaryVersion: ring.primary,
    ...(next ? { nextRotationTime: next.toISOString() } : {}),
    ...(ring.lastRotationRequest !== undefined ? { lastRotationRequest: ring.lastRotationRequest } : {}),
    versions: versionStatuses(ring, options.tokenLabel).map((v) => ({ ...v, ...facts?.get(v.number) })),
    ...(options.retirement?.reEncryption ? { reEncryption: options.retirement.reEncryption } : {}),
    conditions: withConditions(keyRing.status?.conditions, options.conditions, generation, options.now),
  };
}
