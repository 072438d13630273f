import assert from 'node:assert/strict';
import { KeywardError, type KeywardErrorCode } from '../errors.js';
import {
  assertKnownAlgorithm,
  assertSameAlgorithm,
  changeVersionState,
  dueForDestruction,
  enablePending,
  hasMaterial,
  newRing,
  pendingVersions,
  recordDestroyed,
  scheduleDestruction,
  startRotation,
  unaccountedKeys,
  type RingSpec,
} from './ringLifecycle.js';
import { keyIdFor, type RingState, type VersionState } from './ringState.js';

describe('Ring lifecycle rules', () => {
  const ringId = 'ring-1';
  const ref = { ringId };
  const t0 = new Date('2030-01-01T00:00:00.000Z');
  const t1 = new Date('2030-01-02T00:00:00.000Z');
  const t2 = new Date('2030-01-03T00:00:00.000Z');

  const refusedWith = (code: KeywardErrorCode, pattern: RegExp) => (err: unknown) =>
    err instanceof KeywardError && err.code === code && pattern.test(err.message);
  const stateOf = (ring: RingState, number: number): VersionState | undefined => ring.versions.find((v) => v.number === number)?.state;
  const states = (ring: RingState): Array<[number, VersionState]> => ring.versions.map((v) => [v.number, v.state]);

  /** A ring whose versions 1..primary are Enabled, version `primary` primary. */
  const enabledRing = (primary = 2): RingState => {
    let ring = enablePending(newRing({ ringId, name: 'orders', namespace: 'shop' }, t0), t0);
    while (ring.primary < primary) ring = enablePending(startRotation(ring, undefined, t0), t0);
    return ring;
  };
  /** Moves version 1 of a two-version ring to Disabled, then DestroyScheduled at `at`. */
  const scheduledRing = (at: Date): RingState => {
    const disabled = changeVersionState(enabledRing(), { ref, number: 1, state: 'Disabled' }, t0);
    return changeVersionState(disabled, { ref, number: 1, state: 'DestroyScheduled', destroyAt: at }, t0);
  };

  describe('creation', () => {
    it('makes version 1 primary and PendingGeneration, of AES_256_GCM when no algorithm is given', () => {
      const ring = newRing({ ringId, name: 'orders' }, t0);
      assert.deepEqual([ring.revision, ring.primary, ring.namespace, ring.algorithm, ring.purpose], [1, 1, '', 'AES_256_GCM', 'encryption']);
      assert.deepEqual(ring.versions, [{ number: 1, state: 'PendingGeneration', keyId: keyIdFor(ringId, 1), createdAt: t0.toISOString(), stateChangedAt: t0.toISOString() }]);
      assert.deepEqual(pendingVersions(ring).map((v) => v.number), [1]);
      assert.equal(newRing({ ringId, name: 'derive', algorithm: 'HMAC_SHA_384' }, t0).purpose, 'derivation');
      assert.equal(newRing({ ringId, name: 'sign', algorithm: 'ECDSA_P384' }, t0).purpose, 'signing');
    });

    it('refuses an algorithm it cannot generate, and accepts a known or absent one', () => {
      assert.throws(() => assertKnownAlgorithm({ name: 'x', algorithm: 'DES' } as unknown as RingSpec), refusedWith('InvalidArgument', /algorithm DES is not one of AES_256_GCM/));
      assertKnownAlgorithm({ name: 'x' });
      assertKnownAlgorithm({ name: 'x', algorithm: 'ECDSA_P384' });
    });

    it('refuses to find a ring under another algorithm than asked', () => {
      const ring = newRing({ ringId, name: 'derive', algorithm: 'HMAC_SHA_384' }, t0);
      assert.throws(() => assertSameAlgorithm(ring, 'AES_256_GCM'), refusedWith('FailedPrecondition', /exists with algorithm HMAC_SHA_384, not AES_256_GCM/));
      assertSameAlgorithm(ring, 'HMAC_SHA_384');
      assertSameAlgorithm(ring, undefined);
    });

    it('enables pending versions once their keys exist and makes the newest primary', () => {
      const created = newRing({ ringId, name: 'orders' }, t0);
      const enabled = enablePending(created, t1);
      assert.deepEqual(states(enabled), [[1, 'Enabled']]);
      assert.equal(enabled.versions[0]?.stateChangedAt, t1.toISOString());
      assert.equal(created.versions[0]?.state, 'PendingGeneration', 'the input is left as it was');
      assert.equal(enablePending(enabled, t2), enabled, 'nothing pending: the same ring');
    });
  });

  describe('rotation', () => {
    it('adds the next version pending, and makes it primary only once enabled [practice:rotation]', () => {
      const ring = enabledRing(1);
      const rotating = startRotation(ring, undefined, t1);
      assert.deepEqual(states(rotating), [[1, 'Enabled'], [2, 'PendingGeneration']]);
      assert.equal(rotating.primary, 1, 'not primary before its key exists');
      assert.equal(rotating.versions[1]?.keyId, keyIdFor(ringId, 2));
      assert.equal(enablePending(rotating, t1).primary, 2);
    });

    it('numbers after the highest version, destroyed ones included', () => {
      const scheduled = scheduleDestruction(enabledRing(), t1, t0);
      const destroyed = recordDestroyed(scheduled, dueForDestruction(scheduled, t1), t1);
      assert.deepEqual(states(destroyed), [[1, 'Destroyed'], [2, 'Destroyed']]);
      assert.deepEqual(states(startRotation(destroyed, undefined, t2)).at(-1), [3, 'PendingGeneration']);
    });

    it('carries out an on-demand request once, and keeps the last request over a plain rotation [practice:rotation]', () => {
      const rotated = enablePending(startRotation(enabledRing(1), 'r-1', t1), t1);
      assert.equal(rotated.lastRotationRequest, 'r-1');
      assert.equal(startRotation(rotated, 'r-1', t2), rotated, 'the same request again: the same ring');
      assert.equal(startRotation(rotated, 'r-2', t2).versions.length, 3);
      assert.equal(startRotation(rotated, undefined, t2).lastRotationRequest, 'r-1');
    });
  });

  describe('version states', () => {
    it('disables and re-enables a version that is not the primary', () => {
      const disabled = changeVersionState(enabledRing(), { ref, number: 1, state: 'Disabled' }, t1);
      assert.equal(stateOf(disabled, 1), 'Disabled');
      assert.equal(disabled.versions[0]?.stateChangedAt, t1.toISOString());
      assert.equal(stateOf(changeVersionState(disabled, { ref, number: 1, state: 'Enabled' }, t2), 1), 'Enabled');
    });

    it('refuses to disable the primary', () => {
      assert.throws(() => changeVersionState(enabledRing(), { ref, number: 2, state: 'Disabled' }, t1), refusedWith('FailedPrecondition', /version 2 is the primary; rotate/));
    });

    it('refuses moves outside the lifecycle, naming the state it is in', () => {
      const ring = enabledRing();
      assert.throws(
        () => changeVersionState(ring, { ref, number: 1, state: 'DestroyScheduled', destroyAt: t2 }, t1),
        refusedWith('FailedPrecondition', /version 1 is Enabled; it cannot become DestroyScheduled/),
      );
      const scheduled = scheduledRing(t2);
      assert.throws(() => changeVersionState(scheduled, { ref, number: 1, state: 'Destroyed' }, t1), refusedWith('FailedPrecondition', /cannot become Destroyed/));
      assert.throws(() => changeVersionState(scheduled, { ref, number: 1, state: 'Enabled' }, t1), refusedWith('FailedPrecondition', /DestroyScheduled; it cannot become Enabled/));
      const destroyed = recordDestroyed(scheduled, dueForDestruction(scheduled, t2), t2);
      assert.throws(() => changeVersionState(destroyed, { ref, number: 1, state: 'Disabled' }, t2), refusedWith('FailedPrecondition', /Destroyed; it cannot become Disabled/));
    });

    it('needs the time destruction may happen to schedule it, and clears it when cancelled [practice:soft-delete]', () => {
      const disabled = changeVersionState(enabledRing(), { ref, number: 1, state: 'Disabled' }, t0);
      assert.throws(() => changeVersionState(disabled, { ref, number: 1, state: 'DestroyScheduled' }, t1), refusedWith('InvalidArgument', /needs the time/));
      const scheduled = changeVersionState(disabled, { ref, number: 1, state: 'DestroyScheduled', destroyAt: t2 }, t1);
      assert.deepEqual([stateOf(scheduled, 1), scheduled.versions[0]?.destroyAt], ['DestroyScheduled', t2.toISOString()]);
      const cancelled = changeVersionState(scheduled, { ref, number: 1, state: 'Disabled' }, t1);
      assert.deepEqual([stateOf(cancelled, 1), cancelled.versions[0]?.destroyAt], ['Disabled', undefined]);
    });

    it('leaves the ring as it is when the version is already in that state', () => {
      const ring = enabledRing();
      assert.equal(changeVersionState(ring, { ref, number: 1, state: 'Enabled' }, t1), ring);
    });

    it('refuses a version the ring does not have, naming the ring as the caller did', () => {
      assert.throws(() => changeVersionState(enabledRing(), { ref, number: 9, state: 'Disabled' }, t1), refusedWith('NotFound', /^ring id ring-1 has no version 9$/));
      const byName = { name: 'orders', namespace: 'shop' };
      assert.throws(() => changeVersionState(enabledRing(), { ref: byName, number: 9, state: 'Disabled' }, t1), refusedWith('NotFound', /^ring 'shop\/orders' has no version 9$/));
    });
  });

  describe('destruction', () => {
    it('schedules every version with material, the primary included, and keeps earlier schedules', () => {
      const earlier = scheduledRing(t1);
      const ring = scheduleDestruction(earlier, t2, t0);
      assert.deepEqual(ring.versions.map((v) => [v.number, v.state, v.destroyAt]), [[1, 'DestroyScheduled', t1.toISOString()], [2, 'DestroyScheduled', t2.toISOString()]]);
      assert.equal(scheduleDestruction(ring, t1, t0), ring, 'all scheduled already: the same ring');
    });

    it('finds versions due only once their time has come [practice:soft-delete]', () => {
      const ring = scheduledRing(t1);
      assert.deepEqual(dueForDestruction(ring, t0), []);
      assert.deepEqual(dueForDestruction(ring, t1).map((v) => v.number), [1]);
      assert.deepEqual(dueForDestruction(enabledRing(), t2), [], 'only DestroyScheduled versions');
    });

    it('records destroyed versions with when it happened, and no material left [practice:soft-delete]', () => {
      const ring = scheduledRing(t1);
      const destroyed = recordDestroyed(ring, dueForDestruction(ring, t2), t2);
      assert.deepEqual(destroyed.versions.map((v) => [v.number, v.state, v.destroyAt]), [[1, 'Destroyed', t2.toISOString()], [2, 'Enabled', undefined]]);
      assert.deepEqual(destroyed.versions.map(hasMaterial), [false, true]);
      assert.deepEqual(newRing({ ringId, name: 'x' }, t0).versions.map(hasMaterial), [false], 'not generated yet');
    });
  });

  describe('orphan keys', () => {
    it('reports keys of no ring, of a version the ring lacks or destroyed, each once', () => {
      const ring = recordDestroyed(scheduledRing(t1), dueForDestruction(scheduledRing(t1), t1), t1);
      const pending = startRotation(ring, undefined, t2);
      const keys = [
        { ringId, version: 1 }, // destroyed
        { ringId, version: 2 }, // live
        { ringId, version: 3 }, // pending: being generated
        { ringId, version: 9 }, // never recorded
        { ringId: 'stray', version: 1 },
        { ringId: 'stray', version: 1 }, // the other half of a key pair
      ];
      assert.deepEqual(unaccountedKeys(keys, [pending]), [{ ringId, version: 1 }, { ringId, version: 9 }, { ringId: 'stray', version: 1 }]);
      assert.deepEqual(unaccountedKeys([{ ringId, version: 2 }], []), [{ ringId, version: 2 }], 'no ring: an orphan');
    });
  });
});
