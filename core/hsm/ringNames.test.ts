// Ring names, corrupt ring state and concurrent writers, in a real SoftHSM2 token: a name means the
// one ring holding it (also after a KeyRing is deleted and created again), a state object that does
// not parse is refused naming its ring, and a write over a state read before another writer's
// change is refused rather than undoing that change.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { KeywardError } from '../errors.js';
import type { HsmToken } from './hsmToken.js';
import { ObjectHandleCache } from './objectHandleCache.js';
import { RingPersistence } from './ringPersistence.js';
import { RingStateCorruptError, ringObjectLabel, type RingState } from './ringState.js';
import { RingStore } from './ringStore.js';
import { useSoftHsmToken } from '../../testbed/hsm/softHsmFixture.js';

const refused = (code: string, pattern: RegExp) => (err: unknown) => err instanceof KeywardError && err.code === code && pattern.test(err.message);

describe('Ring names, corrupt state and concurrent writers in a real SoftHSM2 token', () => {
  const hsm = useSoftHsmToken();
  let token: HsmToken;
  let store: RingStore;
  before(() => {
    token = hsm.token;
    store = new RingStore(token);
  });

  /** What the operator does with a KeyRing's ring: ensure it under the KeyRing's uid and claim the name. */
  const operatorCreates = async (name: string, namespace: string): Promise<RingState> => {
    const { ring } = await store.ensure({ ringId: randomUUID(), name, namespace });
    await store.claimName(ring.ringId);
    return ring;
  };

  for (const policy of ['Retain', 'Destroy'] as const) {
    it(`resolves a name re-used after a KeyRing deleted with deletionPolicy ${policy} to the new ring, also for a fresh store`, async () => {
      const namespace = `reuse-${policy.toLowerCase()}`;
      const first = await operatorCreates('etcd', namespace);
      assert.equal((await store.resolve('etcd', namespace))?.ringId, first.ringId);
      // The operator's finalize: release with either policy, Destroy also schedules every version.
      await store.release(first.ringId);
      if (policy === 'Destroy') await store.scheduleRingDestruction({ ringId: first.ringId }, new Date(Date.now() + 60_000));
      assert.equal(await store.resolve('etcd', namespace), undefined, 'a released ring answers to no name');
      assert.ok(await store.get({ ringId: first.ringId }), 'by id it is still there (its keys stay for Retain)');
      await assert.rejects(store.rotate({ name: 'etcd', namespace }), refused('NotFound', /ring 'reuse-\w+\/etcd' does not exist/));

      const second = await operatorCreates('etcd', namespace);
      // A store without handles seen before, as a KMS plugin or CLI that starts now.
      const restarted = new RingStore(token);
      assert.equal((await restarted.resolve('etcd', namespace))?.ringId, second.ringId);
      assert.equal((await restarted.require({ name: 'etcd', namespace })).ringId, second.ringId, 'get/require by name use the same rule');
      assert.equal((await restarted.rotate({ name: 'etcd', namespace })).ringId, second.ringId);
      assert.equal((await store.get({ ringId: first.ringId }))?.primary, 1, 'the old ring is untouched');
    });
  }

  it('gives the name to a new KeyRing ring when the old KeyRing was never finalized, and refuses two holders until then', async () => {
    const stale = await store.ensure({ ringId: randomUUID(), name: 'orders', namespace: 'unfinalized' });
    const fresh = await store.ensure({ ringId: randomUUID(), name: 'orders', namespace: 'unfinalized' });
    await assert.rejects(store.resolve('orders', 'unfinalized'), refused('FailedPrecondition', new RegExp(`held by more than one ring \\(ids .*${fresh.ring.ringId}`)));
    assert.deepEqual(await store.claimName(fresh.ring.ringId), [stale.ring.ringId]);
    assert.deepEqual(await store.claimName(fresh.ring.ringId), [], 'idempotent');
    assert.equal((await store.resolve('orders', 'unfinalized'))?.ringId, fresh.ring.ringId);
    assert.ok((await store.get({ ringId: stale.ring.ringId }))?.released, 'recorded in the old ring');
  });

  it('lets the CLI create a ring under a released name, and not under a held one', async () => {
    const old = await store.create({ name: 'cli-ring' });
    await assert.rejects(store.create({ name: 'cli-ring' }), /already exists/);
    await store.release(old.ringId);
    const made = await store.create({ name: 'cli-ring' });
    assert.notEqual(made.ringId, old.ringId);
    assert.equal((await store.resolve('cli-ring'))?.ringId, made.ringId);
  });

  describe('a corrupt ring state object', () => {
    const writeStateObject = (ringId: string, value: string): Promise<unknown> =>
      token.withSession((s) =>
        token.pkcs11.C_CreateObject(s, [
          { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
          { type: pkcs11js.CKA_TOKEN, value: true },
          { type: pkcs11js.CKA_PRIVATE, value: true },
          { type: pkcs11js.CKA_APPLICATION, value: 'keyward.dev/ring-state' },
          { type: pkcs11js.CKA_LABEL, value: ringObjectLabel(ringId) },
          { type: pkcs11js.CKA_VALUE, value: Buffer.from(value) },
        ]),
      );
    const removeStateObjects = (ringId: string): Promise<void> =>
      token.withSession((s) => {
        token.pkcs11.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_LABEL, value: ringObjectLabel(ringId) }]);
        const found = token.pkcs11.C_FindObjects(s, 100);
        token.pkcs11.C_FindObjectsFinal(s);
        for (const handle of found) token.pkcs11.C_DestroyObject(s, handle);
      });
    const corrupt = (ringId: string, why: RegExp) => (err: unknown) =>
      err instanceof RingStateCorruptError && err.ringId === ringId && new RegExp(`ring id ${ringId} in the HSM is corrupt \\(${why.source}\\)`).test(err.message);

    it('is refused naming its ring, by id (handles known or not), by name and in a listing; never searched past', async () => {
      const ring = await store.create({ name: 'damaged', namespace: 'corrupt', ringId: randomUUID() });
      const known = new RingStore(token);
      await known.get({ ringId: ring.ringId }); // its handles are now known
      // Truncated JSON, newest revision: a reader must not fall back to the older revision, nor search again.
      await removeStateObjects(ring.ringId);
      await writeStateObject(ring.ringId, JSON.stringify(ring).slice(0, 40));
      await assert.rejects(known.get({ ringId: ring.ringId }), corrupt(ring.ringId, /not JSON/));
      await assert.rejects(new RingStore(token).get({ ringId: ring.ringId }), corrupt(ring.ringId, /not JSON/));
      await assert.rejects(store.resolve('damaged', 'corrupt'), corrupt(ring.ringId, /not JSON/));
      await assert.rejects(store.list(), corrupt(ring.ringId, /not JSON/));
      await assert.rejects(store.rotate({ ringId: ring.ringId }), corrupt(ring.ringId, /not JSON/));
      await removeStateObjects(ring.ringId);
    });

    it('is refused when it parses but is not a ring state, or is another ring\'s', async () => {
      const ring = await store.create({ name: 'swapped', namespace: 'corrupt', ringId: randomUUID() });
      const other = randomUUID();
      await writeStateObject(other, JSON.stringify({ ...ring, revision: 1 }));
      await assert.rejects(store.get({ ringId: other }), corrupt(other, new RegExp(`it names ring id ${ring.ringId}`)));
      await removeStateObjects(other);
      await writeStateObject(other, JSON.stringify({ schema: 2 }));
      await assert.rejects(store.get({ ringId: other }), corrupt(other, /not a ring state of schema 1/));
      await removeStateObjects(other);
      assert.equal((await store.get({ ringId: ring.ringId }))?.ringId, ring.ringId, 'the sound ring reads as before');
    });
  });

  describe('two writers on the same token', () => {
    it('refuses a write over a state read before the other writer changed it, keeping that change', async () => {
      const ring = await store.create({ name: 'contended', namespace: 'cas', ringId: randomUUID() });
      await store.rotate({ ringId: ring.ringId });
      const operator = new RingPersistence(token, new ObjectHandleCache(token));
      const cli = new RingPersistence(token, new ObjectHandleCache(token));
      const readByOperator = await operator.newestState(ring.ringId);
      const readByCli = await cli.newestState(ring.ringId);
      assert.ok(readByOperator && readByCli);
      const disabled: RingState = { ...readByOperator, versions: readByOperator.versions.map((v) => (v.number === 1 ? { ...v, state: 'Disabled' } : v)) };
      await operator.saveState(disabled);
      await assert.rejects(
        cli.saveState({ ...readByCli, lastRotationRequest: 'from-the-cli' }),
        refused('FailedPrecondition', new RegExp(`the state of ring id ${ring.ringId} changed concurrently .*; retry`)),
      );
      const now = await new RingStore(token).get({ ringId: ring.ringId });
      assert.equal(now?.versions[0]?.state, 'Disabled', "the operator's change stands");
      assert.equal(now?.lastRotationRequest, undefined);
      assert.equal(now?.revision, readByOperator.revision + 1);
    });

    it('lets two stores write at once without losing an update: each write stands or is refused', async () => {
      const { ringId } = await store.create({ name: 'racing', namespace: 'cas', ringId: randomUUID() });
      await store.rotate({ ringId });
      await store.rotate({ ringId });
      const writers = [new RingStore(token), new RingStore(token)];
      let refusals = 0;
      for (let round = 0; round < 6; round++) {
        // Each writer disables its own version (1 or 2) at the same time.
        const results = await Promise.allSettled(writers.map((w, i) => w.setVersionState({ ringId }, i + 1, 'Disabled')));
        const after = await store.require({ ringId });
        results.forEach((r, i) => {
          if (r.status === 'rejected') {
            refusals++;
            assert.ok(refused('FailedPrecondition', /changed concurrently/)(r.reason), String(r.reason));
          } else {
            assert.equal(after.versions[i]?.state, 'Disabled', `round ${round}: writer ${i}'s change was reported done, so it stands`);
          }
        });
        for (const number of [1, 2]) await store.setVersionState({ ringId }, number, 'Enabled');
      }
      assert.ok(refusals > 0, 'the writers did overlap');
    });
  });
});
