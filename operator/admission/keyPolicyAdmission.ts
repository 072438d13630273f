// Admission of KeyPolicies: what the CRD's CEL rules cannot see. Expiries are checked against the
// clock (break-glass at most 24 h ahead), and separation of duties across every policy of the
// namespace: a change that would leave any policy unenforced is refused.
import { breakGlassRole, breakGlassMaxMs } from '../../core/policy/operations.js';
import { PolicySet, type PolicyDocument } from '../../core/policy/policySet.js';
import { policyDocument, type KeyPolicy } from '../../core/api/keyPolicy.js';

export interface KeyPolicyAdmissionInput {
  object: KeyPolicy;
  oldObject?: KeyPolicy;
  /** Every admitted KeyPolicy, from the informer cache. */
  admitted: readonly KeyPolicy[];
  now: Date;
}

/** Undefined when allowed, else a message naming each problem. */
export function admitKeyPolicy(input: KeyPolicyAdmissionInput): string | undefined {
  const problems = [...expiryProblems(input), ...separationProblems(input)];
  return problems.length > 0 ? problems.join('; ') : undefined;
}

function expiryProblems({ object, oldObject, now }: KeyPolicyAdmissionInput): string[] {
  // An expiry already admitted keeps its meaning: only new or changed ones are judged against now.
  // A break-glass expiry counts as admitted only if it was admitted for a break-glass rule: one
  // admitted for an ordinary grant (say 10 days) must not let a rule become break-glass for as long.
  const expiryKey = (rule: { roles?: readonly string[]; expiresAt?: string }): string => `${rule.roles?.includes(breakGlassRole) ? 'break-glass ' : ''}${rule.expiresAt}`;
  const admittedExpiries = new Set((oldObject?.spec.rules ?? []).filter((r) => r.expiresAt !== undefined).flatMap((r) => [`${r.expiresAt}`, expiryKey(r)]));
  return object.spec.rules.flatMap((rule, index) => {
    if (!rule.expiresAt || admittedExpiries.has(expiryKey(rule))) return [];
    const field = `spec.rules[${index}].expiresAt`;
    const expires = Date.parse(rule.expiresAt);
    if (expires <= now.getTime()) return [`${field} ${rule.expiresAt} is already past`];
    if (rule.roles?.includes(breakGlassRole) && expires - now.getTime() > breakGlassMaxMs) {
      const hours = ((expires - now.getTime()) / 3_600_000).toFixed(1);
      return [`${field} ${rule.expiresAt} is ${hours}h ahead; ${breakGlassRole} grants may run at most 24h`];
    }
    return [];
  });
}

function separationProblems({ object, oldObject, admitted }: KeyPolicyAdmissionInput): string[] {
  const namespace = object.metadata.namespace ?? '';
  const name = object.metadata.name ?? '';
  const others = admitted.filter((p) => p.metadata.namespace === namespace && p.metadata.name !== name).map(policyDocument);
  const before = new PolicySet(others);
  const candidate: PolicyDocument = { ...policyDocument(object), creationTimestamp: oldObject ? policyDocument(oldObject).creationTimestamp : undefined };
  const after = new PolicySet([...others, candidate]);
  const problems: string[] = [];
  const own = after.verdict(namespace, name);
  if (own && !own.enforced) problems.push(own.reason ?? 'separation of duties');
  for (const other of others) {
    const verdict = after.verdict(namespace, other.name);
    if (before.verdict(namespace, other.name)?.enforced && verdict && !verdict.enforced) {
      problems.push(`this change would stop KeyPolicy ${other.name} from being enforced: ${verdict.reason}`);
    }
  }
  return problems;
}
