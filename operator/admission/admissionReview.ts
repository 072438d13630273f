// The admission.k8s.io/v1 AdmissionReview exchange: parse the apiserver's request, answer with a
// verdict and (for KeyRings) a JSON patch carrying the destruction stamps, and audit each act.
import type { AuditLog } from '../../core/audit/auditLog.js';
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
  decision: Omit<Decision, 'reason'> & { reason: Decision['reason'] | 'TwoPersonRule' };
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

export function parseReview(body: unknown): AdmissionRequest {
  const request = (body as { request?: AdmissionRequest } | null)?.request;
  if (!request || typeof request.uid !== 'string' || typeof request.operation !== 'string' || typeof request.userInfo !== 'object') {
    throw new Error('not an admission.k8s.io/v1 AdmissionReview with a request');
  }
  return request;
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
