// The admission.k8s.io/v1 AdmissionReview exchange: parse the apiserver's request, answer with a
// verdict and (for KeyRings) a JSON patch carrying the destruction stamps, and audit each act.
import type { AuditLog } from '../../core/audit/auditLog.js';
import { KeywardError } from '../../core/errors.js';
import type { Decision, Requester } from '../../core/policy/policySet.js';
import type { Operation } from '../../core/policy/operations.js';
import type { KeyRingSpec } from '../../core/api/keyRing.js';

export interface AdmissionRequest {
  uid: string;
  operation: 'CREATE' | 'UPDATE' | 'DELETE' | 'CONNECT';
  namespace?: string;
  name?: string;
  userInfo: { username?: string; groups?: string[] };
  object?: unknown;
  oldObject?: unknown;
  dryRun?: boolean;
}

/** One authorisation made while admitting a request. */
export interface AuditAct {
  operation: Operation;
  keyVersion?: number;
  decision: Omit<Decision, 'reason'> & { reason: Decision['reason'] | 'TwoPersonRule' | 'VersionInUse' };
}

export interface Verdict {
  allowed: boolean;
  message?: string;
  acts?: AuditAct[];
  /** For an allowed KeyRing request: the spec to store (stamps written, forged ones restored). */
  spec?: KeyRingSpec;
}

export interface AdmissionResponse {
  apiVersion: 'admission.k8s.io/v1';
  kind: 'AdmissionReview';
  response: {
    uid: string;
    allowed: boolean;
    status?: { code: number; reason: string; message: string };
    patchType?: 'JSONPatch';
    patch?: string;
  };
}

const operations: ReadonlySet<unknown> = new Set(['CREATE', 'UPDATE', 'DELETE', 'CONNECT']);
/** The apiserver's uids are UUIDs; the bound keeps an echoed or audited uid short. */
const maxUidLength = 128;

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);
const optional = (value: unknown, type: 'string' | 'boolean'): boolean => value === undefined || typeof value === type;
const isStringList = (value: unknown): boolean => Array.isArray(value) && value.every((item) => typeof item === 'string');

/**
 * The request of an AdmissionReview, with the type of every field Keyward reads checked (the body
 * is whatever was posted to the webhook). Refuses with an InvalidArgument KeywardError.
 */
export function parseReview(body: unknown): AdmissionRequest {
  const request = isObject(body) ? body.request : undefined;
  const refuse = (what: string): KeywardError => new KeywardError('InvalidArgument', `not an admission.k8s.io/v1 AdmissionReview: ${what}`);
  if (!isObject(request)) throw refuse('no request object');
  const { uid, operation, userInfo } = request;
  if (typeof uid !== 'string' || uid.length === 0 || uid.length > maxUidLength) throw refuse(`request.uid must be a string of 1-${maxUidLength} characters`);
  if (!operations.has(operation)) throw refuse('request.operation must be CREATE, UPDATE, DELETE or CONNECT');
  if (!isObject(userInfo) || !optional(userInfo.username, 'string') || !(userInfo.groups === undefined || isStringList(userInfo.groups))) {
    throw refuse('request.userInfo must be an object with a string username and a list of string groups');
  }
  if (!optional(request.namespace, 'string') || !optional(request.name, 'string') || !optional(request.dryRun, 'boolean')) {
    throw refuse('request.namespace and request.name must be strings, request.dryRun a boolean');
  }
  return request as unknown as AdmissionRequest;
}

export const requesterOf = (request: AdmissionRequest): Requester => ({ username: request.userInfo.username ?? '', groups: request.userInfo.groups ?? [] });

export function respond(request: AdmissionRequest, verdict: Verdict): AdmissionResponse {
  const response: AdmissionResponse['response'] = { uid: request.uid, allowed: verdict.allowed };
  if (!verdict.allowed) response.status = { code: 403, reason: 'Forbidden', message: verdict.message ?? 'refused' };
  const current = (request.object as { spec?: unknown } | undefined)?.spec;
  if (verdict.allowed && verdict.spec && JSON.stringify(verdict.spec) !== JSON.stringify(current)) {
    response.patchType = 'JSONPatch';
    response.patch = Buffer.from(JSON.stringify([{ op: 'replace', path: '/spec', value: verdict.spec }])).toString('base64');
  }
  return { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', response };
}

export function auditActs(audit: AuditLog, request: AdmissionRequest, ring: string, acts: readonly AuditAct[]): void {
  for (const act of acts) {
    audit.record({
      requestId: request.uid,
      actor: request.userInfo.username ?? '',
      operation: act.operation,
      result: act.decision.allowed ? 'allowed' : 'denied',
      ring,
      keyVersion: act.keyVersion,
      code: act.decision.reason,
      rule: act.decision.rule,
      reason: act.decision.message,
      ...(act.decision.breakGlass ? { breakGlass: true } : {}),
      ...(request.dryRun ? { dryRun: true } : {}),
    });
  }
}
