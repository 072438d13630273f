import assert from 'node:assert/strict';
import { PolicySet, type PolicyRule } from '../../core/policy/policySet.js';
import type { KeyRing, KeyRingSpec } from '../../core/api/keyRing.js';
import { defaultApprovalWindowMs } from '../../core/api/keyRing.js';
import { admitKeyRing } from './keyRingAdmission.js';

const now = new Date('2026-11-23T12:00:00Z');
const alice = { username: 'alice', groups: [] };
const bob = { username: 'bob', groups: [] };
const carol = { username: 'carol', groups: [] };
const rules: PolicyRule[] = [
  { subjects: [{ kind: 'User', name: 'alice' }, { kind: 'User', name: 'bob' }], keyRings: ['orders'], roles: ['Administrator'] },
  { subjects: [{ kind: 'User', name: 'carol' }], keyRings: ['orders'], operations: ['scheduleDestroy', 'disableVersion'] },
];
const policies = new PolicySet([{ namespace: 'shop', name: 'p', creationTimestamp: '2026-01-01T00:00:00Z', rules }]);

const base: KeyRingSpec = { purpose: 'encryption', destroyScheduledDuration: '720h', deletionPolicy: 'Retain' };
const keyRing = (spec: Partial<KeyRingSpec>): KeyRing => ({
  apiVersion: 'keyward.dev/v1alpha1',
  kind: 'KeyRing',
  metadata: { name: 'orders', namespace: 'shop' },
  spec: { ...base, ...spec },
});
const update = (requester: typeof alice, old: Partial<KeyRingSpec>, next: Partial<KeyRingSpec>, at = now) =>
  admitKeyRing({ operation: 'UPDATE', requester, namespace: 'shop', name: 'orders', object: keyRing(next), oldObject: keyRing(old), policies, now: at });

describe('KeyRing admission', () => {
  it('lets a metadata-only change through with no act and the spec untouched', () => {
    const verdict = update(carol, {}, {});
    assert.deepEqual([verdict.allowed, verdict.acts], [true, []]);
    assert.deepEqual(verdict.spec, base);
  });

  it('maps each spec change to its operation and refuses what is not granted [practice:operations-by-name]', () => {
    assert.deepEqual(update(alice, {}, { rotationRequest: 'x' }).acts?.map((a) => a.operation), ['rotate']);
    assert.deepEqual(update(alice, {}, { rotationPeriod: '720h' }).acts?.map((a) => a.operation), ['rotate']);
    assert.deepEqual(update(alice, {}, { versions: [{ number: 1, state: 'Disabled' }] }).acts?.map((a) => a.operation), ['disableVersion']);
    assert.deepEqual(update(alice, { versions: [{ number: 1, state: 'Disabled' }] }, { versions: [{ number: 1, state: 'Enabled' }] }).acts?.map((a) => a.operation), ['enableVersion']);
    const refused = update(carol, {}, { rotationRequest: 'x' });
    assert.equal(refused.allowed, false);
    assert.match(refused.message ?? '', /rotate on the KeyRing: carol is not granted rotate on KeyRing shop\/orders/);
  });

  it('stamps a destruction request with the requester and refuses a request carrying its own approval [practice:two-person-integrity]', () => {
    const verdict = update(carol, { versions: [{ number: 1, state: 'Disabled' }] }, { versions: [{ number: 1, state: 'DestroyScheduled', destroyRequest: { requestedBy: 'mallory', requestedAt: '2020-01-01T00:00:00Z', approvedBy: 'eve', approvedAt: '2020-01-01T00:00:00Z' } }] });
    assert.equal(verdict.allowed, true);
    assert.deepEqual(verdict.spec?.versions?.[0]?.destroyRequest, { requestedBy: 'carol', requestedAt: now.toISOString() }, 'forged stamps replaced');
    const selfApproved = update(alice, { versions: [{ number: 1, state: 'Disabled' }] }, { versions: [{ number: 1, state: 'DestroyScheduled', approveDestroy: true }] });
    assert.equal(selfApproved.allowed, false);
    assert.match(selfApproved.message ?? '', /cannot carry its own approval/);
  });

  it('takes an approval only from a second, authorised person within the window [practice:two-person-integrity]', () => {
    const requested = { versions: [{ number: 1, state: 'DestroyScheduled' as const, destroyRequest: { requestedBy: 'alice', requestedAt: now.toISOString() } }] };
    const approving = { versions: [{ ...requested.versions[0]!, approveDestroy: true }] };
    const own = update(alice, requested, approving);
    assert.match(own.message ?? '', /alice requested this destruction and cannot also approve it/);
    // One refused act, one audit record: not also an allowed one for the policy's part.
    assert.deepEqual(own.acts?.map((a) => [a.operation, a.decision.reason]), [['approveDestroy', 'TwoPersonRule']]);
    const unauthorised = update(carol, requested, approving);
    assert.match(unauthorised.message ?? '', /carol is not granted approveDestroy/);
    assert.deepEqual(unauthorised.acts?.map((a) => [a.operation, a.decision.reason]), [['approveDestroy', 'NotGranted']]);
    const late = update(bob, requested, approving, new Date(now.getTime() + defaultApprovalWindowMs + 1));
    assert.match(late.message ?? '', /the request by alice expired at/);
    const approved = update(bob, requested, approving, new Date(now.getTime() + 60_000));
    assert.equal(approved.allowed, true);
    assert.deepEqual(approved.spec?.versions?.[0]?.destroyRequest, {
      requestedBy: 'alice',
      requestedAt: now.toISOString(),
      approvedBy: 'bob',
      approvedAt: new Date(now.getTime() + 60_000).toISOString(),
    });
  });

  it('judges a version with no entry before by its state in status: dropping and re-adding an entry cancels nothing unjudged', () => {
    const old = { ...keyRing({}), status: { versions: [{ number: 1, state: 'DestroyScheduled' }] } } as KeyRing;
    const verdict = admitKeyRing({ operation: 'UPDATE', requester: carol, namespace: 'shop', name: 'orders', object: keyRing({ versions: [{ number: 1, state: 'Disabled' }] }), oldObject: old, policies, now });
    assert.deepEqual(verdict.acts?.map((a) => [a.operation, a.decision.reason]), [['cancelDestroy', 'NotGranted']]);
    assert.equal(verdict.allowed, false);
  });

  it('restores stamps a later change tries to alter or drop [practice:two-person-integrity]', () => {
    const stamp = { requestedBy: 'alice', requestedAt: now.toISOString(), approvedBy: 'bob', approvedAt: now.toISOString() };
    const old = { versions: [{ number: 1, state: 'DestroyScheduled' as const, approveDestroy: true, destroyRequest: stamp }] };
    const forged = update(carol, old, { versions: [{ number: 1, state: 'DestroyScheduled', approveDestroy: true, destroyRequest: { ...stamp, approvedBy: 'carol' } }] });
    assert.deepEqual(forged.spec?.versions?.[0]?.destroyRequest, stamp);
    const dropped = update(carol, old, { versions: [{ number: 1, state: 'DestroyScheduled', approveDestroy: true }] });
    assert.deepEqual(dropped.spec?.versions?.[0]?.destroyRequest, stamp);
  });

  it('needs cancelDestroy to leave DestroyScheduled, and clears the stamps [practice:soft-delete]', () => {
    const old = { versions: [{ number: 1, state: 'DestroyScheduled' as const, destroyRequest: { requestedBy: 'alice', requestedAt: now.toISOString() } }] };
    assert.match(update(carol, old, { versions: [{ number: 1, state: 'Disabled' }] }).message ?? '', /cancelDestroy on version 1/);
    const cancelled = update(bob, old, { versions: [{ number: 1, state: 'Disabled' }] });
    assert.equal(cancelled.allowed, true);
    assert.deepEqual(cancelled.spec?.versions, [{ number: 1, state: 'Disabled' }]);
  });

  it('treats deletionPolicy Destroy as a destruction request that needs a second person [practice:two-person-integrity]', () => {
    const requested = update(carol, {}, { deletionPolicy: 'Destroy' });
    assert.deepEqual(requested.spec?.deletionDestroyRequest, { requestedBy: 'carol', requestedAt: now.toISOString() });
    const approved = update(bob, { deletionPolicy: 'Destroy', deletionDestroyRequest: requested.spec?.deletionDestroyRequest }, { deletionPolicy: 'Destroy', approveDestroy: true });
    assert.equal(approved.spec?.deletionDestroyRequest?.approvedBy, 'bob');
    assert.match(update(carol, { deletionPolicy: 'Destroy' }, { deletionPolicy: 'Retain' }).message ?? '', /cancelDestroy/);
  });

  it('refuses everything on a KeyRing no policy names, even for a cluster administrator [practice:implicit-deny]', () => {
    const admin = { username: 'kubernetes-admin', groups: ['system:masters'] };
    const verdict = admitKeyRing({ operation: 'UPDATE', requester: admin, namespace: 'shop', name: 'payments', object: keyRing({ rotationRequest: 'x' }), oldObject: keyRing({}), policies, now });
    assert.equal(verdict.allowed, false);
    assert.match(verdict.message ?? '', /no enforced KeyPolicy grants anything on KeyRing shop\/payments/);
  });
});
