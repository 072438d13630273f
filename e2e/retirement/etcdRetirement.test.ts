// Rotation that finishes itself, on a real control plane: 2,000 Secrets written under version 1,
// a rotation, and then the operator has etcd rewritten under version 2 once kube-apiserver uses it,
// the scanner proves from etcd that nothing is left under version 1, and only then may version 1
// be disabled and destroyed. Read from etcd itself, across an operator SIGKILL, an apiserver
// restart, a scanner SIGKILL and a KMS plugin outage in the middle of a run.
import assert from 'node:assert/strict';
import { CoreV1Api, RbacAuthorizationV1Api, type KubeConfig } from '@kubernetes/client-node';
import type { KeyRing, KeyRingVersionStatus } from '../../core/api/keyRing.js';
import { eventually } from '../../testbed/eventually.js';
import { apiRefusal } from '../../testbed/apiRefusal.js';
import { parseKmsV2Value } from '../../testbed/control-plane/encryptedObject.js';
import { readEtcdPrefix } from '../../testbed/control-plane/etcdClient.js';
import { userKubeConfig } from '../operator/admissionWebhooks.js';
import { RetirementCluster, ringName, ringNamespace } from './retirementCluster.js';

const secretNamespace = 'default';
const secretCount = 2000;

describe('Retirement: etcd re-encrypted after a rotation, and an old version retired only when etcd proves it unused', function () {
  this.timeout(900_000);
  let cluster: RetirementCluster;
  let alice: KubeConfig;
  let carol: KubeConfig;
  // The fixture's probe Secret is one of them.
  const values = new Map<string, string>([['probe', 'probe']]);

  const keyRing = (): Promise<KeyRing> => cluster.keyRing();
  const patchRing = (kubeConfig: KubeConfig, spec: Record<string, unknown>): Promise<unknown> => cluster.patchRing(spec, kubeConfig);
  const version = (kr: KeyRing, number: number): KeyRingVersionStatus | undefined => kr.status?.versions?.find((v) => v.number === number);
  const keyIdOf = async (number: number): Promise<string> => version(await keyRing(), number)?.keyId ?? assert.fail(`version ${number} has no key id`);
  const waitForPhase = (target: number, phase: string, timeoutMs: number): Promise<KeyRing> => cluster.phase(target, phase, timeoutMs);

  /** Stored Secrets by the key id etcd holds them under ('' for other encodings). */
  const etcdKeyIds = async (): Promise<Map<string, number>> => {
    const counts = new Map<string, number>();
    for (const { value } of await readEtcdPrefix(cluster.cp.etcdEndpoint, '/registry/secrets/')) {
      const keyId = parseKmsV2Value(value)?.keyId ?? '';
      counts.set(keyId, (counts.get(keyId) ?? 0) + 1);
    }
    return counts;
  };
  const assertAllReadable = async (): Promise<void> => {
    const read = new Map<string, string>();
    let next: string | undefined;
    do {
      const page = await cluster.cp.kubeConfig.makeApiClient(CoreV1Api).listNamespacedSecret({ namespace: secretNamespace, limit: 500, _continue: next });
      for (const s of page.items) read.set(s.metadata?.name ?? '', Buffer.from(s.data?.value ?? '', 'base64').toString());
      next = page.metadata?._continue || undefined;
    } while (next);
    for (const [name, value] of values) assert.equal(read.get(name), value, `Secret ${name} reads back`);
  };
  const eventsFor = async (reason: string): Promise<string[]> => {
    const list = await cluster.cp.kubeConfig.makeApiClient(CoreV1Api).listNamespacedEvent({ namespace: ringNamespace, fieldSelector: `involvedObject.name=${ringName},reason=${reason}` });
    return list.items.map((e) => e.message ?? '');
  };

  before(async () => {
    cluster = await RetirementCluster.start({
      name: 'retirement',
      admission: { rules: [{ name: 'custodians', subjects: [{ kind: 'User', name: 'alice' }, { kind: 'User', name: 'carol' }], keyRings: [ringName], roles: ['Administrator'] }] },
      // Re-encryption off at first, so the count under version 1 can be seen to refuse its retirement.
      keyRingSpec: { reEncryption: { enabled: false, maxWritesPerSecond: 100, method: 'Auto' } },
      scanner: { intervalSeconds: 10, pagesPerSecond: 50 },
    });
    const rbac = cluster.cp.kubeConfig.makeApiClient(RbacAuthorizationV1Api);
    await rbac.createClusterRole({ body: { metadata: { name: 'key-admins' }, rules: [{ apiGroups: ['keyward.dev'], resources: ['keyrings'], verbs: ['get', 'list', 'watch', 'patch', 'update'] }] } });
    await rbac.createClusterRoleBinding({
      body: {
        metadata: { name: 'key-admins' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'key-admins' },
        subjects: [{ kind: 'Group', apiGroup: 'rbac.authorization.k8s.io', name: 'key-admins' }],
      },
    });
    alice = userKubeConfig(cluster.cp, 'alice', ['key-admins']);
    carol = userKubeConfig(cluster.cp, 'carol', ['key-admins']);
  });
  after(() => cluster?.stop());

  it(`refuses to disable version 1 while etcd holds ${secretCount} Secrets under it, naming the count [practice:verified-retirement]`, async () => {
    const core = cluster.cp.kubeConfig.makeApiClient(CoreV1Api);
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

    await cluster.rotate('rotate-to-2', 2, alice);
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
    await cluster.rotate('rotate-to-3', 3, alice);
    await eventually('rewriting under version 3 under way', 240_000, async () => {
      const run = (await keyRing()).status?.reEncryption;
      return run?.targetVersion === 3 && run.phase === 'Rewriting' && (run.rewrittenObjects ?? 0) >= 500 ? true : undefined;
    }, 1000);
    cluster.operator.process.killNow();
    await cluster.startOperator('second');
    await cluster.cp.restartApiserver({ skipReadyz: true });
    // The node side fails too: the scanner killed, the KMS plugin away for a while.
    cluster.scanner.process.killNow();
    await cluster.plugin.process.stop();
    await new Promise((resolve) => setTimeout(resolve, 10_000));
    await cluster.startPlugin();
    await cluster.startScanner();
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
    await cluster.rotate('rotate-to-4', 4, alice);
    await cluster.rotate('rotate-to-5', 5, alice);
    await waitForPhase(5, 'Complete', 420_000);
    const stored = await etcdKeyIds();
    const v5 = await keyIdOf(5);
    assert.deepEqual([...stored.keys()].filter((k) => k !== v5), [], 'etcd holds Secrets under version 5 only');
    await assertAllReadable();
  });
});
