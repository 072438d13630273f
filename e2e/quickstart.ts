// The quickstart: Keyward's real parts on one machine, shown working. A SoftHSM2 token made with
// `keyward hsm init`; a real etcd + kube-apiserver that encrypts Secrets through the KMS plugin;
// the CRDs and the operator, which turns a KeyRing into a key inside the HSM; the KMS v2 plugin as
// its own process serving that ring; etcd read directly to show what is stored; then KeyPolicy:
// a rotation refused by default, granted by a policy, and done; finally the CSI provider puts a
// sealed secret and a derived data key into a pod's volume, as the Secrets Store CSI driver asks
// for them (no kubelet runs here, so the quickstart sends the driver's request itself). Everything
// it starts is stopped and removed at the end.
import { CoreV1Api, CustomObjectsApi, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { findSoftHsmModule } from '../core/hsm/pkcs11Module.js';
import { apiRefusal } from '../test/apiRefusal.js';
import { eventually } from '../test/eventually.js';
import { keyRingResource, type KeyRing } from '../operator/api/keyRing.js';
import { startControlPlane, type ControlPlane } from './control-plane/controlPlane.js';
import { parseKmsV2Value } from './control-plane/encryptedObject.js';
import { readEtcdKey, secretEtcdKey } from './control-plane/etcdClient.js';
import { apiserverKmsHealthStatus, keywardCli, kmsEncryptionConfig, kmsStatus, startKmsPluginProcess, type KmsPluginProcess } from './kms/kmsPluginProcess.js';
import { keyPolicyResource, type KeyPolicy } from '../operator/api/keyPolicy.js';
import { freePort } from './control-plane/network.js';
import { registerAdmissionWebhooks, webhookCertDir } from './operator/admissionWebhooks.js';
import { installCrds } from './operator/crds.js';
import { startOperatorProcess, type OperatorProcess } from './operator/operatorProcess.js';
import { grpcClient } from '../core/grpc/unaryService.js';
import { CSIDriverProvider } from '../proto/gen/csi/v1alpha1/service_pb.js';
import { startCsiProviderProcess, type CsiProviderProcess } from './csi/csiProviderProcess.js';
import { createPod, driverMountRequest, podToken } from './csi/driverRequest.js';

const step = (text: string): void => console.error(`[quickstart] ${text}`);
const ring = { namespace: 'kube-system', name: 'etcd-secrets' };

async function main(dir: string): Promise<void> {
  step('1/9 creating a SoftHSM2 token: keyward hsm init');
  const hsmDir = join(dir, 'hsm');
  execFileSync(process.execPath, [keywardCli, 'hsm', 'init', `--dir=${hsmDir}`, '--label=keyward'], { stdio: 'ignore' });
  const hsm = {
    modulePath: findSoftHsmModule(),
    label: 'keyward',
    pin: readFileSync(join(hsmDir, 'user.pin'), 'utf8'),
    env: { SOFTHSM2_CONF: join(hsmDir, 'softhsm2.conf') },
  };

  let cp: ControlPlane | undefined;
  let operator: OperatorProcess | undefined;
  let plugin: KmsPluginProcess | undefined;
  let provider: CsiProviderProcess | undefined;
  try {
    step('2/9 starting etcd and kube-apiserver, encrypting Secrets through the KMS plugin socket');
    const socketPath = join(dir, 'kms.sock');
    // The plugin comes after its KeyRing exists, so wait for the API only, not the KMS check.
    cp = await startControlPlane({ encryptionConfig: kmsEncryptionConfig(dir, 'keyward', socketPath), skipReadyz: true, progress: (line) => step(`    ${line}`) });
    const control = cp;
    const objects = control.kubeConfig.makeApiClient(CustomObjectsApi);
    const core = control.kubeConfig.makeApiClient(CoreV1Api);

    step('3/9 installing the CRDs and starting the operator (leader-elected) with its admission webhook');
    await installCrds(control.kubeConfig);
    const webhook = { address: `127.0.0.1:${await freePort()}`, certDir: webhookCertDir(control, join(dir, 'webhook')) };
    operator = await startOperatorProcess({ hsm, kubeconfigPath: control.kubeconfigPath, dir, identity: 'quickstart', leaseSeconds: 4, webhook, auditLog: join(dir, 'operator-audit.log') });
    await registerAdmissionWebhooks(control, webhook.address);

    step(`4/9 applying KeyRing ${ring.namespace}/${ring.name} (purpose encryption, rotation every 720h)`);
    await objects.createNamespacedCustomObject({
      ...keyRingResource,
      namespace: ring.namespace,
      body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name: ring.name }, spec: { purpose: 'encryption', rotationPeriod: '720h' } },
    });
    const primary = async (version: number): Promise<KeyRing> =>
      eventually(`KeyRing primary version ${version}`, 30_000, async () => {
        const kr = (await objects.getNamespacedCustomObject({ ...keyRingResource, ...ring })) as KeyRing;
        const ready = kr.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True');
        return ready && kr.status?.primaryVersion === version ? kr : undefined;
      }, 1000);
    const created = await primary(1);
    const v1 = created.status?.versions?.[0];
    step(`    Ready: version 1 ${v1?.algorithm} in HSM token '${v1?.hsmToken}' object ${v1?.hsmObjectId}, key_id ${v1?.keyId}`);
    step(`    next rotation ${created.status?.nextRotationTime}`);

    step('5/9 starting the KMS v2 plugin for that ring on a 0600 unix socket');
    plugin = await startKmsPluginProcess({ hsm, ringName: ring.name, ringNamespace: ring.namespace, dir });
    const status = await kmsStatus(socketPath);
    step(`    Status: version=${status.version} healthz=${status.healthz} key_id=${status.keyId}`);

    const value = 'correct-horse-battery-staple';
    const secret = await eventually('the first Secret write', 60_000, () =>
      core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name: 'db-password' }, stringData: { password: value } } }),
      1000,
    );
    const raw = await readEtcdKey(control.etcdEndpoint, secretEtcdKey('default', secret.metadata?.name ?? ''));
    const stored = raw && parseKmsV2Value(raw);
    step(`6/9 Secret default/db-password written; etcd holds ${raw?.length ?? 0} bytes starting '${raw?.subarray(0, 23).toString()}'`);
    step(`    stored under key_id ${stored?.keyId}; plaintext in etcd: ${raw?.includes(Buffer.from(value)) ? 'YES (wrong!)' : 'no'}`);
    if (!stored || stored.keyId !== status.keyId || raw.includes(Buffer.from(value))) throw new Error('the Secret is not encrypted under the KeyRing key');

    step('7/9 KeyPolicy: managing a KeyRing is refused unless a policy grants it, even to a cluster admin');
    const rotate = (): Promise<unknown> =>
      objects.patchNamespacedCustomObject(
        { ...keyRingResource, ...ring, body: { spec: { rotationRequest: `quickstart-${Date.now()}` } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
    step(`    refused: ${(await apiRefusal(rotate())).message}`);
    await objects.createNamespacedCustomObject({
      ...keyPolicyResource,
      namespace: ring.namespace,
      body: {
        apiVersion: 'keyward.dev/v1alpha1',
        kind: 'KeyPolicy',
        metadata: { name: 'etcd-key-admins' },
        spec: { rules: [{ name: 'admins', subjects: [{ kind: 'User', name: 'keyward-admin' }], keyRings: [ring.name], roles: ['Administrator'] }] },
      },
    });
    const policy = await eventually('KeyPolicy status', 30_000, async () => {
      const kp = (await objects.getNamespacedCustomObject({ ...keyPolicyResource, namespace: ring.namespace, name: 'etcd-key-admins' })) as KeyPolicy;
      return kp.status?.grants?.length ? kp : undefined;
    });
    for (const grant of policy.status?.grants ?? []) step(`    KeyPolicy grants ${grant.subject} on ${grant.keyRing}: ${grant.operations.join(', ')}`);

    step('8/9 rotating through Kubernetes as keyward-admin: spec.rotationRequest on the KeyRing');
    await eventually('the rotation admitted', 10_000, () => rotate().then(() => true, () => undefined));
    const v2 = (await primary(2)).status?.versions?.find((v) => v.number === 2);
    step(`    the operator made version 2 primary: key_id ${v2?.keyId}`);
    await eventually('the plugin reporting version 2', 10_000, async () => ((await kmsStatus(socketPath)).keyId === v2?.keyId ? true : undefined), 1000);
    step('    the plugin reports it without a restart (read from the HSM); waiting for kube-apiserver (it asks about once a minute)');
    let n = 0;
    await eventually('new Secrets under version 2', 150_000, async () => {
      await apiserverKmsHealthStatus(control);
      const name = `after-rotation-${n++}`;
      await core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name }, stringData: { password: 'new' } } });
      const after = await readEtcdKey(control.etcdEndpoint, secretEtcdKey('default', name));
      return after && parseKmsV2Value(after)?.keyId === v2?.keyId ? true : undefined;
    }, 1000);
    const old = await core.readNamespacedSecret({ namespace: 'default', name: 'db-password' });
    step(`    new Secrets are stored under version 2; the old one still reads back: ${Buffer.from(old.data?.password ?? '', 'base64').toString() === value}`);
    const events = await core.listNamespacedEvent({ namespace: ring.namespace, fieldSelector: `involvedObject.name=${ring.name}` });
    step(`    KeyRing events: ${events.items.map((e) => e.reason).join(', ')}`);
    const operatorAudit = readFileSync(join(dir, 'operator-audit.log'), 'utf8').trim().split('\n').map((line) => JSON.parse(line) as { result: string; operation: string; code: string });
    step(`    operator audit: ${operatorAudit.map((r) => `${r.operation} ${r.result} (${r.code})`).join(', ')}`);
    step(`    KMS plugin audit records: ${readFileSync(plugin.auditFile, 'utf8').trim().split('\n').length} (one per Encrypt/Decrypt)`);

    provider = await csiStep(control, hsm, dir);
    step('done');
  } finally {
    step('stopping everything');
    await provider?.process.stop();
    await plugin?.process.stop();
    await operator?.process.stop();
    await cp?.stop();
  }
}

/** Step 9: a sealed secret and a data key delivered into a pod's volume by the CSI provider. */
async function csiStep(control: ControlPlane, hsm: Parameters<typeof startCsiProviderProcess>[0]['hsm'], dir: string): Promise<CsiProviderProcess> {
  const namespace = 'shop';
  step(`9/9 CSI provider: KeyRings ${namespace}/app-secrets (encryption) and ${namespace}/volume-keys (derivation), and a KeyPolicy for ServiceAccount ${namespace}/web`);
  const objects = control.kubeConfig.makeApiClient(CustomObjectsApi);
  const core = control.kubeConfig.makeApiClient(CoreV1Api);
  await core.createNamespace({ body: { metadata: { name: namespace } } });
  for (const [name, purpose] of [['app-secrets', 'encryption'], ['volume-keys', 'derivation']]) {
    await objects.createNamespacedCustomObject({ ...keyRingResource, namespace, body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name }, spec: { purpose } } });
  }
  await objects.createNamespacedCustomObject({
    ...keyPolicyResource,
    namespace,
    body: {
      apiVersion: 'keyward.dev/v1alpha1',
      kind: 'KeyPolicy',
      metadata: { name: 'web-keys' },
      spec: {
        rules: [
          { name: 'web-secrets', subjects: [{ kind: 'ServiceAccount', namespace, name: 'web' }], keyRings: ['app-secrets'], operations: ['decrypt'] },
          { name: 'web-volume', subjects: [{ kind: 'ServiceAccount', namespace, name: 'web' }], keyRings: ['volume-keys'], operations: ['deriveKey'] },
        ],
      },
    },
  });
  for (const name of ['app-secrets', 'volume-keys']) {
    await eventually(`KeyRing ${name} Ready`, 30_000, async () => {
      const kr = (await objects.getNamespacedCustomObject({ ...keyRingResource, namespace, name })) as KeyRing;
      return kr.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ? true : undefined;
    });
  }

  const secretValue = 'quickstart-db-password';
  const sealed = execFileSync(process.execPath, [keywardCli, 'encrypt', '--ring=app-secrets', `--namespace=${namespace}`, `--pkcs11-module=${hsm.modulePath}`, `--token-label=${hsm.label}`, `--pin-file=${join(dir, 'hsm', 'user.pin')}`, `--audit-log=${join(dir, 'cli-audit.log')}`], {
    input: secretValue,
    env: { ...process.env, ...hsm.env },
  })
    .toString()
    .trim();
  step(`    keyward encrypt --ring app-secrets: ${sealed.length} characters of base64 (starts '${sealed.slice(0, 12)}...'), safe to keep in Git`);
  const spcObjects = [
    `- type: secret\n  name: db-password\n  keyRing: app-secrets\n  path: db/password\n  mode: "0440"\n  ciphertext: ${sealed}\n`,
    '- type: dataKey\n  name: db-volume\n  keyRing: volume-keys\n  path: luks/db.key\n  mode: "0400"\n',
  ].join('');

  const provider = await startCsiProviderProcess({ hsm, kubeconfigPath: control.kubeconfigPath, dir });
  step(`    keyward csi-provider serving on ${provider.socketPath} (mode ${(statSync(provider.socketPath).mode & 0o777).toString(8)})`);
  const web = await createPod(core, namespace, 'web', 'web');
  const token = await podToken(core, web, 'keyward');
  step(`    pod ${namespace}/web (uid ${web.uid}) with a ServiceAccount token bound to it (TokenRequest, audience keyward)`);
  const client = grpcClient(CSIDriverProvider, `unix:${provider.socketPath}`);
  try {
    const request = driverMountRequest(web, { objects: spcObjects, tokens: { keyward: token } });
    const first = await eventually('the provider serves the pod', 30_000, async () => {
      const response = await client.mount(request);
      return response.error ? undefined : response;
    });
    const volume = join(dir, 'pod-volume');
    for (const file of first.files) {
      const path = join(volume, file.path);
      mkdirSync(dirname(path), { recursive: true });
      writeFileSync(path, file.contents, { mode: file.mode });
    }
    const written = readFileSync(join(volume, 'db', 'password'), 'utf8');
    for (const file of first.files) {
      const mode = (statSync(join(volume, file.path)).mode & 0o777).toString(8).padStart(4, '0');
      step(`    the volume holds ${file.path} (mode ${mode}, ${file.contents.length} bytes)`);
    }
    step(`    db/password matches the value sealed: ${written === secretValue}; luks/db.key was derived in the HSM for ${namespace}/web`);
    if (written !== secretValue || first.files.find((f) => f.path === 'luks/db.key')?.contents.length !== 32) throw new Error('the pod volume does not hold what was sealed and derived');
    const again = await client.mount(request);
    const unchanged = again.objectVersion.every((v, i) => v.version === first.objectVersion[i]?.version);
    step(`    a remount (the driver does one about every minute) gives the same object versions: ${unchanged}`);

    const intruder = await createPod(core, namespace, 'intruder', 'intruder');
    const refused = await client.mount(driverMountRequest(intruder, { objects: spcObjects, tokens: { keyward: await podToken(core, intruder, 'keyward') } }));
    step(`    the same SecretProviderClass mounted by ServiceAccount ${namespace}/intruder: refused with ${refused.error?.code}`);
    const audit = readFileSync(provider.auditFile, 'utf8').trim().split('\n').map((line) => JSON.parse(line) as { object?: string; code?: string; actor: string });
    step(`    provider audit: ${audit.map((r) => `${r.actor.replace('system:serviceaccount:', '')} ${r.object ?? 'mount'} ${r.code}`).join(', ')}`);
    return provider;
  } catch (err) {
    await provider.process.stop();
    throw err;
  } finally {
    client.close();
  }
}

const dir = mkdtempSync(join(tmpdir(), 'keyward-quickstart-'));
try {
  await main(dir);
} catch (err) {
  console.error(`[quickstart] FAILED: ${(err as Error).message}`);
  process.exitCode = 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
