// Verdicts on who may do what: implicit deny, operations by name, policy lag, separation of
// duties, roles and break-glass, least privilege, two-person destruction.
import type { KeyPolicy } from '../../core/api/keyPolicy.js';
import type { KeyRing } from '../../core/api/keyRing.js';
import { breakGlassMaxMs, operations, type Operation } from '../../core/policy/operations.js';
import type { ClusterSnapshot } from '../clusterSnapshot.js';
import { admissionState } from './admissionState.js';
import { fromEvidence, gap, info, isPast, ok, unreadable, type Assessment, type Evidence } from './assessment.js';
import { policyFacts, ringRef } from './policyFacts.js';

// Groups that stand for everyone: the CRD refuses them; an older CRD or a forced write may not have.
const everyone = /^Group (system:authenticated|system:unauthenticated|system:serviceaccounts(:.*)?)$/;

/** Reads both lists or says which could not be read. */
function policiesAndRings(s: ClusterSnapshot): { policies: KeyPolicy[]; rings: KeyRing[] } | Assessment {
  if (s.keyPolicies.state !== 'read') return unreadable(s.keyPolicies, 'KeyPolicies');
  if (s.keyRings.state !== 'read') return unreadable(s.keyRings, 'KeyRings');
  return { policies: s.keyPolicies.value, rings: s.keyRings.value };
}

const isAssessment = (x: object): x is Assessment => 'verdict' in x;

export function implicitDeny(s: ClusterSnapshot): Assessment {
  if (s.webhooks.state !== 'read') return unreadable(s.webhooks, 'admission webhook configurations');
  const read = policiesAndRings(s);
  if (isAssessment(read)) return read;
  const admission = admissionState(s.webhooks.value);
  const evidence: Evidence[] = [...admission.evidence];
  const enforced = policyFacts(read.policies).grants.filter((g) => g.enforced);
  const ungranted = read.rings.filter((r) => !enforced.some((g) => g.namespace === r.metadata.namespace && g.keyRing === r.metadata.name));
  evidence.push(info('KeyPolicy is default deny: an operation is allowed only by an enforced, unexpired grant naming it'));
  if (ungranted.length > 0) {
    evidence.push(ok(`${ungranted.length} KeyRing(s) with no grant, which nobody may use or manage: ${ungranted.map((r) => ringRef(r.metadata.namespace ?? '', r.metadata.name ?? '')).join(', ')}`));
  }
  const verdict = admission.keyRings === 'missing' ? 'fails' : admission.keyRings === 'fails-open' || admission.keyPolicies !== 'fails-closed' ? 'partial' : 'holds';
  return { verdict, evidence };
}

export function operationsByName(s: ClusterSnapshot, now: Date): Assessment {
  if (s.keyPolicies.state !== 'read') return unreadable(s.keyPolicies, 'KeyPolicies');
  const facts = policyFacts(s.keyPolicies.value);
  const evidence: Evidence[] = [];
  for (const grant of facts.grants) {
    const wildcard = everyone.test(grant.subject) || grant.keyRing.includes('*') || grant.subject.includes('*');
    const state = !grant.enforced ? ', not enforced' : isPast(grant.expiresAt, now) ? `, expired ${grant.expiresAt}` : grant.expiresAt ? `, until ${grant.expiresAt}` : '';
    const line = `${grant.subject} on KeyRing ${ringRef(grant.namespace, grant.keyRing)}: ${grant.operations.join(', ')} (${grant.rule}${state})`;
    evidence.push(wildcard ? gap(`a grant to everyone or by wildcard: ${line}`) : ok(line));
  }
  if (facts.grants.length === 0) evidence.push(ok('no KeyPolicy grants anything: nothing is allowed'));
  return fromEvidence(evidence);
}

export function policyLag(s: ClusterSnapshot): Assessment {
  if (s.keyPolicies.state !== 'read') return unreadable(s.keyPolicies, 'KeyPolicies');
  const evidence: Evidence[] = [
    info('enforcement follows the KeyPolicy watch in every component, without waiting for a status write (measured by npm run bench:policy)'),
  ];
  if (s.keyPolicies.value.length === 0) return { verdict: 'unknown', evidence: [...evidence, info('no KeyPolicies: nothing shows the operator evaluating them')] };
  for (const policy of s.keyPolicies.value) {
    const name = ringRef(policy.metadata.namespace ?? '', policy.metadata.name ?? '');
    const observed = policy.status?.observedGeneration;
    if (observed !== undefined && observed === policy.metadata.generation) evidence.push(ok(`KeyPolicy ${name}: generation ${observed} evaluated by the operator`));
    else evidence.push(gap(`KeyPolicy ${name}: generation ${policy.metadata.generation ?? '?'} not evaluated yet (status shows ${observed ?? 'none'}): is the operator running?`));
  }
  return fromEvidence(evidence, 'partial');
}

export function separationOfDuties(s: ClusterSnapshot): Assessment {
  if (s.keyPolicies.state !== 'read') return unreadable(s.keyPolicies, 'KeyPolicies');
  const facts = policyFacts(s.keyPolicies.value);
  const evidence: Evidence[] = [];
  for (const mixed of facts.mixedDuties) {
    evidence.push(
      gap(
        `${mixed.subject} is granted both use and management of KeyRing ${ringRef(mixed.namespace, mixed.keyRing)} (${mixed.operations.join(', ')}) by ${mixed.rules.join(' and ')}`,
      ),
    );
  }
  for (const refused of facts.notEnforced) evidence.push(gap(`KeyPolicy ${ringRef(refused.namespace, refused.name)} is not enforced: ${refused.reason}`));
  const managers = new Set(facts.grants.filter((g) => g.operations.some(isManagement)).map((g) => g.subject));
  const users = new Set(facts.grants.filter((g) => g.operations.some(isUse)).map((g) => g.subject));
  if (facts.mixedDuties.length === 0) evidence.push(ok(`no subject holds both use and management of one KeyRing (${managers.size} manage, ${users.size} use)`));
  evidence.push(info('group membership is known only per request: a user in a managing and a using group of one ring is refused then'));
  if (s.webhooks.state === 'read' && admissionState(s.webhooks.value).keyRings === 'missing') {
    evidence.push(gap('the KeyRing webhook is not registered: management is open to anyone RBAC lets patch KeyRings, users of the key included'));
  }
  if (facts.mixedDuties.length > 0) return { verdict: 'fails', evidence };
  return fromEvidence(evidence, 'partial');
}

const isManagement = (op: Operation): boolean => operations[op].kind === 'management';
const isUse = (op: Operation): boolean => operations[op].kind === 'use';

export function roles(s: ClusterSnapshot, now: Date): Assessment {
  if (s.keyPolicies.state !== 'read') return unreadable(s.keyPolicies, 'KeyPolicies');
  const evidence: Evidence[] = [];
  const used = new Map<string, number>();
  for (const policy of s.keyPolicies.value) {
    for (const rule of policy.spec.rules) for (const role of rule.roles ?? []) used.set(role, (used.get(role) ?? 0) + 1);
  }
  evidence.push(info(used.size ? `roles in use: ${[...used].map(([role, n]) => `${role} (${n} rule${n > 1 ? 's' : ''})`).join(', ')}` : 'no rule names a role'));
  const breakGlass = policyFacts(s.keyPolicies.value).grants.filter((g) => g.breakGlass);
  for (const grant of breakGlass) {
    const who = `break-glass ${grant.subject} on KeyRing ${ringRef(grant.namespace, grant.keyRing)} (${grant.rule})`;
    if (!grant.expiresAt) evidence.push(gap(`${who} has no expiry`));
    else if (isPast(grant.expiresAt, now)) evidence.push(ok(`${who} expired at ${grant.expiresAt} and no longer works`));
    else if (Date.parse(grant.expiresAt) - now.getTime() > breakGlassMaxMs) evidence.push(gap(`${who} runs until ${grant.expiresAt}, more than 24 h from now`));
    else evidence.push(ok(`${who} is active until ${grant.expiresAt}`));
  }
  if (breakGlass.length === 0) evidence.push(ok('no break-glass grant'));
  return fromEvidence(evidence);
}

export function leastPrivilege(s: ClusterSnapshot, now: Date): Assessment {
  if (s.keyPolicies.state !== 'read') return unreadable(s.keyPolicies, 'KeyPolicies');
  const evidence: Evidence[] = [];
  const grants = policyFacts(s.keyPolicies.value).grants;
  const timeBound = grants.filter((g) => g.expiresAt && !isPast(g.expiresAt, now));
  evidence.push(info(`${grants.length} grant(s), ${timeBound.length} of them time-bound and still running`));
  for (const grant of grants.filter((g) => isPast(g.expiresAt, now))) {
    evidence.push(gap(`${grant.subject} on KeyRing ${ringRef(grant.namespace, grant.keyRing)} expired at ${grant.expiresAt} and is still listed in ${grant.rule}: remove it`));
  }
  let rbacSeen = false;
  if (s.rbac.state === 'read' && s.rbac.value.length > 0) {
    rbacSeen = true;
    for (const role of s.rbac.value) {
      const wild = (role.rules ?? []).filter((r) => [...(r.verbs ?? []), ...(r.resources ?? []), ...(r.apiGroups ?? [])].includes('*'));
      const name = `${role.kind} ${role.metadata.namespace ? `${role.metadata.namespace}/` : ''}${role.metadata.name ?? ''}`;
      if (wild.length > 0) evidence.push(gap(`${name} grants by wildcard: ${JSON.stringify(wild)}`));
      else evidence.push(ok(`${name}: ${(role.rules ?? []).length} rule(s), each naming its verbs and resources`));
    }
  } else {
    evidence.push(gap(s.rbac.state === 'read' ? "no ClusterRole or Role labelled app.kubernetes.io/name=keyward: the operator's RBAC is not visible" : `Keyward's RBAC: ${s.rbac.reason}`));
  }
  const wildcard = evidence.some((e) => e.status === 'gap' && e.text.includes('by wildcard'));
  return { verdict: wildcard ? 'fails' : rbacSeen && !evidence.some((e) => e.status === 'gap') ? 'holds' : 'partial', evidence };
}

export function twoPersonIntegrity(s: ClusterSnapshot): Assessment {
  if (s.keyRings.state !== 'read') return unreadable(s.keyRings, 'KeyRings');
  if (s.webhooks.state !== 'read') return unreadable(s.webhooks, 'admission webhook configurations');
  const admission = admissionState(s.webhooks.value);
  const evidence: Evidence[] = [];
  if (admission.keyRings === 'missing') evidence.push(gap('the KeyRing webhook is not registered: destruction stamps are not written by admission, so one person can write both'));
  else if (admission.keyRings === 'fails-open') evidence.push(gap('the KeyRing webhook fails open: while it is down, destruction stamps go unchecked'));
  else evidence.push(ok('destruction requests and approvals are stamped by admission from the authenticated identities'));
  for (const ring of s.keyRings.value) {
    const name = ringRef(ring.metadata.namespace ?? '', ring.metadata.name ?? '');
    for (const version of ring.status?.versions ?? []) {
      if (version.state !== 'DestroyScheduled' && version.state !== 'Destroyed') continue;
      const request = ring.spec.versions?.find((v) => v.number === version.number)?.destroyRequest;
      const what = `KeyRing ${name} version ${version.number} ${version.state}`;
      if (!request) evidence.push(info(`${what}; its request is no longer in the spec`));
      else if (!request.approvedBy) evidence.push(gap(`${what} without a recorded approval (requested by ${request.requestedBy})`));
      else if (request.approvedBy === request.requestedBy) evidence.push(gap(`${what}: requested and approved by the same person, ${request.requestedBy}`));
      else evidence.push(ok(`${what}: requested by ${request.requestedBy} at ${request.requestedAt}, approved by ${request.approvedBy} at ${request.approvedAt ?? '?'}`));
    }
    const deletion = ring.spec.deletionDestroyRequest;
    if (ring.spec.deletionPolicy === 'Destroy') {
      if (deletion?.approvedBy && deletion.approvedBy !== deletion.requestedBy) {
        evidence.push(ok(`KeyRing ${name} deletionPolicy Destroy: requested by ${deletion.requestedBy}, approved by ${deletion.approvedBy}`));
      } else evidence.push(info(`KeyRing ${name} deletionPolicy Destroy is not approved by a second person: deleting it keeps its keys`));
    }
  }
  return fromEvidence(evidence);
}
