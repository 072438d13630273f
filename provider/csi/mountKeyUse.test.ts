// The CSI provider's key-use records: the Mount service as csiProvider.ts builds it, over a real
// SoftHSM2 token and real key material; only TokenReview's answer is scripted (the real one runs
// in e2e/csi), since what is tested here is which versions a served Mount used.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createAuditLog, type AuditLog } from '../../core/audit/auditLog.js';
import { sealSecret } from '../../core/formats/sealedSecret.js';
import { HsmRecords } from '../../core/hsm/hsmRecords.js';
import type { RingState } from '../../core/hsm/ringState.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import { KeyUseRecorder } from '../../core/keyUse/keyUseRecorder.js';
import { KeyUseRecords, type KeyUseRecord } from '../../core/keyUse/keyUseRecords.js';
import { createLogger } from '../../core/observability/logger.js';
import { PolicySet } from '../../core/policy/policySet.js';
import { create } from '@bufbuild/protobuf';
import { MountRequestSchema, type MountResponse } from '../../proto/gen/csi/v1alpha1/service_pb.js';
import { useSoftHsmToken } from '../../testbed/hsm/softHsmFixture.js';
import { CsiMetrics } from './csiMetrics.js';
import { KeyMaterial } from './keyMaterial.js';
import { csiProviderHandlers } from './mountService.js';
import { PodIdentity } from './podIdentity.js';

const audience = 'keyward';
const pod = { namespace: 'shop', name: 'web-1', uid: '0b4c6a1e-1111-2222-3333-444455556666', serviceAccountName: 'app' };

function podToken(): string {
  const part = (o: object): string => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${part({ alg: 'RS256' })}.${part({ aud: [audience], exp: Math.floor(Date.now() / 1000) + 3600 })}.c2lnbmF0dXJl`;
}

describe('CSI provider key-use records, Mounts over a real SoftHSM2 token', function () {
  this.timeout(30_000);
  const hsm = useSoftHsmToken();
  let dir: string;
  let store: RingStore;
  let records: KeyUseRecords;
  let keyUse: KeyUseRecorder;
  let audit: AuditLog;
  let mount: (objectsYaml: string) => Promise<MountResponse>;
  let derivation: RingState;
  let secrets: RingState;
  let sealed: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keyward-csi-keyuse-'));
    store = new RingStore(hsm.token);
    derivation = await store.create({ name: 'volume-keys', namespace: 'shop', algorithm: 'HMAC_SHA_384' });
    secrets = await store.create({ name: 'app-secrets', namespace: 'shop', algorithm: 'AES_256_GCM' });
    sealed = (await sealSecret(hsm.token, store, { namespace: 'shop', name: 'app-secrets' }, Buffer.from('db password'))).toString('base64');
    records = new KeyUseRecords(new HsmRecords(hsm.token));
    const log = createLogger('csi-provider', 'silent');
    // Not started: each check writes what changed at once (flushDue), without the provider's timing.
    keyUse = new KeyUseRecorder(records, { component: 'csi-provider', host: 'worker-1', log, flushMs: 0, tickMs: 0 });
    audit = createAuditLog('csi-provider', join(dir, 'audit.jsonl'));
    const identity = new PodIdentity(
      () =>
        Promise.resolve({
          authenticated: true,
          audiences: [audience],
          username: 'system:serviceaccount:shop:app',
          groups: ['system:serviceaccounts', 'system:serviceaccounts:shop', 'system:authenticated'],
          extra: { 'authentication.kubernetes.io/pod-name': [pod.name], 'authentication.kubernetes.io/pod-uid': [pod.uid] },
        }),
      { audience },
    );
    const policies = new PolicySet([
      {
        namespace: 'shop',
        name: 'app-keys',
        rules: [{ name: 'app', subjects: [{ kind: 'ServiceAccount', name: 'app', namespace: 'shop' }], keyRings: ['volume-keys', 'app-secrets'], operations: ['deriveKey', 'decrypt'] }],
      },
    ]);
    const handlers = csiProviderHandlers({
      audience,
      identity,
      policies: () => policies,
      material: new KeyMaterial(hsm.token, store),
      audit,
      metrics: new CsiMetrics(),
      log,
      keyUse,
    });
    mount = (objects) =>
      handlers.mount(create(MountRequestSchema, {
        attributes: JSON.stringify({
          objects,
          secretProviderClass: 'keys',
          'csi.storage.k8s.io/pod.name': pod.name,
          'csi.storage.k8s.io/pod.namespace': pod.namespace,
          'csi.storage.k8s.io/pod.uid': pod.uid,
          'csi.storage.k8s.io/serviceAccount.name': pod.serviceAccountName,
          'csi.storage.k8s.io/ephemeral': 'true',
          'csi.storage.k8s.io/serviceAccount.tokens': JSON.stringify({ [audience]: { token: podToken(), expirationTimestamp: new Date(Date.now() + 3600_000).toISOString() } }),
        }),
        secrets: 'null',
        permission: '420',
        targetPath: `/var/lib/kubelet/pods/${pod.uid}/volumes/kubernetes.io~csi/keys/mount`,
      }));
  });

  after(async () => {
    await keyUse?.stop();
    await audit?.flush();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const served = (response: MountResponse): MountResponse => {
    assert.equal(response.error?.code ?? '', '', `mount refused: ${response.error?.code}`);
    return response;
  };
  const recordOf = async (ring: RingState): Promise<KeyUseRecord | undefined> => {
    await keyUse.flushDue();
    return (await records.uses(ring.ringId)).find((r) => r.component === 'csi-provider');
  };
  const dataKey = (versions = ''): string => `- type: dataKey\n  name: db-volume\n  keyRing: volume-keys\n  path: db.key\n${versions}`;
  const volumeKey = '- type: volumeKey\n  name: db-files\n  keyRing: volume-keys\n  path: fscrypt/db.key\n';
  const secret = (ciphertext: string): string => `- type: secret\n  name: db-password\n  keyRing: app-secrets\n  path: db/password\n  ciphertext: ${ciphertext}\n`;

  it('records the version a data key is derived from and the one a sealed secret is opened with, per ring', async () => {
    const before = new Date().toISOString();
    served(await mount(dataKey() + secret(sealed)));
    const v1 = derivation.versions[0]!.keyId;
    const derived = await recordOf(derivation);
    assert.equal(derived?.host, 'worker-1');
    assert.deepEqual(Object.keys(derived?.versions ?? {}), [v1]);
    assert.ok(derived.versions[v1]!.lastUseAt! >= before);
    assert.equal(derived?.versions[v1]?.lastDecryptAt, undefined, 'a derivation is a use, not a decrypt');
    const opened = await recordOf(secrets);
    assert.deepEqual(Object.keys(opened?.versions ?? {}), [secrets.versions[0]!.keyId]);
    assert.ok(opened!.versions[secrets.versions[0]!.keyId]!.lastUseAt! >= before);
  });

  it('after a rotation, records the new primary, and the old version only while a workload still asks for it', async () => {
    const rotated = await store.rotate({ ringId: derivation.ringId });
    const [v1, v2] = [rotated.versions[0]!.keyId, rotated.versions[1]!.keyId];
    const v1Before = (await recordOf(derivation))!.versions[v1]!.lastUseAt!;
    // KeyMaterial lists rings at most every 2 s; wait for the rotation to reach it.
    await new Promise((resolve) => setTimeout(resolve, 2100));
    served(await mount(dataKey() + volumeKey));
    const afterNew = (await recordOf(derivation))!;
    assert.ok(afterNew.versions[v2]?.lastUseAt, 'the new primary is used');
    assert.equal(afterNew.versions[v1]?.lastUseAt, v1Before, 'version 1 was not used again');

    served(await mount(dataKey('  versions: "1"\n')));
    const afterOld = (await recordOf(derivation))!;
    assert.ok(afterOld.versions[v1]!.lastUseAt! > v1Before, 'a workload asking for the previous version uses it');
  });

  it('records nothing for a refused Mount, though its first object was derived', async () => {
    const before = (await recordOf(derivation))!.versions;
    const response = await mount(dataKey() + secret(Buffer.from('not a sealed secret at all').toString('base64')));
    assert.equal(response.error?.code, 'InvalidSealedSecret');
    assert.deepEqual((await recordOf(derivation))!.versions, before, 'the data key was withheld, so its version was not used');
  });
});
