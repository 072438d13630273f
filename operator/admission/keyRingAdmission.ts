// Admission of KeyRing changes: every management request written into a KeyRing's spec is carried
// out only for a requester whose KeyPolicy grants that operation, judged on the identity the
// apiserver authenticated. Destruction takes two people: the webhook stamps who requested and who
// approved, and restores those stamps if a request tries to change them.
import type { Operation } from '../../core/policy/operations.js';
import type { Decision, PolicySet, Requester } from '../../core/policy/policySet.js';
import { defaultApprovalWindowMs, type DestroyRequest, type KeyRing, type KeyRingDesiredVersion, type KeyRingSpec } from '../../core/api/keyRing.js';
import type { AuditAct, Verdict } from './admissionReview.js';
import { etcdRetirementRefusal } from '../retirement/retirementGate.js';

interface Act {
  operation: Operation;
  /** What it acts on, for messages and audit: "version 3" or "the KeyRing". */
  target: string;
  version?: number;
}

/** Whether a refused part of the request is a rule of the two-person check rather than policy. */
class TwoPersonRefusal {
  constructor(
    readonly act: Act,
    readonly message: string,
  ) {}
}

type Spec = Partial<KeyRingSpec>;

export interface KeyRingAdmissionInput {
  operation: 'CREATE' | 'UPDATE';
  requester: Requester;
  namespace: string;
  name: string;
  object: KeyRing;
  oldObject?: KeyRing;
  policies: PolicySet;
  now: Date;
  approvalWindowMs?: number;
}

/** The verdict, the acts to audit, and the spec with stamps to write when allowed. */
export function admitKeyRing(input: KeyRingAdmissionInput): Verdict {
  const { requester, now } = input;
  const window = input.approvalWindowMs ?? defaultApprovalWindowMs;
  const next: Spec = input.object.spec;
  const old: Spec = input.oldObject?.spec ?? {};
  const acts: Act[] = [];
  const refusals: TwoPersonRefusal[] = [];
  // What every destroyStamps call shares: who asks, when, and where acts and refusals go.
  const context: StampContext = { acts, refusals, requester, now, window };

  // Ring level: the rotation schedule, on-demand rotation, and destruction on deletion.
  if (next.rotationRequest !== undefined && next.rotationRequest !== old.rotationRequest) acts.push({ operation: 'rotate', target: 'the KeyRing' });
  else if (
    input.operation === 'UPDATE' &&
    (next.rotationPeriod !== old.rotationPeriod || next.algorithm !== old.algorithm || JSON.stringify(next.reEncryption ?? {}) !== JSON.stringify(old.reEncryption ?? {}))
  ) {
    // Re-encryption settings decide when older versions can retire: part of rotating.
    acts.push({ operation: 'rotate', target: 'the KeyRing' });
  }
  const ringStamp = destroyStamps({
    target: 'the KeyRing (deletionPolicy Destroy)',
    requested: next.deletionPolicy === 'Destroy',
    wasRequested: (old.deletionPolicy ?? 'Retain') === 'Destroy',
    approve: next.approveDestroy === true,
    wasApproved: old.approveDestroy === true,
    oldStamp: old.deletionDestroyRequest,
    ...context,
  });

  // Version level: desired states, destruction requests and approvals. A version with no entry
  // before is judged from its state in status: dropping an entry changes nothing in the HSM, so
  // dropping and adding it back must not turn a cancelDestroy into an enableVersion.
  const oldVersions = new Map((old.versions ?? []).map((v) => [v.number, v]));
  const actualStates = new Map((input.oldObject?.status?.versions ?? []).map((v) => [v.number, v.state]));
  const versions = (next.versions ?? []).map((desired): KeyRingDesiredVersion => {
    const before = oldVersions.get(desired.number);
    const target = `version ${desired.number}`;
    const was = before?.state ?? desiredState(actualStates.get(desired.number));
    const version = desired.number;
    if (desired.state !== was) {
      if (was === 'DestroyScheduled') acts.push({ operation: 'cancelDestroy', target, version });
      if (desired.state === 'Disabled' && was !== 'DestroyScheduled') acts.push({ operation: 'disableVersion', target, version });
      if (desired.state === 'Enabled') acts.push({ operation: 'enableVersion', target, version });
    }
    const destroyRequest = destroyStamps({
      target,
      version,
      requested: desired.state === 'DestroyScheduled',
      wasRequested: was === 'DestroyScheduled',
      approve: desired.approveDestroy === true,
      wasApproved: before?.approveDestroy === true,
      oldStamp: before?.destroyRequest,
      ...context,
    });
    return {
      ...without(desired, 'destroyRequest', 'approveDestroy', 'retirementOverride'),
      // A standing break-glass stamp stays while its request does; a new one is stamped below.
      ...(before?.retirementOverride && before.state === desired.state ? { retirementOverride: before.retirementOverride } : {}),
      ...(desired.state === 'DestroyScheduled' && desired.approveDestroy !== undefined ? { approveDestroy: desired.approveDestroy } : {}),
      ...(destroyRequest ? { destroyRequest } : {}),
    };
  });

  const spec: KeyRingSpec = {
    ...without(next as KeyRingSpec, 'deletionDestroyRequest', 'approveDestroy', 'versions'),
    ...(next.deletionPolicy === 'Destroy' && next.approveDestroy !== undefined ? { approveDestroy: next.approveDestroy } : {}),
    ...(ringStamp ? { deletionDestroyRequest: ringStamp } : {}),
    ...(next.versions !== undefined ? { versions } : {}),
  };

  // Retirement: a version etcd may still need is neither disabled nor destroyed, except under a
  // break-glass grant, which is stamped on the request for the operator and audited as such.
  // A requester holding both a standing and a break-glass grant overrides through the break-glass one.
  const inUse = new Map<Act, string>();
  const overrides = new Map<Act, Decision>();
  for (const act of acts) {
    if (act.version === undefined || (act.operation !== 'disableVersion' && act.operation !== 'scheduleDestroy')) continue;
    const refusal = etcdRetirementRefusal(input.oldObject?.status, act.version);
    if (!refusal) continue;
    const decision = input.policies.decide(requester, input.namespace, input.name, act.operation, now, { preferBreakGlass: true });
    const desired = versions.find((v) => v.number === act.version);
    if (decision.allowed && decision.breakGlass && desired) {
      desired.retirementOverride = { by: requester.username, at: now.toISOString(), reason: refusal };
      // Audited as what it is: break-glass over what etcd still needs.
      overrides.set(act, { ...decision, message: `${decision.message}, overriding retirement: ${refusal}` });
    } else inUse.set(act, refusal);
  }

  const audited: AuditAct[] = [];
  const denials: string[] = [];
  // An act the two-person rule refuses is judged once: by policy if policy refuses it, else by the rule.
  const twoPerson = new Map(refusals.map((refusal) => [refusal.act, refusal]));
  for (const act of acts) {
    const decision = overrides.get(act) ?? input.policies.decide(requester, input.namespace, input.name, act.operation, now);
    if (decision.allowed && twoPerson.has(act)) continue;
    const retirement = inUse.get(act);
    if (decision.allowed && retirement) {
      audited.push({ operation: act.operation, keyVersion: act.version, decision: { allowed: false, reason: 'VersionInUse', breakGlass: false, message: retirement } });
      denials.push(`${act.operation} on ${act.target}: ${retirement}`);
      continue;
    }
    twoPerson.delete(act);
    audited.push({ operation: act.operation, keyVersion: act.version, decision });
    if (!decision.allowed) denials.push(`${act.operation} on ${act.target}: ${decision.message}`);
  }
  for (const refusal of twoPerson.values()) {
    audited.push({
      operation: refusal.act.operation,
      keyVersion: refusal.act.version,
      decision: { allowed: false, reason: 'TwoPersonRule', breakGlass: false, message: refusal.message },
    });
    denials.push(`${refusal.act.operation} on ${refusal.act.target}: ${refusal.message}`);
  }
  if (denials.length > 0) return { allowed: false, message: `KeyRing ${input.namespace}/${input.name}: ${denials.join('; ')}`, acts: audited };
  return { allowed: true, acts: audited, spec };
}

interface StampContext {
  acts: Act[];
  refusals: TwoPersonRefusal[];
  requester: Requester;
  now: Date;
  window: number;
}

interface StampInput extends StampContext {
  target: string;
  version?: number;
  requested: boolean;
  wasRequested: boolean;
  approve: boolean;
  wasApproved: boolean;
  oldStamp?: DestroyRequest;
}

/** The destruction stamps after this request: new on a request, kept, approved, or cleared. */
function destroyStamps(s: StampInput): DestroyRequest | undefined {
  const request: Act = { operation: 'scheduleDestroy', target: s.target, version: s.version };
  const approval: Act = { operation: 'approveDestroy', target: s.target, version: s.version };
  if (!s.requested) {
    if (s.wasRequested && s.version === undefined) s.acts.push({ operation: 'cancelDestroy', target: s.target });
    if (s.approve) s.refusals.push(new TwoPersonRefusal(approval, 'there is no destruction request to approve'));
    return undefined;
  }
  if (!s.wasRequested) {
    s.acts.push(request);
    if (s.approve) s.refusals.push(new TwoPersonRefusal(approval, 'a request cannot carry its own approval; a second person approves it in a separate change'));
    return { requestedBy: s.requester.username, requestedAt: s.now.toISOString() };
  }
  // A standing request: its stamps are kept whatever the request body says.
  const standing = s.oldStamp;
  if (!standing) {
    // A request from before admission was installed has no stamps: it must be made again.
    if (s.approve && !s.wasApproved) s.refusals.push(new TwoPersonRefusal(approval, 'the request carries no requester; request the destruction again'));
    return undefined;
  }
  if (s.approve === s.wasApproved) return standing;
  if (!s.approve) {
    s.acts.push({ operation: 'cancelDestroy', target: s.target, version: s.version });
    return without(standing, 'approvedBy', 'approvedAt');
  }
  s.acts.push(approval);
  if (standing.requestedBy === s.requester.username) {
    s.refusals.push(new TwoPersonRefusal(approval, `${s.requester.username} requested this destruction and cannot also approve it; a second person must`));
    return standing;
  }
  const expiresAt = Date.parse(standing.requestedAt) + s.window;
  if (s.now.getTime() > expiresAt) {
    s.refusals.push(
      new TwoPersonRefusal(
        approval,
        `the request by ${standing.requestedBy} expired at ${new Date(expiresAt).toISOString()} (approval window ${s.window / 60000} min); it must be requested again`,
      ),
    );
    return standing;
  }
  return { ...standing, approvedBy: s.requester.username, approvedAt: s.now.toISOString() };
}

/** A state from status as a desired state; undefined for states nobody asks for (Destroyed, ...). */
function desiredState(state: string | undefined): KeyRingDesiredVersion['state'] | undefined {
  return state === 'Enabled' || state === 'Disabled' || state === 'DestroyScheduled' ? state : undefined;
}

function without<T extends object, K extends keyof T>(value: T, ...keys: K[]): Omit<T, K> {
  const copy = { ...value };
  for (const key of keys) delete copy[key];
  return copy;
}
