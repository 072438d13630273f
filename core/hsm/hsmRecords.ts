// Small JSON records kept in the HSM beside ring state: what node-side components tell the
// operator without going through the apiserver (etcd scan reports from the scanner, key use from
// the KMS plugin and CSI provider, scan requests from the operator). The token already decides who
// may write (the PIN), so these need no other channel. Each record has one writer, named in its
// label; a write adds the new object and then removes the older ones (SoftHSM2 cannot change a
// data object's value in place), so a reader always finds at least one whole record.
import pkcs11js from 'pkcs11js';
import { KeywardError } from '../errors.js';
import { pkcs11Code, type Handle, type HsmToken } from './hsmToken.js';

export const recordKinds = ['scan-report', 'scan-request', 'usage'] as const;
export type RecordKind = (typeof recordKinds)[number];

/** A record's JSON is bounded, so a corrupt or hostile object cannot make a reader allocate without limit. */
export const maxRecordBytes = 64 * 1024;
const writerPattern = /^[A-Za-z0-9._@:-]{1,128}$/;

export interface StoredRecord {
  writer: string;
  writtenAt: string;
  /** The record as written; callers check its shape before trusting it. */
  value: unknown;
}

interface Envelope {
  writtenAt: string;
  /** Orders two writes in one millisecond: newest wins. */
  sequence: number;
  value: unknown;
}

/**
 * One CKA_APPLICATION per kind and ring, so a reader searches only its ring's records. (Not
 * CKA_ID: PKCS#11 data objects have none, and SoftHSM2 refuses it with CKR_ATTRIBUTE_TYPE_INVALID.)
 */
const application = (kind: RecordKind, ringId: string): string => `keyward.dev/${kind}/${ringId}`;
const recordLabel = (kind: RecordKind, ringId: string, writer: string): string => `keyward/${kind}/${ringId}/${writer}`;

export class HsmRecords {
  private sequence = 0;

  constructor(private readonly token: HsmToken) {}

  /** Replaces this writer's record of one kind for one ring. */
  async put(kind: RecordKind, ringId: string, writer: string, value: unknown): Promise<void> {
    if (!writerPattern.test(writer)) throw new KeywardError('InvalidArgument', `record writer '${writer.slice(0, 40)}' must be 1-128 of A-Z a-z 0-9 . _ @ : -`);
    const envelope: Envelope = { writtenAt: new Date().toISOString(), sequence: ++this.sequence, value };
    const bytes = Buffer.from(JSON.stringify(envelope));
    if (bytes.length > maxRecordBytes) throw new KeywardError('InvalidArgument', `a ${kind} record is ${bytes.length} bytes; the limit is ${maxRecordBytes}`);
    const label = recordLabel(kind, ringId, writer);
    await this.token.withSession((session) => {
      const older = this.find(session, kind, ringId).filter((h) => this.readLabel(session, h) === label);
      this.token.pkcs11.C_CreateObject(session, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
        { type: pkcs11js.CKA_TOKEN, value: true },
        { type: pkcs11js.CKA_PRIVATE, value: true },
        { type: pkcs11js.CKA_APPLICATION, value: application(kind, ringId) },
        { type: pkcs11js.CKA_LABEL, value: label },
        { type: pkcs11js.CKA_VALUE, value: bytes },
      ]);
      for (const handle of older) destroyIfPresent(this.token, session, handle);
    });
  }

  /** The newest record of each writer of one kind for one ring; unreadable objects are skipped. */
  async list(kind: RecordKind, ringId: string): Promise<StoredRecord[]> {
    const prefix = recordLabel(kind, ringId, '');
    return this.token.withSession((session) => {
      const newest = new Map<string, StoredRecord & { sequence: number }>();
      for (const handle of this.find(session, kind, ringId)) {
        const object = this.readObject(session, handle);
        if (!object?.label.startsWith(prefix)) continue;
        const envelope = parseEnvelope(object.value);
        if (!envelope) continue;
        const writer = object.label.slice(prefix.length);
        const seen = newest.get(writer);
        if (seen && (seen.writtenAt > envelope.writtenAt || (seen.writtenAt === envelope.writtenAt && seen.sequence > envelope.sequence))) continue;
        newest.set(writer, { writer, writtenAt: envelope.writtenAt, sequence: envelope.sequence, value: envelope.value });
      }
      return [...newest.values()].map(({ writer, writtenAt, value }) => ({ writer, writtenAt, value }));
    });
  }

  /** Removes every record of one kind for one ring (a ring destroyed, a request answered). */
  async remove(kind: RecordKind, ringId: string): Promise<void> {
    await this.token.withSession((session) => {
      for (const handle of this.find(session, kind, ringId)) destroyIfPresent(this.token, session, handle);
    });
  }

  private find(session: Handle, kind: RecordKind, ringId: string): Handle[] {
    const { pkcs11 } = this.token;
    pkcs11.C_FindObjectsInit(session, [
      { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
      // A public object needs no PIN to create, so it cannot pass for a record.
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_APPLICATION, value: application(kind, ringId) },
    ]);
    try {
      const handles: Handle[] = [];
      for (let batch = pkcs11.C_FindObjects(session, 64); batch.length > 0; batch = pkcs11.C_FindObjects(session, 64)) handles.push(...batch);
      return handles;
    } finally {
      pkcs11.C_FindObjectsFinal(session);
    }
  }

  private readLabel(session: Handle, handle: Handle): string | undefined {
    try {
      return this.token.pkcs11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_LABEL }])[0]?.value?.toString('utf8');
    } catch (err) {
      if (pkcs11Code(err) === pkcs11js.CKR_OBJECT_HANDLE_INVALID) return undefined;
      throw err;
    }
  }

  private readObject(session: Handle, handle: Handle): { label: string; value: Buffer } | undefined {
    try {
      const [label, value] = this.token.pkcs11.C_GetAttributeValue(session, handle, [{ type: pkcs11js.CKA_LABEL }, { type: pkcs11js.CKA_VALUE }]);
      if (!value?.value || value.value.length > maxRecordBytes) return undefined;
      return { label: label?.value?.toString('utf8') ?? '', value: value.value };
    } catch (err) {
      // Gone (its writer replaced it meanwhile), an attribute this object lacks, or half-written by
      // a process killed inside C_CreateObject (see ringPersistence.ts): not a record.
      const code = pkcs11Code(err);
      if (code === pkcs11js.CKR_OBJECT_HANDLE_INVALID || code === pkcs11js.CKR_ATTRIBUTE_TYPE_INVALID || code === pkcs11js.CKR_ATTRIBUTE_VALUE_INVALID) return undefined;
      throw err;
    }
  }
}

function parseEnvelope(bytes: Buffer): Envelope | undefined {
  try {
    const parsed = JSON.parse(bytes.toString('utf8')) as Partial<Envelope> | null;
    if (!parsed || typeof parsed.writtenAt !== 'string' || typeof parsed.sequence !== 'number') return undefined;
    return parsed as Envelope;
  } catch {
    return undefined;
  }
}

function destroyIfPresent(token: HsmToken, session: Handle, handle: Handle): void {
  try {
    token.pkcs11.C_DestroyObject(session, handle);
  } catch (err) {
    if (pkcs11Code(err) !== pkcs11js.CKR_OBJECT_HANDLE_INVALID) throw err;
  }
}
