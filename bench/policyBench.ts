// KeyPolicy benchmark, two parts. One JSON line per figure on stdout; progress on stderr.
//
// 1. The evaluator in process (core/policy/policySet.ts): a PolicySet of 1,000 KeyPolicies over
//    100 namespaces and 10,000 KeyRings, thousands of subjects. Decisions per second for decide()
//    over a seeded mix of requests (allowed and denied for every reason), and the time to rebuild
//    the set from the policy objects, which every enforcement point does after each policy change.
// 2. Policy lag on a real control plane: the operator as its own process through the CLI, serving
//    its admission webhook (registered as the chart registers it), a KeyRing, and a user whom RBAC
//    lets patch KeyRings. Over N changes a KeyPolicy alternately grants and revokes `rotate` to that
//    user; from each update's response, the user's server dry-run rotation request
//    (spec.rotationRequest, dryRun All) is sent every few milliseconds until the answer flips from
//    refused to allowed (or back). The lag is the arrival of the first answer in the new state; a
//    watch times the operator's status write for the same change. Target: p99 ≤ 1 s.
//    KEYWARD_BENCH_BACKGROUND_POLICIES=N first creates N of part 1's policies on the control plane
//    (and waits for their status), so the lag is measured with that many policies to rebuild.
import { ApiException, CoreV1Api, CustomObjectsApi, PatchStrategy, RbacAuthorizationV1Api, setHeaderOptions, type KubeConfig } from '@kubernetes/client-node';
import { mkdtempSync, readFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { createSoftHsmToken } from '../core/hsm/softHsmToken.js';
import { keepAliveApiClient } from '../core/kube/keepAliveApiClient.js';
import { operationNames, type Operation, type Role } from '../core/policy/operations.js';
import { PolicySet, type DecisionReason, type Requester } from '../core/policy/policySet.js';
import { keyPolicyResource, policyDocument, type KeyPolicy, type KeyPolicyRule } from '../core/api/keyPolicy.js';
import { keyRingResource } from '../core/api/keyRing.js';
import { trackDirectory } from '../testbed/control-plane/componentProcess.js';
import { startControlPlane, type ControlPlane } from '../testbed/control-plane/controlPlane.js';
import { freePort } from '../testbed/control-plane/network.js';
import { registerAdmissionWebhooks, userKubeConfig, webhookCertDir } from '../e2e/operator/admissionWebhooks.js';
import { installCrds } from '../e2e/operator/crds.js';
import { startOperatorProcess, type OperatorProcess } from '../e2e/operator/operatorProcess.js';
import { cpuSeconds, rssMib, watchPeakRss } from './procStats.js';
import { watchObjects } from './watchObjects.js';
import { emit, load1m, percentile, round, warnIfBusy } from './report.js';

/** Overridable so a quick check of the harness does not take minutes. */
const changes = Number(process.env.KEYWARD_BENCH_CHANGES ?? 200);
/** Pause between two probes of one change; a probe itself is a round trip through the apiserver and the webhook. */
const pollMs = Number(process.env.KEYWARD_BENCH_POLL_MS ?? 5);
const evaluatorSeconds = Number(process.env.KEYWARD_BENCH_EVAL_SECONDS ?? 3);
/** Policies of part 1 created on the control plane before the lag is measured (at most 1,000). */
const backgroundPolicies = Number(process.env.KEYWARD_BENCH_BACKGROUND_POLICIES ?? 0);
/** A change not in force after this long fails the run: the figures would be meaningless. */
const changeTimeoutMs = 30_000;
const warmupChanges = 2;
const targetP99Ms = 1000;

const namespace = 'bench';
const ringName = 'bench-ring';
const policyName = 'bench-policy';
const benchUser = 'bench-user';
const identity = 'bench-policy-operator';

const progress = (line: string): void => console.error(`[bench:policy] ${line}`);
const summary = (values: readonly number[]): { p50_ms: number; p99_ms: number; max_ms: number; mean_ms: number } => {
  const sorted = [...values].sort((a, b) => a - b);
  return {
    p50_ms: round(percentile(sorted, 50), 1),
    p99_ms: round(percentile(sorted, 99), 1),
    max_ms: round(sorted.at(-1) ?? NaN, 1),
    mean_ms: round(sorted.reduce((sum, v) => sum + v, 0) / Math.max(1, sorted.length), 1),
  };
};

// ---------------------------------------------------------------- 1. the evaluator, in process

const shape = { namespaces: 100, policiesPerNamespace: 10, ringsPerNamespace: 100 };
const ringsPerPolicy = shape.ringsPerNamespace / shape.policiesPerNamespace;

/** Deterministic pseudo-random numbers (mulberry32), so every run asks the same questions. */
function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const nsName = (n: number): string => `team-${String(n).padStart(3, '0')}`;
const ring = (r: number): string => `ring-${String(r).padStart(3, '0')}`;

/**
 * One namespace's policies, as a team would write them: policy j covers ten rings, with key users
 * (three people and a ServiceAccount), a key administrator and the team's admin group, a
 * write-only producer, a break-glass on-call grant (expired in odd namespaces) and the
 * cluster-wide auditors group. Use and management go to different subjects, so all are enforced.
 */
function syntheticPolicies(now: Date, options: { expiredBreakGlass: boolean }): KeyPolicy[] {
  const policies: KeyPolicy[] = [];
  const created = new Date(now.getTime() - 86_400_000);
  for (let n = 0; n < shape.namespaces; n++) {
    const ns = nsName(n);
    const expired = options.expiredBreakGlass && n % 2 === 1;
    const breakGlassExpiry = new Date(now.getTime() + (expired ? -1 : 12) * 3_600_000).toISOString();
    for (let j = 0; j < shape.policiesPerNamespace; j++) {
      const keyRings = Array.from({ length: ringsPerPolicy }, (_, k) => ring(j * ringsPerPolicy + k));
      const rule = (name: string, subjects: KeyPolicyRule['subjects'], roles: Role[], expiresAt?: string): KeyPolicyRule => ({
        name,
        subjects,
        keyRings,
        roles,
        ...(expiresAt ? { expiresAt } : {}),
      });
      const rules: KeyPolicyRule[] = [
        rule('users', [...[0, 1, 2].map((k) => ({ kind: 'User' as const, name: `app-${n}-${j}-${k}` })), { kind: 'ServiceAccount', namespace: ns, name: `sa-${j}` }], [
          'EncryptDecrypt',
        ]),
        rule('administrators', [{ kind: 'User', name: `admin-${n}-${j}` }, { kind: 'Group', name: `key-admins-${n}` }], ['Administrator']),
        rule('producer', [{ kind: 'User', name: `writer-${n}-${j}` }], ['WriteOnly']),
        rule('on-call', [{ kind: 'User', name: `oncall-${n}` }], ['BreakGlassAdministrator'], breakGlassExpiry),
        rule('auditors', [{ kind: 'Group', name: 'auditors' }], ['Auditor']),
      ];
      policies.push({
        apiVersion: 'keyward.dev/v1alpha1',
        kind: 'KeyPolicy',
        metadata: { name: `policy-${j}`, namespace: ns, creationTimestamp: new Date(created.getTime() + j * 1000) },
        spec: { rules },
      });
    }
  }
  return policies;
}

function distinctSubjects(policies: readonly KeyPolicy[]): number {
  const subjects = new Set<string>();
  for (const policy of policies) {
    for (const rule of policy.spec.rules) for (const s of rule.subjects) subjects.add(`${s.kind} ${s.namespace ?? ''}/${s.name}`);
  }
  return subjects.size;
}

interface Question {
  requester: Requester;
  namespace: string;
  keyRing: string;
  operation: Operation;
}

/** A mix of who asks: known users and ServiceAccounts, group members, strangers, rings nobody covers, namespaces with no policy. */
function questions(count: number): Question[] {
  const random = seededRandom(6);
  const pick = (n: number): number => Math.floor(random() * n);
  const authenticated = ['system:authenticated'];
  return Array.from({ length: count }, () => {
    const n = pick(shape.namespaces);
    const j = pick(shape.policiesPerNamespace);
    const who = random();
    let requester: Requester;
    if (who < 0.3) requester = { username: `app-${n}-${j}-${pick(3)}`, groups: authenticated };
    else if (who < 0.45) requester = { username: `system:serviceaccount:${nsName(n)}:sa-${j}`, groups: ['system:serviceaccounts', `system:serviceaccounts:${nsName(n)}`, ...authenticated] };
    else if (who < 0.55) requester = { username: `admin-${n}-${j}`, groups: authenticated };
    else if (who < 0.62) requester = { username: `someone-${pick(1000)}`, groups: [`key-admins-${n}`, ...authenticated] };
    else if (who < 0.7) requester = { username: `writer-${n}-${j}`, groups: authenticated };
    else if (who < 0.75) requester = { username: `oncall-${n}`, groups: authenticated };
    else if (who < 0.82) requester = { username: `auditor-${pick(20)}`, groups: ['auditors', ...authenticated] };
    else requester = { username: `stranger-${pick(5000)}`, groups: authenticated };
    // Mostly a ring of the requester's policy; sometimes any ring of the namespace, or a namespace without policies.
    const where = random();
    const keyRing = where < 0.8 ? ring(j * ringsPerPolicy + pick(ringsPerPolicy)) : ring(pick(shape.ringsPerNamespace));
    const ns = where < 0.97 ? nsName(n) : `no-policy-${pick(10)}`;
    return { requester, namespace: ns, keyRing, operation: operationNames[pick(operationNames.length)] ?? 'encrypt' };
  });
}

function benchEvaluator(): void {
  const now = new Date();
  const policies = syntheticPolicies(now, { expiredBreakGlass: true });
  // The rebuild as the policy cache does it: from the informer's objects to a new PolicySet.
  const rebuild = (): PolicySet => new PolicySet(policies.map(policyDocument));
  let set = rebuild();
  const grants = policies.reduce((sum, p) => sum + (set.verdict(p.metadata.namespace ?? '', p.metadata.name ?? '')?.grants.length ?? 0), 0);
  const unenforced = policies.filter((p) => !set.verdict(p.metadata.namespace ?? '', p.metadata.name ?? '')?.enforced).length;
  if (unenforced > 0) throw new Error(`${unenforced} synthetic policies are not enforced: the workload is wrong`);
  const rebuildRuns = 20;
  const rebuildMs: number[] = [];
  for (let run = 0; run < rebuildRuns; run++) {
    const started = performance.now();
    set = rebuild();
    rebuildMs.push(performance.now() - started);
  }
  // What a policy change costs the cache: its namespace alone is rebuilt.
  const namespaceRebuildMs: number[] = [];
  for (let run = 0; run < 200; run++) {
    const namespace = nsName(run % shape.namespaces);
    const inNamespace = policies.filter((p) => p.metadata.namespace === namespace).map(policyDocument);
    const started = performance.now();
    set = set.withNamespace(namespace, inNamespace);
    namespaceRebuildMs.push(performance.now() - started);
  }
  const memory = process.memoryUsage();
  emit({
    bench: 'policy-rebuild',
    policies: policies.length,
    namespaces: shape.namespaces,
    rings: shape.namespaces * shape.ringsPerNamespace,
    subjects: distinctSubjects(policies),
    grants,
    runs: rebuildRuns,
    ...summary(rebuildMs),
    namespace_rebuild: summary(namespaceRebuildMs),
    heap_used_mib: round(memory.heapUsed / 1048576, 1),
    load_1m: load1m(),
  });

  const asked = questions(100_000);
  const reasons: Partial<Record<DecisionReason, number>> = {};
  const decide = (q: Question): DecisionReason => set.decide(q.requester, q.namespace, q.keyRing, q.operation, now).reason;
  // Warm up (JIT), then count decisions in whole passes over the questions until the time is up.
  for (const q of asked.slice(0, 20_000)) decide(q);
  let decisions = 0;
  let allowed = 0;
  const started = performance.now();
  while (performance.now() - started < evaluatorSeconds * 1000) {
    for (const q of asked) {
      const reason = decide(q);
      reasons[reason] = (reasons[reason] ?? 0) + 1;
      if (reason === 'Granted') allowed++;
    }
    decisions += asked.length;
  }
  const seconds = (performance.now() - started) / 1000;
  emit({
    bench: 'policy-evaluator',
    policies: policies.length,
    rings: shape.namespaces * shape.ringsPerNamespace,
    subjects: distinctSubjects(policies),
    decisions,
    seconds: round(seconds, 2),
    decisions_per_s: Math.round(decisions / seconds),
    mean_us: round((seconds * 1e6) / decisions, 2),
    allowed_share: round(allowed / decisions, 3),
    reasons,
    load_1m: load1m(),
  });
}

// ---------------------------------------------------------------- 2. policy lag, on a control plane

type Answer = 'allowed' | 'refused';

/** The user's dry-run rotation request: allowed, or refused by Keyward's KeyRing webhook; anything else fails the run. */
async function askToRotate(client: CustomObjectsApi, value: string): Promise<Answer> {
  try {
    await client.patchNamespacedCustomObject(
      { ...keyRingResource, namespace, name: ringName, body: { spec: { rotationRequest: value } }, dryRun: 'All' },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    );
    return 'allowed';
  } catch (err) {
    if (err instanceof ApiException && err.code === 403) {
      const { message = '' } = JSON.parse(String(err.body)) as { message?: string };
      if (message.startsWith('admission webhook "keyrings.keyward.dev" denied the request') && message.includes('rotate')) return 'refused';
      throw new Error(`refused, but not by KeyPolicy: ${message}`, { cause: err });
    }
    throw err;
  }
}

const policyRules = (grant: boolean): KeyPolicyRule[] => [
  { name: 'bench-user', subjects: [{ kind: 'User', name: benchUser }], keyRings: [ringName], operations: grant ? ['getMetadata', 'rotate'] : ['getMetadata'] },
];

/** Whether the operator's status for this generation shows the grant in force (or gone). */
function statusShows(policy: KeyPolicy, generation: number, grant: boolean): boolean {
  const status = policy.status;
  if ((status?.observedGeneration ?? 0) < generation) return false;
  if (!status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True')) return false;
  const rotate = (status.grants ?? []).some((g) => g.subject === `User ${benchUser}` && g.keyRing === ringName && g.operations.includes('rotate'));
  return rotate === grant;
}

/** Every version of the policy the apiserver sends on a watch, with its arrival time. */
function watchPolicy(kubeConfig: KubeConfig, seen: (policy: KeyPolicy, at: number) => void): Promise<{ stop(): void }> {
  const path = `/apis/${keyPolicyResource.group}/${keyPolicyResource.version}/namespaces/${namespace}/${keyPolicyResource.plural}`;
  return watchObjects<KeyPolicy>(kubeConfig, path, { fieldSelector: `metadata.name=${policyName}` }, (policy) => seen(policy, performance.now()), progress);
}

/**
 * Creates the first `count` of part 1's policies (break-glass grants all live, as admission wants
 * them), a few requests in flight, and waits until the operator has written the status of each.
 */
async function createBackgroundPolicies(cp: ControlPlane, admin: CustomObjectsApi, count: number): Promise<void> {
  const policies = syntheticPolicies(new Date(), { expiredBreakGlass: false }).slice(0, count);
  const core = cp.kubeConfig.makeApiClient(CoreV1Api);
  for (const ns of new Set(policies.map((p) => p.metadata.namespace ?? ''))) await core.createNamespace({ body: { metadata: { name: ns } } });
  const started = performance.now();
  let next = 0;
  const creator = async (): Promise<void> => {
    while (next < policies.length) {
      const policy = policies[next++] as KeyPolicy;
      const ns = policy.metadata.namespace ?? '';
      await admin.createNamespacedCustomObject({
        ...keyPolicyResource,
        namespace: ns,
        body: { apiVersion: policy.apiVersion, kind: policy.kind, metadata: { name: policy.metadata.name, namespace: ns }, spec: policy.spec },
      });
    }
  };
  await Promise.all(Array.from({ length: 4 }, creator));
  const created = performance.now();
  progress(`${count} background policies created in ${round((created - started) / 1000, 1)} s; waiting for the operator to write their status`);
  let lastReport = created;
  for (;;) {
    const { items } = (await admin.listClusterCustomObject({ ...keyPolicyResource })) as { items: KeyPolicy[] };
    const settled = items.filter((p) => p.metadata.namespace !== namespace && (p.status?.observedGeneration ?? 0) >= (p.metadata.generation ?? 1)).length;
    if (settled >= count) break;
    if (performance.now() - created > 20 * 60_000) throw new Error(`only ${settled} of ${count} background policies have a status after 20 min`);
    if (performance.now() - lastReport > 10_000) {
      progress(`${settled}/${count} background policies have their status`);
      lastReport = performance.now();
    }
    await sleep(3000);
  }
  emit({
    bench: 'policy-background',
    policies: count,
    grants: policies.reduce((sum, p) => sum + p.spec.rules.reduce((n, r) => n + r.subjects.length * r.keyRings.length, 0), 0),
    create_s: round((created - started) / 1000, 1),
    status_settled_s: round((performance.now() - created) / 1000, 1),
    load_1m: load1m(),
  });
}

interface ChangeResult {
  grant: boolean;
  enforcedMs: number;
  statusMs: number;
  probes: number;
}

async function benchPolicyLag(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'keyward-bench-policy-'));
  const removeDir = trackDirectory(dir);
  let cp: ControlPlane | undefined;
  let operator: OperatorProcess | undefined;
  let watch: { stop(): void } | undefined;
  try {
    cp = await startControlPlane({ progress });
    await installCrds(cp.kubeConfig);
    const hsm = createSoftHsmToken({ parentDir: dir, label: 'keyward-bench-policy' });
    const webhookAddress = `127.0.0.1:${await freePort()}`;
    operator = await startOperatorProcess({
      hsm,
      kubeconfigPath: cp.kubeconfigPath,
      dir,
      identity,
      webhook: { address: webhookAddress, certDir: webhookCertDir(cp, join(dir, 'webhook')) },
      // One record per probe: to a file, so the operator's log stays readable.
      auditLog: join(dir, 'audit.log'),
    });
    const pid = operator.process.pid;
    if (pid === undefined) throw new Error('the operator process has no pid');
    const logFile = operator.logFile;
    await operator.process.waitReady(() => Promise.resolve(readFileSync(logFile, 'utf8').includes('starting the KeyRing controller')), 60_000, 'leading');
    await registerAdmissionWebhooks(cp, webhookAddress);
    progress(`operator pid ${pid} leading, webhook on ${webhookAddress} registered`);

    const admin = keepAliveApiClient(cp.kubeConfig, CustomObjectsApi);
    await cp.kubeConfig.makeApiClient(CoreV1Api).createNamespace({ body: { metadata: { name: namespace } } });
    await admin.createNamespacedCustomObject({
      ...keyRingResource,
      namespace,
      body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name: ringName }, spec: { purpose: 'encryption' } },
    });
    // RBAC lets the user patch KeyRings here: what the user may ask of a ring is KeyPolicy's call alone.
    const rbac = cp.kubeConfig.makeApiClient(RbacAuthorizationV1Api);
    await rbac.createNamespacedRole({ namespace, body: { metadata: { name: 'keyring-editor' }, rules: [{ apiGroups: ['keyward.dev'], resources: ['keyrings'], verbs: ['get', 'patch'] }] } });
    await rbac.createNamespacedRoleBinding({
      namespace,
      body: {
        metadata: { name: 'keyring-editor' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'keyring-editor' },
        subjects: [{ kind: 'User', apiGroup: 'rbac.authorization.k8s.io', name: benchUser }],
      },
    });
    const user = keepAliveApiClient(userKubeConfig(cp, benchUser), CustomObjectsApi);
    if (backgroundPolicies > 0) await createBackgroundPolicies(cp, admin, backgroundPolicies);
    const created = (await admin.createNamespacedCustomObject({
      ...keyPolicyResource,
      namespace,
      body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyPolicy', metadata: { name: policyName }, spec: { rules: policyRules(false) } },
    })) as KeyPolicy;

    // Every version of the policy the watch delivers, to time the status write of each change.
    const versions: { policy: KeyPolicy; at: number }[] = [];
    watch = await watchPolicy(cp.kubeConfig, (policy, at) => versions.push({ policy, at }));
    const statusAt = async (generation: number, grant: boolean, since: number): Promise<number> => {
      for (;;) {
        const found = versions.find((v) => statusShows(v.policy, generation, grant));
        if (found) return found.at;
        if (performance.now() - since > changeTimeoutMs) throw new Error(`the status of generation ${generation} did not show the change within ${changeTimeoutMs / 1000} s`);
        await sleep(2);
      }
    };
    await statusAt(created.metadata.generation ?? 1, false, performance.now());
    let probe = 0;
    if ((await askToRotate(user, `bench-${probe++}`)) !== 'refused') throw new Error('the user may rotate before any grant: KeyPolicy is not enforced');

    const rtts: number[] = [];
    const change = async (index: number): Promise<ChangeResult> => {
      const grant = index % 2 === 0;
      const expected: Answer = grant ? 'allowed' : 'refused';
      const updated = (await admin.patchNamespacedCustomObject(
        { ...keyPolicyResource, namespace, name: policyName, body: { spec: { rules: policyRules(grant) } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      )) as KeyPolicy;
      const t0 = performance.now();
      let probes = 0;
      let enforcedMs: number | undefined;
      while (enforcedMs === undefined) {
        const sent = performance.now();
        const answer = await askToRotate(user, `bench-${probe++}`);
        const arrived = performance.now();
        probes++;
        rtts.push(arrived - sent);
        if (answer === expected) enforcedMs = arrived - t0;
        else if (arrived - t0 > changeTimeoutMs) throw new Error(`change ${index} (${grant ? 'grant' : 'revoke'}) not in force after ${changeTimeoutMs / 1000} s`);
        else await sleep(pollMs);
      }
      // The status may be written before the update's response arrives here: that counts as no lag.
      const statusMs = Math.max(0, (await statusAt(updated.metadata.generation ?? 0, grant, t0)) - t0);
      versions.splice(0, versions.length - 1);
      return { grant, enforcedMs, statusMs, probes };
    };

    for (let i = 0; i < warmupChanges; i++) await change(i);
    rtts.length = 0;
    progress(`${warmupChanges} warm-up changes done; measuring ${changes} changes, probing every ${pollMs} ms`);
    const loadStart = load1m();
    const cpuBefore = cpuSeconds(pid);
    const stopRssWatch = watchPeakRss(pid, 200);
    const started = performance.now();
    const results: ChangeResult[] = [];
    for (let i = 0; i < changes; i++) {
      // Continue the grant/revoke alternation of the warm-up.
      results.push(await change(warmupChanges + i));
      if ((i + 1) % 20 === 0 || i + 1 === changes) {
        const last = results.slice(-20);
        progress(`${i + 1}/${changes} changes; last ${last.length}: enforcement max ${round(Math.max(...last.map((r) => r.enforcedMs)), 1)} ms, status max ${round(Math.max(...last.map((r) => r.statusMs)), 1)} ms`);
      }
    }
    const wallSeconds = (performance.now() - started) / 1000;
    const rssPeak = stopRssWatch();
    const cpuUsed = cpuSeconds(pid) - cpuBefore;
    const common = { changes: results.length, background_policies: backgroundPolicies, load_1m_start: loadStart, load_1m_end: load1m() };
    const enforced = summary(results.map((r) => r.enforcedMs));
    emit({
      bench: 'policy-lag',
      phase: 'enforcement',
      measured: 'policy update response → first dry-run rotation answered in the new state (webhook)',
      ...enforced,
      grant: summary(results.filter((r) => r.grant).map((r) => r.enforcedMs)),
      revoke: summary(results.filter((r) => !r.grant).map((r) => r.enforcedMs)),
      target_p99_ms: targetP99Ms,
      meets_target: enforced.p99_ms <= targetP99Ms,
      poll_interval_ms: pollMs,
      probe_rtt: summary(rtts),
      probes_per_change_mean: round(results.reduce((sum, r) => sum + r.probes, 0) / results.length, 1),
      total_s: round(wallSeconds, 1),
      operator_cpu_s: round(cpuUsed, 2),
      operator_rss_mib: round(rssMib(pid), 1),
      operator_rss_peak_mib: round(rssPeak, 1),
      ...common,
    });
    emit({
      bench: 'policy-lag',
      phase: 'status',
      measured: "policy update response → the operator's status for that generation shows the change (watch)",
      ...summary(results.map((r) => r.statusMs)),
      ...common,
    });
  } finally {
    progress('stopping the operator and the control plane, removing the token');
    watch?.stop();
    await operator?.process.stop();
    await cp?.stop();
    removeDir();
  }
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  if (!Number.isInteger(changes) || changes < 1) throw new Error('KEYWARD_BENCH_CHANGES must be a whole number of at least 1');
  if (!(pollMs >= 0) || !(evaluatorSeconds > 0)) throw new Error('KEYWARD_BENCH_POLL_MS must be 0 or more and KEYWARD_BENCH_EVAL_SECONDS more than 0');
  const most = shape.namespaces * shape.policiesPerNamespace;
  if (!Number.isInteger(backgroundPolicies) || backgroundPolicies < 0 || backgroundPolicies > most) {
    throw new Error(`KEYWARD_BENCH_BACKGROUND_POLICIES must be a whole number from 0 to ${most}`);
  }
  progress(`load average at start: ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  warnIfBusy(progress);
  progress(`evaluator: ${shape.namespaces * shape.policiesPerNamespace} policies, ${shape.namespaces * shape.ringsPerNamespace} rings, ${evaluatorSeconds} s of decisions`);
  benchEvaluator();
  progress(`policy lag: ${changes} changes`);
  await benchPolicyLag();
}

try {
  await main();
} catch (err) {
  console.error(`[bench:policy] FAILED: ${(err as Error).message}`);
  process.exitCode = 1;
}
