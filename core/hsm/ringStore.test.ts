import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { generateAesKey } from './aesGcm.js';
import { HsmToken } from './hsmToken.js';
import { keyIdFor, keyObjectId, keyObjectLabel, type RingState } from './ringState.js';
import { RingStore } from './ringStore.js';
import { useSoftHsmToken } from '../../test/softHsmFixture.js';

describe('Ring lifecycle in a real SoftHSM2 token', () => {
  const hsm = useSoftHsmToken();
  let token: HsmToken;
  let store: RingStore;
  before(() => {
    token = hsm.token;
    store = new RingStore(token);
  });

  /** How many key objects carry one version's deterministic id. */
  const keyCount = (ringId: string, version: number): Promise<number> =>
    token.withSession((s) => {
      token.pkcs11.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_ID, value: keyObjectId(ringId, version) }]);
      try {
        return token.pkcs11.C_FindObjects(s, 10).length;
      } finally {
        token.pkcs11.C_FindObjectsFinal(s);
      }
    });

  const stateOf = (ring: RingState, number: number): string | undefined => ring.versions.find((v) => v.number === number)?.state;

  it('creates version 1 once per ring id, even when asked again', async () => {
    const ringId = randomUUID();
    const ring = await store.create({ name: 'orders', namespace: 'shop', ringId });
    assert.equal(ring.primary, 1);
    assert.equal(stateOf(ring, 1), 'Enabled');
    assert.equal(ring.versions[0]?.keyId, keyIdFor(ringId, 1));
    const again = await store.create({ name: 'orders', namespace: 'shop', ringId });
    assert.deepEqual(again, ring);
    assert.equal(await keyCount(ringId, 1), 1);
    await assert.rejects(store.create({ name: 'orders', namespace: 'shop' }), /already exists/);
  });

  it('rotates once per request and reuses a key an interrupted rotation left behind', async () => {
    const ring = await store.create({ name: 'payments', ringId: randomUUID() });
    // As if a rotation died after generating version 2's key but before recording it.
    await generateAesKey(token, { label: keyObjectLabel(ring.ringId, 2), id: keyObjectId(ring.ringId, 2) });
    const rotated = await store.rotate({ ringId: ring.ringId }, { request: 'r-1' });
    assert.equal(rotated.primary, 2);
    assert.equal(await keyCount(ring.ringId, 2), 1, 'no second key for version 2');
    const retried = await store.rotate({ ringId: ring.ringId }, { request: 'r-1' });
    assert.equal(retried.primary, 2, 'the same request does not rotate again');
    assert.equal((await store.rotate({ ringId: ring.ringId }, { request: 'r-2' })).primary, 3);
    assert.equal((await store.rotate({ ringId: ring.ringId })).primary, 4);
  });

  it('moves versions only along the lifecycle and destroys material only when the time has come', async () => {
    const { ringId } = await store.create({ name: 'audit', ringId: randomUUID() });
    const ref = { ringId };
    await store.rotate(ref);
    await assert.rejects(store.setVersionState(ref, 2, 'Disabled'), /primary/);
    await assert.rejects(store.setVersionState(ref, 1, 'DestroyScheduled', { destroyAt: new Date() }), /Enabled; it cannot become DestroyScheduled/);
    await store.setVersionState(ref, 1, 'Disabled');
    await assert.rejects(store.setVersionState(ref, 1, 'DestroyScheduled'), /needs the time/);
    await assert.rejects(store.setVersionState(ref, 1, 'Destroyed'), /cannot become Destroyed/);
    await assert.rejects(store.setVersionState(ref, 9, 'Enabled'), /no version 9/);

    const later = new Date(Date.now() + 60_000);
    let ring = await store.setVersionState(ref, 1, 'DestroyScheduled', { destroyAt: later });
    assert.equal(ring.versions[0]?.destroyAt, later.toISOString());
    ring = await store.setVersionState(ref, 1, 'Disabled');
    assert.equal(stateOf(ring, 1), 'Disabled', 'destruction cancelled');
    assert.equal(ring.versions[0]?.destroyAt, undefined);

    await store.setVersionState(ref, 1, 'DestroyScheduled', { destroyAt: later });
    assert.deepEqual(await store.destroyDue(new Date()), [], 'not before its time');
    assert.equal(await keyCount(ringId, 1), 1);
    assert.deepEqual(await store.destroyDue(new Date(later.getTime() + 1)), [{ ringId, version: 1 }]);
    assert.equal(await keyCount(ringId, 1), 0, 'the key object is gone');
    ring = await store.require(ref);
    assert.equal(stateOf(ring, 1), 'Destroyed');
    assert.ok(ring.versions[0]?.destroyAt);
    await assert.rejects(store.setVersionState(ref, 1, 'Enabled'), /Destroyed; it cannot become Enabled/);
  });

  it('schedules every version of a deleted ring, the primary included, without destroying any yet', async () => {
    const { ringId } = await store.create({ name: 'gone', ringId: randomUUID() });
    await store.rotate({ ringId });
    const at = new Date(Date.now() + 3_600_000);
    const ring = await store.scheduleRingDestruction({ ringId }, at);
    assert.deepEqual(ring.versions.map((v) => [v.state, v.destroyAt]), [['DestroyScheduled', at.toISOString()], ['DestroyScheduled', at.toISOString()]]);
    assert.equal(await keyCount(ringId, 1), 1);
    assert.equal(await keyCount(ringId, 2), 1);
  });

  it('reports Keyward keys that no ring accounts for, and leaves them in place', async () => {
    const strayRing = randomUUID();
    await generateAesKey(token, { label: keyObjectLabel(strayRing, 1), id: keyObjectId(strayRing, 1) });
    // The rings of the tests above hold many keys; only the stray one is unaccounted for.
    assert.deepEqual(await store.orphanKeys(), [{ ringId: strayRing, version: 1 }]);
    assert.equal(await keyCount(strayRing, 1), 1, 'never deleted');
  });
});
