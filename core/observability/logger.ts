// Structured JSON logs on stderr. Audit records go to their own stream (see audit/auditLog.ts).
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(component: string, level = process.env.KEYWARD_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { component }, timestamp: pino.stdTimeFunctions.isoTime }, pino.destination({ dest: 2, sync: false }));
}
