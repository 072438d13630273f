import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { useSoftHsmToken } from '../../testbed/hsm/softHsmFixture.js';
import { HsmRecords, maxRecordBytes, type RecordKind } from './hsmRecords.js';
import type { Handle, HsmToken } from './hsmToken.js';

describe('HSM records in a real SoftHSM2 token', () => {
  const hsm = useSoftHsmToken();
  let token: HsmToken;
  let records: HsmRecords;
  before(() => {
    token = hsm.token;
    records = new HsmRecords(token);
  });

  /** Every data object whose label starts with `keyward/<kind>/<ringId>/`, whatever its other attributes. */
  const objectsOf = (kind: RecordKind, ringId: string): Promise<{ handle: Handle; label: string }[]> =>
    token.withSession((s) => {
      token.pkcs11.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA }]);
      let handles: Handle[];
      try {
        handles = token.pkcs11.C_FindObjects(s, 10_000);
      } finally {
        token.pkcs11.C_FindObjectsFinal(s);
      }
      return handles
        .map((handle) => ({ handle, label: token.pkcs11.C_GetAttributeValue(s, handle, [{ type: pkcs11js.CKA_LABEL }])[0]?.value?.toString() ?? '' }))
        .filter((o) => o.label.startsWith(`keyward/${kind}/${ringId}/`));
    });

  /** A data object beside a real record: the same application, this value, label and privacy. */
  const plantBeside = async (kind: RecordKind, ringId: string, label: string, value: Buffer, isPrivate = true): Promise<void> => {
    const [real] = await objectsOf(kind, ringId);
    assert.ok(real, 'a real record to copy the attributes of');
    await token.withSession((s) => {
      const [application] = token.pkcs11.C_GetAttributeValue(s, real.handle, [{ type: pkcs11js.CKA_APPLICATION }]);
      token.pkcs11.C_CreateObject(s, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_PRIVATE, value: isPrivate },
        { type: pkcs11js.CKA_APPLICATION, value: application!.value },
        { type: pkcs11js.CKA_LABEL, value: label },
        { type: pkcs11js.CKA_VALUE, value },
      ]);
    });
  };

  it('replaces a writer’s record, leaving exactly one object per writer label', async () => {
    const ringId = randomUUID();
    for (let i = 1; i <= 3; i++) await records.put('usage', ringId, 'kms-plugin@node-a', { round: i });
    const objects = await objectsOf('usage', ringId);
    assert.deepEqual(
      objects.map((o) => o.label),
      [`keyward/usage/${ringId}/kms-plugin@node-a`],
    );
    const [record] = await records.list('usage', ringId);
    assert.equal(record?.writer, 'kms-plugin@node-a');
    assert.deepEqual(record?.value, { round: 3 }, 'the newest value');
    assert.ok(Date.now() - Date.parse(record.writtenAt) < 60_000);
  });

  it('keeps two writers side by side, and the kinds and rings apart', async () => {
    const ringId = randomUUID();
    await records.put('usage', ringId, 'kms-plugin@node-a', { from: 'a' });
    await records.put('usage', ringId, 'csi-provider@node-b', { from: 'b' });
    await records.put('usage', ringId, 'kms-plugin@node-a', { from: 'a2' });
    await records.put('scan-report', ringId, 'scanner@node-a', { scan: 1 });
    const listed = (await records.list('usage', ringId)).sort((x, y) => x.writer.localeCompare(y.writer));
    assert.deepEqual(
      listed.map((r) => [r.writer, r.value]),
      [
        ['csi-provider@node-b', { from: 'b' }],
        ['kms-plugin@node-a', { from: 'a2' }],
      ],
    );
    assert.equal((await objectsOf('usage', ringId)).length, 2);
    assert.deepEqual((await records.list('scan-report', ringId)).map((r) => r.value), [{ scan: 1 }]);
    assert.deepEqual(await records.list('usage', randomUUID()), [], 'another ring has none');

    await records.remove('usage', ringId);
    assert.deepEqual(await records.list('usage', ringId), []);
    assert.equal((await records.list('scan-report', ringId)).length, 1, 'remove takes one kind only');
  });

  it('refuses an oversized value and bad writer names, writing nothing', async () => {
    const ringId = randomUUID();
    await assert.rejects(records.put('usage', ringId, 'w', { blob: 'x'.repeat(maxRecordBytes) }), /a usage record is \d+ bytes; the limit is 65536/);
    for (const writer of ['', 'a/b', 'kms plugin', 'x'.repeat(129), 'ünïcode', 'a\nb']) {
      await assert.rejects(records.put('usage', ringId, writer, {}), (err: Error) => /record writer .* must be 1-128 of/s.test(err.message), `writer ${JSON.stringify(writer)}`);
    }
    assert.equal((await objectsOf('usage', ringId)).length, 0);
    // Just under the limit is fine.
    await records.put('usage', ringId, 'x'.repeat(128), { blob: 'y'.repeat(maxRecordBytes - 200) });
    assert.equal((await records.list('usage', ringId))[0]?.writer, 'x'.repeat(128));
  });

  it('skips a corrupt object, and the writer’s next put replaces it', async () => {
    const ringId = randomUUID();
    await records.put('usage', ringId, 'good', { ok: true });
    await plantBeside('usage', ringId, `keyward/usage/${ringId}/broken`, Buffer.from('{not json'));
    await plantBeside('usage', ringId, `keyward/usage/${ringId}/no-envelope`, Buffer.from(JSON.stringify({ value: 1 })));
    assert.equal((await objectsOf('usage', ringId)).length, 3);
    assert.deepEqual((await records.list('usage', ringId)).map((r) => r.writer), ['good']);
    await records.put('usage', ringId, 'broken', { fixed: true });
    assert.deepEqual((await records.list('usage', ringId)).map((r) => r.writer).sort(), ['broken', 'good']);
    assert.equal((await objectsOf('usage', ringId)).filter((o) => o.label.endsWith('/broken')).length, 1, 'the corrupt object went with the write');
  });

  it('writes private objects, and ignores a public one planted with the same attributes', async () => {
    const ringId = randomUUID();
    await records.put('usage', ringId, 'kms-plugin@node-a', { real: true });
    const [real] = await objectsOf('usage', ringId);
    const privateFlag = await token.withSession((s) => token.pkcs11.C_GetAttributeValue(s, real!.handle, [{ type: pkcs11js.CKA_PRIVATE }])[0]?.value);
    assert.equal(privateFlag?.readUInt8(0), 1, 'CKA_PRIVATE is true: readable only after login');
    // A public object needs no PIN to create: it must not pass for a record.
    const forged = JSON.stringify({ writtenAt: '2999-01-01T00:00:00.000Z', sequence: 1, value: { forged: true } });
    await plantBeside('usage', ringId, `keyward/usage/${ringId}/kms-plugin@node-a`, Buffer.from(forged), false);
    await plantBeside('usage', ringId, `keyward/usage/${ringId}/intruder`, Buffer.from(forged), false);
    assert.deepEqual(
      (await records.list('usage', ringId)).map((r) => [r.writer, r.value]),
      [['kms-plugin@node-a', { real: true }]],
    );
  });
});
