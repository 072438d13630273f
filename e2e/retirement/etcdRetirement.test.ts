// Rotation that finishes itself, on a real control plane: 2,000 Secrets written under version 1,
// a rotation, and then the operator has etcd rewritten under version 2 once kube-apiserver uses it,
// the scanner proves from etcd that nothing is left under version 1, and only then may version 1
// be disabled and destroyed. Read from etcd itself, across an operator SIGKILL and an apiserver
// restart in the middle of a run.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CoreV1Api, CustomObjectsApi, PatchStrategy, RbacAuthorizationV1Api, setHeaderOptions, type KubeConfig } from '@kubernetes/client-node';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { keyPolicyResource } from '../../core/api/keyPolicy.js';
import { keyRingResource, type KeyRing, type KeyRingVersionStatus } from '../../core/api/keyRing.js';
import { eventually } from '../../testbed/eventually.js';
import { apiRefusal } from '../../testbed/apiRefusal.js';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { parseKmsV2Value } from '../../testbed/control-plane/encryptedObject.js';
import { readEtcdPrefix } from '../../testbed/control-plane/etcdClient.js';
import { freePort } from '../../testbed/control-plane/network.js';
import { kmsEncryptionConfig, startKmsPluginProcess, type KmsPluginProcess } from '../kms/kmsPluginProcess.js';
import { installCrds } from '../operator/crds.js';
import { registerAdmissionWebhooks, userKubeConfig, webhookCertDir } from '../operator/admissionWebhooks.js';
import { startOperatorProcess, type OperatorProcess } from '../operator/operatorProcess.js';
import { startScannerProcess, type ScannerProcess } from './scannerProcess.js';

const namespace = 'kube-system';
const ringName = 'etcd-secrets';
const secretNamespace = 'default';
const secretCount = 2000;
const merge = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

describe('Retirement: etcd re-encrypted after a rotation, and an old version retired only when etcd proves it unused', function () {
  this.timeout(900_000);
  let dir: string;
  let hsm: SoftHsmToken;
  let cp: ControlPlane;
  let operator: OperatorProcess;
  let plugin: KmsPluginProcess;
  let scanner: ScannerProcess;
  let webhook: { address: string; certDir: string };
  let alice: KubeConfig;
  let carol: KubeConfig;
  const values = new Map<string, string>();

  const objects = (kubeConfig: KubeConfig = cp.kubeConfig) => kubeConfig.makeApiClient(CustomObjectsApi);
  const keyRing = async (): Promise<KeyRing> => (await objects().getNamespacedCustomObject({ ...keyRingResource, namespace, name: ringName })) as KeyRing;
  const patchRing = (kubeConfig: KubeConfig, spec: Record<string, unknown>): Promise<unknown> =>
    objects(kubeConfig).patchNamespacedCustomObject({ ...keyRingResource, namespace, name: ringName, body: { spec } }, merge);
  const version = (kr: KeyRing, number: number): KeyRingVersionStatus | undefined => kr.status?.versions?.find((v) => v.number === number);
  const keyIdOf = async (number: number): Promise<string> => version(await keyRing(), number)?.keyId ?? assert.fail(`version ${number} has no key id`);
  const primaryAfter = (number: number): Promise<KeyRing> =>
    eventually(`KeyRing primary version ${number}`, 30_000, async () => {
      const kr = await keyRing();
      return kr.status?.primaryVersion === number ? kr : undefined;
    });
  const waitForPhase = async (target: number, phase: string, timeoutMs: number): Promise<KeyRing> => {
    try {
      return await eventually(`re-encryption under version ${target} ${phase}`, timeoutMs, async () => {
        const kr = await keyRing();
        return kr.status?.reEncryption?.targetVersion === target && kr.status.reEncryption.phase === phase ? kr : undefined;
      }, 1000);
    } catch (err) {
      // What to look at: the run as status shows it, and the operator's last words.
      const log = readFileSync(operator.logFile, 'utf8').split('\n').slice(-15).join('\n');
      throw new Error(`${(err as Error).message}\n${JSON.stringify((await keyRing()).status?.reEncryption)}\n${log}`, { cause: err });
    }
  };

  /** Stored Secrets by the key id etcd holds them under ('' for other encodings). */
  const etcdKeyIds = async (): Promise<Map<string, number>> => {
    const counts = new Map<string, number>();
    for (const { value } of await readEtcdPrefix(cp.etcdEndpoint, '/registry/secrets/')) {
      const keyId = parseKmsV2Value(value)?.keyId ?? '';
      counts.set(keyId, (counts.get(keyId) ?? 0) + 1);
    }
    return counts;
  };
  const assertAllReadable = async (): Promise<void> => {
    const read = new Map<string, string>();
    let next: string | undefined;
    do {
      const page = await cp.kubeConfig.makeApiClient(CoreV1Api).listNamespacedSecret({ namespace: secretNamespace, limit: 500, _continue: next });
      for (const s of page.items) read.set(s.metadata?.name ?? '', Buffer.from(s.data?.value ?? '', 'base64').toString());
      next = page.metadata?._continue || undefined;
    } while (next);
    for (const [name, value] of values) assert.equal(read.get(name), value, `Secret ${name} reads back`);
  };
  const eventsFor = async (reason: string): Promise<string[]> => {
    const list = await cp.kubeConfig.makeApiClient(CoreV1Api).listNamespacedEvent({ namespace, fieldSelector: `involvedObject.name=${ringName},reason=${reason}` });
    return list.items.map((e) => e.message ?? '');
  };
  const startOperator = async (identity: string): Promise<OperatorProcess> =>
    (operator = await startOperatorProcess({ hsm, kubeconfigPath: cp.kubeconfigPath, dir, identity, leaseSeconds: 4, webhook, auditLog: join(dir, `audit-${identity}.jsonl`) }));

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keyward-e2e-retirement-'));
    hsm = createSoftHsmToken({ parentDir: dir });
    cp = await startControlPlane({ encryptionConfig: kmsEncryptionConfig(dir, 'keyward', join(dir, 'kms.sock')), skipReadyz: true });
    await installCrds(cp.kubeConfig);
    // A fixed address, so the operator started after the SIGKILL serves the registered webhook.
    webhook = { address: `127.0.0.1:${await freePort()}`, certDir: webhookCertDir(cp, join(dir, 'webhook')) };
    await startOperator('first');
    await registerAdmissionWebhooks(cp, webhook.address);

    const rbac = cp.kubeConfig.makeApiClient(RbacAuthorizationV1Api);
    await rbac.createClusterRole({ body: { metadata: { name: 'key-admins' }, rules: [{ apiGroups: ['keyward.dev'], resources: ['keyrings'], verbs: ['get', 'list', 'watch', 'patch', 'update'] }] } });
    await rbac.createClusterRoleBinding({
      body: {
        metadata: { name: 'key-admins' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'key-admins' },
        subjects: [{ kind: 'Group', apiGroup: 'rbac.authorization.k8s.io', name: 'key-admins' }],
      },
    });
    alice = userKubeConfig(cp, 'alice', ['key-admins']);
    carol = userKubeConfig(cp, 'carol', ['key-admins']);
    await objects().createNamespacedCustomObject({
      ...keyPolicyResource,
      namespace,
      body: {
        apiVersion: 'keyward.dev/v1alpha1',
        kind: 'KeyPolicy',
        metadata: { name: 'etcd-custody' },
        spec: { rules: [{ name: 'custodians', subjects: [{ kind: 'User', name: 'alice' }, { kind: 'User', name: 'carol' }], keyRings: [ringName], roles: ['Administrator'] }] },
      },
    });
    // Re-encryption off at first, so the count under version 1 can be seen to refuse its retirement.
    await objects().createNamespacedCustomObject({
      ...keyRingResource,
      namespace,
      body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name: ringName }, spec: { purpose: 'encryption', reEncryption: { enabled: false } } },
    });
    await primaryAfter(1);
    plugin = await startKmsPluginProcess({ hsm, ringName, ringNamespace: namespace, dir });
    // The apiserver encrypts once it has had the plugin's first Status (it asks every 10 s while unhealthy).
    const core = cp.kubeConfig.makeApiClient(CoreV1Api);
    await eventually('kube-apiserver encrypting through the plugin', 150_000, async () => {
      try {
        await core.createNamespacedSecret({ namespace: secretNamespace, body: { metadata: { name: 'probe' }, stringData: { value: 'probe' } } });
        values.set('probe', 'probe');
        return true;
      } catch {
        return undefined;
      }
    }, 1000);
    scanner = await startScannerProcess({ hsm, ringName, ringNamespace: namespace, providerName: 'keyward', etcdEndpoint: cp.etcdEndpoint, dir, intervalSeconds: 10, pagesPerSecond: 50 });
  });
  after(async () => {
    await scanner?.process.stop();
    await plugin?.process.stop();
    await operator?.process.stop();
    await cp?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it(`refuses to disable version 1 while etcd holds ${secretCount} Secrets under it, naming the count [practice:verified-retirement]`, async () => {
    const core = cp.kubeConfig.makeApiClient(CoreV1Api);
    for (let start = 0; start < secretCount; start += 20) {
      await Promise.all(
        Array.from({ length: 20 }, async (_, i) => {
          const name = `s-${start + i}`;
          const value = `value-${start + i}-${Math.random().toString(36).slice(2)}`;
          await core.createNamespacedSecret({ namespace: secretNamespace, body: { metadata: { name }, stringData: { value } } });
          values.set(name, value);
        }),
      );
    }
    const v1 = await keyIdOf(1);
    assert.equal((await etcdKeyIds()).get(v1), secretCount + 1, `etcd holds all ${secretCount} Secrets (and the probe) under version 1`);

    await patchRing(alice, { rotationRequest: 'rotate-to-2' });
    await primaryAfter(2);
    // The apiserver asks the plugin's Status about once a minute; then the scanner counts again.
    const kr = await eventually('a scan after kube-apiserver switched to version 2', 240_000, async () => {
      const ring = await keyRing();
      const switched = ring.status?.reEncryption?.apiserverSwitchedAt;
      const provenAt = version(ring, 1)?.etcdObjectsProvenAt;
      return switched && provenAt && Date.parse(provenAt) >= Date.parse(switched) ? ring : undefined;
    }, 2000);
    assert.equal(version(kr, 1)?.etcdObjects, secretCount + 1);
    assert.equal(kr.status?.reEncryption?.phase, 'Off');
    const retirement = kr.status?.conditions?.find((c) => c.type === 'RetirementComplete');
    assert.deepEqual([retirement?.status, retirement?.reason], ['False', 'ObjectsRemain']);

    const refusal = await apiRefusal(patchRing(alice, { versions: [{ number: 1, state: 'Disabled' }] }));
    assert.equal(refusal.code, 403);
    assert.match(refusal.message, new RegExp(`version 1 still protects ${secretCount + 1} objects in etcd`));
    const destroy = await apiRefusal(patchRing(alice, { versions: [{ number: 1, state: 'DestroyScheduled' }] }));
    assert.match(destroy.message, new RegExp(`still protects ${secretCount + 1} objects`));
    assert.equal(version(await keyRing(), 1)?.state, 'Enabled', 'nothing changed');
  });

  it('re-encrypts etcd by itself, proves it from etcd, and then lets version 1 be disabled and destroyed [practice:verified-retirement] [practice:rotation]', async () => {
    await patchRing(alice, { reEncryption: { enabled: true, maxWritesPerSecond: 200 } });
    const kr = await waitForPhase(2, 'Complete', 300_000);
    assert.equal(kr.status?.reEncryption?.method, 'Rewrite', 'this cluster serves no StorageVersionMigration');
    assert.ok((kr.status?.reEncryption?.rewrittenObjects ?? 0) >= secretCount);

    const [v1, v2] = [await keyIdOf(1), await keyIdOf(2)];
    const stored = await etcdKeyIds();
    assert.equal(stored.get(v1) ?? 0, 0, 'etcd holds nothing under version 1');
    assert.ok((stored.get(v2) ?? 0) >= secretCount, `every Secret is under version 2: ${JSON.stringify([...stored])}`);
    await assertAllReadable();
    const retired = await eventually('RetirementComplete', 30_000, async () => {
      const ring = await keyRing();
      return ring.status?.conditions?.find((c) => c.type === 'RetirementComplete' && c.status === 'True') ? ring : undefined;
    });
    assert.equal(version(retired, 1)?.etcdObjects, 0);

    await patchRing(alice, { versions: [{ number: 1, state: 'Disabled' }] });
    await eventually('version 1 Disabled', 30_000, async () => (version(await keyRing(), 1)?.state === 'Disabled' ? true : undefined));
    await patchRing(alice, { versions: [{ number: 1, state: 'DestroyScheduled' }] });
    await patchRing(carol, { versions: [{ number: 1, state: 'DestroyScheduled', approveDestroy: true }] });
    await eventually('version 1 DestroyScheduled', 30_000, async () => (version(await keyRing(), 1)?.state === 'DestroyScheduled' ? true : undefined));
    await assertAllReadable();
    assert.equal((await eventsFor('ReEncryptionStarted')).filter((m) => m.includes('version 2')).length, 1, 'one run for the rotation');
  });

  it('finishes a run across an operator SIGKILL, an apiserver restart, a scanner SIGKILL and a KMS plugin outage, once, with nothing left under older versions [practice:verified-retirement]', async () => {
    await patchRing(alice, { reEncryption: { enabled: true, maxWritesPerSecond: 25 } });
    await patchRing(alice, { rotationRequest: 'rotate-to-3' });
    await primaryAfter(3);
    await eventually('rewriting under version 3 under way', 240_000, async () => {
      const run = (await keyRing()).status?.reEncryption;
      return run?.targetVersion === 3 && run.phase === 'Rewriting' && (run.rewrittenObjects ?? 0) >= 500 ? true : undefined;
    }, 1000);
    operator.process.killNow();
    await startOperator('second');
    await cp.restartApiserver({ skipReadyz: true });
    // The node side fails too: the scanner killed, the KMS plugin away for a while.
    scanner.process.killNow();
    await plugin.process.stop();
    await new Promise((resolve) => setTimeout(resolve, 10_000));
    plugin = await startKmsPluginProcess({ hsm, ringName, ringNamespace: namespace, dir });
    scanner = await startScannerProcess({ hsm, ringName, ringNamespace: namespace, providerName: 'keyward', etcdEndpoint: cp.etcdEndpoint, dir, intervalSeconds: 10, pagesPerSecond: 50 });
    await waitForPhase(3, 'Complete', 420_000);

    const [v2, v3] = [await keyIdOf(2), await keyIdOf(3)];
    const stored = await etcdKeyIds();
    assert.equal((stored.get(v2) ?? 0) + (stored.get(await keyIdOf(1)) ?? 0), 0, 'etcd holds nothing under versions 1 and 2');
    assert.ok((stored.get(v3) ?? 0) >= secretCount, `every Secret is under version 3: ${JSON.stringify([...stored])}`);
    await assertAllReadable();
    // The restarted apiserver had to ask the plugin for the seeds of what version 2 protected.
    assert.ok(version(await keyRing(), 2)?.lastDecryptTime, 'the KMS plugin records its last decryption with version 2');
    assert.equal((await eventsFor('ReEncryptionStarted')).filter((m) => m.includes('version 3')).length, 1, 'the restarted operator resumed the run, not a new one');
    assert.equal((await eventsFor('ReEncryptionComplete')).filter((m) => m.includes('than 3')).length, 1);
  });

  it('lets a second rotation supersede a run in progress cleanly', async () => {
    await patchRing(alice, { reEncryption: { enabled: true, maxWritesPerSecond: 200 } });
    await patchRing(alice, { rotationRequest: 'rotate-to-4' });
    await primaryAfter(4);
    await patchRing(alice, { rotationRequest: 'rotate-to-5' });
    await primaryAfter(5);
    await waitForPhase(5, 'Complete', 420_000);
    const stored = await etcdKeyIds();
    const v5 = await keyIdOf(5);
    assert.deepEqual([...stored.keys()].filter((k) => k !== v5), [], 'etcd holds Secrets under version 5 only');
    await assertAllReadable();
  });
});
