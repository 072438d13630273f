import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import type { Handle, HsmToken } from '../../core/hsm/hsmToken.js';
import type { RingStore } from '../../core/hsm/ringStore.js';
import type { RingState, RingVersion } from '../../core/hsm/ringState.js';
import { knownHmacKey, useSoftHsmToken } from '../../testbed/hsm/softHsmFixture.js';
import { dataKeyBytes, KeyMaterial, volumeKeyBytes, volumeKeyLabel, type HsmCallCount, type Workload } from './keyMaterial.js';

describe('CSI key material: keys derived for a workload, in a real SoftHSM2 token', () => {
  const hsm = useSoftHsmToken();
  let token: HsmToken;
  // Token keys are non-extractable; session keys of known value stand in for the ring's versions,
  // so the expected keys can be computed here with Node's HMAC, from the construction alone.
  const values = new Map<number, Buffer>();
  const handles = new Map<number, Handle>();
  const store = { keyHandle: (_ringId: string, version: number) => Promise.resolve(handles.get(version)) } as unknown as RingStore;
  const version = (number: number): RingVersion => ({ number, state: 'Enabled', keyId: `k${number}`, createdAt: '', stateChangedAt: '' });
  const ring = { ringId: 'ring-1', name: 'volume-keys', namespace: 'shop', purpose: 'derivation', algorithm: 'HMAC_SHA_384', primary: 2, versions: [version(1), version(2)] } as RingState;
  const app: Workload = { namespace: 'shop', serviceAccountName: 'app', objectName: 'data' };

  before(async () => {
    token = hsm.token;
    for (const number of [1, 2]) {
      const { handle, value } = await knownHmacKey(token);
      values.set(number, value);
      handles.set(number, handle);
    }
  });

  /** Each field as a 32-bit big-endian length and its UTF-8 bytes. */
  const lengthPrefixed = (...fields: string[]): Buffer => Buffer.concat(fields.flatMap((f) => [Buffer.from([0, 0, 0, Buffer.byteLength(f)]), Buffer.from(f)]));
  /** SP 800-108 counter mode, written out: K(i) = HMAC(key, [i]_32 || label || 0x00 || context || [512]_32), i = 1, 2. */
  const expectedVolumeKey = (key: Buffer, w: Workload): Buffer => {
    const context = lengthPrefixed(w.namespace, w.serviceAccountName, w.objectName);
    const block = (i: number): Buffer => createHmac('sha384', key).update(Buffer.concat([Buffer.from([0, 0, 0, i]), Buffer.from(volumeKeyLabel), Buffer.of(0), context, Buffer.from([0, 0, 2, 0])])).digest();
    return Buffer.concat([block(1), block(2)]).subarray(0, 64);
  };
  const expectedDataKey = (key: Buffer, w: Workload): Buffer =>
    createHmac('sha384', key).update(lengthPrefixed('keyward.dev/csi/data-key/v1', w.namespace, w.serviceAccountName, w.objectName)).digest().subarray(0, 32);

  const volumeKey = async (material: KeyMaterial, w: Workload, number = 2, calls: HsmCallCount = { hsmCalls: 0 }) => (await material.volumeKey(ring, version(number), w, calls)).key;

  it('derives a volume key of 64 bytes in SP 800-108 counter mode, as computed independently with the known key', async () => {
    const material = new KeyMaterial(token, store);
    assert.equal(volumeKeyBytes, 64);
    assert.equal(volumeKeyLabel, 'keyward.dev/csi/volume-key/v1');
    const key = await volumeKey(material, app);
    assert.equal(key.length, 64);
    assert.deepEqual(key, expectedVolumeKey(values.get(2)!, app));
    assert.deepEqual(await volumeKey(material, app, 1), expectedVolumeKey(values.get(1)!, app), 'under the version asked for');
    // The data key of the same workload and name is what it always was, and unrelated.
    const dataKey = (await material.dataKey(ring, version(2), app, { hsmCalls: 0 })).key;
    assert.equal(dataKey.length, dataKeyBytes);
    assert.deepEqual(dataKey, expectedDataKey(values.get(2)!, app));
    assert.ok(!key.subarray(0, dataKeyBytes).equals(dataKey) && !key.subarray(32).equals(dataKey), 'no half of the volume key is the data key');
  });

  it('keeps workloads apart: another ServiceAccount, name, namespace or version gives another key', async () => {
    const material = new KeyMaterial(token, store);
    const key = await volumeKey(material, app);
    const others = [
      await volumeKey(material, { ...app, serviceAccountName: 'batch' }),
      await volumeKey(material, { ...app, objectName: 'logs' }),
      await volumeKey(material, { ...app, namespace: 'other' }),
      await volumeKey(material, app, 1),
    ];
    for (const other of others) assert.ok(!other.subarray(0, 16).equals(key.subarray(0, 16)) && !other.subarray(48).equals(key.subarray(48)));
    // Field boundaries hold: ("shop", "app-x") and ("shop-app", "x") are different contexts.
    assert.notDeepEqual(await volumeKey(material, { namespace: 'a', serviceAccountName: 'bc', objectName: 'd' }), await volumeKey(material, { namespace: 'ab', serviceAccountName: 'c', objectName: 'd' }));
  });

  it('caches a volume key apart from the data key of the same name, and hands out copies', async () => {
    const material = new KeyMaterial(token, store);
    const miss: HsmCallCount = { hsmCalls: 0 };
    const first = await material.volumeKey(ring, version(2), app, miss);
    assert.equal(first.hit, false);
    assert.equal(miss.hsmCalls, 3, 'the key handle and two HMAC blocks');
    const hitCalls: HsmCallCount = { hsmCalls: 0 };
    const again = await material.volumeKey(ring, version(2), app, hitCalls);
    assert.equal(again.hit, true);
    assert.equal(hitCalls.hsmCalls, 0);
    first.key.fill(0);
    again.key.fill(0);
    assert.deepEqual(await volumeKey(material, app), expectedVolumeKey(values.get(2)!, app), "a caller's copy is its own: wiping it leaves the cache's");
    assert.equal((await material.dataKey(ring, version(2), app, { hsmCalls: 0 })).hit, false, 'the data key has its own entry');
    assert.equal(material.cachedSecrets, 2);
  });
});
