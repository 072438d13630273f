// Errors that name the problem. `code` is a short, stable identifier that callers map to gRPC
// status codes, Condition reasons or CLI exit messages; `message` never carries key material.
export type KeywardErrorCode =
  | 'SetupError' // the machine lacks something (a package, a binary, a free port)
  | 'InvalidArgument'
  | 'NotFound'
  | 'FailedPrecondition'
  | 'Unavailable' // the HSM or the apiserver is not reachable right now; retry
  | 'PermissionDenied'
  | 'Internal';

export class KeywardError extends Error {
  constructor(
    readonly code: KeywardErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'KeywardError';
  }
}

export const setupError = (message: string): KeywardError => new KeywardError('SetupError', message);
