// The Helm chart, twice over. Rendered: helm lint, then every object read back: RBAC is exactly
// what the operator's code calls (no wildcards), every container is non-root with a read-only
// root filesystem and no capabilities (but one: the CSI provider's init container that lets the
// provider's gid write the driver's directory, uid 0 with CAP_CHOWN alone, its command run here
// with just that), the PIN only ever travels as a file, and the flags are ones the real CLI accepts. Installed on a real control plane: the real operator process runs as
// the chart's ServiceAccount (a TokenRequest token, nothing else) and takes a KeyRing through
// creation and deletion, so the RBAC is shown to suffice; access reviews show what it may not do.
// The admission webhooks are reached the way a cluster reaches them: kube-apiserver resolves the
// chart's Service (to the operator process's address, with endpoint routing, as there is no
// cluster network) and trusts the chart's caBundle for the certificate in the chart's Secret.
// The CSI provider (opt-in) likewise: rendered, then installed, and the real provider process run
// with the chart's flags as the chart's ServiceAccount reviews a pod's token and reads KeyPolicies.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:tls';
import {
  AdmissionregistrationV1Api,
  ApiException,
  AppsV1Api,
  AuthorizationV1Api,
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  DiscoveryV1Api,
  KubeConfig,
  PatchStrategy,
  RbacAuthorizationV1Api,
  setHeaderOptions,
  type KubernetesObject,
  type V1Container,
  type V1DaemonSet,
  type V1Deployment,
  type V1MutatingWebhookConfiguration,
  type V1Pod,
  type V1PodSpec,
  type V1PolicyRule,
  type V1ResourceAttributes,
  type V1Secret,
  type V1Service,
  type V1ValidatingWebhookConfiguration,
} from '@kubernetes/client-node';
import { readPinFile } from '../../core/hsm/pinFile.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { keyPolicyResource, type KeyPolicy } from '../../operator/api/keyPolicy.js';
import { keyRingResource, type KeyRing } from '../../operator/api/keyRing.js';
import { keyPolicyWebhookPath, keyRingWebhookPath } from '../../operator/admission/admissionServer.js';
import { keyRingFinalizer } from '../../operator/keyRing/keyRingClient.js';
import { identityRefusalCodes } from '../../provider/csi/podIdentity.js';
import { grpcClient } from '../../core/grpc/unaryService.js';
import { CSIDriverProvider } from '../../proto/gen/csi/v1alpha1/service_pb.js';
import { Health, HealthCheckResponse_ServingStatus } from '../../proto/gen/grpc/health/v1/health_pb.js';
import { eventually } from '../../test/eventually.js';
import { logTail } from '../control-plane/componentProcess.js';
import { ComponentProcess } from '../control-plane/componentProcess.js';
import { startControlPlane, type ControlPlane } from '../control-plane/controlPlane.js';
import { createPod, driverMountRequest, podToken } from '../csi/driverRequest.js';
import { freePort } from '../control-plane/network.js';
import { keywardCli, kmsPluginNodeFlags } from '../kms/kmsPluginProcess.js';
import { userKubeConfig } from '../operator/admissionWebhooks.js';
import { operatorNodeFlags, startOperatorProcess, type OperatorProcess } from '../operator/operatorProcess.js';
import { chartDir, helmIn, parseManifests, renderChart, repoRoot, type Helm } from './helm.js';

const releaseNamespace = 'keyward-system';
const softhsmHostPath = '/var/lib/keyward/softhsm';
const withPlugin = ['--set', 'kmsPlugin.enabled=true', '--set', `hsm.softhsm.hostPath=${softhsmHostPath}`];
const withCsiProvider = ['--set', 'csiProvider.enabled=true', '--set', `hsm.softhsm.hostPath=${softhsmHostPath}`];
const csiProviderName = 'keyward-csi-provider';
/** The driver's --provider-volume, where it looks for <provider>.sock. */
const providerDir = '/var/run/secrets-store-csi-providers';
/** How the chart runs the provider's Node: a bounded heap inside the 100Mi limit. */
const csiProviderNodeFlags = ['--max-semi-space-size=4', '--max-old-space-size=64'];
/**
 * The chart's one root container (csiProvider.prepareProviderDir, the default): it lets the
 * provider's gid write the driver's root-owned directory. Root with CAP_CHOWN alone, otherwise as
 * locked down as every other container.
 */
const rootContainer = 'prepare-provider-dir';
const rootSecurityContext = {
  runAsNonRoot: false,
  runAsUser: 0,
  runAsGroup: 0,
  readOnlyRootFilesystem: true,
  allowPrivilegeEscalation: false,
  privileged: false,
  capabilities: { drop: ['ALL'], add: ['CHOWN'] },
  seccompProfile: { type: 'RuntimeDefault' },
};
/** What the "restricted" Pod Security level says of that container (all of it within "baseline"). */
const rootContainerViolations = [
  `runAsNonRoot != true (container "${rootContainer}" must not set securityContext.runAsNonRoot=false)`,
  `runAsUser=0 (container "${rootContainer}" must not set runAsUser=0)`,
  `unrestricted capabilities (container "${rootContainer}" must not include "CHOWN" in securityContext.capabilities.add)`,
];

/** What the operator's code calls, verb by verb (see charts/keyward/templates/rbac.yaml). */
const expectedClusterRules: V1PolicyRule[] = [
  { apiGroups: ['keyward.dev'], resources: ['keyrings'], verbs: ['list', 'watch', 'patch'] },
  { apiGroups: ['keyward.dev'], resources: ['keyrings/status'], verbs: ['patch'] },
  { apiGroups: ['keyward.dev'], resources: ['keypolicies'], verbs: ['list', 'watch'] },
  { apiGroups: ['keyward.dev'], resources: ['keypolicies/status'], verbs: ['patch'] },
  { apiGroups: [''], resources: ['events'], verbs: ['create'] },
];
/** What the CSI provider's code calls (see charts/keyward/templates/csi-provider-rbac.yaml). */
const expectedCsiProviderRules: V1PolicyRule[] = [
  { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
  { apiGroups: ['keyward.dev'], resources: ['keypolicies'], verbs: ['list', 'watch'] },
];
const expectedLeaseRules: V1PolicyRule[] = [
  { apiGroups: ['coordination.k8s.io'], resources: ['leases'], resourceNames: ['keyward-operator'], verbs: ['get', 'update'] },
  { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['create'] },
];

const ofKind = <T extends KubernetesObject>(objects: KubernetesObject[], kind: string): T[] => objects.filter((o) => o.kind === kind) as T[];
const only = <T extends KubernetesObject>(objects: KubernetesObject[], kind: string): T => {
  const found = ofKind<T>(objects, kind);
  assert.equal(found.length, 1, `exactly one ${kind}`);
  return found[0] as T;
};
const named = <T extends KubernetesObject>(objects: KubernetesObject[], kind: string, name: string): T => {
  const found = ofKind<T>(objects, kind).find((o) => o.metadata?.name === name);
  assert.ok(found, `${kind} ${name} rendered`);
  return found;
};

// ---------------------------------------------------------------- the admission webhooks

const webhookService = 'keyward-operator-webhook';
const webhookSecret = 'keyward-operator-webhook-tls';
/** The name kube-apiserver checks the webhook's certificate against. */
const webhookDnsName = `${webhookService}.${releaseNamespace}.svc`;
const webhookConfigurations = [
  { kind: 'MutatingWebhookConfiguration', name: 'keyward-keyrings', webhook: 'keyrings.keyward.dev', resource: 'keyrings', path: keyRingWebhookPath },
  { kind: 'ValidatingWebhookConfiguration', name: 'keyward-keypolicies', webhook: 'keypolicies.keyward.dev', resource: 'keypolicies', path: keyPolicyWebhookPath },
] as const;
type WebhookConfiguration = V1MutatingWebhookConfiguration | V1ValidatingWebhookConfiguration;

const fromBase64 = (value: string | undefined): string => Buffer.from(value ?? '', 'base64').toString('utf8');

/** The certificates of a caBundle (base64 of concatenated PEM), in order. */
function bundleCertificates(caBundle: string | undefined): X509Certificate[] {
  return (fromBase64(caBundle).match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map((pem) => new X509Certificate(pem));
}

/**
 * What kube-apiserver asks of a webhook's certificate when it trusts `caBundle`: signed by one of
 * its CAs, the DNS name in a subjectAltName (Go ignores the common name), valid now, for serving;
 * and tls.key is its key.
 */
function assertServesFor(crt: string, key: string, caBundle: string | undefined, dnsName: string): void {
  const cert = new X509Certificate(crt);
  const cas = bundleCertificates(caBundle);
  assert.ok(cas.length > 0, 'the caBundle holds certificates');
  assert.ok(cas.some((ca) => ca.ca && cert.checkIssued(ca) && cert.verify(ca.publicKey)), `signed by a CA of the caBundle (issuer ${cert.issuer})`);
  assert.equal(cert.checkHost(dnsName, { subject: 'never' }), dnsName, `names ${dnsName} (${cert.subjectAltName ?? 'no subjectAltName'})`);
  assert.ok(Date.parse(cert.validFrom) <= Date.now() && Date.now() < Date.parse(cert.validTo), `valid now (${cert.validFrom} to ${cert.validTo})`);
  assert.ok(!cert.ca, 'a leaf, not a CA');
  assert.ok(cert.checkPrivateKey(createPrivateKey(key)), 'tls.key is the key of tls.crt');
}

function assertWebhook(config: WebhookConfiguration, expected: (typeof webhookConfigurations)[number]): NonNullable<WebhookConfiguration['webhooks']>[number] {
  assert.equal(config.metadata?.name, expected.name);
  assert.equal(config.webhooks?.length, 1, `${expected.name}: one webhook`);
  const webhook = config.webhooks?.[0];
  assert.ok(webhook);
  assert.equal(webhook.name, expected.webhook);
  assert.deepEqual(webhook.clientConfig.service, { name: webhookService, namespace: releaseNamespace, path: expected.path, port: 443 }, `${expected.name}: through the Service`);
  assert.equal(webhook.clientConfig.url, undefined);
  assert.deepEqual(webhook.rules, [{ apiGroups: ['keyward.dev'], apiVersions: ['v1alpha1'], operations: ['CREATE', 'UPDATE'], resources: [expected.resource], scope: 'Namespaced' }]);
  assert.deepEqual(
    { failurePolicy: webhook.failurePolicy, sideEffects: webhook.sideEffects, admissionReviewVersions: webhook.admissionReviewVersions, timeoutSeconds: webhook.timeoutSeconds },
    { failurePolicy: 'Fail', sideEffects: 'None', admissionReviewVersions: ['v1'], timeoutSeconds: 5 },
    `${expected.name}: fails closed`,
  );
  // No selector lets a request around the webhook (an empty one, as the apiserver defaults it, matches all).
  for (const selector of [webhook.namespaceSelector, webhook.objectSelector]) assert.ok(!selector || Object.keys(selector).length === 0, `${expected.name}: no selector`);
  return webhook;
}

/** A non-loopback IPv4 address of this machine: kube-apiserver refuses loopback endpoints for a Service. */
function hostAddress(): string {
  const address = Object.values(networkInterfaces())
    .flat()
    .find((a) => a?.family === 'IPv4' && !a.internal)?.address;
  if (!address) throw new Error('this test needs a non-loopback IPv4 address to route the webhook Service to (Endpoints refuse 127.0.0.0/8)');
  return address;
}

/** Every pod spec in the manifests: Deployments, DaemonSets and bare Pods (the static pod). */
function podSpecs(objects: KubernetesObject[]): { owner: string; spec: V1PodSpec }[] {
  return objects.flatMap((o) => {
    const owner = `${o.kind}/${o.metadata?.name}`;
    if (o.kind === 'Deployment' || o.kind === 'DaemonSet') {
      const spec = (o as V1Deployment | V1DaemonSet).spec?.template.spec;
      return spec ? [{ owner, spec }] : [];
    }
    if (o.kind === 'Pod') return (o as V1Pod).spec ? [{ owner, spec: (o as V1Pod).spec as V1PodSpec }] : [];
    return [];
  });
}

const allContainers = (spec: V1PodSpec): V1Container[] => [...(spec.initContainers ?? []), ...spec.containers];

function assertLockedDown(owner: string, spec: V1PodSpec, container: V1Container): void {
  const where = `${owner} container ${container.name}`;
  const sc = container.securityContext ?? {};
  assert.equal(sc.runAsNonRoot, true, `${where}: runAsNonRoot`);
  assert.ok((sc.runAsUser ?? spec.securityContext?.runAsUser ?? 0) > 0, `${where}: a non-zero uid`);
  assert.equal(sc.readOnlyRootFilesystem, true, `${where}: readOnlyRootFilesystem`);
  assert.equal(sc.allowPrivilegeEscalation, false, `${where}: allowPrivilegeEscalation false`);
  assert.notEqual(sc.privileged, true, `${where}: not privileged`);
  assert.deepEqual(sc.capabilities?.drop, ['ALL'], `${where}: drops ALL capabilities`);
  assert.equal(sc.capabilities?.add, undefined, `${where}: adds none`);
  assert.equal((sc.seccompProfile ?? spec.securityContext?.seccompProfile)?.type, 'RuntimeDefault', `${where}: RuntimeDefault seccomp`);
  assertResources(where, container);
}

/** The one exception to assertLockedDown: uid 0 and CAP_CHOWN, nothing more. */
function assertRootWithChownOnly(owner: string, container: V1Container): void {
  const where = `${owner} container ${container.name}`;
  assert.deepEqual(container.securityContext, rootSecurityContext, `${where}: uid 0 with CAP_CHOWN alone, read-only root filesystem, no escalation, RuntimeDefault seccomp`);
  assertResources(where, container);
}

function assertResources(where: string, container: V1Container): void {
  for (const kind of ['cpu', 'memory']) {
    assert.ok(container.resources?.requests?.[kind], `${where}: ${kind} request`);
    assert.ok(container.resources?.limits?.[kind], `${where}: ${kind} limit`);
  }
}

function assertNoPinInEnvOrArgs(owner: string, container: V1Container): void {
  const where = `${owner} container ${container.name}`;
  assert.equal(container.envFrom, undefined, `${where}: no envFrom`);
  for (const env of container.env ?? []) {
    assert.equal(env.valueFrom?.secretKeyRef, undefined, `${where}: env ${env.name} comes from no Secret`);
    assert.doesNotMatch(env.name, /pin|password|secret/i, `${where}: env ${env.name}`);
  }
  for (const arg of [...(container.command ?? []), ...(container.args ?? [])]) {
    if (/pin/i.test(arg) && arg.startsWith('--')) assert.match(arg, /^--pin-file=\//, `${where}: the PIN is passed as a file (${arg})`);
  }
}

/** The chart's command and args as a local `node` invocation of dist/cli/keyward.js, $(VAR)s expanded as the kubelet does. */
function localInvocation(container: V1Container, env: Record<string, string>): string[] {
  const command = container.command ?? [];
  const head = command[0] === 'keyward' ? [keywardCli, ...command.slice(1)] : command.slice(1).map((a) => (a === '/app/dist/cli/keyward.js' ? keywardCli : a));
  assert.ok(command[0] === 'keyward' || command[0] === 'node', `${container.name}: runs keyward or node (${command.join(' ')})`);
  return [...head, ...(container.args ?? [])].map((a) =>
    a.replace(/\$\((\w+)\)/g, (_, name: string) => {
      const value = env[name];
      assert.ok(value !== undefined, `${container.name}: $(${name}) is defined`);
      return value;
    }),
  );
}

function runFile(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { env, timeout: 60_000 }, (err, _stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stderr });
    });
  });
}

const runNode = (args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stderr: string }> => runFile(process.execPath, args, env);

/**
 * `node args` started the way a container runtime starts a container's process, through setpriv
 * (util-linux): `privileges` are setpriv options. From root, a bounding set and no inheritable
 * capabilities leave the process exactly the bounding set's capabilities after exec.
 */
const runNodeWith = (privileges: string[], args: string[]): Promise<{ code: number; stderr: string }> =>
  runFile('setpriv', [...privileges, '--', process.execPath, ...args], { PATH: process.env.PATH });
/** uid 0, capabilities drop [ALL] add [CHOWN], allowPrivilegeEscalation false. */
const asRootWithChownOnly = ['--bounding-set=-all,+chown', '--inh-caps=-all', '--no-new-privs'];
/** uid 0, capabilities drop [ALL]. */
const asRootWithoutCapabilities = ['--bounding-set=-all', '--inh-caps=-all', '--no-new-privs'];
/** The provider: uid and gid 65532 (runAsUser, runAsGroup, fsGroup), no capabilities. */
const asProvider = ['--reuid=65532', '--regid=65532', '--clear-groups', '--no-new-privs'];
/** Listens on the unix socket argv[1] and exits 0, or prints the error's code and exits 1. */
const listenScript = "require('node:net').createServer().listen(process.argv[1], () => process.exit(0)).on('error', (e) => { console.error(e.code); process.exit(1); });";

describe('Helm chart charts/keyward', function () {
  this.timeout(300_000);
  let home: string;
  let helm: Helm;
  let defaults: KubernetesObject[];
  let plugin: KubernetesObject[];
  let csi: KubernetesObject[];
  /** The CSI provider, its directory prepared on the nodes by hand (csiProvider.prepareProviderDir=false). */
  let csiManual: KubernetesObject[];

  before(async () => {
    home = mkdtempSync(join(tmpdir(), 'keyward-helm-'));
    helm = helmIn(home);
    // Side by side: each render generates a webhook CA and certificate (RSA 4096 keys take a while).
    [defaults, plugin, csi, csiManual] = await Promise.all([
      renderChart(helm, releaseNamespace),
      renderChart(helm, releaseNamespace, withPlugin),
      renderChart(helm, releaseNamespace, withCsiProvider),
      renderChart(helm, releaseNamespace, [...withCsiProvider, '--set', 'csiProvider.prepareProviderDir=false']),
    ]);
  });
  after(() => {
    if (home) rmSync(home, { recursive: true, force: true });
  });

  describe('rendered', () => {
    it('passes helm lint --strict, with defaults, with the KMS plugin and with the CSI provider', async () => {
      await Promise.all([helm(['lint', '--strict', chartDir]), helm(['lint', '--strict', chartDir, ...withPlugin]), helm(['lint', '--strict', chartDir, ...withCsiProvider])]);
    });

    it('ships exactly the CRDs of crds/, byte for byte (the copy cannot drift from the generated source)', () => {
      const source = join(repoRoot, 'crds');
      const copy = join(chartDir, 'crds');
      const yamlFiles = (dir: string): string[] => readdirSync(dir).filter((f) => f.endsWith('.yaml')).sort();
      assert.deepEqual(yamlFiles(copy), yamlFiles(source), 'charts/keyward/crds/ holds the same files as crds/ (cp crds/*.yaml charts/keyward/crds/)');
      for (const file of yamlFiles(source)) {
        assert.equal(readFileSync(join(copy, file), 'utf8'), readFileSync(join(source, file), 'utf8'), `charts/keyward/crds/${file} equals crds/${file}`);
      }
    });

    it('renders the operator alone by default, and each DaemonSet (KMS plugin, CSI provider) only when asked', () => {
      assert.deepEqual(ofKind(defaults, 'DaemonSet'), []);
      assert.equal(only<V1Deployment>(defaults, 'Deployment').spec?.replicas, 2, 'two replicas, leader-elected');
      assert.equal(only<V1DaemonSet>(plugin, 'DaemonSet').metadata?.name, 'keyward-kms-plugin');
      assert.equal(only<V1DaemonSet>(csi, 'DaemonSet').metadata?.name, csiProviderName);
      for (const objects of [defaults, plugin]) {
        const csiObjects = objects.filter((o) => o.metadata?.name === csiProviderName || o.metadata?.labels?.['app.kubernetes.io/component'] === 'csi-provider');
        assert.deepEqual(csiObjects, [], 'no CSI provider object unless csiProvider.enabled');
      }
    });

    it('grants exactly the RBAC the operator uses: no wildcard, nothing cluster-wide but KeyRings, KeyPolicies and Events', () => {
      for (const objects of [defaults, plugin]) {
        const clusterRole = only<KubernetesObject & { rules: V1PolicyRule[] }>(objects, 'ClusterRole');
        const role = only<KubernetesObject & { rules: V1PolicyRule[] }>(objects, 'Role');
        for (const rule of [...clusterRole.rules, ...role.rules]) {
          for (const field of ['verbs', 'resources', 'apiGroups', 'resourceNames', 'nonResourceURLs'] as const) {
            assert.ok(!(rule[field] ?? []).some((v) => v.includes('*')), `no '*' in ${field}: ${JSON.stringify(rule)}`);
          }
        }
        assert.deepEqual(clusterRole.rules, expectedClusterRules);
        assert.deepEqual(role.rules, expectedLeaseRules);
        assert.equal(role.metadata?.namespace, releaseNamespace, 'the Lease rules hold in the release namespace only');
        const saName = only<V1Deployment>(objects, 'Deployment').spec?.template.spec?.serviceAccountName;
        const subjects = [only<KubernetesObject & { subjects: unknown[] }>(objects, 'ClusterRoleBinding'), only<KubernetesObject & { subjects: unknown[] }>(objects, 'RoleBinding')];
        for (const binding of subjects) {
          assert.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: saName, namespace: releaseNamespace }]);
        }
      }
    });

    it('runs every container non-root, read-only, without privilege escalation or capabilities, with resources; but one, root with CAP_CHOWN alone', () => {
      const staticPod = parseManifests(readFileSync(join(chartDir, 'files', 'kms-plugin-static-pod.yaml'), 'utf8'));
      const rendered = { defaults, plugin, csi, csiManual, staticPod };
      const specs = Object.entries(rendered).flatMap(([render, objects]) => podSpecs(objects).map((s) => ({ ...s, render })));
      assert.equal(specs.length, 8, 'operator (four times), KMS plugin DaemonSet, CSI provider DaemonSet (twice), static pod');
      const asRoot: string[] = [];
      for (const { owner, spec, render } of specs) {
        assert.equal(spec.securityContext?.runAsNonRoot, true, `${owner}: pod runAsNonRoot`);
        assert.ok(!spec.hostPID && !spec.hostIPC, `${owner}: no host PID or IPC namespace`);
        if (owner !== 'Pod/keyward-kms-plugin') assert.ok(!spec.hostNetwork, `${owner}: pod network`);
        for (const container of allContainers(spec)) {
          if (container.name !== rootContainer) {
            assertLockedDown(owner, spec, container);
            continue;
          }
          asRoot.push(`${render}: ${owner} container ${container.name}`);
          assertRootWithChownOnly(owner, container);
        }
      }
      // The single exception: the CSI provider's init container, and only while it prepares the
      // directory (the default); with prepareProviderDir=false every container is non-root.
      assert.deepEqual(asRoot, [`csi: DaemonSet/${csiProviderName} container ${rootContainer}`]);
      const operator = only<V1Deployment>(defaults, 'Deployment').spec?.template.spec;
      assert.equal(operator?.securityContext?.runAsUser, 65532);
      assert.equal(operator?.containers[0]?.securityContext?.runAsUser, 65532);
    });

    it('never puts the PIN in an environment variable or an argument: a Secret volume, copied to a 0600 file', () => {
      for (const { owner, spec } of [...podSpecs(defaults), ...podSpecs(plugin), ...podSpecs(csi)]) {
        for (const container of allContainers(spec)) assertNoPinInEnvOrArgs(owner, container);
        const secretVolume = spec.volumes?.find((v) => v.name === 'pin-secret');
        assert.equal(secretVolume?.secret?.secretName, 'keyward-hsm-pin', `${owner}: PIN Secret volume`);
        assert.equal(secretVolume?.secret?.defaultMode, 0o400, `${owner}: PIN Secret files 0400`);
        assert.equal(spec.volumes?.find((v) => v.name === 'pin')?.emptyDir?.medium, 'Memory', `${owner}: the copy lives in memory`);
        const main = spec.containers[0];
        assert.ok(main?.args?.includes('--pin-file=/run/keyward/pin/pin'), `${owner}: --pin-file`);
        assert.deepEqual(main?.volumeMounts?.find((m) => m.name === 'pin'), { name: 'pin', mountPath: '/run/keyward/pin', readOnly: true });
        assert.equal(main?.volumeMounts?.find((m) => m.name === 'pin-secret'), undefined, `${owner}: only the init container sees the Secret`);
      }
    });

    it("copies the PIN, in its init container's own command, to a file keyward accepts", async () => {
      const init = only<V1Deployment>(defaults, 'Deployment').spec?.template.spec?.initContainers?.[0];
      const command = init?.command ?? [];
      assert.deepEqual(command.slice(-2), ['/etc/keyward/pin-secret/pin', '/run/keyward/pin/pin']);
      const dir = mkdtempSync(join(home, 'pin-'));
      const secretFile = join(dir, 'secret-pin');
      const copy = join(dir, 'pin');
      writeFileSync(secretFile, 'pin-from-secret\n');
      // What the kubelet makes of defaultMode 0400 under fsGroup: group-readable, which keyward refuses.
      chmodSync(secretFile, 0o440);
      assert.throws(() => readPinFile(secretFile), /readable by group or others/);
      for (let run = 0; run < 2; run++) {
        // Twice: init containers run again when the pod's sandbox is recreated.
        const result = await runNode([...command.slice(1, -2), secretFile, copy], process.env);
        assert.equal(result.code, 0, result.stderr);
        assert.equal(statSync(copy).mode & 0o777, 0o600);
        assert.equal(readPinFile(copy), 'pin-from-secret');
      }
    });

    it('wires the operator: HSM flags, metrics on 9465, the webhook on 9443, Lease namespace from the downward API', () => {
      const spec = only<V1Deployment>(defaults, 'Deployment').spec?.template.spec;
      const container = spec?.containers[0];
      assert.deepEqual(container?.command, ['node', ...operatorNodeFlags, '/app/dist/cli/keyward.js', 'operator']);
      const flags = [
        '--pkcs11-module=/usr/lib/softhsm/libsofthsm2.so',
        '--token-label=keyward',
        '--metrics-address=0.0.0.0:9465',
        '--lease-namespace=$(POD_NAMESPACE)',
        '--approval-window=60',
        '--webhook-address=0.0.0.0:9443',
        '--webhook-cert-dir=/etc/keyward/webhook',
      ];
      for (const flag of flags) {
        assert.ok(container?.args?.includes(flag), `operator arg ${flag}`);
      }
      assert.deepEqual(container?.env?.find((e) => e.name === 'POD_NAMESPACE')?.valueFrom, { fieldRef: { fieldPath: 'metadata.namespace' } });
      assert.deepEqual(container?.env?.find((e) => e.name === 'SOFTHSM2_CONF'), { name: 'SOFTHSM2_CONF', value: '/etc/keyward/softhsm/softhsm2.conf' });
      assert.deepEqual(container?.ports, [
        { name: 'metrics', containerPort: 9465, protocol: 'TCP' },
        { name: 'webhook', containerPort: 9443, protocol: 'TCP' },
      ]);
      assert.deepEqual([container?.livenessProbe?.httpGet?.path, container?.livenessProbe?.httpGet?.port], ['/livez', 'metrics']);
      // Ready means the webhook answers: the Service sends admission requests to ready replicas only.
      assert.deepEqual(container?.readinessProbe?.httpGet, { scheme: 'HTTPS', path: '/healthz', port: 'webhook' });
      assert.deepEqual(container?.volumeMounts?.find((m) => m.name === 'webhook-tls'), { name: 'webhook-tls', mountPath: '/etc/keyward/webhook', readOnly: true });
      assert.deepEqual(spec?.volumes?.find((v) => v.name === 'webhook-tls')?.secret, {
        secretName: webhookSecret,
        defaultMode: 0o440,
        items: [
          { key: 'tls.crt', path: 'tls.crt' },
          { key: 'tls.key', path: 'tls.key' },
        ],
      });
      assert.equal(spec?.automountServiceAccountToken, true);
      const conf = only<KubernetesObject & { data: Record<string, string> }>(defaults, 'ConfigMap').data['softhsm2.conf'];
      assert.match(conf ?? '', /^directories\.tokendir = \/var\/lib\/softhsm\/tokens$/m);
      assert.equal(spec?.volumes?.find((v) => v.name === 'softhsm-tokens')?.persistentVolumeClaim?.claimName, 'keyward-softhsm-tokens');
    });

    it("registers both webhooks through the webhook Service, failing closed, with a caBundle that verifies the Secret's certificate for the Service's name", () => {
      const deployment = only<V1Deployment>(defaults, 'Deployment');
      const service = named<V1Service>(defaults, 'Service', webhookService);
      assert.equal(service.metadata?.namespace, releaseNamespace);
      assert.equal(service.spec?.type, 'ClusterIP');
      assert.deepEqual(service.spec?.ports, [{ name: 'webhook', port: 443, targetPort: 'webhook', protocol: 'TCP' }]);
      assert.deepEqual(service.spec?.selector, deployment.spec?.selector?.matchLabels, 'selects every operator replica, leader or not');
      const secret = named<V1Secret>(defaults, 'Secret', webhookSecret);
      assert.equal(secret.type, 'kubernetes.io/tls');
      assert.equal(secret.metadata?.namespace, releaseNamespace);
      const crt = fromBase64(secret.data?.['tls.crt']);
      const key = fromBase64(secret.data?.['tls.key']);
      for (const expected of webhookConfigurations) {
        const webhook = assertWebhook(only<WebhookConfiguration>(defaults, expected.kind), expected);
        assertServesFor(crt, key, webhook.clientConfig.caBundle, webhookDnsName);
        assert.equal(webhook.clientConfig.caBundle, secret.data?.['ca.crt'], 'a first install trusts its own CA only');
      }
      const cert = new X509Certificate(crt);
      assert.equal(cert.publicKey.asymmetricKeyDetails?.modulusLength, 4096, 'RSA 4096 (CNSA 1.0: at least 3072)');
      const years = (Date.parse(cert.validTo) - Date.now()) / (365.25 * 86_400_000);
      assert.ok(years > 9.9, `long-lived: ${years.toFixed(1)} years`);
      // The annotation an upgrade reads to decide whether to keep the certificate.
      assert.ok(Math.abs(Date.parse(secret.metadata?.annotations?.['keyward.dev/webhook-not-after'] ?? '') - Date.parse(cert.validTo)) < 60_000);
      assert.equal(secret.metadata?.annotations?.['keyward.dev/webhook-dns-name'], webhookDnsName);
    });

    it('serves from an existing Secret instead, with its caBundle or with cert-manager injecting it; refuses one nobody vouches for', async () => {
      const caBundle = named<V1Secret>(defaults, 'Secret', webhookSecret).data?.['ca.crt'] ?? '';
      const existing = ['--set', 'operator.webhook.tls.existingSecret=webhook-cert'];
      const given = await renderChart(helm, releaseNamespace, [...existing, '--set', `operator.webhook.tls.caBundle=${caBundle}`]);
      const injected = await renderChart(helm, releaseNamespace, [...existing, '--set', 'operator.webhook.tls.certManagerInjectFrom=keyward-system/webhook-cert']);
      for (const objects of [given, injected]) {
        assert.deepEqual(ofKind(objects, 'Secret'), [], 'the chart generates no certificate');
        assert.equal(only<V1Deployment>(objects, 'Deployment').spec?.template.spec?.volumes?.find((v) => v.name === 'webhook-tls')?.secret?.secretName, 'webhook-cert');
      }
      for (const expected of webhookConfigurations) {
        const withBundle = only<WebhookConfiguration>(given, expected.kind);
        assert.equal(assertWebhook(withBundle, expected).clientConfig.caBundle, caBundle);
        assert.equal(withBundle.metadata?.annotations, undefined);
        const withInjection = only<WebhookConfiguration>(injected, expected.kind);
        assert.equal(assertWebhook(withInjection, expected).clientConfig.caBundle, undefined, "left for cert-manager's cainjector");
        assert.deepEqual(withInjection.metadata?.annotations, { 'cert-manager.io/inject-ca-from': 'keyward-system/webhook-cert' });
      }
      await assert.rejects(renderChart(helm, releaseNamespace, existing), /existingSecret needs operator\.webhook\.tls\.caBundle .* or operator\.webhook\.tls\.certManagerInjectFrom/);
      await assert.rejects(
        renderChart(helm, releaseNamespace, ['--set', `operator.webhook.tls.caBundle=${caBundle}`]),
        /caBundle and certManagerInjectFrom belong with operator\.webhook\.tls\.existingSecret/,
      );
    });

    it('runs the KMS plugin with its node flags on control-plane nodes, socket on a hostPath, no API token', () => {
      const staticPod = only<V1Pod>(parseManifests(readFileSync(join(chartDir, 'files', 'kms-plugin-static-pod.yaml'), 'utf8')), 'Pod');
      const daemonSet = only<V1DaemonSet>(plugin, 'DaemonSet').spec?.template.spec;
      for (const [owner, spec] of [['DaemonSet', daemonSet], ['static pod', staticPod.spec]] as const) {
        const container = spec?.containers[0];
        assert.deepEqual(container?.command, ['node', ...kmsPluginNodeFlags, '/app/dist/cli/keyward.js', 'kms-plugin'], owner);
        for (const flag of ['--socket=/var/run/keyward/kms.sock', '--ring=etcd-secrets', '--namespace=kube-system', '--token-label=keyward']) {
          assert.ok(container?.args?.includes(flag), `${owner} arg ${flag}`);
        }
        assert.ok(container?.args?.some((a) => a.startsWith('--metrics-address=')), `${owner}: --metrics-address`);
        assert.equal(spec?.automountServiceAccountToken, false, `${owner}: no ServiceAccount token`);
        assert.equal(spec?.volumes?.find((v) => v.name === 'socket-dir')?.hostPath?.path, '/var/run/keyward', `${owner}: socket dir on the node`);
      }
      assert.deepEqual(daemonSet?.nodeSelector, { 'node-role.kubernetes.io/control-plane': '' });
      assert.ok(daemonSet?.tolerations?.some((t) => t.key === 'node-role.kubernetes.io/control-plane' && t.operator === 'Exists'));
      assert.ok(!staticPod.spec?.volumes?.some((v) => v.secret || v.configMap), 'a static pod can use neither Secrets nor ConfigMaps');
      assert.deepEqual(ofKind(plugin, 'ClusterRole').length + ofKind(plugin, 'Role').length, 2, 'the plugin adds no RBAC');
    });

    it("runs the CSI provider on every Linux node: the driver's provider directory at the same path, its flags, probes, 100Mi, locked down", () => {
      const daemonSet = only<V1DaemonSet>(csi, 'DaemonSet');
      assert.equal(daemonSet.metadata?.namespace, releaseNamespace);
      const spec = daemonSet.spec?.template.spec;
      const container = spec?.containers[0];
      assert.equal(spec?.containers.length, 1);
      assert.equal(container?.name, 'csi-provider');
      assert.deepEqual(container?.command, ['node', ...csiProviderNodeFlags, '/app/dist/cli/keyward.js', 'csi-provider']);
      const flags = [
        `--socket-dir=${providerDir}`,
        '--audience=keyward',
        '--pkcs11-module=/usr/lib/softhsm/libsofthsm2.so',
        '--token-label=keyward',
        '--pin-file=/run/keyward/pin/pin',
        // The kubelet probes the pod's address, so not the CLI's loopback default.
        '--metrics-address=0.0.0.0:9466',
        '--token-review-ttl=300',
        '--material-ttl=300',
        '--ring-refresh=2',
      ];
      assert.deepEqual(container?.args, flags);
      // The driver dials <provider-volume>/keyward.sock on the node: the same path in the pod.
      assert.deepEqual(spec?.volumes?.find((v) => v.name === 'provider-dir')?.hostPath, { path: providerDir, type: 'DirectoryOrCreate' });
      assert.deepEqual(container?.volumeMounts?.find((m) => m.name === 'provider-dir'), { name: 'provider-dir', mountPath: providerDir });
      // The same SoftHSM2 token as the operator and the KMS plugin: a directory on the node.
      assert.deepEqual(spec?.volumes?.find((v) => v.name === 'softhsm-tokens')?.hostPath, { path: softhsmHostPath, type: 'Directory' });
      assert.deepEqual(container?.env, [
        { name: 'KEYWARD_LOG_LEVEL', value: 'info' },
        { name: 'SOFTHSM2_CONF', value: '/etc/keyward/softhsm/softhsm2.conf' },
      ]);
      assert.deepEqual(container?.ports, [{ name: 'metrics', containerPort: 9466, protocol: 'TCP' }]);
      for (const probe of [container?.startupProbe, container?.livenessProbe]) assert.deepEqual(probe?.httpGet, { path: '/livez', port: 'metrics' });
      assert.deepEqual(container?.readinessProbe?.httpGet, { path: '/healthz', port: 'metrics' });
      const sc = container?.securityContext;
      assert.deepEqual(
        [sc?.runAsNonRoot, sc?.runAsUser, sc?.readOnlyRootFilesystem, sc?.allowPrivilegeEscalation, sc?.capabilities?.drop],
        [true, 65532, true, false, ['ALL']],
        'non-root 65532, read-only root filesystem, no escalation, no capabilities',
      );
      assert.equal(spec?.securityContext?.seccompProfile?.type, 'RuntimeDefault');
      assert.ok(!spec?.hostNetwork && !spec?.hostPID, 'pod network, own PID namespace');
      assert.deepEqual(container?.resources, { requests: { cpu: '50m', memory: '100Mi' }, limits: { cpu: '500m', memory: '100Mi' } }, "the driver's budget for a provider");
      assert.deepEqual(daemonSet.spec?.updateStrategy, { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1 } });
      assert.deepEqual(spec?.nodeSelector, { 'kubernetes.io/os': 'linux' });
      assert.equal(spec?.priorityClassName, 'system-node-critical');
      // Its own ServiceAccount, and the pod (only) gets a token: it calls the apiserver.
      assert.equal(spec?.serviceAccountName, csiProviderName);
      assert.equal(spec?.automountServiceAccountToken, true);
      const account = named<KubernetesObject & { automountServiceAccountToken?: boolean }>(csi, 'ServiceAccount', csiProviderName);
      assert.equal(account.metadata?.namespace, releaseNamespace);
      assert.equal(account.automountServiceAccountToken, false);
      // First the driver's directory is given to the provider's gid (as root: the only container
      // that is), then the PIN copied to a 0600 file.
      assert.deepEqual(spec?.initContainers?.map((c) => c.name), [rootContainer, 'pin-file']);
      const prepare = spec?.initContainers?.[0];
      assert.deepEqual(prepare?.command?.slice(0, 2), ['node', '-e']);
      assert.deepEqual(prepare?.command?.slice(-2), [providerDir, '65532'], 'the directory and the gid of the provider');
      assert.equal(prepare?.args, undefined);
      assert.deepEqual(prepare?.volumeMounts, [{ name: 'provider-dir', mountPath: providerDir }], 'the provider directory alone: no PIN, no token directory');
      assert.deepEqual([prepare?.env, prepare?.envFrom], [undefined, undefined]);
      assert.deepEqual(prepare?.securityContext, rootSecurityContext);
    });

    it('leaves the provider directory to the node\'s admin with csiProvider.prepareProviderDir=false: no root init container', () => {
      const spec = only<V1DaemonSet>(csiManual, 'DaemonSet').spec?.template.spec;
      assert.deepEqual(spec?.initContainers?.map((c) => c.name), ['pin-file']);
      for (const container of spec ? allContainers(spec) : []) assert.equal(container.securityContext?.runAsUser, 65532, `${container.name}: uid 65532`);
      // Otherwise the same DaemonSet.
      const withoutInit = (objects: KubernetesObject[]): unknown => {
        const daemonSet = only<V1DaemonSet>(objects, 'DaemonSet');
        return { ...daemonSet.spec?.template.spec, initContainers: daemonSet.spec?.template.spec?.initContainers?.filter((c) => c.name !== rootContainer) };
      };
      assert.deepEqual(withoutInit(csiManual), withoutInit(csi));
    });

    it("prepares the provider directory, in its init container's own command, as root with CAP_CHOWN alone: then the provider may create its socket; nothing else changes; a second run changes nothing", async function () {
      // chown to another group needs root, as in the container.
      if (process.getuid?.() !== 0) this.skip();
      const command = only<V1DaemonSet>(csi, 'DaemonSet').spec?.template.spec?.initContainers?.find((c) => c.name === rootContainer)?.command ?? [];
      assert.deepEqual(command.slice(-2), [providerDir, '65532']);
      const prepare = (privileges: string[], dir: string): Promise<{ code: number; stderr: string }> => runNodeWith(privileges, [...command.slice(1, -2), dir, '65532']);
      const parent = mkdtempSync(join(tmpdir(), 'keyward-provider-dir-'));
      chmodSync(parent, 0o755);
      const dir = join(parent, 'secrets-store-csi-providers');
      // As the driver or the kubelet creates it: root's, 0755; another provider listens in it.
      mkdirSync(dir);
      chmodSync(dir, 0o755);
      const otherSocket = join(dir, 'vault.sock');
      const other: Server = createServer();
      await new Promise<void>((resolve) => other.listen(otherSocket, resolve));
      const snapshot = (path: string): unknown => {
        const { ino, uid, gid, mode, ctimeNs } = statSync(path, { bigint: true });
        return { ino, uid, gid, mode, ctimeNs };
      };
      try {
        const otherBefore = snapshot(otherSocket);
        const socket = join(dir, 'keyward.sock');
        assert.deepEqual(await runNodeWith(asProvider, ['-e', listenScript, socket]), { code: 1, stderr: 'EACCES\n' }, 'the provider cannot create its socket in the driver\'s directory');
        // CAP_CHOWN is needed: without it, root may not give the directory to another group.
        const refused = await prepare(asRootWithoutCapabilities, dir);
        assert.notEqual(refused.code, 0);
        assert.match(refused.stderr, /EPERM: operation not permitted, chown/);
        assert.equal(statSync(dir).gid, 0);
        // With it alone (and root owning the directory, chmod needs nothing more).
        const first = await prepare(asRootWithChownOnly, dir);
        assert.deepEqual(first, { code: 0, stderr: '' });
        const prepared = statSync(dir);
        assert.deepEqual([prepared.uid, prepared.gid, prepared.mode & 0o7777], [0, 65532, 0o775], "root's still, group 65532, 0775");
        const after = snapshot(dir);
        // Twice: init containers run again whenever the pod restarts; nothing to do is done.
        assert.deepEqual(await prepare(asRootWithChownOnly, dir), { code: 0, stderr: '' });
        assert.deepEqual(snapshot(dir), after, 'the second run changes nothing (not even the ctime)');
        assert.deepEqual(snapshot(otherSocket), otherBefore, "the other provider's socket untouched");
        assert.deepEqual(await runNodeWith(asProvider, ['-e', listenScript, socket]), { code: 0, stderr: '' }, 'now the provider creates its socket');
        assert.equal(statSync(socket).uid, 65532);
      } finally {
        other.close();
        rmSync(parent, { recursive: true, force: true });
      }
    });

    it('grants the CSI provider exactly tokenreviews create and keypolicies list, watch, bound to its own ServiceAccount', () => {
      const clusterRole = named<KubernetesObject & { rules: V1PolicyRule[] }>(csi, 'ClusterRole', csiProviderName);
      assert.deepEqual(clusterRole.rules, expectedCsiProviderRules);
      const binding = named<KubernetesObject & { roleRef: unknown; subjects: unknown[] }>(csi, 'ClusterRoleBinding', csiProviderName);
      assert.deepEqual(binding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: csiProviderName });
      assert.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: csiProviderName, namespace: releaseNamespace }]);
      // Nothing else: the operator's RBAC unchanged, no namespaced Role for the provider.
      assert.deepEqual(ofKind(csi, 'ClusterRole').map((r) => r.metadata?.name).sort(), [csiProviderName, 'keyward-operator']);
      assert.deepEqual(named<KubernetesObject & { rules: V1PolicyRule[] }>(csi, 'ClusterRole', 'keyward-operator').rules, expectedClusterRules);
      assert.equal(ofKind(csi, 'Role').length, 1, "only the operator's Lease Role");
    });

    it('refuses the CSI provider with SoftHSM2 but no token directory on the node, and takes its values', async () => {
      await assert.rejects(renderChart(helm, releaseNamespace, ['--set', 'csiProvider.enabled=true']), /csiProvider with SoftHSM2 needs hsm\.softhsm\.hostPath/);
      const set = (values: string[]): string[] => values.flatMap((v) => ['--set', `csiProvider.${v}`]);
      const custom = await renderChart(helm, releaseNamespace, [
        ...withCsiProvider,
        ...set(['providerDir=/etc/kubernetes/secrets-store-csi-providers', 'audience=keyward-csi', 'metricsPort=9477', 'logLevel=debug']),
        ...set(['tokenReviewTtlSeconds=60', 'materialTtlSeconds=30', 'ringRefreshSeconds=5', 'securityContext.runAsGroup=4242']),
      ]);
      const spec = only<V1DaemonSet>(custom, 'DaemonSet').spec?.template.spec;
      const container = spec?.containers[0];
      const prepare = spec?.initContainers?.find((c) => c.name === rootContainer);
      assert.deepEqual(prepare?.command?.slice(-2), ['/etc/kubernetes/secrets-store-csi-providers', '4242'], 'the directory given to the provider\'s gid');
      assert.deepEqual(prepare?.volumeMounts, [{ name: 'provider-dir', mountPath: '/etc/kubernetes/secrets-store-csi-providers' }]);
      for (const flag of ['--socket-dir=/etc/kubernetes/secrets-store-csi-providers', '--audience=keyward-csi', '--metrics-address=0.0.0.0:9477', '--token-review-ttl=60', '--material-ttl=30', '--ring-refresh=5']) {
        assert.ok(container?.args?.includes(flag), `arg ${flag}`);
      }
      assert.equal(spec?.volumes?.find((v) => v.name === 'provider-dir')?.hostPath?.path, '/etc/kubernetes/secrets-store-csi-providers');
      assert.equal(container?.volumeMounts?.find((m) => m.name === 'provider-dir')?.mountPath, '/etc/kubernetes/secrets-store-csi-providers');
      assert.equal(container?.ports?.[0]?.containerPort, 9477);
      assert.deepEqual(container?.env?.[0], { name: 'KEYWARD_LOG_LEVEL', value: 'debug' });
    });

    it("passes flags the real CLI accepts: it gets as far as reading the PIN file", async () => {
      const env = { POD_NAMESPACE: releaseNamespace, POD_NAME: 'keyward-operator-7d9f-abcde' };
      const childEnv = { PATH: process.env.PATH, HOME: home, KUBECONFIG: '' };
      const operator = only<V1Deployment>(defaults, 'Deployment').spec?.template.spec?.containers[0] as V1Container;
      const daemonSet = only<V1DaemonSet>(plugin, 'DaemonSet').spec?.template.spec?.containers[0] as V1Container;
      const csiProvider = only<V1DaemonSet>(csi, 'DaemonSet').spec?.template.spec?.containers[0] as V1Container;
      for (const [command, container] of [['operator', operator], ['kms-plugin', daemonSet], ['csi-provider', csiProvider]] as const) {
        const result = await runNode(localInvocation(container, env), childEnv);
        // Every flag parsed (strict parsing refuses unknown ones) and every number in range: the
        // first thing the command cannot do here is read the PIN file, which only the pod has.
        assert.equal(result.stderr, `keyward ${command}: PIN file /run/keyward/pin/pin does not exist\n`);
        assert.equal(result.code, 2);
      }
    });
  });

  describe('installed on a real control plane, the operator running as its ServiceAccount', () => {
    const keyRingNamespace = 'payments';
    const identity = 'chart-sa';
    let dir: string;
    let cp: ControlPlane;
    let hsm: SoftHsmToken;
    let operator: OperatorProcess | undefined;
    let saName: string;
    let saKubeConfig: KubeConfig;
    let installOutput: string;
    let csiProvider: ComponentProcess | undefined;

    const objects = (): CustomObjectsApi => cp.kubeConfig.makeApiClient(CustomObjectsApi);
    const getKeyRing = async (name: string): Promise<KeyRing> =>
      (await objects().getNamespacedCustomObject({ ...keyRingResource, namespace: keyRingNamespace, name })) as KeyRing;
    const eventReasons = async (name: string): Promise<string[]> =>
      (await cp.kubeConfig.makeApiClient(CoreV1Api).listNamespacedEvent({ namespace: keyRingNamespace, fieldSelector: `involvedObject.name=${name}` })).items.map(
        (e) => e.reason ?? '',
      );
    /** What the apiserver's authorizer says the ServiceAccount's own token may do. */
    const mayI = async (attributes: V1ResourceAttributes, as: KubeConfig = saKubeConfig): Promise<boolean> => {
      const review = await as.makeApiClient(AuthorizationV1Api).createSelfSubjectAccessReview({ body: { spec: { resourceAttributes: attributes } } });
      return review.status?.allowed === true;
    };
    const label = (a: V1ResourceAttributes): string => `${a.verb} ${a.group ? `${a.group}/` : ''}${a.resource}${a.subresource ? `/${a.subresource}` : ''} ${a.namespace ?? '(cluster)'}/${a.name ?? '*'}`;
    /** What the authorizer gets wrong for `as`: a needed request denied, or an unneeded one allowed. */
    const wrongGrants = async (allowed: V1ResourceAttributes[], denied: V1ResourceAttributes[], as: KubeConfig): Promise<string[]> => {
      const wrong: string[] = [];
      for (const a of allowed) if (!(await mayI(a, as))) wrong.push(`denied but needed: ${label(a)}`);
      for (const a of denied) if (await mayI(a, as)) wrong.push(`allowed but not needed: ${label(a)}`);
      return wrong;
    };
    /** A kubeconfig file in `dir` holding a TokenRequest token of the release's ServiceAccount `name`, nothing else. */
    const serviceAccountKubeconfig = async (name: string, file: string): Promise<string> => {
      const token = await cp.kubeConfig.makeApiClient(CoreV1Api).createNamespacedServiceAccountToken({
        name,
        namespace: releaseNamespace,
        body: { spec: { audiences: [], expirationSeconds: 3600 } },
      });
      const path = join(dir, file);
      writeFileSync(
        path,
        JSON.stringify({
          apiVersion: 'v1',
          kind: 'Config',
          clusters: [{ name: 'keyward-test', cluster: { server: cp.apiserverUrl, 'certificate-authority': join(cp.dir, 'pki', 'ca.crt') } }],
          users: [{ name, user: { token: token.status?.token } }],
          contexts: [{ name, context: { cluster: 'keyward-test', user: name } }],
          'current-context': name,
        }),
        { mode: 0o600 },
      );
      return path;
    };
    /** The webhook certificate in the release's Secret, and the caBundle both installed webhooks trust. */
    const installedWebhooks = async (): Promise<{ crt: string; key: string; ca: string; caBundle: string | undefined }> => {
      const secret = await cp.kubeConfig.makeApiClient(CoreV1Api).readNamespacedSecret({ name: webhookSecret, namespace: releaseNamespace });
      const registration = cp.kubeConfig.makeApiClient(AdmissionregistrationV1Api);
      const [mutating, validating] = webhookConfigurations;
      const configs: WebhookConfiguration[] = [
        await registration.readMutatingWebhookConfiguration({ name: mutating.name }),
        await registration.readValidatingWebhookConfiguration({ name: validating.name }),
      ];
      const [keyRings, keyPolicies] = configs.map((config, i) => assertWebhook(JSON.parse(JSON.stringify(config)) as WebhookConfiguration, webhookConfigurations[i] ?? mutating));
      assert.equal(keyRings?.clientConfig.caBundle, keyPolicies?.clientConfig.caBundle, 'both webhooks trust the same CAs');
      const data = secret.data ?? {};
      return { crt: fromBase64(data['tls.crt']), key: fromBase64(data['tls.key']), ca: fromBase64(data['ca.crt']), caBundle: keyRings?.clientConfig.caBundle };
    };
    /** A dry-run merge patch of a KeyRing's spec: the apiserver runs admission, webhooks included, and stores nothing. */
    const dryRunPatch = (client: CustomObjectsApi, name: string, spec: Record<string, unknown>): Promise<unknown> =>
      client.patchNamespacedCustomObject(
        { ...keyRingResource, namespace: keyRingNamespace, name, body: { spec }, dryRun: 'All' },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );

    before(async function () {
      this.timeout(600_000);
      dir = mkdtempSync(join(tmpdir(), 'keyward-e2e-helm-'));
      // OwnerReferencesPermissionEnforcement on, as in many production clusters: the operator must
      // not need keyrings/finalizers even so.
      // Endpoint routing: the apiserver calls a webhook Service at its endpoints' addresses (there
      // is no cluster network for a ClusterIP), still checking the certificate for <svc>.<ns>.svc.
      cp = await startControlPlane({ extraApiserverArgs: ['--enable-admission-plugins=OwnerReferencesPermissionEnforcement', '--enable-aggregator-routing=true'] });
      // The namespace warns about any pod template below the "restricted" Pod Security Standard.
      await cp.kubeConfig.makeApiClient(CoreV1Api).createNamespace({
        body: { metadata: { name: releaseNamespace, labels: { 'pod-security.kubernetes.io/warn': 'restricted', 'pod-security.kubernetes.io/enforce': 'restricted' } } },
      });
      await cp.kubeConfig.makeApiClient(CoreV1Api).createNamespace({ body: { metadata: { name: keyRingNamespace } } });
      const installed = await helm(['install', 'keyward', chartDir, '--namespace', releaseNamespace, '--create-namespace', '--kubeconfig', cp.kubeconfigPath]);
      installOutput = installed.stdout + installed.stderr;
      saName = only<V1Deployment>(defaults, 'Deployment').spec?.template.spec?.serviceAccountName ?? '';

      const saKubeconfigPath = await serviceAccountKubeconfig(saName, 'operator-sa.kubeconfig');
      saKubeConfig = new KubeConfig();
      saKubeConfig.loadFromFile(saKubeconfigPath);
      hsm = createSoftHsmToken({ parentDir: dir });
      // The webhook certificate as the pod sees it: the chart's Secret, its two files.
      const certDir = join(dir, 'webhook');
      mkdirSync(certDir, { mode: 0o700 });
      const { crt, key } = await installedWebhooks();
      writeFileSync(join(certDir, 'tls.crt'), crt, { mode: 0o600 });
      writeFileSync(join(certDir, 'tls.key'), key, { mode: 0o600 });
      const ip = hostAddress();
      const port = await freePort();
      operator = await startOperatorProcess({
        hsm,
        kubeconfigPath: saKubeconfigPath,
        dir,
        identity,
        leaseNamespace: releaseNamespace,
        leaseSeconds: 4,
        webhook: { address: `${ip}:${port}`, certDir },
      });
      // What the EndpointSlice controller would write for a ready operator pod (none runs here).
      const endpointPort = { name: 'webhook', port, protocol: 'TCP' };
      await cp.kubeConfig.makeApiClient(DiscoveryV1Api).createNamespacedEndpointSlice({
        namespace: releaseNamespace,
        body: {
          metadata: { name: `${webhookService}-e2e`, labels: { 'kubernetes.io/service-name': webhookService } },
          addressType: 'IPv4',
          endpoints: [{ addresses: [ip], conditions: { ready: true } }],
          ports: [endpointPort],
        },
      });
    });
    after(async () => {
      await csiProvider?.stop();
      await operator?.process.stop();
      await cp?.stop();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });
    afterEach(function () {
      if (this.currentTest?.state === 'failed' && operator) console.error(`operator log (${operator.logFile}):\n${logTail(operator.logFile, 60)}`);
      if (this.currentTest?.state === 'failed' && csiProvider) console.error(`CSI provider log (${csiProvider.logFile}):\n${logTail(csiProvider.logFile, 60)}`);
    });

    it('installs the CRD and every object, with no Pod Security warning under "restricted"', async () => {
      assert.doesNotMatch(installOutput, /PodSecurity|would violate/i, installOutput);
      // The CRD from crds/ is served (a new resource's storage may answer 429 for a moment).
      await eventually('KeyRings served', 30_000, () => objects().listClusterCustomObject({ ...keyRingResource }));
      const apps = cp.kubeConfig.makeApiClient(AppsV1Api);
      const deployment = await apps.readNamespacedDeployment({ name: 'keyward-operator', namespace: releaseNamespace });
      assert.equal(deployment.spec?.template.spec?.serviceAccountName, saName);
      assert.equal(deployment.spec?.template.spec?.volumes?.find((v) => v.name === 'pin-secret')?.secret?.defaultMode, 0o400, 'the apiserver read 0400');
      const rbac = cp.kubeConfig.makeApiClient(RbacAuthorizationV1Api);
      const plain = (rules: V1PolicyRule[] | undefined): unknown => JSON.parse(JSON.stringify(rules ?? []));
      assert.deepEqual(plain((await rbac.readClusterRole({ name: 'keyward-operator' })).rules), expectedClusterRules);
      assert.deepEqual(plain((await rbac.readNamespacedRole({ name: 'keyward-operator-leader-election', namespace: releaseNamespace })).rules), expectedLeaseRules);
      await cp.kubeConfig.makeApiClient(CoreV1Api).readNamespacedServiceAccount({ name: saName, namespace: releaseNamespace });
      const { stdout } = await helm(['status', 'keyward', '--namespace', releaseNamespace, '--kubeconfig', cp.kubeconfigPath]);
      assert.match(stdout, /STATUS: deployed/);
      // The webhooks as installed: through the Service, trusting the CA of the installed Secret.
      const webhooks = await installedWebhooks();
      assertServesFor(webhooks.crt, webhooks.key, webhooks.caBundle, webhookDnsName);
      assert.equal(fromBase64(webhooks.caBundle), webhooks.ca);
      const service = await cp.kubeConfig.makeApiClient(CoreV1Api).readNamespacedService({ name: webhookService, namespace: releaseNamespace });
      assert.equal(service.spec?.ports?.[0]?.port, 443);
      // A TLS client that trusts the caBundle and expects the Service's name accepts the operator.
      const [host = '', port = ''] = (operator?.webhookAddress ?? '').split(':');
      const authorized = await new Promise<string>((resolve, reject) => {
        const socket = connect({ host, port: Number(port), servername: webhookDnsName, ca: fromBase64(webhooks.caBundle) }, () => {
          resolve(socket.authorized ? 'authorized' : String(socket.authorizationError));
          socket.end();
        });
        socket.once('error', reject);
      });
      assert.equal(authorized, 'authorized');
    });

    it('reconciles a KeyRing with only the chart RBAC: Lease, finalizer, status and Event', async () => {
      await objects().createNamespacedCustomObject({
        ...keyRingResource,
        namespace: keyRingNamespace,
        body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name: 'invoices' }, spec: { purpose: 'encryption' } },
      });
      const lease = await eventually('the operator holds its Lease in the release namespace', 30_000, async () => {
        const l = await cp.kubeConfig.makeApiClient(CoordinationV1Api).readNamespacedLease({ name: 'keyward-operator', namespace: releaseNamespace });
        return l.spec?.holderIdentity === identity ? l : undefined;
      });
      assert.equal(lease.metadata?.namespace, releaseNamespace);
      const kr = await eventually('KeyRing invoices Ready (status patched)', 60_000, async () => {
        const k = await getKeyRing('invoices');
        return k.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ? k : undefined;
      });
      assert.equal(kr.status?.primaryVersion, 1);
      assert.ok(kr.metadata.finalizers?.includes(keyRingFinalizer), 'finalizer added (server-side apply = patch)');
      // Events are best effort in the operator, so only their presence shows `create events` works.
      await eventually('a Created Event', 30_000, async () => ((await eventReasons('invoices')).includes('Created') ? true : undefined));
      assert.doesNotMatch(readFileSync(operator?.logFile ?? '', 'utf8'), /forbidden|\b403\b/i, 'no request of the operator was refused');
    });

    it("calls the webhooks through the chart's Service and certificate: KeyPolicy decides who may rotate, the operator writes its status", async () => {
      // RBAC lets dana patch KeyRings in the namespace: only KeyPolicy stands between her and a rotation.
      const rbac = cp.kubeConfig.makeApiClient(RbacAuthorizationV1Api);
      await rbac.createNamespacedRole({
        namespace: keyRingNamespace,
        body: { metadata: { name: 'keyring-editor' }, rules: [{ apiGroups: ['keyward.dev'], resources: ['keyrings'], verbs: ['get', 'patch'] }] },
      });
      await rbac.createNamespacedRoleBinding({
        namespace: keyRingNamespace,
        body: {
          metadata: { name: 'keyring-editor-dana' },
          roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'keyring-editor' },
          subjects: [{ kind: 'User', apiGroup: 'rbac.authorization.k8s.io', name: 'dana' }],
        },
      });
      const dana = userKubeConfig(cp, 'dana').makeApiClient(CustomObjectsApi);
      const refusedBy = (webhook: string, reason: RegExp) => (err: unknown) => {
        if (!(err instanceof ApiException) || err.code !== 403) throw err;
        const { message = '' } = JSON.parse(String(err.body)) as { message?: string };
        assert.ok(message.startsWith(`admission webhook "${webhook}" denied the request`), message);
        assert.match(message, reason);
        return true;
      };
      await assert.rejects(dryRunPatch(dana, 'invoices', { rotationRequest: 'chart-1' }), refusedBy('keyrings.keyward.dev', /rotate/));

      const policy = (name: string, rule: Record<string, unknown>): object => ({
        apiVersion: 'keyward.dev/v1alpha1',
        kind: 'KeyPolicy',
        metadata: { name },
        spec: { rules: [{ subjects: [{ kind: 'User', name: 'dana' }], keyRings: ['invoices'], ...rule }] },
      });
      const createPolicy = (body: object): Promise<unknown> => objects().createNamespacedCustomObject({ ...keyPolicyResource, namespace: keyRingNamespace, body });
      // Only the validating webhook can see the clock: a break-glass grant two days out.
      const tooLate = new Date(Date.now() + 48 * 3_600_000).toISOString();
      await assert.rejects(createPolicy(policy('break-glass', { roles: ['BreakGlassAdministrator'], expiresAt: tooLate })), refusedBy('keypolicies.keyward.dev', /at most 24h/));
      await createPolicy(policy('invoice-admins', { name: 'dana-administers', roles: ['Administrator'] }));
      await eventually('dana may rotate (the operator cached the policy)', 10_000, () =>
        dryRunPatch(dana, 'invoices', { rotationRequest: 'chart-1' }).then(
          () => true,
          () => undefined,
        ),
      );
      // The leader wrote the policy's status (keypolicies/status patch) with the grant expanded.
      const status = await eventually('KeyPolicy invoice-admins Ready', 30_000, async () => {
        const p = (await objects().getNamespacedCustomObject({ ...keyPolicyResource, namespace: keyRingNamespace, name: 'invoice-admins' })) as KeyPolicy;
        return p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ? p.status : undefined;
      });
      assert.ok(status.grants?.some((g) => g.subject === 'User dana' && g.keyRing === 'invoices' && g.operations.includes('rotate')));
      assert.doesNotMatch(readFileSync(operator?.logFile ?? '', 'utf8'), /forbidden|\b403\b/i, 'no request of the operator was refused');
    });

    it('finalizes a deleted KeyRing: the finalizer comes off and the KeyRing is gone', async () => {
      await objects().deleteNamespacedCustomObject({ ...keyRingResource, namespace: keyRingNamespace, name: 'invoices' });
      await eventually('KeyRing invoices gone', 60_000, async () => {
        try {
          await getKeyRing('invoices');
          return undefined;
        } catch (err) {
          if (err instanceof ApiException && err.code === 404) return true;
          throw err;
        }
      });
      await eventually('a KeysRetained Event', 30_000, async () => ((await eventReasons('invoices')).includes('KeysRetained') ? true : undefined));
      assert.doesNotMatch(readFileSync(operator?.logFile ?? '', 'utf8'), /forbidden|\b403\b/i, 'no request of the operator was refused');
    });

    it('lets the ServiceAccount do what the operator does, and nothing else', async () => {
      const keyrings = { group: 'keyward.dev', resource: 'keyrings' };
      const keypolicies = { group: 'keyward.dev', resource: 'keypolicies' };
      const leases = { group: 'coordination.k8s.io', resource: 'leases' };
      const registration = { group: 'admissionregistration.k8s.io' };
      const allowed: V1ResourceAttributes[] = [
        { ...keyrings, verb: 'list' },
        { ...keyrings, verb: 'watch' },
        { ...keyrings, verb: 'patch', namespace: keyRingNamespace, name: 'invoices' },
        { ...keyrings, verb: 'patch', subresource: 'status', namespace: keyRingNamespace, name: 'invoices' },
        { ...keypolicies, verb: 'list' },
        { ...keypolicies, verb: 'watch' },
        { ...keypolicies, verb: 'patch', subresource: 'status', namespace: keyRingNamespace, name: 'invoice-admins' },
        { group: '', resource: 'events', verb: 'create', namespace: keyRingNamespace },
        { ...leases, verb: 'get', namespace: releaseNamespace, name: 'keyward-operator' },
        { ...leases, verb: 'update', namespace: releaseNamespace, name: 'keyward-operator' },
        { ...leases, verb: 'create', namespace: releaseNamespace },
      ];
      const denied: V1ResourceAttributes[] = [
        { group: '', resource: 'secrets', verb: 'get', namespace: releaseNamespace, name: 'keyward-hsm-pin' },
        { group: '', resource: 'secrets', verb: 'list' },
        { group: '', resource: 'configmaps', verb: 'get', namespace: releaseNamespace },
        { group: '', resource: 'pods', verb: 'create', namespace: releaseNamespace },
        { group: '', resource: 'serviceaccounts', subresource: 'token', verb: 'create', namespace: releaseNamespace, name: saName },
        { ...keyrings, verb: 'get', namespace: keyRingNamespace, name: 'invoices' },
        { ...keyrings, verb: 'create', namespace: keyRingNamespace },
        { ...keyrings, verb: 'update', namespace: keyRingNamespace, name: 'invoices' },
        { ...keyrings, verb: 'delete', namespace: keyRingNamespace, name: 'invoices' },
        { ...keyrings, verb: 'deletecollection', namespace: keyRingNamespace },
        { ...keyrings, verb: 'update', subresource: 'status', namespace: keyRingNamespace, name: 'invoices' },
        { ...keyrings, verb: 'update', subresource: 'finalizers', namespace: keyRingNamespace, name: 'invoices' },
        // Policies are the customer's: the operator reads them and writes their status, nothing more.
        { ...keypolicies, verb: 'get', namespace: keyRingNamespace, name: 'invoice-admins' },
        { ...keypolicies, verb: 'create', namespace: keyRingNamespace },
        { ...keypolicies, verb: 'update', namespace: keyRingNamespace, name: 'invoice-admins' },
        { ...keypolicies, verb: 'patch', namespace: keyRingNamespace, name: 'invoice-admins' },
        { ...keypolicies, verb: 'delete', namespace: keyRingNamespace, name: 'invoice-admins' },
        { ...keypolicies, verb: 'deletecollection', namespace: keyRingNamespace },
        { ...keypolicies, verb: 'update', subresource: 'status', namespace: keyRingNamespace, name: 'invoice-admins' },
        // Nor may it read its own webhook key, or unregister or redirect the webhooks that check it.
        { group: '', resource: 'secrets', verb: 'get', namespace: releaseNamespace, name: webhookSecret },
        { ...registration, resource: 'mutatingwebhookconfigurations', verb: 'patch', name: 'keyward-keyrings' },
        { ...registration, resource: 'mutatingwebhookconfigurations', verb: 'delete', name: 'keyward-keyrings' },
        { ...registration, resource: 'validatingwebhookconfigurations', verb: 'update', name: 'keyward-keypolicies' },
        { ...registration, resource: 'validatingadmissionpolicies', verb: 'create' },
        { group: '', resource: 'services', verb: 'patch', namespace: releaseNamespace, name: webhookService },
        { group: '', resource: 'endpoints', verb: 'update', namespace: releaseNamespace, name: webhookService },
        { group: 'discovery.k8s.io', resource: 'endpointslices', verb: 'create', namespace: releaseNamespace },
        { group: '', resource: 'events', verb: 'delete', namespace: keyRingNamespace },
        { group: '', resource: 'events', verb: 'patch', namespace: keyRingNamespace },
        { ...leases, verb: 'update', namespace: 'kube-system', name: 'keyward-operator' },
        { ...leases, verb: 'create', namespace: 'kube-system' },
        { ...leases, verb: 'get', namespace: 'kube-system', name: 'kube-controller-manager' },
        { ...leases, verb: 'update', namespace: releaseNamespace, name: 'some-other-lease' },
        { ...leases, verb: 'delete', namespace: releaseNamespace, name: 'keyward-operator' },
        { ...leases, verb: 'list', namespace: releaseNamespace },
        { group: 'apiextensions.k8s.io', resource: 'customresourcedefinitions', verb: 'update', name: 'keyrings.keyward.dev' },
        { group: 'rbac.authorization.k8s.io', resource: 'clusterroles', verb: 'escalate', name: 'keyward-operator' },
        { group: 'rbac.authorization.k8s.io', resource: 'clusterrolebindings', verb: 'create' },
        { group: '', resource: 'users', verb: 'impersonate', name: 'admin' },
      ];
      assert.deepEqual(await wrongGrants(allowed, denied, saKubeConfig), []);
      // And for real: the PIN Secret's namespace is closed to the operator's token.
      await assert.rejects(
        saKubeConfig.makeApiClient(CoreV1Api).listNamespacedSecret({ namespace: releaseNamespace }),
        (err: unknown) => err instanceof ApiException && err.code === 403,
      );
    });

    const upgrade = (...args: string[]): Promise<{ stdout: string; stderr: string }> =>
      helm(['upgrade', 'keyward', chartDir, '--namespace', releaseNamespace, '--kubeconfig', cp.kubeconfigPath, ...withPlugin, ...args]);

    it('upgrades to the KMS plugin DaemonSet: accepted by the apiserver, only hostPath falls short of "restricted"; the webhook certificate is kept', async () => {
      const before = await installedWebhooks();
      const { stdout, stderr } = await upgrade();
      assert.deepEqual(await installedWebhooks(), before, 'the same certificate, key and caBundle (read back with lookup)');
      const daemonSet = await cp.kubeConfig.makeApiClient(AppsV1Api).readNamespacedDaemonSet({ name: 'keyward-kms-plugin', namespace: releaseNamespace });
      assert.equal(daemonSet.spec?.template.spec?.automountServiceAccountToken, false);
      const warnings = `${stdout}\n${stderr}`.split('\n').filter((line) => /would violate PodSecurity/.test(line));
      assert.ok(warnings.length > 0, 'hostPath volumes are below "restricted": the namespace warns');
      for (const warning of warnings) {
        assert.match(warning, /restricted volume types? .*hostPath/);
        assert.doesNotMatch(warning, /runAsNonRoot|allowPrivilegeEscalation|capabilities|seccompProfile|privileged/, warning);
      }
    });

    it('replaces a certificate near its end on upgrade, trusting the old CA beside the new one until the next upgrade', async () => {
      const old = await installedWebhooks();
      // 3650 days left is "near the end" when certificates are renewed 4000 days ahead.
      const renewal = ['--set', 'operator.webhook.tls.validityDays=5000', '--set', 'operator.webhook.tls.renewBeforeDays=4000'];
      await upgrade(...renewal);
      const renewed = await installedWebhooks();
      assert.notEqual(renewed.crt, old.crt, 'a new certificate');
      assertServesFor(renewed.crt, renewed.key, renewed.caBundle, webhookDnsName);
      const fingerprints = (pem: string): string[] => bundleCertificates(Buffer.from(pem).toString('base64')).map((c) => c.fingerprint256);
      assert.deepEqual(fingerprints(fromBase64(renewed.caBundle)), [...fingerprints(renewed.ca), ...fingerprints(old.ca)], 'new CA, then the old one');
      // Replicas keep serving the old certificate until the kubelet and the operator pick up the
      // new one: the apiserver still trusts it. This operator serves the old one still.
      assertServesFor(old.crt, old.key, renewed.caBundle, webhookDnsName);
      await assert.rejects(
        objects().createNamespacedCustomObject({
          ...keyPolicyResource,
          namespace: keyRingNamespace,
          body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyPolicy', metadata: { name: 'late' }, spec: { rules: [{ subjects: [{ kind: 'User', name: 'erin' }], keyRings: ['invoices'], roles: ['BreakGlassAdministrator'], expiresAt: new Date(Date.now() + 48 * 3_600_000).toISOString() }] } },
          dryRun: 'All',
        }),
        (err: unknown) => err instanceof ApiException && err.code === 403 && /at most 24h/.test(String(err.body)),
        'the apiserver still reaches the webhook, which serves the old certificate',
      );
      // The next upgrade keeps the new certificate and trusts its CA alone.
      await upgrade(...renewal);
      const next = await installedWebhooks();
      assert.equal(next.crt, renewed.crt);
      assert.deepEqual(fingerprints(fromBase64(next.caBundle)), fingerprints(renewed.ca));
    });

    it('upgrades to the CSI provider DaemonSet: accepted by the apiserver, only hostPath and the root init container (uid 0, CHOWN) fall short of "restricted"; its ServiceAccount may review tokens and read KeyPolicies, nothing else', async () => {
      const { stdout, stderr } = await upgrade(...withCsiProvider);
      const daemonSet = await cp.kubeConfig.makeApiClient(AppsV1Api).readNamespacedDaemonSet({ name: csiProviderName, namespace: releaseNamespace });
      const spec = daemonSet.spec?.template.spec;
      assert.equal(spec?.serviceAccountName, csiProviderName);
      assert.equal(spec?.automountServiceAccountToken, true);
      assert.deepEqual(JSON.parse(JSON.stringify(spec?.volumes?.find((v) => v.name === 'provider-dir')?.hostPath)), { path: providerDir, type: 'DirectoryOrCreate' });
      assert.equal(spec?.containers[0]?.resources?.limits?.memory, '100Mi');
      const prepare = spec?.initContainers?.find((c) => c.name === rootContainer);
      assert.deepEqual(JSON.parse(JSON.stringify(prepare?.securityContext)), rootSecurityContext, 'the root init container as the apiserver stored it');
      const rbac = cp.kubeConfig.makeApiClient(RbacAuthorizationV1Api);
      assert.deepEqual(JSON.parse(JSON.stringify((await rbac.readClusterRole({ name: csiProviderName })).rules)), expectedCsiProviderRules);
      // helm logs each warning quoted, its quotes escaped.
      const warnings = `${stdout}\n${stderr}`
        .split('\n')
        .filter((line) => /would violate PodSecurity/.test(line))
        .map((line) => line.replaceAll('\\"', '"'));
      assert.ok(warnings.some((w) => w.includes('provider-dir')), `the provider directory is a hostPath below "restricted": ${warnings.join('\n')}`);
      // Besides hostPath, the CSI provider's root init container, and only it, for uid 0 and CHOWN.
      const csiWarnings = warnings.filter((w) => rootContainerViolations.some((v) => w.includes(v)));
      assert.equal(csiWarnings.length, 1, `one DaemonSet runs a root container: ${warnings.join('\n')}`);
      for (const violation of rootContainerViolations) assert.ok(csiWarnings[0]?.includes(violation), `${violation} in ${csiWarnings[0]}`);
      for (const warning of warnings) {
        assert.match(warning, /restricted volume types? .*hostPath/);
        const rest = rootContainerViolations.reduce((w, v) => w.replace(v, ''), warning);
        assert.doesNotMatch(rest, /runAsNonRoot|runAsUser|allowPrivilegeEscalation|capabilities|seccompProfile|privileged/, warning);
      }

      const csiKubeConfig = new KubeConfig();
      csiKubeConfig.loadFromFile(await serviceAccountKubeconfig(csiProviderName, 'csi-provider-sa.kubeconfig'));
      const keypolicies = { group: 'keyward.dev', resource: 'keypolicies' };
      const keyrings = { group: 'keyward.dev', resource: 'keyrings' };
      const allowed: V1ResourceAttributes[] = [
        { group: 'authentication.k8s.io', resource: 'tokenreviews', verb: 'create' },
        { ...keypolicies, verb: 'list' },
        { ...keypolicies, verb: 'watch' },
        { ...keypolicies, verb: 'list', namespace: keyRingNamespace },
      ];
      const denied: V1ResourceAttributes[] = [
        // The pod's identity comes from its reviewed token, never from reading pods.
        { group: '', resource: 'pods', verb: 'get', namespace: keyRingNamespace, name: 'shop' },
        { group: '', resource: 'pods', verb: 'list' },
        { group: '', resource: 'secrets', verb: 'get', namespace: releaseNamespace, name: 'keyward-hsm-pin' },
        { group: '', resource: 'secrets', verb: 'list' },
        { group: '', resource: 'serviceaccounts', subresource: 'token', verb: 'create', namespace: keyRingNamespace, name: 'shop' },
        { group: '', resource: 'configmaps', verb: 'get', namespace: releaseNamespace },
        { group: '', resource: 'events', verb: 'create', namespace: keyRingNamespace },
        { group: '', resource: 'nodes', verb: 'get', name: 'node-1' },
        { group: 'authorization.k8s.io', resource: 'subjectaccessreviews', verb: 'create' },
        { ...keypolicies, verb: 'get', namespace: keyRingNamespace, name: 'invoice-admins' },
        { ...keypolicies, verb: 'create', namespace: keyRingNamespace },
        { ...keypolicies, verb: 'patch', namespace: keyRingNamespace, name: 'invoice-admins' },
        { ...keypolicies, verb: 'patch', subresource: 'status', namespace: keyRingNamespace, name: 'invoice-admins' },
        { ...keypolicies, verb: 'delete', namespace: keyRingNamespace, name: 'invoice-admins' },
        { ...keyrings, verb: 'list' },
        { ...keyrings, verb: 'get', namespace: keyRingNamespace, name: 'invoices' },
        { ...keyrings, verb: 'patch', namespace: keyRingNamespace, name: 'invoices' },
        { group: 'coordination.k8s.io', resource: 'leases', verb: 'create', namespace: releaseNamespace },
        { group: 'secrets-store.csi.x-k8s.io', resource: 'secretproviderclasses', verb: 'list' },
      ];
      assert.deepEqual(await wrongGrants(allowed, denied, csiKubeConfig), []);
    });

    it("runs the real provider with the chart's flags as its ServiceAccount: it lists and watches KeyPolicies, reviews a pod's token, and KeyPolicy decides", async () => {
      const container = only<V1DaemonSet>(csi, 'DaemonSet').spec?.template.spec?.containers[0] as V1Container;
      const kubeconfig = await serviceAccountKubeconfig(csiProviderName, 'csi-provider-run.kubeconfig');
      const socketDir = join(dir, 'secrets-store-csi-providers');
      mkdirSync(socketDir, { mode: 0o700 });
      const pinFile = join(dir, 'csi-provider.pin');
      writeFileSync(pinFile, hsm.pin, { mode: 0o600 });
      const metricsUrl = `http://127.0.0.1:${await freePort()}`;
      // The pod's paths, module and address mapped to this machine's; every other flag as the chart wrote it.
      const local: Record<string, string> = {
        '--socket-dir': socketDir,
        '--pkcs11-module': hsm.modulePath,
        '--token-label': hsm.label,
        '--pin-file': pinFile,
        '--metrics-address': metricsUrl.slice('http://'.length),
      };
      const args = localInvocation(container, {}).map((a) => {
        const flag = a.split('=', 1)[0] ?? '';
        return flag in local ? `${flag}=${local[flag]}` : a;
      });
      const env = Object.fromEntries((container.env ?? []).filter((e) => e.name === 'KEYWARD_LOG_LEVEL').map((e) => [e.name, e.value ?? '']));
      csiProvider = new ComponentProcess('keyward csi-provider', process.execPath, args, join(dir, 'csi-provider.log'), {
        PATH: process.env.PATH,
        HOME: dir,
        KUBECONFIG: kubeconfig,
        ...hsm.env,
        ...env,
      });
      // Healthy only once the first list of KeyPolicies came back: list and watch suffice.
      await csiProvider.waitReady(async () => (await fetch(`${metricsUrl}/healthz`)).ok, 60_000, 'healthy (/healthz)');
      const socketPath = join(socketDir, 'keyward.sock');
      assert.equal(statSync(socketPath).mode & 0o777, 0o600, 'the socket is 0600');
      const health = grpcClient(Health, `unix:${socketPath}`);
      const provider = grpcClient(CSIDriverProvider, `unix:${socketPath}`);
      try {
        assert.equal((await health.check({ service: '' })).status, HealthCheckResponse_ServingStatus.SERVING);
        const core = cp.kubeConfig.makeApiClient(CoreV1Api);
        const pod = await createPod(core, keyRingNamespace, 'shop', 'shop');
        const tokens = { keyward: await podToken(core, pod, 'keyward') };
        const request = driverMountRequest(pod, { objects: '- {type: dataKey, name: db-volume, keyRing: invoices, path: db.key}\n', tokens });
        const response = await provider.mount(request);
        // The token was reviewed and bound to the pod (no identity refusal); no KeyPolicy grants
        // the pod's ServiceAccount anything, so the provider refuses before any HSM lookup.
        assert.ok(!(identityRefusalCodes as readonly string[]).includes(response.error?.code ?? ''), `identity verified (${response.error?.code})`);
        assert.equal(response.error?.code, 'NotAuthorized');
        assert.deepEqual(response.files, []);
        const metrics = await (await fetch(`${metricsUrl}/metrics`)).text();
        assert.match(metrics, /^keyward_csi_token_reviews_total\{outcome="authenticated"\} 1$/m, 'one TokenReview, authenticated');
      } finally {
        health.close();
        provider.close();
      }
      assert.doesNotMatch(readFileSync(csiProvider.logFile, 'utf8'), /forbidden|\b403\b/i, 'no request of the provider was refused');
      await csiProvider.stop();
      assert.equal(csiProvider.exitStatus?.code, 0, 'SIGTERM drains and exits 0');
      assert.ok(!existsSync(socketPath), 'the socket is removed on the way out');
    });
  });
});
