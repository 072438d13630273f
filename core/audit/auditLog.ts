// One JSON record per key operation, allowed or refused, on a stream of its own, ready for a SIEM.
// Records name rings, versions and opaque key ids; never key material or plaintext.
import { createWriteStream, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Writable } from 'node:stream';
import { KeywardError, setupError } from '../errors.js';

export type AuditResult = 'allowed' | 'denied' | 'failed';

export interface AuditRecord {
  /** The caller's request id (the apiserver's uid for KMS calls), or one we made. */
  requestId: string;
  actor: string;
  operation: string;
  result: AuditResult;
  ring?: string;
  ringId?: string;
  keyVersion?: number;
  keyId?: string;
  /** A status code or decision reason (e.g. Granted, NotGranted, SeparationOfDuties). */
  code?: string;
  /** CSI mounts: the pod, as namespace/name (claimed until its token is verified). */
  pod?: string;
  /** CSI mounts: the object's name in the SecretProviderClass. */
  object?: string;
  /** For a refused KeyPolicy write: the policy, as namespace/name. */
  policy?: string;
  /** The KeyPolicy rule that decided, as namespace/policy#rule. */
  rule?: string;
  reason?: string;
  /** Volume commands: the encrypted directory. */
  volume?: string;
  /** Volume commands: the fscrypt key identifier (hex) of the directory's policy; public. */
  keyIdentifier?: string;
  /** Allowed through a BreakGlassAdministrator grant. */
  breakGlass?: boolean;
  /** A dry-run request: authorised, but nothing was done. */
  dryRun?: boolean;
}

export interface AuditLog {
  record(entry: AuditRecord): void;
  /** Writes out what is buffered; await before exit. */
  flush(): Promise<void>;
}

/**
 * `destination` is a file path, or '-' for standard output. A record is one JSON line laid out as
 * pino lays out a log line (level, time, then the fields), so one shipper reads logs and audit
 * alike. It is built here directly, and the records of one event-loop turn go out in one write:
 * pino's general serialiser and a write per record cost a fifth of a KMS call.
 */
export function createAuditLog(component: string, destination: string): AuditLog {
  const out = openDestination(destination);
  const prefix = `","stream":"audit","component":${JSON.stringify(component)}`;
  let batch: string[] = [];
  let failure: Error | undefined;
  out.on('error', (err) => (failure = err));
  const writeBatch = (done?: () => void): void => {
    const text = batch.join('');
    batch = [];
    if (text.length > 0 || done) out.write(text, () => done?.());
  };
  return {
    record: (entry) => {
      // Fail closed: an operation that cannot be audited is not reported as done.
      if (failure) throw new KeywardError('Unavailable', `the audit log cannot be written (${(failure as NodeJS.ErrnoException).code ?? failure.message})`);
      const fields = JSON.stringify(entry);
      if (batch.length === 0) setImmediate(writeBatch);
      batch.push(`{"level":30,"time":"${new Date().toISOString()}${prefix}${fields.length > 2 ? `,${fields.slice(1)}` : '}'}\n`);
    },
    flush: () => new Promise<void>((resolve) => writeBatch(resolve)),
  };
}

/** The standard streams by descriptor (opening /dev/stderr fails when it is a socket), or a file to append to. */
function openDestination(destination: string): Writable {
  if (destination === '-' || destination === '/dev/stdout') return process.stdout;
  if (destination === '/dev/stderr') return process.stderr;
  mkdirSync(dirname(destination), { recursive: true });
  // Opened here, so a path that cannot be written is refused at start with its reason.
  let fd: number;
  try {
    fd = openSync(destination, 'a');
  } catch (err) {
    throw setupError(`cannot open audit log ${destination}: ${(err as Error).message}`);
  }
  return createWriteStream(destination, { fd });
}
