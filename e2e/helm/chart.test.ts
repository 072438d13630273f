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
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:tls';
import {
  AdmissionregistrationV1Api,
  ApiextensionsV1Api,
  ApiException,
  AppsV1Api,
  AuthorizationV1Api,
  BatchV1Api,
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  DiscoveryV1Api,
  KubeConfig,
  loadYaml,
  PatchStrategy,
  PolicyV1Api,
  RbacAuthorizationV1Api,
  setHeaderOptions,
  type KubernetesObject,
  type V1Container,
  type V1DaemonSet,
  type V1Deployment,
  type V1Job,
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
import { keyPolicyResource, type KeyPolicy } from '../../core/api/keyPolicy.js';
import { keyRingResource, type KeyRing } from '../../core/api/keyRing.js';
import { keyPolicyWebhookPath, keyRingWebhookPath } from '../../operator/admission/admissionServer.js';
import { keyRingFinalizer } from '../../operator/keyRing/keyRingClient.js';
import { identityRefusalCodes } from '../../provider/csi/podIdentity.js';
import { grpcClient } from '../../testbed/grpcClient.js';
import { CSIDriverProvider } from '../../proto/gen/csi/v1alpha1/service_pb.js';
import { Health, HealthCheckResponse_ServingStatus } from '../../proto/gen/grpc/health/v1/health_pb.js';
import { eventually } from '../../testbed/eventually.js';
import { logTail } from '../../testbed/control-plane/componentProcess.js';
import { ComponentProcess } from '../../testbed/control-plane/componentProcess.js';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { csiProviderNodeFlags } from '../csi/csiProviderProcess.js';
import { createPod, driverMountRequest, podToken } from '../csi/driverRequest.js';
import { freePort } from '../../testbed/control-plane/network.js';
import { keywardCli, kmsPluginNodeFlags } from '../kms/kmsPluginProcess.js';
import { userKubeConfig } from '../operator/admissionWebhooks.js';
import { operatorNodeFlags, startOperatorProcess, type OperatorProcess } from '../operator/operatorProcess.js';
import { chartDir, helmIn, parseManifests, renderChart, repoRoot, type Helm } from './helm.js';
import { withHooksRun, type HookRun } from './hookRunner.js';

const releaseNamespace = 'keyward-system';
const softhsmHostPath = '/var/lib/keyward/softhsm';
const withPlugin = ['--set', 'kmsPlugin.enabled=true', '--set', `hsm.softhsm.hostPath=${softhsmHostPath}`];
const withCsiProvider = ['--set', 'csiProvider.enabled=true', '--set', `hsm.softhsm.hostPath=${softhsmHostPath}`];
const csiProviderName = 'keyward-csi-provider';
/** The driver's --provider-volume, where it looks for <provider>.sock. */
const providerDir = '/var/run/secrets-store-csi-providers';
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
const baseClusterRules: V1PolicyRule[] = [
  { apiGroups: ['keyward.dev'], resources: ['keyrings'], verbs: ['list', 'watch', 'patch'] },
  { apiGroups: ['keyward.dev'], resources: ['keyrings/status'], verbs: ['patch'] },
  { apiGroups: ['keyward.dev'], resources: ['keypolicies'], verbs: ['list', 'watch'] },
  { apiGroups: ['keyward.dev'], resources: ['keypolicies/status'], verbs: ['patch'] },
  { apiGroups: [''], resources: ['events'], verbs: ['create'] },
];
/**
 * Re-encryption after a rotation (operator.reEncryption, on by default): objectRewriter.ts lists and
 * PUTs back each encrypted resource; storageVersionMigration.ts creates, reads and deletes migrations.
 */
const reEncryptionRules = (resources: Array<[group: string, resource: string]> = [['', 'secrets']]): V1PolicyRule[] => [
  ...resources.map(([group, resource]) => ({ apiGroups: [group], resources: [resource], verbs: ['list', 'update'] })),
  { apiGroups: ['storagemigration.k8s.io'], resources: ['storageversionmigrations'], verbs: ['create', 'get', 'delete'] },
];
const expectedClusterRules: V1PolicyRule[] = [...baseClusterRules, ...reEncryptionRules()];
/** What the CSI provider's code calls (see charts/keyward/templates/csi-provider-rbac.yaml). */
const expectedCsiProviderRules: V1PolicyRule[] = [
  { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
  { apiGroups: ['keyward.dev'], resources: ['keypolicies'], verbs: ['list', 'watch'] },
  { apiGroups: [''], resources: ['pods'], verbs: ['list', 'watch'] },
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

/** Every pod spec in the manifests: Deployments, DaemonSets, Jobs (the HSM check) and bare Pods (the static pod, the test). */
function podSpecs(objects: KubernetesObject[]): { owner: string; spec: V1PodSpec }[] {
  return objects.flatMap((o) => {
    const owner = `${o.kind}/${o.metadata?.name}`;
    if (o.kind === 'Deployment' || o.kind === 'DaemonSet' || o.kind === 'Job') {
      const spec = (o as V1Deployment | V1DaemonSet | V1Job).spec?.template.spec;
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
const testPodName = 'keyward-test';
const metricsDnsName = `keyward-operator-metrics.${releaseNamespace}.svc`;

/** The parts of a JSON Schema the values check walks. */
interface JsonSchema {
  type?: string | string[];
  oneOf?: JsonSchema[];
  properties?: Record<string, JsonSchema>;
  additionalProperties?: boolean | JsonSchema;
}

/** Where the test Pod's two Services lead on this machine. */
interface TestTargets {
  webhook: { host: string; port: number };
  metrics: { host: string; port: number };
}

/** A webhook (HTTPS, the given certificate) and a metrics listener (HTTP), each answering /healthz 200 as the operator does. */
async function serveLikeOperator(crt: string, key: string): Promise<TestTargets & { webhookPort: number; metricsPort: number; close: () => void }> {
  const healthz = (req: IncomingMessage, res: ServerResponse): void => {
    res.writeHead(req.url === '/healthz' ? 200 : 404).end();
  };
  const webhook = createHttpsServer({ cert: crt, key }, healthz);
  const metrics = createHttpServer(healthz);
  const listen = (server: HttpServer): Promise<number> =>
    new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
  const [webhookPort, metricsPort] = [await listen(webhook), await listen(metrics)];
  return {
    webhook: { host: '127.0.0.1', port: webhookPort },
    metrics: { host: '127.0.0.1', port: metricsPort },
    webhookPort,
    metricsPort,
    close: () => {
      webhook.close();
      metrics.close();
    },
  };
}

/**
 * The test Pod's own command, run here: the Services' DNS names resolve to `targets` (a preload
 * stands in for cluster DNS, so TLS still checks the certificate for the Service's name) and
 * their ports are the local ones; the CA file is `caPath`.
 */
function runTestPod(container: V1Container, caPath: string, targets: TestTargets, dir: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const preload = join(dir, 'cluster-dns.cjs');
  writeFileSync(
    preload,
    `const dns = require('node:dns');
const hosts = ${JSON.stringify({ [webhookDnsName]: targets.webhook.host, [metricsDnsName]: targets.metrics.host })};
const lookup = dns.lookup;
dns.lookup = function (host, options, callback) {
  if (!(host in hosts)) return lookup.apply(this, arguments);
  const cb = typeof options === 'function' ? options : callback;
  const all = typeof options === 'object' && options !== null && options.all;
  process.nextTick(() => (all ? cb(null, [{ address: hosts[host], family: 4 }]) : cb(null, hosts[host], 4)));
};
`,
  );
  const command = container.command ?? [];
  assert.deepEqual(command.slice(0, 2), ['node', '-e']);
  const args = command.slice(3).map((a) =>
    a === '/etc/keyward/webhook-ca/ca.crt'
      ? caPath
      : a.replace(`//${webhookDnsName}:443/`, `//${webhookDnsName}:${targets.webhook.port}/`).replace(`//${metricsDnsName}:9465/`, `//${metricsDnsName}:${targets.metrics.port}/`),
  );
  return new Promise((resolve) => {
    execFile(process.execPath, ['--require', preload, '-e', command[2] ?? '', ...args], { env: { PATH: process.env.PATH }, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stdout, stderr });
    });
  });
}

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
      assert.equal(only<V1Deployment>(defaults, 'Deployment').spec?.replicas, 1, 'one replica: a SoftHSM2 token is on one node');
      assert.equal(only<V1DaemonSet>(plugin, 'DaemonSet').metadata?.name, 'keyward-kms-plugin');
      assert.equal(only<V1DaemonSet>(csi, 'DaemonSet').metadata?.name, csiProviderName);
      for (const objects of [defaults, plugin]) {
        const csiObjects = objects.filter((o) => o.metadata?.name === csiProviderName || o.metadata?.labels?.['app.kubernetes.io/component'] === 'csi-provider');
        assert.deepEqual(csiObjects, [], 'no CSI provider object unless csiProvider.enabled');
      }
    });

    it('grants exactly the RBAC the operator uses: no wildcard, nothing cluster-wide but KeyRings, KeyPolicies, Events and, for re-encryption, Secrets and StorageVersionMigrations [practice:least-privilege]', () => {
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

    it('grants re-encryption its verbs on exactly the resources operator.reEncryption names, and none of it when off [practice:least-privilege]', async () => {
      const rendered = (...values: string[]): Promise<KubernetesObject[]> => renderChart(helm, releaseNamespace, values.flatMap((v) => ['--set', v]));
      const rulesOf = (objects: KubernetesObject[]): V1PolicyRule[] => only<KubernetesObject & { rules: V1PolicyRule[] }>(objects, 'ClusterRole').rules;
      const [off, several] = await Promise.all([rendered('operator.reEncryption.enabled=false'), rendered('operator.reEncryption.resources={secrets,configmaps,widgets.example.com}').then(rulesOf)]);
      assert.deepEqual(rulesOf(off), baseClusterRules, 'off: the operator can neither read a Secret nor make a StorageVersionMigration');
      // And it is told so, rather than trying and being refused.
      assert.ok(only<V1Deployment>(off, 'Deployment').spec?.template.spec?.containers[0]?.args?.includes('--re-encryption=false'));
      assert.deepEqual(several, [...baseClusterRules, ...reEncryptionRules([['', 'secrets'], ['', 'configmaps'], ['example.com', 'widgets']])]);
      // A wildcard, as an EncryptionConfiguration may name resources, is no RBAC rule this chart writes.
      await assert.rejects(renderChart(helm, releaseNamespace, ['--set', 'operator.reEncryption.resources={*.*}']), /operator\/reEncryption\/resources\/0/);
    });

    it('runs every container non-root, read-only, without privilege escalation or capabilities, with resources; but one, root with CAP_CHOWN alone', () => {
      const staticPod = parseManifests(readFileSync(join(chartDir, 'files', 'kms-plugin-static-pod.yaml'), 'utf8'));
      const rendered = { defaults, plugin, csi, csiManual, staticPod };
      const specs = Object.entries(rendered).flatMap(([render, objects]) => podSpecs(objects).map((s) => ({ ...s, render })));
      assert.equal(specs.length, 16, 'operator, HSM check Job and test Pod (four times each), KMS plugin DaemonSet, CSI provider DaemonSet (twice), static pod');
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
      const all = [...podSpecs(defaults), ...podSpecs(plugin), ...podSpecs(csi)];
      for (const { owner, spec } of all) for (const container of allContainers(spec)) assertNoPinInEnvOrArgs(owner, container);
      // The test Pod needs no PIN; nor does the HSM check while the token's claim does not exist yet.
      const withoutPin = all.filter(({ spec }) => !spec.containers[0]?.args?.some((a) => a.startsWith('--pin-file=')));
      assert.deepEqual(withoutPin.map((s) => s.owner).sort(), ['Job/keyward-hsm-check', 'Pod/keyward-test', 'Pod/keyward-test', 'Pod/keyward-test']);
      for (const { owner, spec } of all.filter((s) => !withoutPin.includes(s))) {
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
        '--re-encryption=true',
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

    it("registers both webhooks through the webhook Service, failing closed, with a caBundle that verifies the Secret's certificate for the Service's name [practice:secure-transport]", () => {
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
        // Its key-use record names the node (the kubelet fills a static pod's spec.nodeName too).
        assert.deepEqual(container?.env?.find((e) => e.name === 'NODE_NAME'), { name: 'NODE_NAME', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } }, `${owner}: NODE_NAME`);
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
        '--node-name=$(NODE_NAME)',
        '--pkcs11-module=/usr/lib/softhsm/libsofthsm2.so',
        '--token-label=keyward',
        '--pin-file=/run/keyward/pin/pin',
        // The kubelet probes the pod's address, so not the CLI's loopback default.
        '--metrics-address=0.0.0.0:9466',
        '--token-review-ttl=300',
        '--material-ttl=300',
        '--ring-refresh=2',
        '--max-in-flight-mib=2',
      ];
      assert.deepEqual(container?.args, flags);
      // The driver dials <provider-volume>/keyward.sock on the node: the same path in the pod.
      assert.deepEqual(spec?.volumes?.find((v) => v.name === 'provider-dir')?.hostPath, { path: providerDir, type: 'DirectoryOrCreate' });
      assert.deepEqual(container?.volumeMounts?.find((m) => m.name === 'provider-dir'), { name: 'provider-dir', mountPath: providerDir });
      // The same SoftHSM2 token as the operator and the KMS plugin: a directory on the node.
      assert.deepEqual(spec?.volumes?.find((v) => v.name === 'softhsm-tokens')?.hostPath, { path: softhsmHostPath, type: 'Directory' });
      assert.deepEqual(container?.env, [
        { name: 'NODE_NAME', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } },
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

    it('grants the CSI provider exactly tokenreviews create, keypolicies list, watch and pods list, watch, bound to its own ServiceAccount [practice:least-privilege]', () => {
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
      assert.deepEqual(container?.env?.find((e) => e.name === 'KEYWARD_LOG_LEVEL'), { name: 'KEYWARD_LOG_LEVEL', value: 'debug' });
    });

    it('refuses wrong values in helm template, naming the field: values.schema.json', async () => {
      const refused: [string[], RegExp][] = [
        [['--set', 'operator.replicaCount=-1'], /operator\/replicaCount/],
        [['--set', 'csiProvider.audience='], /csiProvider\/audience/],
        [['--set', 'operater.x=1'], /operater/],
        [['--set', 'image.pullPolicy=Sometimes'], /image\/pullPolicy/],
        [['--set', 'operator.logLevel=verbose'], /operator\/logLevel/],
        [['--set', 'operator.approvalWindowMinutes=10081'], /operator\/approvalWindowMinutes/],
        [['--set', 'operator.webhook.timeoutSeconds=31'], /operator\/webhook\/timeoutSeconds/],
        [['--set', 'csiProvider.tokenReviewTtlSeconds=0'], /csiProvider\/tokenReviewTtlSeconds/],
        [['--set', 'csiProvider.materialTtlSeconds=3601'], /csiProvider\/materialTtlSeconds/],
        [['--set', 'csiProvider.ringRefreshSeconds=61'], /csiProvider\/ringRefreshSeconds/],
        [['--set', 'operator.metricsPort=65536'], /operator\/metricsPort/],
        [['--set', 'securityContext.runAsUser=0'], /securityContext\/runAsUser/],
        [['--set', 'kmsPlugin.securityContext.runAsGroup=0'], /kmsPlugin\/securityContext\/runAsGroup/],
        [['--set', 'operator.podDisruptionBudget.maxUnavailable=0'], /operator\/podDisruptionBudget\/maxUnavailable/],
        [['--set', 'hsm.modulePath=libsofthsm2.so'], /hsm\/modulePath/],
        [['--set', 'hsm.softhsm.persistence.accessModes[0]=ReadWriteSometimes'], /hsm\/softhsm\/persistence\/accessModes/],
      ];
      const outcomes = await Promise.all(refused.map(([args]) => renderChart(helm, releaseNamespace, args).then(() => 'rendered', (err: Error) => err.message)));
      refused.forEach(([args, field], i) => {
        assert.match(outcomes[i] ?? '', /values don't meet the specifications of the schema/, `${args.join(' ')} refused by the schema`);
        assert.match(outcomes[i] ?? '', field, `${args.join(' ')}: the message names the field`);
      });
      // --set passes decimals as strings: the chart checks their range itself.
      await assert.rejects(renderChart(helm, releaseNamespace, ['--set', 'csiProvider.ringRefreshSeconds=0.05']), /csiProvider\.ringRefreshSeconds must be from 0\.1 to 60, not 0\.05/);
      await assert.rejects(renderChart(helm, releaseNamespace, ['--set', 'kmsPlugin.refreshSeconds=10.5']), /kmsPlugin\.refreshSeconds must be from 0\.1 to 10, not 10\.5/);
      // In range is accepted, e.g. the bounds themselves and a percentage budget.
      await renderChart(helm, releaseNamespace, [
        ...['operator.approvalWindowMinutes=10080', 'operator.webhook.timeoutSeconds=30', 'csiProvider.ringRefreshSeconds=0.1', 'operator.podDisruptionBudget.maxUnavailable=50%'].flatMap((v) => ['--set', v]),
      ]);
    });

    it('types every value of values.yaml in the schema, and closes every object a typo could slip into', () => {
      const schema = JSON.parse(readFileSync(join(chartDir, 'values.schema.json'), 'utf8')) as JsonSchema;
      const values = loadYaml<Record<string, unknown>>(readFileSync(join(chartDir, 'values.yaml'), 'utf8'));
      const untyped: string[] = [];
      const open: string[] = [];
      const walk = (node: JsonSchema | undefined, value: unknown, path: string): void => {
        if (!node || !(node.type || node.oneOf)) return void untyped.push(path || '(root)');
        if (node.type !== 'object' || value === null || typeof value !== 'object' || Array.isArray(value)) return;
        // Free-form maps (labels, annotations, selectors, affinity, resources' quantities) stay open.
        if (node.properties && node.additionalProperties !== false) open.push(path || '(root)');
        for (const [key, child] of Object.entries(value)) walk(node.properties?.[key] ?? (typeof node.additionalProperties === 'object' ? node.additionalProperties : undefined), child, `${path}/${key}`);
      };
      walk(schema, values, '');
      assert.deepEqual(untyped, [], 'values without a type in values.schema.json');
      assert.deepEqual(open, [], 'objects with named fields that accept unknown ones');
    });

    it('runs one operator replica by default, with no PodDisruptionBudget; more only where every replica reaches the token, with a budget that lets drains proceed', async () => {
      assert.deepEqual(ofKind(defaults, 'PodDisruptionBudget'), [], 'one replica: a budget would block every drain');
      const two = ['--set', 'operator.replicaCount=2'];
      await assert.rejects(renderChart(helm, releaseNamespace, two), /operator\.replicaCount > 1 with SoftHSM2: the token is a directory on one node/);
      await assert.rejects(renderChart(helm, releaseNamespace, [...two, '--set', `hsm.softhsm.hostPath=${softhsmHostPath}`]), /operator\.replicaCount > 1 with SoftHSM2/, 'a node directory without pinning the replicas to its node');
      const pinned = await renderChart(helm, releaseNamespace, [...two, '--set', `hsm.softhsm.hostPath=${softhsmHostPath}`, '--set', 'operator.nodeSelector.kubernetes\\.io/hostname=node-1']);
      const shared = await renderChart(helm, releaseNamespace, [...two, '--set', 'hsm.softhsm.persistence.accessModes[0]=ReadWriteMany']);
      const vendor = await renderChart(helm, releaseNamespace, [...two, '--set', 'hsm.softhsm.enabled=false', '--set', 'hsm.modulePath=/opt/vendor/lib/libcryptoki.so']);
      for (const objects of [pinned, shared, vendor]) {
        const deployment = only<V1Deployment>(objects, 'Deployment');
        assert.equal(deployment.spec?.replicas, 2);
        const pdb = only<KubernetesObject & { spec: { maxUnavailable?: number | string; minAvailable?: unknown; selector: unknown; unhealthyPodEvictionPolicy?: string } }>(objects, 'PodDisruptionBudget');
        assert.equal(pdb.metadata?.namespace, releaseNamespace);
        assert.deepEqual(pdb.spec.selector, deployment.spec?.selector, 'the operator replicas');
        assert.equal(pdb.spec.maxUnavailable, 1, 'one replica at a time: a drain always proceeds');
        assert.equal(pdb.spec.minAvailable, undefined);
        assert.equal(pdb.spec.unhealthyPodEvictionPolicy, 'AlwaysAllow', 'an unready replica answers nothing: evicting it costs nothing');
      }
      const percent = await renderChart(helm, releaseNamespace, [...two, '--set', 'hsm.softhsm.enabled=false', '--set', 'operator.podDisruptionBudget.maxUnavailable=50%']);
      assert.equal(only<KubernetesObject & { spec: { maxUnavailable?: string } }>(percent, 'PodDisruptionBudget').spec.maxUnavailable, '50%');
      const without = await renderChart(helm, releaseNamespace, [...two, '--set', 'hsm.softhsm.enabled=false', '--set', 'operator.podDisruptionBudget.enabled=false']);
      assert.deepEqual(ofKind(without, 'PodDisruptionBudget'), []);
    });

    it('checks the HSM in a pre-install/pre-upgrade hook Job: its own command passes on a real token and names a wrong module, label or PIN', async () => {
      const job = only<V1Job>(plugin, 'Job');
      assert.equal(job.metadata?.name, 'keyward-hsm-check');
      assert.deepEqual(job.metadata?.annotations, {
        'helm.sh/hook': 'pre-install,pre-upgrade',
        'helm.sh/hook-weight': '-5',
        'helm.sh/hook-delete-policy': 'before-hook-creation,hook-succeeded',
        'helm.sh/hook-output-log-policy': 'hook-failed',
      });
      assert.deepEqual([job.spec?.backoffLimit, job.spec?.ttlSecondsAfterFinished], [0, 3600]);
      const spec = job.spec?.template.spec;
      assert.equal(spec?.restartPolicy, 'Never');
      assert.equal(spec?.automountServiceAccountToken, false, 'no API access');
      const check = spec?.containers[0] as V1Container;
      assert.deepEqual(check.command, ['node', '/app/dist/cli/keyward.js', 'hsm', 'check']);
      assert.deepEqual(check.args, ['--pkcs11-module=/usr/lib/softhsm/libsofthsm2.so', '--token-label=keyward', '--pin-file=/run/keyward/pin/pin']);
      assert.equal(check.terminationMessagePolicy, 'FallbackToLogsOnError');
      assert.deepEqual(spec?.volumes?.find((v) => v.name === 'softhsm-tokens')?.hostPath, { path: softhsmHostPath, type: 'Directory' }, "the operator's token");
      // A first install on the chart's claim, which does not exist yet: the module alone, on an empty directory.
      const firstInstall = only<V1Job>(defaults, 'Job').spec?.template.spec;
      assert.deepEqual(firstInstall?.containers[0]?.args, ['--pkcs11-module=/usr/lib/softhsm/libsofthsm2.so', '--token-label=keyward']);
      assert.ok(firstInstall?.volumes?.find((v) => v.name === 'softhsm-tokens')?.emptyDir);
      assert.deepEqual(firstInstall?.initContainers?.map((c) => c.name), ['softhsm-conf']);

      // The init container writes what the ConfigMap holds (the hook runs before the ConfigMap exists).
      const dir = mkdtempSync(join(home, 'hsm-check-'));
      const conf = join(dir, 'softhsm2.conf');
      const writeConf = spec?.initContainers?.find((c) => c.name === 'softhsm-conf')?.command ?? [];
      assert.deepEqual(writeConf.slice(-2, -1), ['/etc/keyward/softhsm/softhsm2.conf']);
      assert.equal((await runNode([...writeConf.slice(1, -2), conf, writeConf.at(-1) ?? ''], process.env)).code, 0);
      assert.equal(readFileSync(conf, 'utf8'), only<KubernetesObject & { data: Record<string, string> }>(plugin, 'ConfigMap').data['softhsm2.conf']);

      // The check's own command, on a real token: passes; then a wrong module, label and PIN, each named.
      const token = createSoftHsmToken({ parentDir: dir });
      const pinFile = join(dir, 'pin');
      writeFileSync(pinFile, token.pin, { mode: 0o600 });
      const run = (container: V1Container, local: Record<string, string>): Promise<{ code: number; stderr: string }> =>
        runNode(
          localInvocation(container, { NODE_NAME: 'node-1' }).map((a) => {
            const flag = a.split('=', 1)[0] ?? '';
            return flag in local ? `${flag}=${local[flag]}` : a;
          }),
          { PATH: process.env.PATH, ...token.env },
        );
      const mapped = { '--pin-file': pinFile, '--token-label': token.label };
      assert.deepEqual(await run(check, mapped), { code: 0, stderr: '' });
      const vendor = only<V1Job>(await renderChart(helm, releaseNamespace, [...withPlugin, '--set', 'hsm.modulePath=/opt/vendor/lib/libcryptoki.so']), 'Job').spec?.template.spec?.containers[0] as V1Container;
      assert.deepEqual(await run(vendor, mapped), { code: 1, stderr: 'keyward hsm: PKCS#11 module not found: /opt/vendor/lib/libcryptoki.so\n' });
      assert.deepEqual(await run(check, { '--pin-file': pinFile }), { code: 1, stderr: "keyward hsm: no HSM token labelled 'keyward' is present\n" });
      const wrongPin = join(dir, 'wrong-pin');
      writeFileSync(wrongPin, 'not-the-pin', { mode: 0o600 });
      assert.deepEqual(await run(check, { ...mapped, '--pin-file': wrongPin }), { code: 1, stderr: `keyward hsm: HSM login to token '${token.label}' failed: wrong PIN\n` });
      token.remove();
    });

    it("tests the release with a hook Pod: locked down, no API access, the CA alone; its own command passes against the chart's certificate and fails against another CA [practice:secure-transport]", async () => {
      const pod = only<V1Pod>(defaults, 'Pod');
      assert.equal(pod.metadata?.name, testPodName);
      assert.deepEqual(pod.metadata?.annotations, { 'helm.sh/hook': 'test', 'helm.sh/hook-delete-policy': 'before-hook-creation,hook-succeeded', 'helm.sh/hook-output-log-policy': 'hook-failed' });
      const spec = pod.spec as V1PodSpec;
      assert.equal(spec.automountServiceAccountToken, false);
      assert.equal(spec.serviceAccountName, undefined, 'no ServiceAccount of its own, no RBAC');
      assert.equal(spec.restartPolicy, 'Never');
      assert.deepEqual(spec.volumes, [{ name: 'webhook-ca', secret: { secretName: webhookSecret, defaultMode: 0o444, items: [{ key: 'ca.crt', path: 'ca.crt' }] } }], 'the CA, not the key');
      const container = spec.containers[0] as V1Container;
      assert.deepEqual(container.command?.slice(-3), ['/etc/keyward/webhook-ca/ca.crt', `https://${webhookDnsName}:443/healthz`, `http://keyward-operator-metrics.${releaseNamespace}.svc:9465/healthz`]);
      // With a caBundle instead of a generated Secret, the CA travels in the command (it is public).
      const caBundle = named<V1Secret>(defaults, 'Secret', webhookSecret).data?.['ca.crt'] ?? '';
      const given = only<V1Pod>(await renderChart(helm, releaseNamespace, ['--set', 'operator.webhook.tls.existingSecret=webhook-cert', '--set', `operator.webhook.tls.caBundle=${caBundle}`]), 'Pod');
      assert.equal(given.spec?.containers[0]?.command?.at(-3), fromBase64(caBundle));
      assert.equal(given.spec?.volumes, undefined);

      // Served as the operator serves them: the webhook with the Secret's certificate, metrics over HTTP.
      const secret = named<V1Secret>(defaults, 'Secret', webhookSecret);
      const servers = await serveLikeOperator(fromBase64(secret.data?.['tls.crt']), fromBase64(secret.data?.['tls.key']));
      try {
        const dir = mkdtempSync(join(home, 'helm-test-'));
        const ca = join(dir, 'ca.crt');
        writeFileSync(ca, fromBase64(secret.data?.['ca.crt']));
        assert.deepEqual(await runTestPod(container, ca, servers, dir), {
          code: 0,
          stdout: `ok https://${webhookDnsName}:${servers.webhookPort}/healthz\nok http://keyward-operator-metrics.${releaseNamespace}.svc:${servers.metricsPort}/healthz\n`,
          stderr: '',
        });
        // Another render's CA does not vouch for this certificate: the test fails, naming the URL.
        const otherCa = join(dir, 'other-ca.crt');
        writeFileSync(otherCa, fromBase64(named<V1Secret>(plugin, 'Secret', webhookSecret).data?.['ca.crt']));
        const failed = await runTestPod(container, otherCa, servers, dir);
        assert.equal(failed.code, 1);
        assert.match(failed.stderr, new RegExp(`^FAIL https://${webhookDnsName.replaceAll('.', '\\.')}:${servers.webhookPort}/healthz: UNABLE_TO_VERIFY_LEAF_SIGNATURE`));
      } finally {
        servers.close();
      }
    });

    it("passes flags the real CLI accepts: it gets as far as reading the PIN file", async () => {
      const env = { POD_NAMESPACE: releaseNamespace, POD_NAME: 'keyward-operator-7d9f-abcde', NODE_NAME: 'node-1' };
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
    let installHooks: HookRun[] = [];
    const refusals: Record<string, { message: string; left: string[]; runs?: HookRun[] }> = {};
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

    /** Everything labelled with the release, namespaced or not, as Kind/name. */
    const releaseObjects = async (): Promise<string[]> => {
      const labelSelector = 'app.kubernetes.io/instance=keyward';
      const namespace = releaseNamespace;
      const core = cp.kubeConfig.makeApiClient(CoreV1Api);
      const apps = cp.kubeConfig.makeApiClient(AppsV1Api);
      const rbac = cp.kubeConfig.makeApiClient(RbacAuthorizationV1Api);
      const registration = cp.kubeConfig.makeApiClient(AdmissionregistrationV1Api);
      const lists: [string, Promise<{ items: KubernetesObject[] }>][] = [
        ['Deployment', apps.listNamespacedDeployment({ namespace, labelSelector })],
        ['DaemonSet', apps.listNamespacedDaemonSet({ namespace, labelSelector })],
        ['Job', cp.kubeConfig.makeApiClient(BatchV1Api).listNamespacedJob({ namespace, labelSelector })],
        ['Pod', core.listNamespacedPod({ namespace, labelSelector })],
        ['Service', core.listNamespacedService({ namespace, labelSelector })],
        ['Secret', core.listNamespacedSecret({ namespace, labelSelector })],
        ['ConfigMap', core.listNamespacedConfigMap({ namespace, labelSelector })],
        ['ServiceAccount', core.listNamespacedServiceAccount({ namespace, labelSelector })],
        ['PersistentVolumeClaim', core.listNamespacedPersistentVolumeClaim({ namespace, labelSelector })],
        ['PodDisruptionBudget', cp.kubeConfig.makeApiClient(PolicyV1Api).listNamespacedPodDisruptionBudget({ namespace, labelSelector })],
        ['Role', rbac.listNamespacedRole({ namespace, labelSelector })],
        ['RoleBinding', rbac.listNamespacedRoleBinding({ namespace, labelSelector })],
        ['ClusterRole', rbac.listClusterRole({ labelSelector })],
        ['ClusterRoleBinding', rbac.listClusterRoleBinding({ labelSelector })],
        ['MutatingWebhookConfiguration', registration.listMutatingWebhookConfiguration({ labelSelector })],
        ['ValidatingWebhookConfiguration', registration.listValidatingWebhookConfiguration({ labelSelector })],
      ];
      const found: string[] = [];
      for (const [kind, list] of lists) for (const item of (await list).items) found.push(`${kind}/${item.metadata?.name}`);
      return found;
    };
    /** The HSM check hook Job's own command, run here against the test's token (the pod's PIN file and label mapped). */
    const runHookJob = async (job: V1Job): Promise<{ code: number; output: string }> => {
      const container = job.spec?.template.spec?.containers[0] as V1Container;
      const pinFile = join(dir, 'hsm-check.pin');
      writeFileSync(pinFile, hsm.pin, { mode: 0o600 });
      const local: Record<string, string> = { '--pin-file': pinFile, '--token-label': hsm.label };
      const args = localInvocation(container, { NODE_NAME: 'node-1' }).map((a) => {
        const flag = a.split('=', 1)[0] ?? '';
        return flag in local ? `${flag}=${local[flag]}` : a;
      });
      const { code, stderr } = await runNode(args, { PATH: process.env.PATH, ...hsm.env });
      return { code, output: stderr };
    };

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
      const core = cp.kubeConfig.makeApiClient(CoreV1Api);
      // What kube-controller-manager gives every namespace; the test Pod runs as it.
      await core.createNamespacedServiceAccount({ namespace: releaseNamespace, body: { metadata: { name: 'default' } } });
      hsm = createSoftHsmToken({ parentDir: dir });

      // Refused installs, each before the next: they must leave nothing behind.
      const install = (...args: string[]): Promise<{ stdout: string; stderr: string }> =>
        helm(['install', 'keyward', chartDir, '--namespace', releaseNamespace, '--kubeconfig', cp.kubeconfigPath, ...args]);
      const failure = (p: Promise<unknown>): Promise<string> => p.then(() => 'installed', (err: Error) => err.message);
      refusals.missingPin = { message: await failure(install()), left: await releaseObjects() };
      await core.createNamespacedSecret({ namespace: releaseNamespace, body: { metadata: { name: 'keyward-hsm-pin' }, stringData: { 'user.pin': hsm.pin } } });
      refusals.wrongPinKey = { message: await failure(install()), left: await releaseObjects() };
      await core.deleteNamespacedSecret({ name: 'keyward-hsm-pin', namespace: releaseNamespace });
      await core.createNamespacedSecret({ namespace: releaseNamespace, body: { metadata: { name: 'keyward-hsm-pin' }, stringData: { pin: hsm.pin } } });
      refusals.schema = { message: await failure(install('--set', 'operator.replicaCount=-1')), left: await releaseObjects() };
      const wrongModule = await withHooksRun(cp.kubeConfig, releaseNamespace, install('--set', 'hsm.modulePath=/opt/vendor/lib/libcryptoki.so'), { job: runHookJob });
      refusals.wrongModule = { message: wrongModule.result instanceof Error ? wrongModule.result.message : 'installed', left: await releaseObjects(), runs: wrongModule.runs };
      await helm(['uninstall', 'keyward', '--namespace', releaseNamespace, '--kubeconfig', cp.kubeconfigPath]);

      const installed = await withHooksRun(cp.kubeConfig, releaseNamespace, install(), { job: runHookJob });
      if (installed.result instanceof Error) throw installed.result;
      installOutput = installed.result.stdout + installed.result.stderr;
      installHooks = installed.runs;
      saName = only<V1Deployment>(defaults, 'Deployment').spec?.template.spec?.serviceAccountName ?? '';

      const saKubeconfigPath = await serviceAccountKubeconfig(saName, 'operator-sa.kubeconfig');
      saKubeConfig = new KubeConfig();
      saKubeConfig.loadFromFile(saKubeconfigPath);
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

    it('refuses to install, naming the field, the Secret or the module, and leaves nothing installed: no PIN Secret, a Secret without the key, a schema violation, a wrong module path', () => {
      const { missingPin, wrongPinKey, schema, wrongModule } = refusals;
      assert.match(missingPin?.message ?? '', /hsm\.pinSecret: the Secret keyward-system\/keyward-hsm-pin holding the HSM user PIN does not exist/);
      assert.match(missingPin?.message ?? '', /kubectl -n keyward-system create secret generic keyward-hsm-pin --from-file=pin=\.\/user\.pin/, 'says how to create it');
      assert.deepEqual(missingPin?.left, []);
      assert.match(wrongPinKey?.message ?? '', /the Secret keyward-system\/keyward-hsm-pin has no key "pin" \(it has: user\.pin\)/);
      assert.deepEqual(wrongPinKey?.left, []);
      assert.match(schema?.message ?? '', /values don't meet the specifications of the schema[\s\S]*operator\/replicaCount/);
      assert.deepEqual(schema?.left, []);
      // The pre-install hook ran `keyward hsm check` and failed naming the module; helm stopped there.
      assert.deepEqual(
        wrongModule?.runs?.map((r) => [r.kind, r.name, r.code, r.output]),
        [['Job', 'keyward-hsm-check', 1, 'keyward hsm: PKCS#11 module not found: /opt/vendor/lib/libcryptoki.so\n']],
      );
      assert.match(wrongModule?.message ?? '', /pre-install[\s\S]*keyward-hsm-check/, 'helm names the failed check');
      // Only the failed check Job, kept so that `kubectl logs job/keyward-hsm-check` says why.
      assert.deepEqual(wrongModule?.left, ['Job/keyward-hsm-check']);
    });

    it('installs the CRD and every object, with no Pod Security warning under "restricted"', async () => {
      assert.doesNotMatch(installOutput, /PodSecurity|would violate/i, installOutput);
      // The HSM check ran first (the module alone: the token's claim is created by this install), passed and was removed.
      assert.deepEqual(installHooks.map((r) => [r.kind, r.name, r.code]), [['Job', 'keyward-hsm-check', 0]]);
      assert.ok(!(await releaseObjects()).includes('Job/keyward-hsm-check'), 'a passed check is deleted (hook-succeeded), replacing the failed one');
      assert.match(installOutput, /helm test keyward -n keyward-system /, 'NOTES print the next steps');
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

    it("passes helm test: the test Pod reaches the webhook Service over TLS with the chart's CA, and the metrics Service; then it is removed [practice:secure-transport]", async () => {
      const webhooks = await installedWebhooks();
      const caFile = join(dir, 'helm-test-ca.crt');
      writeFileSync(caFile, webhooks.ca);
      const [host = '', port = ''] = (operator?.webhookAddress ?? '').split(':');
      const metrics = new URL(operator?.metricsUrl ?? '');
      const targets: TestTargets = { webhook: { host, port: Number(port) }, metrics: { host: metrics.hostname, port: Number(metrics.port) } };
      const tested = await withHooksRun(cp.kubeConfig, releaseNamespace, helm(['test', 'keyward', '--namespace', releaseNamespace, '--kubeconfig', cp.kubeconfigPath]), {
        pod: async (pod) => {
          assert.equal(pod.spec?.automountServiceAccountToken, false, 'as the apiserver admitted it (Pod Security "restricted" enforced)');
          const { code, stdout, stderr } = await runTestPod(pod.spec?.containers[0] as V1Container, caFile, targets, dir);
          return { code, output: stdout + stderr };
        },
      });
      if (tested.result instanceof Error) throw tested.result;
      assert.deepEqual(tested.runs.map((r) => [r.kind, r.name, r.code]), [['Pod', testPodName, 0]], tested.runs[0]?.output);
      assert.match(tested.runs[0]?.output ?? '', new RegExp(`^ok https://${webhookDnsName.replaceAll('.', '\\.')}:\\d+/healthz\nok http://${metricsDnsName.replaceAll('.', '\\.')}:\\d+/healthz\n$`));
      assert.match(tested.result.stdout, new RegExp(`TEST SUITE:\\s+${testPodName}[\\s\\S]*Phase:\\s+Succeeded`));
      assert.ok(!(await releaseObjects()).includes(`Pod/${testPodName}`), 'a passed test Pod is deleted');
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

    it('lets the ServiceAccount do what the operator does, and nothing else [practice:least-privilege]', async () => {
      const keyrings = { group: 'keyward.dev', resource: 'keyrings' };
      const keypolicies = { group: 'keyward.dev', resource: 'keypolicies' };
      const leases = { group: 'coordination.k8s.io', resource: 'leases' };
      const registration = { group: 'admissionregistration.k8s.io' };
      const migrations = { group: 'storagemigration.k8s.io', resource: 'storageversionmigrations' };
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
        // Re-encryption after a rotation (operator.reEncryption.enabled, the default): list every
        // Secret and write each back; a StorageVersionMigration where the cluster runs them.
        { group: '', resource: 'secrets', verb: 'list' },
        { group: '', resource: 'secrets', verb: 'update', namespace: keyRingNamespace, name: 'any' },
        { ...migrations, verb: 'create' },
        { ...migrations, verb: 'get', name: 'keyward-0123abcd-v2-secrets' },
        { ...migrations, verb: 'delete', name: 'keyward-0123abcd-v2-secrets' },
      ];
      const denied: V1ResourceAttributes[] = [
        { group: '', resource: 'secrets', verb: 'get', namespace: releaseNamespace, name: 'keyward-hsm-pin' },
        { group: '', resource: 'secrets', verb: 'watch' },
        { group: '', resource: 'secrets', verb: 'patch', namespace: keyRingNamespace, name: 'any' },
        { group: '', resource: 'secrets', verb: 'create', namespace: keyRingNamespace },
        { group: '', resource: 'secrets', verb: 'delete', namespace: keyRingNamespace, name: 'any' },
        { group: '', resource: 'configmaps', verb: 'list' },
        { ...migrations, verb: 'list' },
        { ...migrations, verb: 'update', name: 'keyward-0123abcd-v2-secrets' },
        { ...migrations, verb: 'patch', name: 'keyward-0123abcd-v2-secrets' },
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
      // And for real: the operator's token cannot get the PIN Secret by name. (It can list Secrets,
      // for re-encryption; operator.reEncryption.enabled=false takes that away: see the template test.)
      await assert.rejects(
        saKubeConfig.makeApiClient(CoreV1Api).readNamespacedSecret({ namespace: releaseNamespace, name: 'keyward-hsm-pin' }),
        (err: unknown) => err instanceof ApiException && err.code === 403,
      );
    });

    /** helm upgrade, its pre-upgrade HSM check run here against the test's token: it must pass. */
    const upgrade = async (...args: string[]): Promise<{ stdout: string; stderr: string }> => {
      const { result, runs } = await withHooksRun(cp.kubeConfig, releaseNamespace, helm(['upgrade', 'keyward', chartDir, '--namespace', releaseNamespace, '--kubeconfig', cp.kubeconfigPath, ...withPlugin, ...args]), {
        job: runHookJob,
      });
      if (result instanceof Error) throw result;
      assert.deepEqual(runs.map((r) => [r.kind, r.name, r.code]), [['Job', 'keyward-hsm-check', 0]], runs[0]?.output);
      return result;
    };

    it('upgrades to the KMS plugin DaemonSet: accepted by the apiserver, only hostPath falls short of "restricted"; the webhook certificate and the KeyRings are kept', async () => {
      const before = await installedWebhooks();
      const kept = (await objects().createNamespacedCustomObject({
        ...keyRingResource,
        namespace: keyRingNamespace,
        body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name: 'kept' }, spec: { purpose: 'encryption' } },
      })) as KeyRing;
      const { stdout, stderr } = await upgrade();
      assert.deepEqual(await installedWebhooks(), before, 'the same certificate, key and caBundle (read back with lookup)');
      assert.equal((await getKeyRing('kept')).metadata.uid, kept.metadata.uid, 'the KeyRing survives the upgrade');
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
        // Its own node's pods (the provider narrows by field selector), to forget a deleted pod.
        { group: '', resource: 'pods', verb: 'list' },
        { group: '', resource: 'pods', verb: 'watch' },
      ];
      const denied: V1ResourceAttributes[] = [
        // The pod's identity comes from its reviewed token, never from reading a pod.
        { group: '', resource: 'pods', verb: 'get', namespace: keyRingNamespace, name: 'shop' },
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
      const args = localInvocation(container, { NODE_NAME: 'node-1' }).map((a) => {
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

    it('uninstalls everything the chart made but the token claim: no fail-closed webhook left behind; CRDs, KeyRings and KeyPolicies stay', async () => {
      // The claim left the release at the upgrade to hostPath, and was kept then (resource policy).
      await helm(['uninstall', 'keyward', '--namespace', releaseNamespace, '--kubeconfig', cp.kubeconfigPath]);
      assert.deepEqual(await releaseObjects(), ['PersistentVolumeClaim/keyward-softhsm-tokens'], 'only the token claim is left');
      const pvc = await cp.kubeConfig.makeApiClient(CoreV1Api).readNamespacedPersistentVolumeClaim({ name: 'keyward-softhsm-tokens', namespace: releaseNamespace });
      assert.equal(pvc.metadata?.annotations?.['helm.sh/resource-policy'], 'keep');
      // The keys' resources stay, and changing them is not blocked by a webhook pointing at nothing.
      const kept = await getKeyRing('kept');
      assert.ok(kept.metadata.finalizers?.includes(keyRingFinalizer), 'its finalizer waits for an operator');
      await objects().patchNamespacedCustomObject(
        { ...keyRingResource, namespace: keyRingNamespace, name: 'kept', body: { metadata: { annotations: { 'example.com/owner': 'payments' } } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
      await objects().getNamespacedCustomObject({ ...keyPolicyResource, namespace: keyRingNamespace, name: 'invoice-admins' });
      const crds = await cp.kubeConfig.makeApiClient(ApiextensionsV1Api).listCustomResourceDefinition();
      assert.deepEqual(crds.items.map((c) => c.metadata?.name).filter((n) => n?.endsWith('.keyward.dev')).sort(), ['keypolicies.keyward.dev', 'keyrings.keyward.dev']);
      const { stdout: list } = await helm(['list', '--all', '--namespace', releaseNamespace, '--kubeconfig', cp.kubeconfigPath, '--short']);
      assert.equal(list.trim(), '', 'no release left');
    });
  });
});
