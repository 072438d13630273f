// What the node side knows about the use of a ring's key versions, kept as HSM records
// (core/hsm/hsmRecords.ts) for the operator to read: etcd scan reports from the scanner, the last
// use of each version by the KMS plugin and the CSI provider, and the operator's requests for a
// scan. Key ids are public; nothing here is key material or plaintext.
import type { HsmRecords, StoredRecord } from '../hsm/hsmRecords.js';

/** Objects of one resource in etcd, by how they are stored. */
export interface ResourceCount {
  /** As the EncryptionConfiguration names it: `secrets`, `configmaps`, `widgets.example.com`. */
  resource: string;
  objects: number;
  /** Objects in a KMS v2 envelope of the scanned provider, by the key id stored with them. */
  byKeyId: Record<string, number>;
  /** Objects in another provider's envelope (another KMS provider, aescbc, ...). */
  otherProvider: number;
  /**
   * Of otherProvider, KMS v2 envelopes that could not be read (truncated, no key id): their key id
   * is unknown, so they may be under any version.
   */
  malformed?: number;
  /** Objects stored in plain text (identity). */
  unencrypted: number;
}

/** One scan of etcd by the read-only scanner beside the KMS plugin. */
export interface EtcdScanReport {
  schema: 1;
  ringId: string;
  /** The KMS provider name whose envelopes were counted (the stored prefix names it). */
  provider: string;
  /** The scan request this scan answers, if it was asked for. */
  request?: string;
  startedAt: string;
  finishedAt: string;
  /** The etcd revision every page was read at: one consistent snapshot. */
  revision?: number;
  /** False when the scan stopped early: then the counts prove nothing. */
  complete: boolean;
  /** Why the scan did not complete: etcd unreachable, credentials refused, ... */
  error?: string;
  resources: ResourceCount[];
  /** A few etcd keys per key id, so a report can name what still uses a version. */
  samples: Record<string, string[]>;
}

/** The operator asks the scanner for a fresh scan (after a re-encryption, say). */
export interface EtcdScanRequest {
  schema: 1;
  request: string;
  requestedAt: string;
}

export type KeyUseComponent = 'kms-plugin' | 'csi-provider';

export interface VersionUse {
  lastEncryptAt?: string;
  lastDecryptAt?: string;
  /** Other uses (the CSI provider's derivations and openings). */
  lastUseAt?: string;
}

/** One process's use of one ring, refreshed while it runs. */
export interface KeyUseRecord {
  schema: 1;
  ringId: string;
  component: KeyUseComponent;
  /** The node or host the process runs on. */
  host: string;
  updatedAt: string;
  /** KMS plugin: the key id its Status last reported to kube-apiserver, and when Status was last called. */
  statusKeyId?: string;
  lastStatusAt?: string;
  /** By key id. */
  versions: Record<string, VersionUse>;
  /** Versions left out, least recently used first, so the record fits the HSM record limit. */
  omittedVersions?: number;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function isScanReport(v: unknown, ringId: string): v is EtcdScanReport {
  return (
    isObject(v) &&
    v.schema === 1 &&
    v.ringId === ringId &&
    typeof v.startedAt === 'string' &&
    typeof v.finishedAt === 'string' &&
    typeof v.complete === 'boolean' &&
    Array.isArray(v.resources) &&
    v.resources.every((r) => isObject(r) && typeof r.resource === 'string' && typeof r.objects === 'number' && isObject(r.byKeyId))
  );
}

function isKeyUseRecord(v: unknown, ringId: string): v is KeyUseRecord {
  return isObject(v) && v.schema === 1 && v.ringId === ringId && typeof v.component === 'string' && typeof v.updatedAt === 'string' && isObject(v.versions);
}

function isScanRequest(v: unknown): v is EtcdScanRequest {
  return isObject(v) && v.schema === 1 && typeof v.request === 'string' && typeof v.requestedAt === 'string';
}

const valid = <T>(records: StoredRecord[], check: (v: unknown) => v is T): T[] => records.map((r) => r.value).filter(check);

/** Typed access to the key-use records of rings. */
export class KeyUseRecords {
  constructor(private readonly records: HsmRecords) {}

  writeScanReport(report: EtcdScanReport, writer: string): Promise<void> {
    return this.records.put('scan-report', report.ringId, writer, report);
  }

  /** Every scanner's latest report for a ring, newest first. */
  async scanReports(ringId: string): Promise<EtcdScanReport[]> {
    const reports = valid(await this.records.list('scan-report', ringId), (v): v is EtcdScanReport => isScanReport(v, ringId));
    return reports.sort((a, b) => b.finishedAt.localeCompare(a.finishedAt));
  }

  requestScan(ringId: string, request: EtcdScanRequest): Promise<void> {
    return this.records.put('scan-request', ringId, 'operator', request);
  }

  async scanRequest(ringId: string): Promise<EtcdScanRequest | undefined> {
    return valid(await this.records.list('scan-request', ringId), isScanRequest)[0];
  }

  writeUse(record: KeyUseRecord, writer: string): Promise<void> {
    return this.records.put('usage', record.ringId, writer, record);
  }

  async uses(ringId: string): Promise<KeyUseRecord[]> {
    return valid(await this.records.list('usage', ringId), (v): v is KeyUseRecord => isKeyUseRecord(v, ringId));
  }
}
