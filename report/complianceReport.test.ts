// The verdict of each practice on built snapshots: a cluster where it holds, and the change that
// makes it not hold. Then the three renderings: schema, escaping, nothing from outside the page.
import assert from 'node:assert/strict';
import type { KeyPolicy } from '../core/api/keyPolicy.js';
import type { KeyRing } from '../core/api/keyRing.js';
import { practices } from '../core/compliance/practices.js';
import type { ClusterSnapshot } from './clusterSnapshot.js';
import { buildReport, verdicts, type ComplianceReport, type Verdict } from './complianceReport.js';
import { renderHtml } from './renderHtml.js';
import { renderMarkdown } from './renderMarkdown.js';
import { renderReport } from './reportCommand.js';
import { assessors } from './verdicts/assessors.js';

const now = new Date('2026-12-08T12:00:00Z');
const at = (hoursFromNow: number): string => new Date(now.getTime() + hoursFromNow * 3_600_000).toISOString();

function ring(): KeyRing {
  return {
    apiVersion: 'keyward.dev/v1alpha1',
    kind: 'KeyRing',
    metadata: { name: 'orders', namespace: 'shop', uid: '5b0c1d2e-0000-4000-8000-000000000001', generation: 3, labels: { app: 'shop' } },
    spec: {
      purpose: 'encryption',
      rotationPeriod: '720h',
      destroyScheduledDuration: '720h',
      deletionPolicy: 'Retain',
      versions: [{ number: 1, state: 'DestroyScheduled', destroyRequest: { requestedBy: 'alice', requestedAt: at(-3), approvedBy: 'bob', approvedAt: at(-2) } }],
    },
    status: {
      conditions: [{ type: 'Ready', status: 'True', reason: 'Ready', message: 'ok', lastTransitionTime: at(-100), observedGeneration: 3 }],
      ringId: '5b0c1d2e-0000-4000-8000-000000000001',
      primaryVersion: 2,
      nextRotationTime: at(500),
      versions: [
        { number: 1, state: 'DestroyScheduled', algorithm: 'AES-256-GCM', hsmToken: 'keyward', hsmObjectId: '01', createTime: at(-900), destroyTime: at(700), etcdObjects: 0, etcdObjectsProvenAt: at(-4) },
        { number: 2, state: 'Enabled', algorithm: 'AES-256-GCM', hsmToken: 'keyward', hsmObjectId: '02', createTime: at(-220), etcdObjects: 40, etcdObjectsProvenAt: at(-4) },
      ],
      reEncryption: { targetVersion: 2, phase: 'Complete', method: 'Rewrite', apiserverSwitchedAt: at(-219), completedAt: at(-218) },
    },
  };
}

function policy(name: string, rules: KeyPolicy['spec']['rules'], createdHoursAgo = 10): KeyPolicy {
  return {
    apiVersion: 'keyward.dev/v1alpha1',
    kind: 'KeyPolicy',
    metadata: { name, namespace: 'shop', generation: 1, creationTimestamp: at(-createdHoursAgo) as unknown as Date },
    spec: { rules },
    status: { observedGeneration: 1 },
  };
}

/** A cluster where every practice the cluster can show holds. */
function healthy(): ClusterSnapshot {
  const webhook = (resource: string) => ({
    name: `${resource}.keyward.dev`,
    failurePolicy: 'Fail',
    clientConfig: { service: { namespace: 'keyward-system', name: 'keyward-operator-webhook' }, caBundle: 'Q0E=' },
    rules: [{ apiGroups: ['keyward.dev'], resources: [resource], operations: ['CREATE', 'UPDATE'] }],
  });
  return {
    server: 'https://10.0.0.1:6443',
    context: 'prod',
    keyRings: { state: 'read', value: [ring()] },
    keyPolicies: {
      state: 'read',
      value: [
        policy('orders', [
          { name: 'admins', subjects: [{ kind: 'User', name: 'alice' }, { kind: 'User', name: 'bob' }], keyRings: ['orders'], roles: ['Administrator'] },
          { name: 'api', subjects: [{ kind: 'ServiceAccount', namespace: 'shop', name: 'api' }], keyRings: ['orders'], roles: ['EncryptDecrypt'] },
          { name: 'incident', subjects: [{ kind: 'User', name: 'carol' }], keyRings: ['orders'], roles: ['BreakGlassAdministrator'], expiresAt: at(2) },
        ]),
      ],
    },
    webhooks: {
      state: 'read',
      value: [
        { kind: 'MutatingWebhookConfiguration', metadata: { name: 'keyward-keyrings' }, webhooks: [webhook('keyrings')] },
        { kind: 'ValidatingWebhookConfiguration', metadata: { name: 'keyward-keypolicies' }, webhooks: [webhook('keypolicies')] },
      ],
    },
    workloads: {
      state: 'read',
      value: [
        {
          kind: 'Deployment',
          metadata: { name: 'keyward-operator', namespace: 'keyward-system' },
          containers: [{ name: 'operator', command: ['node', '/app/dist/cli/keyward.js', 'operator'], args: ['--metrics-address=0.0.0.0:9465', '--webhook-address=0.0.0.0:9443'] }],
          ready: 1,
          desired: 1,
          staticPod: false,
        },
        {
          kind: 'Pod',
          metadata: { name: 'keyward-kms-plugin-node1', namespace: 'kube-system' },
          containers: [{ name: 'kms-plugin', command: ['node', '/app/dist/cli/keyward.js', 'kms-plugin'], args: ['--socket=/var/run/keyward/kms.sock', '--metrics-address=127.0.0.1:9464'] }],
          ready: 1,
          desired: 1,
          staticPod: true,
        },
      ],
    },
    rbac: {
      state: 'read',
      value: [{ kind: 'ClusterRole', metadata: { name: 'keyward-operator' }, rules: [{ apiGroups: ['keyward.dev'], resources: ['keyrings'], verbs: ['list', 'watch', 'patch'] }] }],
    },
    prometheusRules: {
      state: 'read',
      value: [{ metadata: { name: 'keyward', namespace: 'keyward-system' }, spec: { groups: [{ name: 'keyward', rules: [{ alert: 'KeywardRotationOverdue', expr: 'keyward_keyring_rotation_overdue_seconds > 0' }] }] } }],
    },
    apiserverReadyz: { state: 'read', value: '[+]ping ok\n[+]kms-providers ok\nreadyz check passed\n' },
  };
}

const read = <T>(readout: { state: string; value?: T }): T => (readout.state === 'read' ? (readout.value as T) : assert.fail('not read'));
const rings = (s: ClusterSnapshot): KeyRing[] => read(s.keyRings);
const policies = (s: ClusterSnapshot): KeyPolicy[] => read(s.keyPolicies);
const verdictOf = (s: ClusterSnapshot, id: string): Verdict => buildReport(s, now).practices.find((p) => p.id === id)?.verdict ?? assert.fail(id);
const evidenceOf = (s: ClusterSnapshot, id: string): string =>
  (buildReport(s, now).practices.find((p) => p.id === id)?.evidence ?? []).map((e) => `${e.status}: ${e.text}`).join('\n');

/** For each practice: the verdict on the healthy cluster, and changes with the verdict they bring. */
const cases: Record<string, { healthy: Verdict; broken: [string, (s: ClusterSnapshot) => void, Verdict][] }> = {
  'no-plaintext-export': { healthy: 'unknown', broken: [] },
  'key-location': {
    healthy: 'holds',
    broken: [
      ['a version with no HSM location', (s) => delete rings(s)[0]!.status!.versions![1]!.hsmObjectId, 'partial'],
      ['a KeyRing not Ready', (s) => (rings(s)[0]!.status!.conditions![0]!.status = 'False'), 'partial'],
      ['KeyRings not readable', (s) => (s.keyRings = { state: 'forbidden', reason: 'HTTP 403' }), 'unknown'],
      ['no KeyRings', (s) => (s.keyRings = { state: 'read', value: [] }), 'unknown'],
    ],
  },
  'implicit-deny': {
    healthy: 'holds',
    broken: [
      ['no KeyRing webhook', (s) => (read(s.webhooks).shift()), 'fails'],
      ['a KeyRing webhook failing open', (s) => (read(s.webhooks)[0]!.webhooks![0]!.failurePolicy = 'Ignore'), 'partial'],
    ],
  },
  'operations-by-name': {
    healthy: 'holds',
    broken: [['a grant to system:authenticated', (s) => policies(s)[0]!.spec.rules.push({ subjects: [{ kind: 'Group', name: 'system:authenticated' }], keyRings: ['orders'], roles: ['ReadOnly'] }), 'fails']],
  },
  'policy-lag': {
    healthy: 'holds',
    broken: [['a policy the operator has not evaluated', (s) => (policies(s)[0]!.metadata.generation = 2), 'partial']],
  },
  'separation-of-duties': {
    healthy: 'holds',
    broken: [
      ['an administrator granted encrypt by another policy', (s) => policies(s).push(policy('more', [{ subjects: [{ kind: 'User', name: 'alice' }], keyRings: ['orders'], operations: ['encrypt'] }], 1)), 'fails'],
      ['no KeyRing webhook', (s) => read(s.webhooks).shift(), 'partial'],
    ],
  },
  roles: {
    healthy: 'holds',
    broken: [['a break-glass grant running 30 days', (s) => (policies(s)[0]!.spec.rules[2]!.expiresAt = at(720)), 'fails']],
  },
  'least-privilege': {
    healthy: 'holds',
    broken: [
      ['a wildcard in the operator RBAC', (s) => read(s.rbac)[0]!.rules!.push({ apiGroups: ['*'], resources: ['*'], verbs: ['*'] }), 'fails'],
      ['an expired grant left in a policy', (s) => (policies(s)[0]!.spec.rules[2]!.expiresAt = at(-5)), 'partial'],
      ['no visible RBAC', (s) => (s.rbac = { state: 'read', value: [] }), 'partial'],
    ],
  },
  'two-person-integrity': {
    healthy: 'holds',
    broken: [
      ['a destruction approved by its requester', (s) => (rings(s)[0]!.spec.versions![0]!.destroyRequest!.approvedBy = 'alice'), 'fails'],
      ['no KeyRing webhook', (s) => read(s.webhooks).shift(), 'fails'],
    ],
  },
  rotation: {
    healthy: 'holds',
    broken: [
      ['no rotation period', (s) => delete rings(s)[0]!.spec.rotationPeriod, 'fails'],
      ['rotation overdue', (s) => (rings(s)[0]!.status!.nextRotationTime = at(-30)), 'fails'],
    ],
  },
  'soft-delete': {
    healthy: 'holds',
    broken: [['a one-day destruction window', (s) => (rings(s)[0]!.spec.destroyScheduledDuration = '24h'), 'partial']],
  },
  'verified-retirement': {
    healthy: 'holds',
    broken: [
      ['a version destroyed while etcd still uses it', (s) => (rings(s)[0]!.status!.versions![0]!.etcdObjects = 7), 'fails'],
      ['no ring served by the KMS plugin', (s) => delete rings(s)[0]!.status!.reEncryption, 'unknown'],
    ],
  },
  audit: {
    healthy: 'holds',
    broken: [
      ['audit records discarded', (s) => read(s.workloads)[0]!.containers[0]!.args!.push('--audit-log=/dev/null'), 'fails'],
      ['no operator Deployment', (s) => read(s.workloads).shift(), 'unknown'],
    ],
  },
  'no-sensitive-metadata': {
    healthy: 'holds',
    broken: [
      ['a credential in a label', (s) => (rings(s)[0]!.metadata.labels = { note: 'password=hunter2' }), 'fails'],
      ['a key-like hex name', (s) => (rings(s)[0]!.metadata.name = '00112233445566778899aabbccddeeff0011'), 'fails'],
    ],
  },
  'inventory-labels': { healthy: 'holds', broken: [['no labels', (s) => delete rings(s)[0]!.metadata.labels, 'fails']] },
  'backup-escrow': { healthy: 'not-built', broken: [] },
  'bring-your-own-key': { healthy: 'not-built', broken: [] },
  monitoring: {
    healthy: 'holds',
    broken: [
      ['the Prometheus Operator without Keyward rules', (s) => (s.prometheusRules = { state: 'read', value: [] }), 'fails'],
      ['no Prometheus Operator', (s) => (s.prometheusRules = { state: 'absent', reason: 'HTTP 404' }), 'partial'],
      ['metrics on loopback only', (s) => (read(s.workloads)[0]!.containers[0]!.args = []), 'partial'],
    ],
  },
  'secure-transport': {
    healthy: 'holds',
    broken: [['no webhook and no plugin', (s) => ((s.webhooks = { state: 'read', value: [] }), (s.workloads = { state: 'read', value: [] })), 'unknown']],
  },
  'approved-generation': { healthy: 'unknown', broken: [] },
  cnsa: { healthy: 'holds', broken: [['a non-CNSA algorithm', (s) => ((rings(s)[0]!.status!.versions![1]!.algorithm as string) = 'RSA-2048'), 'fails']] },
  continuity: { healthy: 'holds', broken: [['no operator replica available', (s) => (read(s.workloads)[0]!.ready = 0), 'partial']] },
  latency: { healthy: 'unknown', broken: [] },
};

describe('keyward report: verdicts', () => {
  it('has a check and a test case for every practice', () => {
    assert.deepEqual(Object.keys(assessors).sort(), practices.map((p) => p.id).sort());
    assert.deepEqual(Object.keys(cases).sort(), practices.map((p) => p.id).sort());
  });

  for (const [id, { healthy: expected, broken }] of Object.entries(cases)) {
    describe(id, () => {
      it(`is ${expected} on a healthy cluster`, () => {
        assert.equal(verdictOf(healthy(), id), expected, evidenceOf(healthy(), id));
      });
      for (const [what, breakIt, verdict] of broken) {
        it(`is ${verdict} with ${what}`, () => {
          const snapshot = healthy();
          breakIt(snapshot);
          assert.equal(verdictOf(snapshot, id), verdict, evidenceOf(snapshot, id));
        });
      }
    });
  }

  it('names the subject, the ring and the rules of a separation-of-duties conflict', () => {
    const s = healthy();
    policies(s).push(policy('more', [{ name: 'writer', subjects: [{ kind: 'User', name: 'alice' }], keyRings: ['orders'], operations: ['encrypt'] }], 1));
    assert.match(evidenceOf(s, 'separation-of-duties'), /gap: User alice is granted both use and management of KeyRing shop\/orders .* by shop\/orders#admins and shop\/more#writer/);
    assert.match(evidenceOf(s, 'separation-of-duties'), /KeyPolicy shop\/more is not enforced/);
  });

  it('never repeats a suspected secret', () => {
    const s = healthy();
    rings(s)[0]!.metadata.labels = { note: 'password=hunter2' };
    for (const format of ['markdown', 'json', 'html'] as const) assert.doesNotMatch(renderReport(buildReport(s, now), format), /hunter2/);
  });

  it('says unknown, with the reason, for what it may not read', () => {
    const s = healthy();
    s.keyPolicies = { state: 'forbidden', reason: 'GET /apis/keyward.dev/v1alpha1/keypolicies: HTTP 403: forbidden' };
    assert.equal(verdictOf(s, 'separation-of-duties'), 'unknown');
    assert.match(evidenceOf(s, 'separation-of-duties'), /cannot read KeyPolicies \(not permitted\): .*HTTP 403/);
  });
});

describe('keyward report: renderings', () => {
  const report = (): ComplianceReport => {
    const s = healthy();
    rings(s)[0]!.metadata.labels = { team: 'a|b', owner: '<script>alert(1)</script>' };
    return buildReport(s, now);
  };

  it('JSON: the stable schema, the summary counting every practice', () => {
    const parsed = JSON.parse(renderReport(report(), 'json')) as ComplianceReport;
    assert.deepEqual(Object.keys(parsed), ['schemaVersion', 'generatedAt', 'cluster', 'summary', 'practices']);
    assert.deepEqual(Object.keys(parsed.summary), [...verdicts]);
    assert.equal(Object.values(parsed.summary).reduce((a, b) => a + b, 0), practices.length);
    assert.deepEqual(parsed.cluster, { server: 'https://10.0.0.1:6443', context: 'prod' });
    for (const p of parsed.practices) {
      assert.deepEqual(Object.keys(p), ['id', 'title', 'sources', 'verdict', 'evidence']);
      assert.ok(p.evidence.length > 0, p.id);
      for (const e of p.evidence) assert.ok(['ok', 'gap', 'info'].includes(e.status));
    }
  });

  it('Markdown: one summary row per practice, cluster text escaped', () => {
    const text = renderMarkdown(report());
    const rows = text.split('\n').filter((l) => /^\| \[/.test(l));
    assert.equal(rows.length, practices.length);
    for (const row of rows) assert.equal(row.split(/(?<!\\)\|/).length, 5, row);
    assert.match(text, /team=a\\\|b/);
    assert.match(text, /\\<script\\>/);
  });

  it('HTML: self-contained, cluster text escaped', () => {
    const html = renderHtml(report());
    assert.doesNotMatch(html, /<script|src=|href="http|@import|url\(/i);
    assert.match(html, /&lt;script&gt;alert\(1\)&lt;\/script&gt;/);
    assert.equal((html.match(/<tr style=/g) ?? []).length, practices.length);
  });
});
