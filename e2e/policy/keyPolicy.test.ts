// KeyPolicy end to end: real users (client certificates with their own names and groups, and
// ServiceAccount tokens from TokenRequest) manage KeyRings through a real kube-apiserver, whose
// admission webhook, served by the operator in this process, authorises every change by KeyPolicy;
// the operator carries out what was allowed in a real SoftHSM2 token. One control plane for the
// file. Webhook and reconciler share one clock, which the tests move forward to let grants and
// approvals expire. RBAC lets every user get and patch KeyRings, so each refusal here is Keyward's.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ApiException,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  PatchStrategy,
  RbacAuthorizationV1Api,
  setHeaderOptions,
} from '@kubernetes/client-node';
import { createAuditLog, type AuditLog } from '../../core/audit/auditLog.js';
import { HsmToken } from '../../core/hsm/hsmToken.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { createLogger } from '../../core/observability/logger.js';
import { operationNames, roleNames, type Operation, type Role } from '../../core/policy/operations.js';
import { keyPolicyResource, type KeyPolicy, type KeyPolicyRule } from '../../core/api/keyPolicy.js';
import { keyRingResource, type KeyRing, type KeyRingSpec } from '../../core/api/keyRing.js';
import { startOperator, type Operator } from '../../operator/operator.js';
import { eventually } from '../../testbed/eventually.js';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { registerAdmissionWebhooks, userKubeConfig, webhookCertDir } from '../operator/admissionWebhooks.js';
import { installCrds } from '../operator/crds.js';
import { apiRefusal } from '../../testbed/apiRefusal.js';

const namespace = 'shop';
const hour = 3_600_000;
const approvalWindowMs = hour;
/** Every test user is in this group, which RBAC lets get and patch KeyRings and KeyPolicies. */
const rbacGroup = 'keyward-e2e';
const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
const webhookDenial = /^admission webhook "keyrings\.keyward\.dev" denied the request: /;

// The role table of core/policy/operations.ts, written out again: a change to a role shows here.
const roleTable: Record<Role, Operation[]> = {
  Administrator: ['getPublicKey', 'getMetadata', 'rotate', 'disableVersion', 'enableVersion', 'scheduleDestroy', 'cancelDestroy', 'approveDestroy', 'import', 'backup', 'restore'],
  BreakGlassAdministrator: ['getPublicKey', 'getMetadata', 'rotate', 'disableVersion', 'enableVersion', 'scheduleDestroy', 'cancelDestroy', 'approveDestroy', 'import', 'backup', 'restore'],
  Auditor: ['getMetadata', 'readAudit'],
  ReadOnly: ['verify', 'getPublicKey', 'getMetadata'],
  EncryptDecrypt: ['encrypt', 'decrypt', 'getMetadata'],
  WriteOnly: ['encrypt', 'getMetadata'],
};

// Each table ring carries a standing destruction request for version 1 (by the custodian), so that
// cancelDestroy and approveDestroy have something to act on.
const standingRequest = { number: 1, state: 'DestroyScheduled' };

/**
 * The management operations enforced today, each as the KeyRing spec change that asks for it
 * (operator/admission/keyRingAdmission.ts), with the version it acts on.
 */
const enforcedChanges: Partial<Record<Operation, { spec: object; keyVersion?: number }>> = {
  rotate: { spec: { rotationRequest: 'table' } },
  disableVersion: { spec: { versions: [standingRequest, { number: 2, state: 'Disabled' }] }, keyVersion: 2 },
  enableVersion: { spec: { versions: [standingRequest, { number: 2, state: 'Enabled' }] }, keyVersion: 2 },
  scheduleDestroy: { spec: { versions: [standingRequest, { number: 2, state: 'DestroyScheduled' }] }, keyVersion: 2 },
  cancelDestroy: { spec: { versions: [{ number: 1, state: 'Disabled' }] }, keyVersion: 1 },
  approveDestroy: { spec: { versions: [{ ...standingRequest, approveDestroy: true }] }, keyVersion: 1 },
};
// Checked here only through the expanded grants in status: decrypt, deriveKey and getPublicKey are
// enforced by the CSI provider (e2e/csi); encrypt, sign, verify, getMetadata, import, backup,
// restore and readAudit have no enforcement point yet (the KMS plugin's only caller is the
// apiserver, which no KeyPolicy names).
const grantOnlyOperations = operationNames.filter((op) => !(op in enforcedChanges));

/** Someone who talks to the apiserver as themselves: `name` is the username it authenticates as. */
interface Actor {
  name: string;
  objects: CustomObjectsApi;
}

/** A management act the test made, and what the audit stream must therefore hold. */
interface Act {
  actor: string;
  ring: string;
  operation: Operation;
  keyVersion?: number;
  result: 'allowed' | 'denied';
  code: string;
  /**
   * Not a dry run. The apiserver may admit a stored change more than once, each time as a new
   * admission request: it retries with the live object when its cached copy was stale, or when
   * its write conflicts with another. A dry run is admitted exactly once.
   */
  stored: boolean;
}

describe('KeyPolicy: KeyRing management authorised by policy, for real users, end to end', function () {
  this.timeout(120_000);
  let cp: ControlPlane;
  let softhsm: SoftHsmToken;
  let hsm: HsmToken;
  let store: RingStore;
  let operator: Operator;
  let audit: AuditLog;
  let workDir: string;
  let auditFile: string;
  let objects: CustomObjectsApi;
  let core: CoreV1Api;
  let clockOffsetMs = 0;
  const acts: Act[] = [];
  const users = new Map<string, Actor>();

  const operatorNow = (offsetMs = 0): Date => new Date(Date.now() + clockOffsetMs + offsetMs);
  const user = (name: string): Actor => users.get(name) ?? assert.fail(`no user ${name}`);

  before(async function () {
    this.timeout(300_000);
    cp = await startControlPlane();
    await installCrds(cp.kubeConfig);
    objects = cp.kubeConfig.makeApiClient(CustomObjectsApi);
    core = cp.kubeConfig.makeApiClient(CoreV1Api);
    softhsm = createSoftHsmToken();
    process.env.SOFTHSM2_CONF = softhsm.configPath;
    hsm = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.pin });
    store = new RingStore(hsm);
    workDir = mkdtempSync(join(tmpdir(), 'keyward-policy-e2e-'));
    auditFile = join(workDir, 'audit.jsonl');
    audit = createAuditLog('operator', auditFile);
    operator = await startOperator(
      {
        kubeConfig: cp.kubeConfig,
        modulePath: softhsm.modulePath,
        tokenLabel: softhsm.label,
        pin: softhsm.pin,
        leaseNamespace: 'default',
        identity: 'policy-test',
        leaseDurationMs: 4000,
        renewDeadlineMs: 2700,
        retryPeriodMs: 500,
        audit,
        admission: { address: '127.0.0.1:0', certDir: webhookCertDir(cp, join(workDir, 'webhook')) },
        approvalWindowMs,
        now: () => operatorNow(),
      },
      createLogger('operator', 'warn'),
    );
    await registerAdmissionWebhooks(cp, operator.admissionAddress ?? assert.fail('admission not served'));
    await core.createNamespace({ body: { metadata: { name: namespace } } });

    const rbac = cp.kubeConfig.makeApiClient(RbacAuthorizationV1Api);
    await rbac.createClusterRole({
      body: {
        metadata: { name: 'keyward-e2e-user' },
        rules: [{ apiGroups: ['keyward.dev'], resources: ['keyrings', 'keypolicies'], verbs: ['get', 'list', 'watch', 'patch', 'update'] }],
      },
    });
    await rbac.createClusterRoleBinding({
      body: {
        metadata: { name: 'keyward-e2e-user' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'keyward-e2e-user' },
        subjects: [
          { kind: 'Group', apiGroup: 'rbac.authorization.k8s.io', name: rbacGroup },
          { kind: 'ServiceAccount', name: 'app', namespace },
          { kind: 'ServiceAccount', name: 'intruder', namespace },
        ],
      },
    });

    const people: [string, string[]][] = [
      ['olivia', ['key-custodians']],
      ['alice', ['key-admins']],
      ['bob', ['key-admins']],
      ['carol', ['operators']],
      ['dave', ['writers', 'key-admins']],
      ['erin', ['oncall']],
      ['mallory', ['contractors']],
      ...roleNames.filter((r) => r !== 'EncryptDecrypt').map((r): [string, string[]] => [roleUser(r), [`team-${r.toLowerCase()}`]]),
    ];
    for (const [name, groups] of people) {
      users.set(name, { name, objects: userKubeConfig(cp, name, [rbacGroup, ...groups]).makeApiClient(CustomObjectsApi) });
    }
    for (const name of ['app', 'intruder']) {
      const actor = await serviceAccount(name);
      users.set(name, actor);
    }

    // The webhook takes effect once the apiserver has loaded its configuration: probe until a
    // management request nobody is granted is refused, and a KeyPolicy already expired is too.
    const probe = { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name: 'probe' }, spec: { purpose: 'encryption', rotationRequest: 'probe' } };
    const refusedByWebhook = async (request: () => Promise<unknown>): Promise<true | undefined> => {
      try {
        await request();
        return undefined;
      } catch (err) {
        if (err instanceof ApiException && err.code === 403) return true;
        throw err;
      }
    };
    await eventually('the KeyRing webhook refuses', 30_000, () =>
      refusedByWebhook(() => objects.createNamespacedCustomObject({ ...keyRingResource, namespace, body: probe, dryRun: 'All' })),
    );
    acts.push({ actor: 'keyward-admin', ring: 'probe', operation: 'rotate', result: 'denied', code: 'NoPolicy', stored: false });
    const expired = policyBody('probe', [{ subjects: [{ kind: 'User', name: 'nobody' }], keyRings: ['probe'], roles: ['Auditor'], expiresAt: operatorNow(-hour).toISOString() }]);
    await eventually('the KeyPolicy webhook refuses', 30_000, () =>
      refusedByWebhook(() => objects.createNamespacedCustomObject({ ...keyPolicyResource, namespace, body: expired, dryRun: 'All' })),
    );
    // RBAC's cache, too: every user can read KeyRings before any test relies on it.
    await createRing('rbac-probe');
    for (const actor of users.values()) {
      await eventually(`${actor.name} may get KeyRings`, 30_000, () => actor.objects.getNamespacedCustomObject({ ...keyRingResource, namespace, name: 'rbac-probe' }));
    }
  });

  after(async () => {
    await operator?.stop();
    await audit?.flush();
    hsm?.close();
    softhsm?.remove();
    await cp?.stop();
    if (workDir) rmSync(workDir, { recursive: true, force: true });
  });

  async function serviceAccount(name: string): Promise<Actor> {
    await core.createNamespacedServiceAccount({ namespace, body: { metadata: { name } } });
    const request = await core.createNamespacedServiceAccountToken({ namespace, name, body: { spec: { audiences: [], expirationSeconds: 3600 } } });
    const token = request.status?.token ?? assert.fail(`no token for ServiceAccount ${name}`);
    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromOptions({
      clusters: [{ name: 'test', server: cp.apiserverUrl, caData: readFileSync(cp.pki.caCert).toString('base64') }],
      users: [{ name, token }],
      contexts: [{ name: 'test', cluster: 'test', user: name }],
      currentContext: 'test',
    });
    return { name: `system:serviceaccount:${namespace}:${name}`, objects: kubeConfig.makeApiClient(CustomObjectsApi) };
  }

  function policyBody(name: string, rules: KeyPolicyRule[]): KeyPolicy {
    return { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyPolicy', metadata: { name, namespace }, spec: { rules } };
  }

  async function createPolicy(name: string, rules: KeyPolicyRule[]): Promise<KeyPolicy> {
    await objects.createNamespacedCustomObject({ ...keyPolicyResource, namespace, body: policyBody(name, rules) });
    // Status is written from the operator's policy cache, the one its webhook decides from: once
    // Ready, the webhook enforces the policy.
    return eventually(`KeyPolicy ${name} evaluated`, 30_000, async () => {
      const policy = (await objects.getNamespacedCustomObject({ ...keyPolicyResource, namespace, name })) as KeyPolicy;
      const ready = policy.status?.conditions?.find((c) => c.type === 'Ready');
      return ready && policy.status?.observedGeneration === policy.metadata.generation ? policy : undefined;
    });
  }

  const createRing = async (name: string, spec: Partial<KeyRingSpec> = {}): Promise<KeyRing> =>
    (await objects.createNamespacedCustomObject({
      ...keyRingResource,
      namespace,
      body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name }, spec: { purpose: 'encryption', ...spec } },
    })) as KeyRing;

  const getRing = async (name: string): Promise<KeyRing> => (await objects.getNamespacedCustomObject({ ...keyRingResource, namespace, name })) as KeyRing;

  const condition = (kr: KeyRing, type: string) => kr.status?.conditions?.find((c) => c.type === type);
  /** Ready, and the status speaks of the current generation. */
  const settled = (kr: KeyRing): boolean =>
    condition(kr, 'Ready')?.status === 'True' && kr.status?.observedGeneration === kr.metadata.generation && condition(kr, 'Ready')?.observedGeneration === kr.metadata.generation;
  const versionState = (kr: KeyRing, number: number): string | undefined => kr.status?.versions?.find((v) => v.number === number)?.state;
  const ringWhen = (name: string, what: string, check: (kr: KeyRing) => boolean): Promise<KeyRing> =>
    eventually(`KeyRing ${name}: ${what}`, 30_000, async () => {
      const kr = await getRing(name);
      return check(kr) ? kr : undefined;
    });
  const hsmVersionStates = async (ringId: string): Promise<string[]> => (await store.require({ ringId })).versions.map((v) => v.state);
  const events = async (name: string): Promise<{ type: string; reason: string; message: string }[]> =>
    (await core.listNamespacedEvent({ namespace, fieldSelector: `involvedObject.name=${name}` })).items.map((e) => ({
      type: e.type ?? '',
      reason: e.reason ?? '',
      message: e.message ?? '',
    }));

  const patchRing = async (who: Actor, ring: string, spec: object, dryRun: boolean): Promise<KeyRing> =>
    (await who.objects.patchNamespacedCustomObject(
      { ...keyRingResource, namespace, name: ring, body: { spec }, ...(dryRun ? { dryRun: 'All' } : {}) },
      mergePatch,
    )) as KeyRing;


  type ActInput = { operation: Operation; keyVersion?: number; code?: string };

  /** A management change that Keyward must allow; recorded for the audit check. */
  async function allow(who: Actor, ring: string, spec: object, act: ActInput, dryRun = false): Promise<KeyRing> {
    const result = await patchRing(who, ring, spec, dryRun).catch((err: unknown) =>
      assert.fail(`${who.name}: ${act.operation} on ${ring} was refused: ${err instanceof ApiException ? String(err.body) : String(err)}`),
    );
    acts.push({ actor: who.name, ring, operation: act.operation, keyVersion: act.keyVersion, result: 'allowed', code: act.code ?? 'Granted', stored: !dryRun });
    return result;
  }

  /** A management change that Keyward must refuse (403 from its webhook); returns the message. */
  async function refuse(who: Actor, ring: string, spec: object, act: ActInput & { code: string }, dryRun = false): Promise<string> {
    const { code, message } = await apiRefusal(patchRing(who, ring, spec, dryRun));
    assert.equal(code, 403, message);
    assert.match(message, webhookDenial, 'refused by Keyward admission, not by RBAC or the schema');
    acts.push({ actor: who.name, ring, operation: act.operation, keyVersion: act.keyVersion, result: 'denied', code: act.code, stored: !dryRun });
    return message;
  }

  const readAudit = async (): Promise<Record<string, unknown>[]> => {
    await audit.flush();
    return readFileSync(auditFile, 'utf8')
      .split('\n')
      .filter((line) => line.trim() !== '')
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  };

  function roleUser(role: Role): string {
    return `${role.toLowerCase()}-holder`;
  }

  it('gives each role exactly its operations: expanded in status, and enforced for every management change [practice:roles] [practice:operations-by-name]', async () => {
    assert.deepEqual(Object.keys(roleTable).sort(), [...roleNames].sort(), 'the table covers every role');
    assert.deepEqual([...Object.keys(enforcedChanges), ...grantOnlyOperations].sort(), [...operationNames].sort(), 'every operation is checked one way or the other');
    const holders = new Map<Role, { actor: Actor; subject: KeyPolicyRule['subjects'][number]; key: string }>(
      roleNames.map((role) => {
        // The key users are a workload's ServiceAccount; everyone else is a person with a certificate.
        if (role === 'EncryptDecrypt') {
          return [role, { actor: user('app'), subject: { kind: 'ServiceAccount', namespace, name: 'app' }, key: `ServiceAccount ${namespace}/app` }];
        }
        return [role, { actor: user(roleUser(role)), subject: { kind: 'User', name: roleUser(role) }, key: `User ${roleUser(role)}` }];
      }),
    );
    const ringOf = (role: Role): string => `table-${role.toLowerCase()}`;
    for (const role of roleNames) await createRing(ringOf(role));
    await createPolicy('table-custody', [{ name: 'custodian', subjects: [{ kind: 'User', name: 'olivia' }], keyRings: roleNames.map(ringOf), roles: ['Administrator'] }]);
    for (const role of roleNames) {
      await allow(user('olivia'), ringOf(role), { versions: [standingRequest] }, { operation: 'scheduleDestroy', keyVersion: 1 });
    }

    for (const role of roleNames) {
      const holder = holders.get(role) ?? assert.fail(role);
      const rule: KeyPolicyRule = {
        name: 'holder',
        subjects: [holder.subject],
        keyRings: [ringOf(role)],
        roles: [role],
        ...(role === 'BreakGlassAdministrator' ? { expiresAt: operatorNow(2 * hour).toISOString() } : {}),
      };
      const policy = await createPolicy(`role-${role.toLowerCase()}`, [rule]);
      const ready = policy.status?.conditions?.find((c) => c.type === 'Ready');
      assert.deepEqual([ready?.status, ready?.reason], ['True', 'Enforced'], `${role}: ${ready?.message}`);
      const grants = policy.status?.grants ?? [];
      assert.equal(grants.length, 1, `${role}: one subject on one ring`);
      const [grant] = grants;
      assert.equal(grant?.subject, holder.key);
      assert.equal(grant?.keyRing, ringOf(role));
      assert.equal(grant?.rule, `${namespace}/role-${role.toLowerCase()}#holder`);
      assert.deepEqual([...(grant?.operations ?? [])].sort(), [...roleTable[role]].sort(), `${role}: the expanded grant`);
      assert.equal(new Set(grant?.operations).size, grant?.operations.length, `${role}: no operation listed twice`);
      assert.equal(grant?.breakGlass, role === 'BreakGlassAdministrator');
      assert.equal(grant?.expiresAt !== undefined, role === 'BreakGlassAdministrator');
    }

    const observed: Record<string, Operation[]> = {};
    const expected: Record<string, Operation[]> = {};
    for (const role of roleNames) {
      const { actor } = holders.get(role) ?? assert.fail(role);
      const ring = ringOf(role);
      observed[role] = [];
      expected[role] = roleTable[role].filter((op) => op in enforcedChanges);
      for (const [operation, change] of Object.entries(enforcedChanges) as [Operation, { spec: object; keyVersion?: number }][]) {
        const act = { operation, keyVersion: change.keyVersion };
        if (roleTable[role].includes(operation)) {
          const result = await allow(actor, ring, change.spec, act, true);
          observed[role].push(operation);
          if (operation === 'approveDestroy') {
            const stamp = result.spec.versions?.find((v) => v.number === 1)?.destroyRequest;
            assert.deepEqual([stamp?.requestedBy, stamp?.approvedBy], ['olivia', actor.name], 'the approval is stamped with who approved');
          }
        } else {
          const message = await refuse(actor, ring, change.spec, { ...act, code: 'NotGranted' }, true);
          assert.match(message, new RegExp(`${operation} on [^:]+: ${actor.name} is not granted ${operation} on KeyRing ${namespace}/${ring} by any enforced KeyPolicy`));
        }
      }
    }
    assert.deepEqual(observed, expected);

    // Break-glass uses are audited as such; ordinary Administrator uses are not.
    const records = await readAudit();
    const approvals = (who: string) => records.filter((r) => r.actor === who && r.operation === 'approveDestroy' && r.result === 'allowed');
    assert.deepEqual(
      approvals(roleUser('BreakGlassAdministrator')).map((r) => [r.breakGlass, r.dryRun]),
      [[true, true]],
    );
    assert.deepEqual(
      approvals(roleUser('Administrator')).map((r) => [r.breakGlass, r.dryRun]),
      [[undefined, true]],
    );
  });

  it('refuses management to a user who would hold use through a group and management as a user (separation of duties) [practice:separation-of-duties]', async () => {
    const dave = user('dave');
    await createRing('ledger');
    await createPolicy('ledger-admins', [{ name: 'admins', subjects: [{ kind: 'User', name: 'dave' }], keyRings: ['ledger'], roles: ['Administrator'] }]);
    await allow(dave, 'ledger', { rotationRequest: 'sod-1' }, { operation: 'rotate' }, true);

    // The webhook cannot know who is in a group, so this policy is admitted and enforced...
    const writers = await createPolicy('ledger-writers', [{ name: 'writers', subjects: [{ kind: 'Group', name: 'writers' }], keyRings: ['ledger'], roles: ['WriteOnly'] }]);
    const ready = writers.status?.conditions?.find((c) => c.type === 'Ready');
    assert.deepEqual([ready?.status, ready?.reason], ['True', 'Enforced']);
    // ...and dave, in group writers, is refused management: he would both use and manage ledger.
    const message = await refuse(dave, 'ledger', { rotationRequest: 'sod-2' }, { operation: 'rotate', code: 'SeparationOfDuties' }, true);
    assert.match(message, /rotate on the KeyRing: separation of duties: dave would both use and manage KeyRing shop\/ledger through shop\/ledger-admins#admins and shop\/ledger-writers#writers/);
    const records = (await readAudit()).filter((r) => r.actor === 'dave' && r.result === 'denied');
    assert.deepEqual(records.map((r) => r.code), ['SeparationOfDuties']);

    // With the group grant gone, dave manages ledger again: the refusal came from the combination.
    await objects.deleteNamespacedCustomObject({ ...keyPolicyResource, namespace, name: 'ledger-writers' });
    // Until the operator's watch delivers the deletion, each attempt is refused, and audited.
    await eventually('dave may rotate again', 30_000, async () => {
      const act = { actor: 'dave', ring: 'ledger', operation: 'rotate', stored: false } as const;
      try {
        await patchRing(dave, 'ledger', { rotationRequest: 'sod-3' }, true);
      } catch (err) {
        if (!(err instanceof ApiException && err.code === 403)) throw err;
        acts.push({ ...act, result: 'denied', code: 'SeparationOfDuties' });
        return undefined;
      }
      acts.push({ ...act, result: 'allowed', code: 'Granted' });
      return true;
    });
  });

  it('lets a break-glass grant work until its expiry, audited as break-glass, and stop at the expiry with nobody acting [practice:least-privilege] [practice:roles] [practice:audit]', async () => {
    const erin = user('erin');
    await createRing('emergency');
    const expiresAt = operatorNow(2 * hour).toISOString();
    const policy = await createPolicy('emergency-access', [
      { name: 'oncall', subjects: [{ kind: 'User', name: 'erin' }], keyRings: ['emergency'], roles: ['BreakGlassAdministrator'], expiresAt },
    ]);
    assert.equal(policy.status?.grants?.[0]?.expiresAt, expiresAt);
    await ringWhen('emergency', 'Ready', settled);
    await allow(erin, 'emergency', { rotationRequest: 'incident-1' }, { operation: 'rotate' });
    await ringWhen('emergency', 'version 2 primary', (kr) => kr.status?.primaryVersion === 2 && settled(kr));
    const [used] = (await readAudit()).filter((r) => r.actor === 'erin' && r.operation === 'rotate');
    assert.equal(used?.result, 'allowed');
    assert.equal(used?.breakGlass, true, 'audited as break-glass');
    assert.equal(used?.rule, `${namespace}/emergency-access#oncall`);

    clockOffsetMs += 3 * hour;
    const message = await refuse(erin, 'emergency', { rotationRequest: 'incident-2' }, { operation: 'rotate', code: 'GrantExpired' });
    assert.match(message, new RegExp(`the grant of rotate on KeyRing shop/emergency in shop/emergency-access#oncall expired at ${expiresAt}`));
    const after = (await objects.getNamespacedCustomObject({ ...keyPolicyResource, namespace, name: 'emergency-access' })) as KeyPolicy;
    assert.equal(after.metadata.generation, 1, 'nobody changed the policy');
    assert.equal((await getRing('emergency')).status?.primaryVersion, 2, 'the refused rotation did not happen');
  });

  it('destroys a version only on a request and an approval by two distinct authorised people, checked again by the operator [practice:two-person-integrity]', async () => {
    const [alice, bob, carol] = [user('alice'), user('bob'), user('carol')];
    for (const name of ['vault', 'doomed-a', 'doomed-b']) await createRing(name);
    await createPolicy('vault-custody', [
      { name: 'custodians', subjects: [{ kind: 'User', name: 'alice' }, { kind: 'User', name: 'bob' }], keyRings: ['vault', 'doomed-a', 'doomed-b'], roles: ['Administrator'] },
      { name: 'operators', subjects: [{ kind: 'User', name: 'carol' }], keyRings: ['vault'], operations: ['rotate', 'disableVersion', 'enableVersion', 'getMetadata'] },
    ]);
    let kr = await ringWhen('vault', 'Ready', settled);
    const ringId = kr.status?.ringId ?? assert.fail('no ring id');

    await allow(alice, 'vault', { rotationRequest: 'before-destruction' }, { operation: 'rotate' });
    await ringWhen('vault', 'version 2 primary', (k) => k.status?.primaryVersion === 2 && settled(k));
    await allow(alice, 'vault', { versions: [{ number: 1, state: 'Disabled' }] }, { operation: 'disableVersion', keyVersion: 1 });
    await ringWhen('vault', 'version 1 Disabled', (k) => versionState(k, 1) === 'Disabled' && settled(k));

    // alice asks: nothing happens until a second person approves.
    const destroy = { versions: [{ number: 1, state: 'DestroyScheduled' }] };
    const requested = await allow(alice, 'vault', destroy, { operation: 'scheduleDestroy', keyVersion: 1 });
    const stamp = requested.spec.versions?.[0]?.destroyRequest;
    assert.equal(stamp?.requestedBy, 'alice');
    assert.equal(stamp?.approvedBy, undefined);
    kr = await ringWhen('vault', 'request awaiting approval', (k) => settled(k) && condition(k, 'VersionRequestsApplied')?.reason === 'DestroyNotApproved');
    assert.equal(condition(kr, 'VersionRequestsApplied')?.status, 'False');
    assert.match(condition(kr, 'VersionRequestsApplied')?.message ?? '', /version 1: destruction requested by alice awaits approval by a second person holding approveDestroy/);
    assert.equal(versionState(kr, 1), 'Disabled');
    assert.deepEqual(await hsmVersionStates(ringId), ['Disabled', 'Enabled'], 'the HSM ring state is untouched');

    const approve = { versions: [{ number: 1, state: 'DestroyScheduled', approveDestroy: true }] };
    assert.match(
      await refuse(alice, 'vault', approve, { operation: 'approveDestroy', keyVersion: 1, code: 'TwoPersonRule' }),
      /approveDestroy on version 1: alice requested this destruction and cannot also approve it; a second person must/,
    );
    assert.match(
      await refuse(carol, 'vault', approve, { operation: 'approveDestroy', keyVersion: 1, code: 'NotGranted' }),
      /approveDestroy on version 1: carol is not granted approveDestroy on KeyRing shop\/vault/,
    );

    // Stamps written by a user are not believed: the webhook puts the real ones back.
    const forgedStamp = { requestedBy: 'alice', requestedAt: operatorNow().toISOString(), approvedBy: 'bob', approvedAt: operatorNow().toISOString() };
    const forged = await patchRing(carol, 'vault', { versions: [{ number: 1, state: 'DestroyScheduled', destroyRequest: forgedStamp }] }, false);
    assert.deepEqual(forged.spec.versions?.[0]?.destroyRequest, stamp, 'the forged approval is replaced by the stamps admission wrote');
    assert.equal(forged.metadata.generation, requested.metadata.generation, 'nothing changed');

    // An approval after the window is refused: the request has gone stale.
    clockOffsetMs += approvalWindowMs + 60_000;
    assert.match(
      await refuse(bob, 'vault', approve, { operation: 'approveDestroy', keyVersion: 1, code: 'TwoPersonRule' }),
      /approveDestroy on version 1: the request by alice expired at \S+ \(approval window 60 min\); it must be requested again/,
    );

    // Asked again and approved by bob: the operator schedules the destruction in the HSM.
    await allow(alice, 'vault', { versions: [{ number: 1, state: 'Disabled' }] }, { operation: 'cancelDestroy', keyVersion: 1 });
    await allow(alice, 'vault', destroy, { operation: 'scheduleDestroy', keyVersion: 1 });
    const approved = await allow(bob, 'vault', approve, { operation: 'approveDestroy', keyVersion: 1 });
    const approval = approved.spec.versions?.[0]?.destroyRequest;
    assert.deepEqual([approval?.requestedBy, approval?.approvedBy], ['alice', 'bob']);
    assert.ok(Math.abs(Date.parse(approval?.approvedAt ?? '') - operatorNow().getTime()) < 60_000, 'approved at the webhook clock');
    kr = await ringWhen('vault', 'version 1 DestroyScheduled', (k) => versionState(k, 1) === 'DestroyScheduled' && settled(k));
    assert.equal(condition(kr, 'VersionRequestsApplied')?.status, 'True');
    assert.ok(Math.abs(Date.parse(kr.status?.versions?.[0]?.destroyTime ?? '') - operatorNow(720 * hour).getTime()) < 60_000, 'after the 30-day window');
    assert.deepEqual(await hsmVersionStates(ringId), ['DestroyScheduled', 'Enabled']);
    assert.ok((await events('vault')).some((e) => e.reason === 'DestroyScheduled'));
    const operatorRecords = (await readAudit()).filter((r) => r.ring === 'shop/vault' && r.operation === 'scheduleDestroy' && r.ringId === ringId);
    // The operator audits its own check: waiting for approval (once per request it saw), then approved.
    const verdicts = operatorRecords.map((r) => `${String(r.result)} ${String(r.code)}`);
    assert.equal(verdicts[0], 'denied TwoPersonRule', verdicts.join(', '));
    assert.equal(verdicts.at(-1), 'allowed Approved', verdicts.join(', '));
    assert.ok(verdicts.slice(0, -1).every((v) => v === 'denied TwoPersonRule') && verdicts.length <= 3, verdicts.join(', '));
    assert.match(String(operatorRecords.at(-1)?.reason), /requested by alice, approved by bob/);

    // carol may disable and enable versions, but not cancel a destruction.
    assert.match(
      await refuse(carol, 'vault', { versions: [{ number: 1, state: 'Disabled' }] }, { operation: 'cancelDestroy', keyVersion: 1, code: 'NotGranted' }),
      /cancelDestroy on version 1: carol is not granted cancelDestroy on KeyRing shop\/vault/,
    );
    // Nor in two steps: dropping the entry from spec.versions changes nothing in the HSM, and
    // adding it back is judged against the version's state in status, not against the absent entry.
    const dropped = await patchRing(carol, 'vault', { versions: null }, false);
    assert.equal(dropped.spec.versions, undefined);
    const message = await apiRefusal(patchRing(carol, 'vault', { versions: [{ number: 1, state: 'Enabled' }] }, false));
    assert.equal(message.code, 403, message.message);
    assert.match(message.message, /cancelDestroy on version 1: carol is not granted cancelDestroy on KeyRing shop\/vault/);
    // One request, two operations judged: the cancel refused, the enable granted (but not done).
    acts.push(
      { actor: 'carol', ring: 'vault', operation: 'cancelDestroy', keyVersion: 1, result: 'denied', code: 'NotGranted', stored: true },
      { actor: 'carol', ring: 'vault', operation: 'enableVersion', keyVersion: 1, result: 'allowed', code: 'Granted', stored: true },
    );
    await patchRing(carol, 'vault', { rotationRequest: 'after-destruction' }, false);
    acts.push({ actor: 'carol', ring: 'vault', operation: 'rotate', result: 'allowed', code: 'Granted', stored: true });
    kr = await ringWhen('vault', 'version 3 primary', (k) => k.status?.primaryVersion === 3 && settled(k));
    assert.equal(versionState(kr, 1), 'DestroyScheduled', 'the destruction stands');
    assert.deepEqual(await hsmVersionStates(ringId), ['DestroyScheduled', 'Enabled', 'Enabled']);
  });

  it('destroys on deletion (deletionPolicy Destroy) only with a second person\'s approval; keeps the keys without [practice:two-person-integrity]', async () => {
    const [alice, bob] = [user('alice'), user('bob')];
    const a = await ringWhen('doomed-a', 'Ready', settled);
    const b = await ringWhen('doomed-b', 'Ready', settled);
    const forgedStamp = { requestedBy: 'mallory', requestedAt: operatorNow().toISOString(), approvedBy: 'bob', approvedAt: operatorNow().toISOString() };

    // doomed-a: asked for by alice (her forged approval is overwritten), never approved.
    const askedA = await allow(alice, 'doomed-a', { deletionPolicy: 'Destroy', deletionDestroyRequest: forgedStamp }, { operation: 'scheduleDestroy' });
    assert.equal(askedA.spec.deletionDestroyRequest?.requestedBy, 'alice');
    assert.equal(askedA.spec.deletionDestroyRequest?.approvedBy, undefined, 'a forged approval is not stored');
    await objects.deleteNamespacedCustomObject({ ...keyRingResource, namespace, name: 'doomed-a' });
    await eventually('KeyRing doomed-a gone', 30_000, async () => ((await getRing('doomed-a').catch(() => undefined)) ? undefined : true));
    const warning = (await events('doomed-a')).find((e) => e.reason === 'DestroyNotApproved');
    assert.equal(warning?.type, 'Warning');
    assert.match(warning?.message ?? '', /destruction requested by alice awaits approval by a second person.*its keys stay in HSM token/);
    assert.deepEqual(await hsmVersionStates(a.status?.ringId ?? ''), ['Enabled'], 'the keys are retained');

    // doomed-b: asked for by alice, approved by bob.
    await allow(alice, 'doomed-b', { deletionPolicy: 'Destroy' }, { operation: 'scheduleDestroy' });
    const approvedB = await allow(bob, 'doomed-b', { approveDestroy: true }, { operation: 'approveDestroy' });
    assert.deepEqual([approvedB.spec.deletionDestroyRequest?.requestedBy, approvedB.spec.deletionDestroyRequest?.approvedBy], ['alice', 'bob']);
    await objects.deleteNamespacedCustomObject({ ...keyRingResource, namespace, name: 'doomed-b' });
    await eventually('KeyRing doomed-b gone', 30_000, async () => ((await getRing('doomed-b').catch(() => undefined)) ? undefined : true));
    assert.ok((await events('doomed-b')).some((e) => e.type === 'Normal' && e.reason === 'DestroyScheduled'));
    assert.deepEqual(await hsmVersionStates(b.status?.ringId ?? ''), ['DestroyScheduled'], 'every version is scheduled for destruction');
  });

  it('refuses management by identities no policy names, clearly, and audits every allowed and denied act without key material [practice:implicit-deny] [practice:audit]', async () => {
    const [mallory, intruder] = [user('mallory'), user('intruder')];
    // RBAC lets them in: they read KeyRings, and a change that manages nothing goes through.
    await mallory.objects.getNamespacedCustomObject({ ...keyRingResource, namespace, name: 'vault' });
    await intruder.objects.patchNamespacedCustomObject(
      { ...keyRingResource, namespace, name: 'vault', body: { metadata: { labels: { touched: 'yes' } } }, dryRun: 'All' },
      mergePatch,
    );
    assert.match(
      await refuse(mallory, 'vault', { rotationRequest: 'mallory' }, { operation: 'rotate', code: 'NotGranted' }),
      /KeyRing shop\/vault: rotate on the KeyRing: mallory is not granted rotate on KeyRing shop\/vault by any enforced KeyPolicy$/,
    );
    assert.match(
      await refuse(intruder, 'vault', { versions: [{ number: 1, state: 'Disabled' }] }, { operation: 'cancelDestroy', keyVersion: 1, code: 'NotGranted' }),
      /cancelDestroy on version 1: system:serviceaccount:shop:intruder is not granted cancelDestroy on KeyRing shop\/vault/,
    );
    // A ServiceAccount granted use only cannot manage either.
    assert.match(
      await refuse(user('app'), 'vault', { rotationRequest: 'app' }, { operation: 'rotate', code: 'NotGranted' }),
      /system:serviceaccount:shop:app is not granted rotate on KeyRing shop\/vault/,
    );
    // Default deny: a KeyRing no policy names is managed by nobody, its custodians elsewhere included.
    await createRing('orphan');
    for (const who of [mallory, user('alice')]) {
      assert.match(
        await refuse(who, 'orphan', { rotationRequest: who.name }, { operation: 'rotate', code: 'NoPolicy' }),
        /rotate on the KeyRing: no enforced KeyPolicy grants anything on KeyRing shop\/orphan; nobody may rotate it/,
      );
    }
    assert.equal((await getRing('vault')).spec.rotationRequest, 'after-destruction', 'no refused change was stored');

    // The audit stream: one record per act the webhook judged, allowed or denied, with its parts.
    const records = await readAudit();
    const isUuid = (value: unknown): boolean => typeof value === 'string' && /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(value);
    const admission = records.filter((r) => isUuid(r.requestId) && r.operation !== 'writeKeyPolicy');
    const keyOf = (r: { actor?: unknown; ring?: unknown; operation?: unknown; keyVersion?: unknown; result?: unknown; code?: unknown }): string =>
      JSON.stringify([r.actor, r.ring, r.operation, r.keyVersion ?? null, r.result, r.code]);
    const expected = new Map<string, { count: number; stored: boolean }>();
    for (const act of acts) {
      const key = keyOf({ ...act, ring: `${namespace}/${act.ring}` });
      const entry = expected.get(key) ?? { count: 0, stored: false };
      expected.set(key, { count: entry.count + 1, stored: entry.stored || act.stored });
    }
    const found = new Map<string, number>();
    for (const record of admission) found.set(keyOf(record), (found.get(keyOf(record)) ?? 0) + 1);
    for (const [key, { count, stored }] of expected) {
      const n = found.get(key) ?? 0;
      // Each admission is audited; a stored change may be admitted more than once (see Act.stored).
      if (stored) assert.ok(n >= count && n <= 2 * count, `audit records for ${key}: ${n}, expected ${count} (or a retry each)`);
      else assert.equal(n, count, `audit records for ${key}: ${JSON.stringify(admission.filter((r) => keyOf(r) === key))}`);
    }
    assert.deepEqual([...found.keys()].filter((key) => !expected.has(key)), [], 'no audit record for an act nobody made');
    assert.ok(admission.some((r) => r.result === 'denied') && admission.some((r) => r.result === 'allowed'));
    // A request judged once per operation in it: never two records of one operation.
    const perRequest = new Map<unknown, unknown[]>();
    for (const r of admission) perRequest.set(r.requestId, [...(perRequest.get(r.requestId) ?? []), `${String(r.operation)} ${String(r.keyVersion)}`]);
    for (const [requestId, ops] of perRequest) assert.equal(new Set(ops).size, ops.length, `request ${String(requestId)}: ${ops.join(', ')}`);

    const fields = new Set(['level', 'time', 'stream', 'component', 'requestId', 'actor', 'operation', 'result', 'ring', 'ringId', 'keyVersion', 'keyId', 'code', 'rule', 'reason', 'breakGlass', 'dryRun', 'policy']);
    for (const record of records) {
      const text = JSON.stringify(record);
      assert.deepEqual(Object.keys(record).filter((k) => !fields.has(k)), [], `only the audit schema's fields: ${text}`);
      assert.equal(record.stream, 'audit');
      assert.ok(!Number.isNaN(Date.parse(String(record.time))), `a time: ${text}`);
      for (const field of ['requestId', 'actor', 'operation', 'result', record.operation === 'writeKeyPolicy' ? 'policy' : 'ring', 'code', 'reason']) {
        assert.ok(record[field], `${field} in ${text}`);
      }
      if (record.code === 'Granted' || record.code === 'GrantExpired') assert.match(String(record.rule), /^shop\/[a-z0-9-]+#[a-z0-9[\]-]+$/, `the deciding rule in ${text}`);
      // Nothing that looks like key material: no long hex or base64 runs.
      assert.doesNotMatch(text, /[0-9a-f]{48,}|[A-Za-z0-9+/]{40,}={0,2}/, `no key material in ${text}`);
    }
    const denial = admission.find((r) => r.actor === 'mallory' && r.ring === 'shop/vault');
    assert.deepEqual(
      [denial?.operation, denial?.result, denial?.code, denial?.rule],
      ['rotate', 'denied', 'NotGranted', undefined],
    );
    assert.match(String(denial?.reason), /mallory is not granted rotate/);
  });

  // Mocha runs a suite's own tests before its nested suites: these run last, as they read.
  describe('refuses bad KeyPolicies at admission, naming the problem', () => {
    const alice = { kind: 'User', name: 'alice' } as const;
    const refusePolicy = async (rules: object[], code: number, message: RegExp): Promise<void> => {
      const body = policyBody('bad', rules as KeyPolicyRule[]);
      const refused = await apiRefusal(objects.createNamespacedCustomObject({ ...keyPolicyResource, namespace, body, dryRun: 'All' }));
      assert.equal(refused.code, code, refused.message);
      assert.match(refused.message, message);
    };
    const rule = (overrides: object): object => ({ subjects: [alice], keyRings: ['vault'], roles: ['Administrator'], ...overrides });

    it('an unknown operation [practice:operations-by-name]', () =>
      refusePolicy([rule({ roles: undefined, operations: ['exportKey'] })], 422, /spec\.rules\[0\]\.operations\[0\]: Unsupported value: "exportKey": supported values: "encrypt", "decrypt"/));
    it('an unknown role', () => refusePolicy([rule({ roles: ['KeyMaster'] })], 422, /spec\.rules\[0\]\.roles\[0\]: Unsupported value: "KeyMaster": supported values: "Administrator"/));
    it('a wildcard operation [practice:operations-by-name]', () => refusePolicy([rule({ roles: undefined, operations: ['*'] })], 422, /spec\.rules\[0\]\.operations\[0\]: Unsupported value: "\*"/));
    it('a wildcard KeyRing [practice:operations-by-name]', () => refusePolicy([rule({ keyRings: ['*'] })], 422, /spec\.rules\[0\]\.keyRings: Invalid value: .*wildcards are not allowed: name each KeyRing/));
    it('a wildcard subject name [practice:operations-by-name]', () =>
      refusePolicy([rule({ subjects: [{ kind: 'User', name: '*' }] })], 422, /spec\.rules\[0\]\.subjects\[0\]\.name: .*wildcards are not allowed: name one ServiceAccount, User or Group/));
    it('a ServiceAccount without its namespace', () =>
      refusePolicy([rule({ subjects: [{ kind: 'ServiceAccount', name: 'app' }] })], 422, /spec\.rules\[0\]\.subjects\[0\]\.namespace: Required value: a ServiceAccount subject needs its namespace/));
    it('a User with a namespace', () =>
      refusePolicy([rule({ subjects: [{ kind: 'User', name: 'alice', namespace }] })], 422, /spec\.rules\[0\]\.subjects\[0\]\.namespace: Forbidden: namespace belongs only to ServiceAccount subjects/));
    it('a ServiceAccount named as a User', () =>
      refusePolicy([rule({ subjects: [{ kind: 'User', name: `system:serviceaccount:${namespace}:app` }] })], 422, /subjects\[0\]\.name: .*name a ServiceAccount with kind ServiceAccount, namespace and name, not as a User/));
    it('a group that stands for everyone [practice:operations-by-name]', () =>
      refusePolicy([rule({ subjects: [{ kind: 'Group', name: 'system:authenticated' }] })], 422, /subjects\[0\]\.name: .*groups that stand for everyone .* are wildcards and cannot be granted/));
    it('a KeyRing in another namespace', () =>
      refusePolicy([rule({ keyRings: ['other/ring'] })], 422, /spec\.rules\[0\]\.keyRings: Invalid value: .*a KeyPolicy grants only on KeyRings of its own namespace/));
    it('BreakGlassAdministrator without expiresAt [practice:least-privilege]', () =>
      refusePolicy([rule({ roles: ['BreakGlassAdministrator'] })], 422, /spec\.rules\[0\]\.expiresAt: Required value: BreakGlassAdministrator grants must carry expiresAt, at most 24h ahead/));
    it('BreakGlassAdministrator expiring more than 24h ahead [practice:least-privilege]', () =>
      refusePolicy(
        [rule({ roles: ['BreakGlassAdministrator'], expiresAt: operatorNow(30 * hour).toISOString() })],
        403,
        /KeyPolicy shop\/bad: spec\.rules\[0\]\.expiresAt \S+ is 30\.0h ahead; BreakGlassAdministrator grants may run at most 24h/,
      ));
    it('an expiry already past', () =>
      refusePolicy([rule({ roles: ['Auditor'], expiresAt: operatorNow(-hour).toISOString() })], 403, /KeyPolicy shop\/bad: spec\.rules\[0\]\.expiresAt \S+ is already past/));
    it('one rule granting both use and management [practice:separation-of-duties]', () =>
      refusePolicy([rule({ roles: ['Administrator'], operations: ['encrypt'] })], 422, /spec\.rules\[0\]: Invalid value: .*separation of duties: one rule cannot grant both use \(encrypt, decrypt, deriveKey, sign\) and management/));

    it('an expiry admitted for an ordinary grant, reused for a break-glass one', async () => {
      const tenDays = operatorNow(240 * hour).toISOString();
      await createPolicy('audit-contract', [{ name: 'auditors', subjects: [{ kind: 'User', name: 'sam' }], keyRings: ['vault'], roles: ['Auditor'], expiresAt: tenDays }]);
      const body = policyBody('audit-contract', [{ name: 'auditors', subjects: [{ kind: 'User', name: 'sam' }], keyRings: ['vault'], roles: ['BreakGlassAdministrator'], expiresAt: tenDays }]);
      const refused = await apiRefusal(objects.patchNamespacedCustomObject({ ...keyPolicyResource, namespace, name: 'audit-contract', body: { spec: body.spec } }, mergePatch));
      assert.equal(refused.code, 403, refused.message);
      assert.match(refused.message, /KeyPolicy shop\/audit-contract: spec\.rules\[0\]\.expiresAt \S+ is 240\.0h ahead; BreakGlassAdministrator grants may run at most 24h/);
      await objects.deleteNamespacedCustomObject({ ...keyPolicyResource, namespace, name: 'audit-contract' });
    });

    it('a second policy that would give an administrator use of the same KeyRing [practice:separation-of-duties]', async () => {
      const quinn = { kind: 'User', name: 'quinn' } as const;
      await createPolicy('payments-admins', [{ name: 'admins', subjects: [quinn], keyRings: ['payments'], roles: ['Administrator'] }]);
      const body = policyBody('payments-users', [{ name: 'users', subjects: [quinn], keyRings: ['payments'], roles: ['EncryptDecrypt'] }]);
      const refused = await apiRefusal(objects.createNamespacedCustomObject({ ...keyPolicyResource, namespace, body }));
      assert.equal(refused.code, 403, refused.message);
      assert.match(
        refused.message,
        /denied the request: KeyPolicy shop\/payments-users: separation of duties: User quinn would both use and manage KeyRing payments \(.*\) through shop\/payments-admins#admins and shop\/payments-users#users/,
      );
      // The same use for somebody else is fine.
      const other = policyBody('payments-users', [{ name: 'users', subjects: [{ kind: 'User', name: 'rita' }], keyRings: ['payments'], roles: ['EncryptDecrypt'] }]);
      await objects.createNamespacedCustomObject({ ...keyPolicyResource, namespace, body: other, dryRun: 'All' });
    });

    it('audits the refusals the webhook makes, naming the policy and the requester [practice:audit]', async () => {
      const refused = (await readAudit()).filter((r) => r.operation === 'writeKeyPolicy');
      assert.ok(refused.length >= 2, `records: ${JSON.stringify(refused)}`);
      for (const record of refused) assert.deepEqual([record.result, record.code], ['denied', 'PolicyRefused']);
      const tooLong = refused.find((r) => r.policy === `${namespace}/bad` && /may run at most 24h/.test(String(r.reason)));
      assert.equal(tooLong?.actor, 'keyward-admin', `the break-glass refusal: ${JSON.stringify(refused)}`);
    });
  });
});
