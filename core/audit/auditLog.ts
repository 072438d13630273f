// One JSON record per key operation, allowed or refused, on a stream of its own, ready for a SIEM.
// Records name rings, versions and opaque key ids; never key material or plaintext.
import { pino, type Logger } from 'pino';

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

/** `destination` is a file path, or '-' for standard output. */
export function createAuditLog(component: string, destination: string): AuditLog {
  // The standard streams by descriptor: opening /dev/stderr fails when it is a socket.
  const dest = destination === '-' || destination === '/dev/stdout' ? 1 : destination === '/dev/stderr' ? 2 : destination;
  const stream = pino.destination({ dest, sync: false, mkdir: true });
  const logger: Logger = pino(
    { base: { stream: 'audit', component }, timestamp: pino.stdTimeFunctions.isoTime, messageKey: 'event' },
    stream,
  );
  return {
    record: (entry) => logger.info(entry),
    flush: () =>
      new Promise<void>((resolve) => {
        const flush = (): void => stream.flush(() => resolve());
        // A file destination opens asynchronously; flushing before it is open throws.
        if ((stream as unknown as { fd: number }).fd < 0) stream.once('ready', flush);
        else flush();
      }),
  };
}
