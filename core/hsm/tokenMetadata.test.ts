// What the token itself says about Keyward's rings: every object's CKA_LABEL, CKA_ID and
// CKA_APPLICATION, read from a full listing (C_FindObjects with an empty template, session
// objects included), carry opaque ring ids only; never a KeyRing's name or namespace, nor
// anything that went through an operation. The ring's name is in its state object's value (that
// is how a name is resolved), which is not metadata an HSM inventory or its audit shows.
import assert from 'node:assert/strict';
import { createHash, randomUUID } from 'node:crypto';
import { sealSecret } from '../formats/sealedSecret.js';
import { signDigest } from './ecdsaSigning.js';
import { deriveKey } from './hmacDerivation.js';
import type { HsmToken } from './hsmToken.js';
import { keyObjectId, keyObjectLabel, ringObjectLabel, type RingAlgorithm } from './ringState.js';
import { RingStore } from './ringStore.js';
import { WorkingKeys } from './workingKeys.js';
import { useSoftHsmToken } from '../../testbed/hsm/softHsmFixture.js';
import { everyObject } from '../../testbed/hsm/tokenObjects.js';

describe('HSM object metadata in a real SoftHSM2 token [practice:no-sensitive-metadata]', () => {
  const hsm = useSoftHsmToken();
  let token: HsmToken;
  let store: RingStore;
  before(() => {
    token = hsm.token;
    store = new RingStore(token);
  });

  // Distinctive names, so that a match cannot be a coincidence.
  const keyRings: { name: string; namespace: string; algorithm: RingAlgorithm; ringId: string }[] = [
    { name: 'payroll-ledger-zq7', namespace: 'finance-emea-x9k', algorithm: 'AES_256_GCM', ringId: randomUUID() },
    { name: 'volume-derivation-wv3', namespace: 'storage-tenant-p4m', algorithm: 'HMAC_SHA_384', ringId: randomUUID() },
    { name: 'release-signer-hj2', namespace: 'ci-pipeline-r8t', algorithm: 'ECDSA_P384', ringId: randomUUID() },
  ];
  const plaintext = 'customer-card-4111-1111-1111-1111-plaintext';
  const derivationContext = 'tenant-context-secret-6ddf';
  const signedData = 'release-manifest-sha-e1b9';

  it('labels and ids every object by opaque ring id only: no KeyRing name, namespace or operation input', async () => {
    // As the operator does: each ring under its KeyRing's uid, then rotated once.
    for (const kr of keyRings) {
      await store.ensure(kr);
      await store.claimName(kr.ringId);
      await store.rotate({ ringId: kr.ringId });
    }
    const [encryption, derivation, signing] = keyRings.map((kr) => kr.ringId) as [string, string, string];

    // Operations with distinctive inputs, through working copies (session objects) where the
    // data plane uses them.
    const working = new WorkingKeys(token);
    await sealSecret(token, store, { name: keyRings[0]!.name, namespace: keyRings[0]!.namespace }, Buffer.from(plaintext));
    await deriveKey(token, await working.get((await store.keyHandle(derivation, 2))!), Buffer.from(derivationContext));
    await signDigest(token, (await store.keyHandle(signing, 2))!, createHash('sha384').update(signedData).digest());

    const objects = await everyObject(token);
    // Per ring: state objects (at least one), two AES or HMAC keys, or two pairs of ECDSA halves.
    assert.ok(objects.length >= 3 + 2 + 2 + 4, `only ${objects.length} objects listed`);

    const ringIds = new Set(keyRings.map((kr) => kr.ringId));
    const keyIds = new Set(keyRings.flatMap((kr) => [1, 2].map((v) => keyObjectId(kr.ringId, v).toString('hex'))));
    const keyLabels = new Set(keyRings.flatMap((kr) => [1, 2].map((v) => keyObjectLabel(kr.ringId, v))));
    const forbidden = [...keyRings.flatMap((kr) => [kr.name, kr.namespace]), plaintext, derivationContext, signedData];

    for (const object of objects) {
      const label = object.label?.toString('utf8') ?? '';
      const application = object.application?.toString('utf8') ?? '';
      const id = object.id ?? Buffer.alloc(0);
      for (const [what, bytes] of [['CKA_LABEL', object.label], ['CKA_ID', object.id], ['CKA_APPLICATION', object.application]] as const) {
        for (const text of forbidden) {
          assert.ok(!bytes?.includes(Buffer.from(text)), `${what} of an object (label ${label}) holds '${text}'`);
        }
      }
      // No operation input in any attribute the token reveals, the value of state objects included.
      for (const text of [plaintext, derivationContext, signedData]) assert.ok(!object.value?.includes(Buffer.from(text)), `an attribute value of ${label} holds '${text}'`);

      if (application === 'keyward.dev/ring-state') {
        // A ring's state: labelled by ring id, no CKA_ID.
        assert.ok([...ringIds].some((r) => label === ringObjectLabel(r)), `state object label ${label} is not keyward/ring/<ring id>`);
        assert.equal(id.length, 0, `state object ${label} has a CKA_ID`);
      } else {
        // A key (or a session copy of one): labelled by ring id and version, CKA_ID a digest.
        assert.ok(keyLabels.has(label), `key object label ${label} is not keyward/key/<ring id>/<version> of a ring made here`);
        assert.ok(keyIds.has(id.toString('hex')), `key object ${label} has a CKA_ID that is not a ring-id digest`);
        assert.equal(application, '', `key object ${label} has a CKA_APPLICATION`);
      }
    }
    // The operations did run against these rings (a listing of nothing would prove nothing).
    assert.ok(objects.some((o) => o.label?.toString() === keyObjectLabel(encryption, 2)));
    assert.ok(objects.filter((o) => o.label?.toString() === keyObjectLabel(signing, 2)).length >= 2, 'both halves of the signing key');
  });
});
