// KeyPolicy evaluation, the same in every enforcement point (admission, operator, CSI provider):
// default deny, operations granted by name, expiring grants, and separation of duties.
//
// Policies of a namespace are taken oldest first (creationTimestamp, then name). A policy whose
// grants would give one subject both use and management of a ring, together with its own rules
// or with the policies before it, is not enforced at all: every component reaches the same
// verdict from the same objects, with no wait for a status write.
import { breakGlassRole, expandGrant, mixesUseAndManagement, type Operation, type Role } from './operations.js';

/** A ServiceAccount (with its namespace), a User or a Group, as the apiserver authenticates them. */
export interface Subject {
  kind: 'ServiceAccount' | 'User' | 'Group';
  name: string;
  namespace?: string;
}

export interface PolicyRule {
  name?: string;
  subjects: Subject[];
  keyRings: string[];
  roles?: Role[];
  operations?: Operation[];
  expiresAt?: string;
}

/** The parts of a KeyPolicy that evaluation reads. */
export interface PolicyDocument {
  namespace: string;
  name: string;
  /** Absent for a policy not yet admitted: it counts as the newest. */
  creationTimestamp?: string;
  rules: PolicyRule[];
}

/** Who asks: the identity the apiserver authenticated (or a verified ServiceAccount token). */
export interface Requester {
  username: string;
  groups: readonly string[];
}

export type DecisionReason = 'Granted' | 'NoPolicy' | 'NotGranted' | 'GrantExpired' | 'SeparationOfDuties';

export interface Decision {
  allowed: boolean;
  reason: DecisionReason;
  /** The rule that decided, as `namespace/policy#rule`; absent when no rule applied. */
  rule?: string;
  breakGlass: boolean;
  message: string;
}

/** One subject's operations on one ring from one rule, as a policy's status shows it. */
export interface Grant {
  subject: string;
  keyRing: string;
  operations: Operation[];
  rule: string;
  expiresAt?: string;
  breakGlass: boolean;
}

export interface PolicyVerdict {
  enforced: boolean;
  /** Why the policy is not enforced; names the subject, the ring and the other policy. */
  reason?: string;
  grants: Grant[];
}

const serviceAccountPrefix = 'system:serviceaccount:';

export function subjectKey(subject: Subject): string {
  return subject.kind === 'ServiceAccount' ? `ServiceAccount ${subject.namespace ?? ''}/${subject.name}` : `${subject.kind} ${subject.name}`;
}

/** The subject keys a requester answers to: its user (or ServiceAccount) and each of its groups. */
export function requesterKeys(requester: Requester): string[] {
  const keys = requester.groups.map((group) => `Group ${group}`);
  if (requester.username.startsWith(serviceAccountPrefix)) {
    const [namespace, name] = requester.username.slice(serviceAccountPrefix.length).split(':');
    if (namespace && name) return [`ServiceAccount ${namespace}/${name}`, ...keys];
  }
  return [`User ${requester.username}`, ...keys];
}

export function ruleRef(policy: PolicyDocument, index: number): string {
  const rule = policy.rules[index];
  return `${policy.namespace}/${policy.name}#${rule?.name ?? `rules[${index}]`}`;
}

/** Every grant of one policy, expanded per subject and ring. */
export function policyGrants(policy: PolicyDocument): Grant[] {
  return policy.rules.flatMap((rule, index) => {
    const operations = expandGrant(rule.roles, rule.operations);
    const breakGlass = rule.roles?.includes(breakGlassRole) ?? false;
    return rule.subjects.flatMap((subject) =>
      rule.keyRings.map((keyRing) => ({
        subject: subjectKey(subject),
        keyRing,
        operations,
        rule: ruleRef(policy, index),
        ...(rule.expiresAt ? { expiresAt: rule.expiresAt } : {}),
        breakGlass,
      })),
    );
  });
}

const olderFirst = (a: PolicyDocument, b: PolicyDocument): number => {
  // A policy not admitted yet sorts last.
  const at = (p: PolicyDocument): number => (p.creationTimestamp ? Date.parse(p.creationTimestamp) : Number.POSITIVE_INFINITY);
  return at(a) - at(b) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
};

/** The policies of one namespace, checked for separation of duties and indexed for decisions. */
class NamespacePolicies {
  readonly verdicts = new Map<string, PolicyVerdict>();
  /** Enforced grants by ring, then by subject key. */
  private readonly byRing = new Map<string, Map<string, Grant[]>>();

  constructor(policies: PolicyDocument[]) {
    // What each (subject, ring) holds so far, and which rule gave it, across enforced policies.
    const held = new Map<string, { ops: Set<Operation>; rules: Set<string> }>();
    for (const policy of [...policies].sort(olderFirst)) {
      const grants = policyGrants(policy);
      const conflict = findConflict(grants, held);
      if (conflict) {
        this.verdicts.set(policy.name, { enforced: false, reason: conflict, grants });
        continue;
      }
      this.verdicts.set(policy.name, { enforced: true, grants });
      for (const grant of grants) {
        const key = `${grant.subject}\u0000${grant.keyRing}`;
        const entry = held.get(key) ?? { ops: new Set(), rules: new Set() };
        for (const op of grant.operations) entry.ops.add(op);
        entry.rules.add(grant.rule);
        held.set(key, entry);
        const bySubject = this.byRing.get(grant.keyRing) ?? new Map<string, Grant[]>();
        bySubject.set(grant.subject, [...(bySubject.get(grant.subject) ?? []), grant]);
        this.byRing.set(grant.keyRing, bySubject);
      }
    }
  }

  /** The enforced grants on a ring that apply to a requester. */
  grantsFor(keys: readonly string[], keyRing: string): Grant[] {
    const bySubject = this.byRing.get(keyRing);
    return bySubject ? keys.flatMap((key) => bySubject.get(key) ?? []) : [];
  }

  hasRing(keyRing: string): boolean {
    return this.byRing.has(keyRing);
  }
}

/** Whether adding these grants makes any (subject, ring) hold both use and management. */
function findConflict(grants: Grant[], held: Map<string, { ops: Set<Operation>; rules: Set<string> }>): string | undefined {
  const combined = new Map<string, { ops: Set<Operation>; rules: Set<string>; grant: Grant }>();
  for (const grant of grants) {
    const key = `${grant.subject}\u0000${grant.keyRing}`;
    const before = held.get(key);
    const entry = combined.get(key) ?? { ops: new Set(before?.ops), rules: new Set(before?.rules), grant };
    for (const op of grant.operations) entry.ops.add(op);
    entry.rules.add(grant.rule);
    combined.set(key, entry);
  }
  for (const { ops, rules, grant } of combined.values()) {
    if (mixesUseAndManagement(ops)) {
      return (
        `separation of duties: ${grant.subject} would both use and manage KeyRing ${grant.keyRing} ` +
        `(${[...ops].join(', ')}) through ${[...rules].sort().join(' and ')}; grant use and management to different subjects`
      );
    }
  }
  return undefined;
}

/** An immutable view of all KeyPolicies; build a new one when any changes (cheap). */
export class PolicySet {
  private readonly namespaces = new Map<string, NamespacePolicies>();

  constructor(policies: Iterable<PolicyDocument>) {
    const grouped = new Map<string, PolicyDocument[]>();
    for (const policy of policies) grouped.set(policy.namespace, [...(grouped.get(policy.namespace) ?? []), policy]);
    for (const [namespace, list] of grouped) this.namespaces.set(namespace, new NamespacePolicies(list));
  }

  /** This set with one namespace's policies replaced; the other namespaces are shared, not rebuilt. */
  withNamespace(namespace: string, policies: readonly PolicyDocument[]): PolicySet {
    const next = new PolicySet([]);
    for (const [ns, built] of this.namespaces) if (ns !== namespace) next.namespaces.set(ns, built);
    if (policies.length > 0) next.namespaces.set(namespace, new NamespacePolicies([...policies]));
    return next;
  }

  /** Whether a policy is enforced, and its grants expanded; undefined for an unknown policy. */
  verdict(namespace: string, name: string): PolicyVerdict | undefined {
    return this.namespaces.get(namespace)?.verdicts.get(name);
  }

  /**
   * Default deny: allowed only by an enforced, unexpired grant naming this operation. A standing
   * grant is chosen over a break-glass one unless `preferBreakGlass` (an override only break-glass
   * may make, such as retiring a version etcd still uses).
   */
  decide(requester: Requester, namespace: string, keyRing: string, operation: Operation, now: Date, options: { preferBreakGlass?: boolean } = {}): Decision {
    const policies = this.namespaces.get(namespace);
    const ringName = `KeyRing ${namespace}/${keyRing}`;
    if (!policies?.hasRing(keyRing)) {
      return deny('NoPolicy', `no enforced KeyPolicy grants anything on ${ringName}; nobody may ${operation} it`);
    }
    const grants = policies.grantsFor(requesterKeys(requester), keyRing);
    const live = grants.filter((g) => !g.expiresAt || Date.parse(g.expiresAt) > now.getTime());
    // Groups are only known per request: a user can hold use through one and management through another.
    if (mixesUseAndManagement(live.flatMap((g) => g.operations))) {
      return deny(
        'SeparationOfDuties',
        `separation of duties: ${requester.username} would both use and manage ${ringName} through ${live.map((g) => g.rule).join(' and ')}; refused until one grant goes`,
      );
    }
    const order = options.preferBreakGlass ? -1 : 1;
    const granting = live.filter((g) => g.operations.includes(operation)).sort((a, b) => order * (Number(a.breakGlass) - Number(b.breakGlass)));
    const chosen = granting[0];
    if (chosen) {
      return {
        allowed: true,
        reason: 'Granted',
        rule: chosen.rule,
        breakGlass: chosen.breakGlass,
        message: `${operation} on ${ringName} granted by ${chosen.rule}${chosen.breakGlass ? ' (break-glass)' : ''}`,
      };
    }
    const expired = grants.find((g) => g.operations.includes(operation));
    if (expired) {
      return { ...deny('GrantExpired', `the grant of ${operation} on ${ringName} in ${expired.rule} expired at ${expired.expiresAt}`), rule: expired.rule };
    }
    return deny('NotGranted', `${requester.username} is not granted ${operation} on ${ringName} by any enforced KeyPolicy`);
  }
}

const deny = (reason: DecisionReason, message: string): Decision => ({ allowed: false, reason, breakGlass: false, message });
