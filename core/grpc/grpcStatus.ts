// gRPC status codes as the wire carries them, and how a failure becomes one: only a KeywardError's
// code and message reach a caller; anything else is reported as an internal error.
import { KeywardError, type KeywardErrorCode } from '../errors.js';

/** The codes Keyward answers with, numbered as in grpc/status.proto. */
export const GrpcCode = {
  OK: 0,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
} as const;

export type GrpcCodeName = keyof typeof GrpcCode;

const codeNameOf: Record<KeywardErrorCode, GrpcCodeName> = {
  SetupError: 'FAILED_PRECONDITION',
  InvalidArgument: 'INVALID_ARGUMENT',
  NotFound: 'NOT_FOUND',
  FailedPrecondition: 'FAILED_PRECONDITION',
  Unavailable: 'UNAVAILABLE',
  PermissionDenied: 'PERMISSION_DENIED',
  Internal: 'INTERNAL',
};

/** The status a handler's failure is answered with. */
export function grpcStatusOf(err: unknown): { code: GrpcCodeName; message: string } {
  if (err instanceof KeywardError) return { code: codeNameOf[err.code], message: err.message };
  return { code: 'INTERNAL', message: 'internal error' };
}

/** grpc-message is percent-encoded: bytes outside printable ASCII, and '%' itself. */
export function encodeGrpcMessage(message: string): string {
  let out = '';
  for (const byte of Buffer.from(message, 'utf8')) {
    out += byte >= 0x20 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}
