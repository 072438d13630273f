import assert from 'node:assert/strict';
import type { KeyPolicy, KeyPolicyRule } from '../../core/api/keyPolicy.js';
import { admitKeyPolicy } from './keyPolicyAdmission.js';

const now = new Date('2026-11-23T12:00:00Z');
const hours = (h: number): string => new Date(now.getTime() + h * 3_600_000).toISOString();
const keyPolicy = (name: string, rules: KeyPolicyRule[], creationTimestamp?: string): KeyPolicy => ({
  apiVersion: 'keyward.dev/v1alpha1',
  kind: 'KeyPolicy',
  metadata: { name, namespace: 'shop', creationTimestamp: creationTimestamp as unknown as Date },
  spec: { rules },
});
const breakGlass = (expiresAt: string): KeyPolicyRule => ({ subjects: [{ kind: 'User', name: 'carol' }], keyRings: ['orders'], roles: ['BreakGlassAdministrator'], expiresAt });

describe('KeyPolicy admission', () => {
  it('takes a break-glass grant up to 24h ahead and refuses one further or already past [practice:least-privilege] [practice:roles]', () => {
    assert.equal(admitKeyPolicy({ object: keyPolicy('bg', [breakGlass(hours(23.9))]), admitted: [], now }), undefined);
    assert.match(admitKeyPolicy({ object: keyPolicy('bg', [breakGlass(hours(25))]), admitted: [], now }) ?? '', /spec.rules\[0\].expiresAt .* is 25.0h ahead; BreakGlassAdministrator grants may run at most 24h/);
    assert.match(admitKeyPolicy({ object: keyPolicy('bg', [breakGlass(hours(-1))]), admitted: [], now }) ?? '', /is already past/);
  });

  it('judges only new expiries, so an admitted policy can still be edited', () => {
    const old = keyPolicy('bg', [breakGlass(hours(-1))], '2026-11-22T00:00:00Z');
    const edited = keyPolicy('bg', [breakGlass(hours(-1)), { subjects: [{ kind: 'User', name: 'dave' }], keyRings: ['orders'], roles: ['Auditor'] }], '2026-11-22T00:00:00Z');
    assert.equal(admitKeyPolicy({ object: edited, oldObject: old, admitted: [old], now }), undefined);
  });

  it('does not let an expiry admitted for an ordinary grant carry a break-glass one past 24h [practice:least-privilege]', () => {
    const auditor: KeyPolicyRule = { subjects: [{ kind: 'User', name: 'carol' }], keyRings: ['orders'], roles: ['Auditor'], expiresAt: hours(240) };
    const old = keyPolicy('bg', [auditor], '2026-11-22T00:00:00Z');
    const raised = keyPolicy('bg', [breakGlass(hours(240))], '2026-11-22T00:00:00Z');
    assert.match(admitKeyPolicy({ object: raised, oldObject: old, admitted: [old], now }) ?? '', /is 240.0h ahead; BreakGlassAdministrator grants may run at most 24h/);
    // The other way round is only a smaller grant.
    assert.equal(admitKeyPolicy({ object: keyPolicy('bg', [{ ...auditor, expiresAt: hours(-1) }]), oldObject: keyPolicy('bg', [breakGlass(hours(-1))]), admitted: [], now }), undefined);
  });

  it('refuses a policy that would give an administrator of another policy use of the same ring [practice:separation-of-duties]', () => {
    const admins = keyPolicy('admins', [{ subjects: [{ kind: 'User', name: 'alice' }], keyRings: ['orders'], roles: ['Administrator'] }], '2026-11-01T00:00:00Z');
    const users = keyPolicy('users', [{ subjects: [{ kind: 'User', name: 'alice' }], keyRings: ['orders'], operations: ['decrypt'] }]);
    assert.match(admitKeyPolicy({ object: users, admitted: [admins], now }) ?? '', /separation of duties: User alice would both use and manage KeyRing orders/);
    const otherRing = keyPolicy('users', [{ subjects: [{ kind: 'User', name: 'alice' }], keyRings: ['payments'], operations: ['decrypt'] }]);
    assert.equal(admitKeyPolicy({ object: otherRing, admitted: [admins], now }), undefined);
  });

  it('refuses an update of an older policy that would unseat a newer one [practice:separation-of-duties]', () => {
    const users = keyPolicy('users', [{ subjects: [{ kind: 'User', name: 'alice' }], keyRings: ['orders'], operations: ['decrypt'] }], '2026-11-02T00:00:00Z');
    const oldAdmins = keyPolicy('admins', [{ subjects: [{ kind: 'User', name: 'bob' }], keyRings: ['orders'], roles: ['Administrator'] }], '2026-11-01T00:00:00Z');
    const newAdmins = keyPolicy('admins', [{ subjects: [{ kind: 'User', name: 'alice' }], keyRings: ['orders'], roles: ['Administrator'] }], '2026-11-01T00:00:00Z');
    assert.match(admitKeyPolicy({ object: newAdmins, oldObject: oldAdmins, admitted: [oldAdmins, users], now }) ?? '', /would stop KeyPolicy users from being enforced/);
  });
});
