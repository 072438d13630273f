import assert from 'node:assert/strict';
import pkcs11js from 'pkcs11js';
import { missingMechanisms, requiredMechanisms } from './requiredMechanisms.js';

describe('requiredMechanisms', () => {
  const all = Object.values(requiredMechanisms).flatMap((m) => Object.values<number>(m));

  it('finds nothing missing when every mechanism is offered', () => {
    assert.deepEqual(missingMechanisms(all), []);
  });

  it('names each missing mechanism under the purpose that needs it', () => {
    const withoutGcm = all.filter((m) => m !== pkcs11js.CKM_AES_GCM);
    assert.deepEqual(missingMechanisms(withoutGcm), ['encryption (KMS plugin, sealed secrets): CKM_AES_GCM']);
    assert.equal(missingMechanisms([]).length, 3);
  });
});
