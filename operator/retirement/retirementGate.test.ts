import assert from 'node:assert/strict';
import type { KeyRingStatus } from '../../core/api/keyRing.js';
import { etcdRetirementRefusal } from './retirementGate.js';

const switchedAt = '2026-12-01T10:00:00.000Z';
const before = '2026-12-01T09:59:59.000Z';
const after = '2026-12-01T10:05:00.000Z';

/** A ring the KMS plugin serves, rotated to version 2; version 1's entry as given. */
const status = (v1: Partial<NonNullable<KeyRingStatus['versions']>[number]> = {}, run: Partial<NonNullable<KeyRingStatus['reEncryption']>> = {}): KeyRingStatus => ({
  primaryVersion: 2,
  reEncryption: { targetVersion: 2, phase: 'Verifying', apiserverSwitchedAt: switchedAt, ...run },
  versions: [
    { number: 1, state: 'Enabled', ...v1 },
    { number: 2, state: 'Enabled', etcdObjects: 40, etcdObjectsProvenAt: after },
  ],
});

describe('Retirement gate: whether etcd proves a version unused', () => {
  it('does not gate a ring no KMS plugin serves (no reEncryption in status), whatever its counts say', () => {
    assert.equal(etcdRetirementRefusal(undefined, 1), undefined);
    const unserved = status({ etcdObjects: 12, etcdObjectsProvenAt: after });
    delete unserved.reEncryption;
    assert.equal(etcdRetirementRefusal(unserved, 1), undefined);
  });

  it('leaves the primary, Destroyed, PendingGeneration and unknown versions to the lifecycle rules', () => {
    assert.equal(etcdRetirementRefusal(status(), 2), undefined, 'the primary: stepsTo refuses it with its own message');
    assert.equal(etcdRetirementRefusal(status({ state: 'Destroyed', etcdObjects: 3, etcdObjectsProvenAt: after }), 1), undefined);
    assert.equal(etcdRetirementRefusal(status({ state: 'PendingGeneration' }), 1), undefined);
    assert.equal(etcdRetirementRefusal(status(), 7), undefined, 'a version status does not list');
  });

  it('refuses while kube-apiserver has not switched to the new primary: nothing can be proven yet [practice:verified-retirement]', () => {
    const refusal = etcdRetirementRefusal(status({ etcdObjects: 0, etcdObjectsProvenAt: after }, { phase: 'WaitingForApiserver', apiserverSwitchedAt: undefined }), 1);
    assert.match(refusal ?? '', /version 1 may still protect objects in etcd: kube-apiserver does not encrypt with version 2 yet/);
  });

  it('refuses without a scan, and with a scan from before the switch even when it counted zero [practice:verified-retirement]', () => {
    const none = etcdRetirementRefusal(status(), 1);
    assert.match(none ?? '', new RegExp(`no complete scan since kube-apiserver switched to version 2 at ${switchedAt}`));
    assert.match(etcdRetirementRefusal(status({ etcdObjects: 0 }), 1) ?? '', /no complete scan since/, 'a count without a time proves nothing');
    assert.match(etcdRetirementRefusal(status({ etcdObjectsProvenAt: after }), 1) ?? '', /no complete scan since/, 'a time without a count proves nothing');
    const stale = etcdRetirementRefusal(status({ etcdObjects: 0, etcdObjectsProvenAt: before }), 1);
    assert.match(stale ?? '', /no complete scan since kube-apiserver switched/, 'a lagging apiserver may have written under version 1 after that scan');
  });

  it('refuses while the scan after the switch still counts objects, naming the count and the scan time [practice:verified-retirement]', () => {
    assert.equal(
      etcdRetirementRefusal(status({ state: 'Disabled', etcdObjects: 2000, etcdObjectsProvenAt: after }), 1),
      `version 1 still protects 2000 objects in etcd (scan at ${after}); re-encrypt them first`,
    );
    assert.equal(etcdRetirementRefusal(status({ etcdObjects: 1, etcdObjectsProvenAt: after }), 1), `version 1 still protects 1 object in etcd (scan at ${after}); re-encrypt them first`);
  });

  it('lets a version go once a scan started at or after the switch counts zero under it [practice:verified-retirement]', () => {
    assert.equal(etcdRetirementRefusal(status({ etcdObjects: 0, etcdObjectsProvenAt: after }), 1), undefined);
    assert.equal(etcdRetirementRefusal(status({ etcdObjects: 0, etcdObjectsProvenAt: switchedAt }), 1), undefined, 'a scan starting at the switch counts');
    assert.equal(etcdRetirementRefusal(status({ state: 'Disabled', etcdObjects: 0, etcdObjectsProvenAt: after }, { phase: 'Off' }), 1), undefined, 'whoever re-encrypted');
  });
});
