import assert from 'node:assert/strict';
import { expandGrant, operationNames, roleNames, roles } from './operations.js';
import { PolicySet, requesterKeys, type PolicyDocument, type PolicyRule } from './policySet.js';

const now = new Date('2026-11-23T12:00:00Z');
const hour = 3_600_000;
const alice = { username: 'alice', groups: ['system:authenticated'] };
const bob = { username: 'bob', groups: ['ops', 'system:authenticated'] };
const appSa = { username: 'system:serviceaccount:shop:api', groups: ['system:serviceaccounts', 'system:serviceaccounts:shop'] };

let created = 0;
const policy = (name: string, rules: PolicyRule[], namespace = 'shop'): PolicyDocument => ({
  namespace,
  name,
  creationTimestamp: new Date(Date.parse('2026-01-01T00:00:00Z') + ++created * 1000).toISOString(),
  rules,
});

describe('KeyPolicy evaluation', () => {
  it('denies everything on a ring no policy names, and anyone a policy does not name [practice:implicit-deny]', () => {
    const set = new PolicySet([policy('p', [{ subjects: [{ kind: 'User', name: 'alice' }], keyRings: ['orders'], roles: ['Administrator'] }])]);
    assert.equal(set.decide(alice, 'shop', 'payments', 'rotate', now).reason, 'NoPolicy');
    assert.equal(set.decide(bob, 'shop', 'orders', 'rotate', now).reason, 'NotGranted');
    assert.equal(set.decide(alice, 'other', 'orders', 'rotate', now).reason, 'NoPolicy', 'a policy grants only in its namespace');
    const allowed = set.decide(alice, 'shop', 'orders', 'rotate', now);
    assert.deepEqual([allowed.allowed, allowed.rule], [true, 'shop/p#rules[0]']);
    assert.equal(set.decide(alice, 'shop', 'orders', 'encrypt', now).reason, 'NotGranted', 'Administrator cannot use the key');
  });

  it('gives each role exactly its operations [practice:roles]', () => {
    for (const role of roleNames) {
      const rule: PolicyRule = { subjects: [{ kind: 'User', name: 'alice' }], keyRings: ['orders'], roles: [role], expiresAt: new Date(now.getTime() + hour).toISOString() };
      const set = new PolicySet([policy(`role-${role}`, [rule])]);
      const granted = operationNames.filter((op) => set.decide(alice, 'shop', 'orders', op, now).allowed);
      assert.deepEqual(granted, expandGrant([role]), role);
      assert.deepEqual(new Set(granted), new Set(roles[role].operations), role);
    }
  });

  it('matches ServiceAccounts by namespace and name, and groups', () => {
    const set = new PolicySet([
      policy('p', [
        { subjects: [{ kind: 'ServiceAccount', namespace: 'shop', name: 'api' }], keyRings: ['orders'], roles: ['EncryptDecrypt'] },
        { name: 'ops', subjects: [{ kind: 'Group', name: 'ops' }], keyRings: ['payments'], operations: ['getMetadata'] },
      ]),
    ]);
    assert.deepEqual(requesterKeys(appSa).slice(0, 1), ['ServiceAccount shop/api']);
    assert.ok(set.decide(appSa, 'shop', 'orders', 'decrypt', now).allowed);
    assert.ok(!set.decide({ username: 'system:serviceaccount:other:api', groups: [] }, 'shop', 'orders', 'decrypt', now).allowed);
    assert.equal(set.decide(bob, 'shop', 'payments', 'getMetadata', now).rule, 'shop/p#ops');
    assert.ok(!set.decide({ username: 'system:serviceaccount:shop:api', groups: [] }, 'shop', 'payments', 'getMetadata', now).allowed);
  });

  it('stops an expiring grant at its expiry, and flags break-glass use [practice:least-privilege] [practice:roles]', () => {
    const expiresAt = new Date(now.getTime() + hour).toISOString();
    const set = new PolicySet([policy('bg', [{ subjects: [{ kind: 'User', name: 'alice' }], keyRings: ['orders'], roles: ['BreakGlassAdministrator'], expiresAt }])]);
    const before = set.decide(alice, 'shop', 'orders', 'rotate', now);
    assert.deepEqual([before.allowed, before.breakGlass], [true, true]);
    const after = set.decide(alice, 'shop', 'orders', 'rotate', new Date(now.getTime() + hour));
    assert.deepEqual([after.allowed, after.reason], [false, 'GrantExpired']);
    assert.match(after.message, new RegExp(expiresAt));
  });

  it('prefers an ordinary grant to a break-glass one', () => {
    const set = new PolicySet([
      policy('bg', [{ subjects: [{ kind: 'User', name: 'alice' }], keyRings: ['orders'], roles: ['BreakGlassAdministrator'], expiresAt: new Date(now.getTime() + hour).toISOString() }]),
      policy('admin', [{ subjects: [{ kind: 'User', name: 'alice' }], keyRings: ['orders'], operations: ['rotate'] }]),
    ]);
    assert.deepEqual(set.decide(alice, 'shop', 'orders', 'rotate', now).breakGlass, false);
    assert.deepEqual(set.decide(alice, 'shop', 'orders', 'disableVersion', now).breakGlass, true);
  });

  it('does not enforce a later policy that gives one subject use and management of a ring [practice:separation-of-duties]', () => {
    const admin = policy('admin', [{ subjects: [{ kind: 'User', name: 'alice' }], keyRings: ['orders'], roles: ['Administrator'] }]);
    const user = policy('user', [{ subjects: [{ kind: 'User', name: 'alice' }], keyRings: ['orders', 'payments'], roles: ['EncryptDecrypt'] }]);
    const set = new PolicySet([user, admin]);
    assert.equal(set.verdict('shop', 'admin')?.enforced, true, 'the older policy stays');
    const verdict = set.verdict('shop', 'user');
    assert.equal(verdict?.enforced, false);
    assert.match(verdict?.reason ?? '', /User alice would both use and manage KeyRing orders .*shop\/admin#rules\[0\] and shop\/user#rules\[0\]/);
    assert.equal(set.decide(alice, 'shop', 'payments', 'encrypt', now).reason, 'NoPolicy', 'nothing of an unenforced policy counts');
    assert.ok(set.decide(alice, 'shop', 'orders', 'rotate', now).allowed);
  });

  it('refuses a policy whose own rules mix use and management for one subject [practice:separation-of-duties]', () => {
    const set = new PolicySet([
      policy('mixed', [
        { subjects: [{ kind: 'Group', name: 'ops' }], keyRings: ['orders'], operations: ['rotate'] },
        { subjects: [{ kind: 'Group', name: 'ops' }], keyRings: ['orders'], operations: ['decrypt'] },
      ]),
    ]);
    assert.equal(set.verdict('shop', 'mixed')?.enforced, false);
  });

  it('refuses at decision time a user who holds use and management through different subjects [practice:separation-of-duties]', () => {
    const set = new PolicySet([
      policy('p', [
        { subjects: [{ kind: 'User', name: 'bob' }], keyRings: ['orders'], roles: ['Administrator'] },
        { subjects: [{ kind: 'Group', name: 'ops' }], keyRings: ['orders'], roles: ['WriteOnly'] },
      ]),
    ]);
    assert.equal(set.verdict('shop', 'p')?.enforced, true, 'User bob and Group ops are different subjects');
    assert.equal(set.decide(bob, 'shop', 'orders', 'rotate', now).reason, 'SeparationOfDuties');
    assert.equal(set.decide(bob, 'shop', 'orders', 'encrypt', now).reason, 'SeparationOfDuties');
    assert.ok(set.decide({ username: 'carol', groups: ['ops'] }, 'shop', 'orders', 'encrypt', now).allowed);
  });

  it('replaces one namespace and keeps the others', () => {
    const shop = policy('p', [{ subjects: [{ kind: 'User', name: 'alice' }], keyRings: ['orders'], roles: ['Administrator'] }]);
    const bank = policy('p', [{ subjects: [{ kind: 'User', name: 'alice' }], keyRings: ['vault'], roles: ['Auditor'] }], 'bank');
    const set = new PolicySet([shop, bank]).withNamespace('shop', []);
    assert.equal(set.decide(alice, 'shop', 'orders', 'rotate', now).reason, 'NoPolicy');
    assert.ok(set.decide(alice, 'bank', 'vault', 'readAudit', now).allowed);
    assert.ok(set.withNamespace('shop', [shop]).decide(alice, 'shop', 'orders', 'rotate', now).allowed);
  });

  it('expands every grant per subject and ring for the status', () => {
    const set = new PolicySet([
      policy('p', [{ subjects: [{ kind: 'User', name: 'alice' }, { kind: 'ServiceAccount', namespace: 'shop', name: 'api' }], keyRings: ['a', 'b'], roles: ['ReadOnly'], operations: ['readAudit'] }]),
    ]);
    const grants = set.verdict('shop', 'p')?.grants ?? [];
    assert.equal(grants.length, 4);
    assert.deepEqual(grants[0], { subject: 'User alice', keyRing: 'a', operations: ['verify', 'getPublicKey', 'getMetadata', 'readAudit'], rule: 'shop/p#rules[0]', breakGlass: false });
  });
});
