// The KeyPolicies of the cluster as Keyward evaluates them (core/policy): which are enforced, every
// grant expanded per subject and ring, and the subjects whose declared grants mix use and
// management of one ring (Keyward enforces only the older policy; the report still names them).
import { policyDocument, type KeyPolicy } from '../../core/api/keyPolicy.js';
import { mixesUseAndManagement, type Operation } from '../../core/policy/operations.js';
import { PolicySet, type Grant } from '../../core/policy/policySet.js';

export interface GrantInForce extends Grant {
  namespace: string;
  policy: string;
  /** False for a grant of a policy Keyward refuses to enforce. */
  enforced: boolean;
}

export interface MixedDuty {
  namespace: string;
  subject: string;
  keyRing: string;
  operations: Operation[];
  rules: string[];
}

export interface PolicyFacts {
  grants: GrantInForce[];
  notEnforced: { namespace: string; name: string; reason: string }[];
  mixedDuties: MixedDuty[];
}

export function policyFacts(policies: KeyPolicy[]): PolicyFacts {
  const documents = policies.map(policyDocument);
  const set = new PolicySet(documents);
  const grants: GrantInForce[] = [];
  const notEnforced: PolicyFacts['notEnforced'] = [];
  for (const doc of documents) {
    const verdict = set.verdict(doc.namespace, doc.name);
    if (!verdict) continue;
    if (!verdict.enforced) notEnforced.push({ namespace: doc.namespace, name: doc.name, reason: verdict.reason ?? 'not enforced' });
    for (const grant of verdict.grants) grants.push({ ...grant, namespace: doc.namespace, policy: doc.name, enforced: verdict.enforced });
  }
  const held = new Map<string, MixedDuty>();
  for (const grant of grants) {
    const key = `${grant.namespace}\u0000${grant.subject}\u0000${grant.keyRing}`;
    const entry = held.get(key) ?? { namespace: grant.namespace, subject: grant.subject, keyRing: grant.keyRing, operations: [], rules: [] };
    entry.operations = [...new Set([...entry.operations, ...grant.operations])];
    if (!entry.rules.includes(grant.rule)) entry.rules.push(grant.rule);
    held.set(key, entry);
  }
  const mixedDuties = [...held.values()].filter((entry) => mixesUseAndManagement(entry.operations));
  return { grants, notEnforced, mixedDuties };
}

export const ringRef = (namespace: string, name: string): string => `${namespace}/${name}`;
