import assert from 'node:assert/strict';
import { PolicySet, type PolicyRule } from '../../core/policy/policySet.js';
import type { KeyRing, KeyRingSpec, KeyRingStatus } from '../../core/api/keyRing.js';
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

  describe('retirement: a version etcd still needs [practice:verified-retirement]', () => {
    const hour = 3600_000;
    const dave = { username: 'dave', groups: [] };
    const erin = { username: 'erin', groups: [] };
    const retirementPolicies = new PolicySet([
      {
        namespace: 'shop',
        name: 'p',
        creationTimestamp: '2026-01-01T00:00:00Z',
        rules: [
          ...rules,
          { name: 'emergency', subjects: [{ kind: 'User', name: 'dave' }], keyRings: ['orders'], roles: ['BreakGlassAdministrator'], expiresAt: new Date(now.getTime() + hour).toISOString() },
          { name: 'lapsed', subjects: [{ kind: 'User', name: 'erin' }], keyRings: ['orders'], roles: ['BreakGlassAdministrator'], expiresAt: new Date(now.getTime() - hour).toISOString() },
          // An administrator handed an emergency grant on top of the standing one.
          { name: 'alice-emergency', subjects: [{ kind: 'User', name: 'alice' }], keyRings: ['orders'], roles: ['BreakGlassAdministrator'], expiresAt: new Date(now.getTime() + hour).toISOString() },
        ],
      },
    ]);
    const scanAt = '2026-11-23T11:30:00.000Z';
    /** Rotated to version 2; the latest scan after kube-apiserver switched counts `objects` under version 1. */
    const inEtcd = (objects: number, v1State: 'Enabled' | 'Disabled' = 'Enabled'): KeyRingStatus => ({
      primaryVersion: 2,
      reEncryption: { targetVersion: 2, phase: 'Failed', apiserverSwitchedAt: '2026-11-23T11:00:00.000Z' },
      versions: [
        { number: 1, state: v1State, etcdObjects: objects, etcdObjectsProvenAt: scanAt },
        { number: 2, state: 'Enabled', etcdObjects: 9, etcdObjectsProvenAt: scanAt },
      ],
    });
    const retire = (requester: typeof alice, old: Partial<KeyRingSpec>, next: Partial<KeyRingSpec>, status: KeyRingStatus, set = retirementPolicies) =>
      admitKeyRing({ operation: 'UPDATE', requester, namespace: 'shop', name: 'orders', object: keyRing(next), oldObject: { ...keyRing(old), status }, policies: set, now });
    const decisions = (verdict: ReturnType<typeof admitKeyRing>) => verdict.acts?.map((a) => [a.operation, a.keyVersion, a.decision.allowed, a.decision.reason, a.decision.breakGlass]);

    it('refuses an administrator disabling a version etcd still uses, naming the count and the scan time, audited as VersionInUse', () => {
      const verdict = retire(bob, {}, { versions: [{ number: 1, state: 'Disabled' }] }, inEtcd(1500));
      assert.equal(verdict.allowed, false);
      assert.equal(verdict.message, `KeyRing shop/orders: disableVersion on version 1: version 1 still protects 1500 objects in etcd (scan at ${scanAt}); re-encrypt them first`);
      assert.deepEqual(decisions(verdict), [['disableVersion', 1, false, 'VersionInUse', false]]);
      assert.match(verdict.acts?.[0]?.decision.message ?? '', /1500 objects/);
      assert.equal(verdict.spec, undefined, 'nothing to write');
    });

    it('refuses a destruction request for a Disabled version etcd still uses, naming the count', () => {
      const verdict = retire(carol, { versions: [{ number: 1, state: 'Disabled' }] }, { versions: [{ number: 1, state: 'DestroyScheduled' }] }, inEtcd(1, 'Disabled'));
      assert.equal(verdict.allowed, false);
      assert.match(verdict.message ?? '', /scheduleDestroy on version 1: version 1 still protects 1 object in etcd \(scan at /);
      assert.deepEqual(decisions(verdict), [['scheduleDestroy', 1, false, 'VersionInUse', false]]);
    });

    it('lets a policy refusal speak for itself: someone not granted the operation hears NotGranted, not the count', () => {
      const notGranted = retire({ username: 'frank', groups: [] }, {}, { versions: [{ number: 1, state: 'Disabled' }] }, inEtcd(5));
      assert.deepEqual(decisions(notGranted), [['disableVersion', 1, false, 'NotGranted', false]]);
    });

    it('lets an unexpired break-glass grant disable it anyway, stamped with retirementOverride and audited as break-glass [practice:verified-retirement] [practice:audit]', () => {
      const verdict = retire(dave, {}, { versions: [{ number: 1, state: 'Disabled' }] }, inEtcd(1500));
      assert.equal(verdict.allowed, true, verdict.message);
      const override = verdict.spec?.versions?.[0]?.retirementOverride;
      assert.equal(override?.by, 'dave');
      assert.equal(override?.at, now.toISOString());
      assert.match(override?.reason ?? '', /version 1 still protects 1500 objects in etcd \(scan at /);
      assert.deepEqual(decisions(verdict), [['disableVersion', 1, true, 'Granted', true]]);
      assert.match(verdict.acts?.[0]?.decision.message ?? '', /\(break-glass\), overriding retirement: version 1 still protects 1500 objects in etcd/);
    });

    it('stamps a break-glass destruction request too, beside the two-person stamp', () => {
      const verdict = retire(dave, { versions: [{ number: 1, state: 'Disabled' }] }, { versions: [{ number: 1, state: 'DestroyScheduled' }] }, inEtcd(3, 'Disabled'));
      assert.equal(verdict.allowed, true, verdict.message);
      assert.deepEqual(verdict.spec?.versions?.[0]?.destroyRequest, { requestedBy: 'dave', requestedAt: now.toISOString() });
      assert.match(verdict.spec?.versions?.[0]?.retirementOverride?.reason ?? '', /3 objects/);
      assert.deepEqual(decisions(verdict), [['scheduleDestroy', 1, true, 'Granted', true]]);
    });

    it('uses the break-glass grant of an administrator who also holds one, rather than refusing on the standing grant', () => {
      const verdict = retire(alice, {}, { versions: [{ number: 1, state: 'Disabled' }] }, inEtcd(1500));
      assert.equal(verdict.allowed, true, verdict.message);
      assert.equal(verdict.spec?.versions?.[0]?.retirementOverride?.by, 'alice');
      assert.deepEqual(decisions(verdict), [['disableVersion', 1, true, 'Granted', true]]);
      // A change etcd does not gate still goes through the standing grant, not break-glass.
      assert.deepEqual(decisions(retire(alice, {}, { rotationRequest: 'r' }, inEtcd(1500))), [['rotate', undefined, true, 'Granted', false]]);
    });

    it('refuses an expired break-glass grant, and stamps nothing', () => {
      const verdict = retire(erin, {}, { versions: [{ number: 1, state: 'Disabled' }] }, inEtcd(1500));
      assert.equal(verdict.allowed, false);
      assert.deepEqual(decisions(verdict), [['disableVersion', 1, false, 'GrantExpired', false]]);
      assert.match(verdict.message ?? '', /expired at/);
    });

    it('strips a retirementOverride an administrator writes: it cannot be forged', () => {
      const forged = { by: 'dave', at: '2026-11-01T00:00:00.000Z', reason: 'trust me' };
      // etcd proves version 1 unused: allowed, but the forged stamp is not written.
      const allowed = retire(bob, {}, { versions: [{ number: 1, state: 'Disabled', retirementOverride: forged }] }, inEtcd(0));
      assert.equal(allowed.allowed, true, allowed.message);
      assert.deepEqual(allowed.spec?.versions, [{ number: 1, state: 'Disabled' }]);
      assert.deepEqual(decisions(allowed), [['disableVersion', 1, true, 'Granted', false]]);
      // etcd still uses it: the forged stamp does not make the refusal go away.
      const refused = retire(bob, {}, { versions: [{ number: 1, state: 'Disabled', retirementOverride: forged }] }, inEtcd(7));
      assert.equal(refused.allowed, false);
      assert.deepEqual(decisions(refused), [['disableVersion', 1, false, 'VersionInUse', false]]);
      // Nor on a version whose state does not change, nor on a ring no KMS plugin serves.
      const unchanged = retire(bob, { versions: [{ number: 1, state: 'Disabled' }] }, { versions: [{ number: 1, state: 'Disabled', retirementOverride: forged }] }, inEtcd(7, 'Disabled'));
      assert.deepEqual(unchanged.spec?.versions, [{ number: 1, state: 'Disabled' }]);
      const unserved = update(alice, {}, { versions: [{ number: 1, state: 'Disabled', retirementOverride: forged }] });
      assert.deepEqual(unserved.spec?.versions, [{ number: 1, state: 'Disabled' }]);
    });

    it('keeps a standing stamp on later unrelated changes, and drops it when the desired state changes', () => {
      const stamp = { by: 'dave', at: now.toISOString(), reason: 'version 1 still protects 1500 objects in etcd' };
      const old = { versions: [{ number: 1, state: 'Disabled' as const, retirementOverride: stamp }] };
      const status = inEtcd(1500, 'Disabled');
      const unrelated = retire(bob, old, { rotationPeriod: '720h', versions: [{ number: 1, state: 'Disabled' }] }, status);
      assert.equal(unrelated.allowed, true, unrelated.message);
      assert.deepEqual(unrelated.spec?.versions?.[0]?.retirementOverride, stamp, 'kept when the request drops it');
      const altered = retire(bob, old, { versions: [{ number: 1, state: 'Disabled', retirementOverride: { ...stamp, by: 'bob' } }] }, status);
      assert.deepEqual(altered.spec?.versions?.[0]?.retirementOverride, stamp, 'restored when the request alters it');
      const enabled = retire(bob, old, { versions: [{ number: 1, state: 'Enabled' }] }, status);
      assert.equal(enabled.allowed, true, enabled.message);
      assert.deepEqual(enabled.spec?.versions, [{ number: 1, state: 'Enabled' }], 'dropped on re-enabling');
      // Moving on towards destruction needs the gate (and break-glass) again: the old stamp does not carry over.
      const destroying = retire(bob, old, { versions: [{ number: 1, state: 'DestroyScheduled' }] }, status);
      assert.equal(destroying.allowed, false);
      assert.deepEqual(decisions(destroying), [['scheduleDestroy', 1, false, 'VersionInUse', false]]);
    });

    it('counts a change of spec.reEncryption as rotate', () => {
      // As written, before the apiserver fills in the schema's defaults.
      const settings = (value: object) => ({ reEncryption: value as KeyRingSpec['reEncryption'] });
      const old = settings({ enabled: true });
      const off = settings({ enabled: false });
      const refused = retire(carol, old, off, inEtcd(1500));
      assert.equal(refused.allowed, false);
      assert.match(refused.message ?? '', /rotate on the KeyRing: carol is not granted rotate/);
      assert.deepEqual(decisions(retire(bob, old, off, inEtcd(1500))), [['rotate', undefined, true, 'Granted', false]]);
      assert.deepEqual(decisions(retire(bob, {}, settings({ maxWritesPerSecond: 20 }), inEtcd(1500))), [['rotate', undefined, true, 'Granted', false]]);
      assert.deepEqual(decisions(retire(carol, old, settings({ enabled: true }), inEtcd(1500))), [], 'unchanged settings are no act');
    });
  });

  it('refuses everything on a KeyRing no policy names, even for a cluster administrator [practice:implicit-deny]', () => {
    const admin = { username: 'kubernetes-admin', groups: ['system:masters'] };
    const verdict = admitKeyRing({ operation: 'UPDATE', requester: admin, namespace: 'shop', name: 'payments', object: keyRing({ rotationRequest: 'x' }), oldObject: keyRing({}), policies, now });
    assert.equal(verdict.allowed, false);
    assert.match(verdict.message ?? '', /no enforced KeyPolicy grants anything on KeyRing shop\/payments/);
  });
});
