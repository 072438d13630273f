// Verdicts on the keys themselves, from KeyRing specs and statuses: where each key is, rotation,
// destruction windows, algorithms, labels, and the practices the cluster cannot show.
import type { KeyRing } from '../../core/api/keyRing.js';
import { parseDuration } from '../../core/api/duration.js';
import type { ClusterSnapshot } from '../clusterSnapshot.js';
import { ageText, fromEvidence, gap, info, isPast, ok, unreadable, type Assessment, type Evidence } from './assessment.js';
import { ringRef } from './policyFacts.js';
import { sensitiveContent } from './sensitiveContent.js';

const name = (ring: KeyRing): string => ringRef(ring.metadata.namespace ?? '', ring.metadata.name ?? '');
const ready = (ring: KeyRing) => ring.status?.conditions?.find((c) => c.type === 'Ready');

/** The KeyRings, or the assessment saying why there is nothing to judge. */
function ringsOf(s: ClusterSnapshot): KeyRing[] | Assessment {
  if (s.keyRings.state !== 'read') return unreadable(s.keyRings, 'KeyRings');
  if (s.keyRings.value.length === 0) return { verdict: 'unknown', evidence: [info('no KeyRings in the cluster: nothing to judge')] };
  return s.keyRings.value;
}

export function keyLocation(s: ClusterSnapshot): Assessment {
  const rings = ringsOf(s);
  if (!Array.isArray(rings)) return rings;
  const evidence: Evidence[] = [];
  for (const ring of rings) {
    const condition = ready(ring);
    if (condition?.status !== 'True') evidence.push(gap(`KeyRing ${name(ring)} is not Ready (${condition ? `${condition.reason ?? ''}: ${condition.message ?? ''}` : 'no status yet'})`));
    for (const v of ring.status?.versions ?? []) {
      if (v.state === 'Destroyed') continue;
      if (v.hsmToken && v.hsmObjectId) evidence.push(ok(`KeyRing ${name(ring)} version ${v.number} (${v.state}): ${v.algorithm ?? '?'} in HSM token ${v.hsmToken}, object id ${v.hsmObjectId}`));
      else evidence.push(gap(`KeyRing ${name(ring)} version ${v.number} (${v.state}): status does not say where it is kept`));
    }
  }
  evidence.push(...kmsEvidence(s));
  return fromEvidence(evidence, 'partial');
}

/** What the cluster shows of Secrets encrypted in etcd: the apiserver's KMS check and the plugin's pods. */
function kmsEvidence(s: ClusterSnapshot): Evidence[] {
  const evidence: Evidence[] = [];
  if (s.apiserverReadyz.state === 'read') {
    const checks = s.apiserverReadyz.value.split('\n').filter((line) => /kms-provider/.test(line));
    if (checks.length === 0) evidence.push(info('kube-apiserver runs no KMS provider check: Secrets in etcd are not encrypted through a KMS plugin'));
    for (const line of checks) evidence.push(line.startsWith('[+]') ? ok(`kube-apiserver readiness: ${line.trim()}`) : gap(`kube-apiserver readiness: ${line.trim()}`));
  } else evidence.push(info(`kube-apiserver readiness: ${s.apiserverReadyz.reason}`));
  if (s.workloads.state === 'read') {
    for (const pod of s.workloads.value.filter((w) => w.kind === 'Pod')) {
      const where = `KMS plugin pod ${ringRef(pod.metadata.namespace ?? '', pod.metadata.name ?? '')}${pod.staticPod ? ' (static pod)' : ''}`;
      evidence.push(pod.ready ? ok(`${where} is Ready`) : gap(`${where} is not Ready`));
    }
  }
  evidence.push(info('what etcd holds cannot be read through the apiserver: the report does not check stored Secrets'));
  return evidence;
}

export function rotation(s: ClusterSnapshot, now: Date): Assessment {
  const rings = ringsOf(s);
  if (!Array.isArray(rings)) return rings;
  const evidence: Evidence[] = [];
  for (const ring of rings) {
    const primary = ring.status?.versions?.find((v) => v.number === ring.status?.primaryVersion);
    const age = primary?.createTime ? `primary version ${primary.number} is ${ageText(now.getTime() - Date.parse(primary.createTime))} old` : 'no primary version yet';
    if (!ring.spec.rotationPeriod) {
      evidence.push(gap(`KeyRing ${name(ring)} has no rotationPeriod: it rotates only on request; ${age}`));
      continue;
    }
    const next = ring.status?.nextRotationTime;
    if (isPast(next, now)) evidence.push(gap(`KeyRing ${name(ring)} rotation overdue since ${next} (period ${ring.spec.rotationPeriod}); ${age}`));
    else evidence.push(ok(`KeyRing ${name(ring)} rotates every ${ring.spec.rotationPeriod}, next ${next ?? 'not scheduled yet'}; ${age}`));
    if (parseDuration(ring.spec.rotationPeriod) > 90 * 86_400_000) {
      evidence.push(info(`KeyRing ${name(ring)}: a period over 90 days, longer than Kubernetes' guidance for the key that encrypts etcd`));
    }
  }
  return fromEvidence(evidence);
}

export function softDelete(s: ClusterSnapshot, now: Date): Assessment {
  const rings = ringsOf(s);
  if (!Array.isArray(rings)) return rings;
  const evidence: Evidence[] = [];
  for (const ring of rings) {
    const window = ring.spec.destroyScheduledDuration ?? '720h';
    const days = parseDuration(window) / 86_400_000;
    const line = `KeyRing ${name(ring)}: a destruction waits ${window} (${days} days), fixed at creation; deletionPolicy ${ring.spec.deletionPolicy ?? 'Retain'}`;
    evidence.push(days < 7 ? gap(`${line}: shorter than the 7 days managed KMSs allow at least`) : ok(line));
    for (const v of ring.status?.versions ?? []) {
      if (v.state === 'DestroyScheduled') {
        evidence.push(info(`KeyRing ${name(ring)} version ${v.number} scheduled for destruction at ${v.destroyTime ?? '?'}${isPast(v.destroyTime, now) ? ' (due)' : '; cancellable until then'}`));
      } else if (v.state === 'Destroyed') evidence.push(info(`KeyRing ${name(ring)} version ${v.number} destroyed at ${v.destroyTime ?? '?'}`));
    }
  }
  return fromEvidence(evidence, 'partial');
}

/**
 * Versions retired only once etcd is proven not to need them: for rings the KMS plugin serves,
 * every Disabled or destroyed version was counted at zero objects by the scanner (or overridden
 * under a break-glass grant, which is shown), and whether re-encryption after rotation runs.
 */
export function verifiedRetirement(s: ClusterSnapshot): Assessment {
  const rings = ringsOf(s);
  if (!Array.isArray(rings)) return rings;
  const served = rings.filter((ring) => ring.status?.reEncryption);
  if (served.length === 0) {
    return { verdict: 'unknown', evidence: [info('no KeyRing shows status.reEncryption: none is served by the KMS plugin, so nothing in etcd depends on a version')] };
  }
  const evidence: Evidence[] = [];
  for (const ring of served) {
    const run = ring.status?.reEncryption;
    if (ring.spec.reEncryption?.enabled === false) evidence.push(info(`KeyRing ${name(ring)}: re-encryption after rotation is off; older versions retire only once their objects are rewritten by other means`));
    else evidence.push(ok(`KeyRing ${name(ring)}: re-encryption under version ${run?.targetVersion} is ${run?.phase}${run?.method ? ` (${run.method})` : ''}`));
    const retirement = ring.status?.conditions?.find((c) => c.type === 'RetirementComplete');
    if (retirement) evidence.push((retirement.status === 'True' ? ok : info)(`KeyRing ${name(ring)} RetirementComplete=${retirement.status} (${retirement.reason}): ${retirement.message}`));
    for (const v of ring.status?.versions ?? []) {
      if (v.state !== 'Disabled' && v.state !== 'DestroyScheduled' && v.state !== 'Destroyed') continue;
      const override = ring.spec.versions?.find((d) => d.number === v.number)?.retirementOverride;
      if ((v.etcdObjects ?? 0) > 0) {
        const line = `KeyRing ${name(ring)} version ${v.number} is ${v.state} while etcd holds ${v.etcdObjects} objects under it (scan at ${v.etcdObjectsProvenAt ?? '?'})`;
        evidence.push(override ? info(`${line}: overridden under a break-glass grant by ${override.by} at ${override.at}`) : gap(line));
      } else if (v.etcdObjectsProvenAt) evidence.push(ok(`KeyRing ${name(ring)} version ${v.number} (${v.state}): no object in etcd under it (scan at ${v.etcdObjectsProvenAt})`));
    }
  }
  return fromEvidence(evidence);
}

const cnsaAlgorithms = new Set(['AES-256-GCM', 'HMAC-SHA-384', 'ECDSA-P384']);

export function cnsa(s: ClusterSnapshot): Assessment {
  const rings = ringsOf(s);
  if (!Array.isArray(rings)) return rings;
  const evidence: Evidence[] = [];
  const counts = new Map<string, number>();
  for (const ring of rings) {
    for (const v of ring.status?.versions ?? []) {
      if (!v.algorithm) continue;
      counts.set(v.algorithm, (counts.get(v.algorithm) ?? 0) + 1);
      if (!cnsaAlgorithms.has(v.algorithm)) evidence.push(gap(`KeyRing ${name(ring)} version ${v.number} uses ${v.algorithm}, not a CNSA 1.0 algorithm`));
    }
  }
  if (counts.size === 0) return { verdict: 'unknown', evidence: [info('no key version reports its algorithm yet')] };
  evidence.unshift(ok(`versions by algorithm: ${[...counts].map(([a, n]) => `${a} ${n}`).join(', ')}`));
  evidence.push(info('every ciphertext carries a format version and an algorithm id (core/formats), a property of the code'));
  return fromEvidence(evidence);
}

export function noSensitiveMetadata(s: ClusterSnapshot): Assessment {
  const rings = ringsOf(s);
  if (!Array.isArray(rings)) return rings;
  const evidence: Evidence[] = [];
  for (const ring of rings) {
    const ringId = ring.status?.ringId;
    if (ringId && ringId === ring.metadata.name) evidence.push(gap(`KeyRing ${name(ring)}: its HSM ring id is its name`));
    const texts: [string, string][] = [
      ['name', ring.metadata.name ?? ''],
      ...Object.entries(ring.metadata.labels ?? {}).flatMap(([k, v]): [string, string][] => [
        [`label key ${k}`, k],
        [`label ${k}`, v],
      ]),
    ];
    for (const [where, text] of texts) {
      const why = sensitiveContent(text);
      // Never repeat the suspect text: it may be a secret.
      if (why) evidence.push(gap(`KeyRing ${name(ring)}: its ${where} looks like ${why}`));
    }
  }
  evidence.unshift(info('HSM objects are labelled keyward/ring/<ring id> and keyward/key/<ring id>/<version>, the ring id being the KeyRing uid; metric labels carry names and opaque ids'));
  if (!evidence.some((e) => e.status === 'gap')) evidence.push(ok(`${rings.length} KeyRing name(s) and their labels carry nothing that looks like key material or credentials`));
  return fromEvidence(evidence);
}

/** A label as key=value, its value withheld when it looks secret (no-sensitive-metadata reports it). */
const labelText = (key: string, value: string): string =>
  sensitiveContent(key) ? '(a label withheld)' : sensitiveContent(value) ? `${key}=(withheld)` : `${key}=${value}`;

export function inventoryLabels(s: ClusterSnapshot): Assessment {
  const rings = ringsOf(s);
  if (!Array.isArray(rings)) return rings;
  const unlabelled = rings.filter((r) => Object.keys(r.metadata.labels ?? {}).length === 0);
  const evidence: Evidence[] = rings
    .filter((r) => !unlabelled.includes(r))
    .map((r) => ok(`KeyRing ${name(r)}: ${Object.entries(r.metadata.labels ?? {}).map(([k, v]) => labelText(k, v)).join(', ')}`));
  for (const ring of unlabelled) evidence.push(gap(`KeyRing ${name(ring)} has no labels: it shows in no inventory query`));
  return { verdict: unlabelled.length === 0 ? 'holds' : unlabelled.length === rings.length ? 'fails' : 'partial', evidence };
}

/** Practices the cluster cannot show: a property of the code and the HSM, proven by the test suite. */
export const provenByTests =
  (what: string): ((s: ClusterSnapshot) => Assessment) =>
  () => ({ verdict: 'unknown', evidence: [info(`${what}; the cluster cannot show it: see the test suite's table (docs/compliance.md)`)] });

/** Practices the product does not implement yet. */
export const notBuilt =
  (what: string): ((s: ClusterSnapshot) => Assessment) =>
  () => ({ verdict: 'not-built', evidence: [info(`not built yet: ${what}`)] });
