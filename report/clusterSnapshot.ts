// What the compliance report reads from a live cluster, in one pass: Keyward's own resources,
// the admission webhooks, the workloads that run Keyward, its RBAC, the Prometheus Operator's
// rules, and kube-apiserver's readiness checks. Only the fields the verdicts use are typed here.
// Secrets are never read: not the PIN, not the webhook's key, not anything stored in etcd.
import type { KeyPolicy } from '../core/api/keyPolicy.js';
import type { KeyRing } from '../core/api/keyRing.js';
import type { ClusterReader, Readout } from './clusterReader.js';

export interface ObjectMeta {
  name?: string;
  namespace?: string;
  uid?: string;
  generation?: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

export interface Container {
  name: string;
  command?: string[];
  args?: string[];
}

export interface Webhook {
  name: string;
  failurePolicy?: string;
  clientConfig?: { url?: string; service?: { namespace: string; name: string }; caBundle?: string };
  rules?: { apiGroups?: string[]; resources?: string[]; operations?: string[] }[];
}

export interface WebhookConfiguration {
  kind: 'MutatingWebhookConfiguration' | 'ValidatingWebhookConfiguration';
  metadata: ObjectMeta;
  webhooks?: Webhook[];
}

export interface Workload {
  kind: 'Deployment' | 'DaemonSet' | 'Pod';
  metadata: ObjectMeta;
  containers: Container[];
  /** Deployment: available replicas of the desired; DaemonSet: ready of desired; Pod: Ready condition. */
  ready: number;
  desired: number;
  /** A static pod's mirror: the kubelet runs it from a file, without the apiserver. */
  staticPod: boolean;
}

export interface RbacRole {
  kind: 'ClusterRole' | 'Role';
  metadata: ObjectMeta;
  rules?: { apiGroups?: string[]; resources?: string[]; verbs?: string[]; nonResourceURLs?: string[] }[];
}

export interface PrometheusRule {
  metadata: ObjectMeta;
  spec?: { groups?: { name: string; rules?: { alert?: string; record?: string; expr?: string }[] }[] };
}

export interface ClusterSnapshot {
  server: string;
  context?: string;
  keyRings: Readout<KeyRing[]>;
  keyPolicies: Readout<KeyPolicy[]>;
  /** Every webhook configuration with a webhook for Keyward's resources. */
  webhooks: Readout<WebhookConfiguration[]>;
  /** Deployments, DaemonSets and pods (the KMS plugin's static pods) that run a keyward command. */
  workloads: Readout<Workload[]>;
  /** ClusterRoles and Roles labelled app.kubernetes.io/name=keyward (the chart's). */
  rbac: Readout<RbacRole[]>;
  /** PrometheusRules of the Prometheus Operator; absent when its CRD is not installed. */
  prometheusRules: Readout<PrometheusRule[]>;
  /** kube-apiserver's /readyz?verbose, one check per line. */
  apiserverReadyz: Readout<string>;
}

interface List<T> {
  items: T[];
}

const keywardGroup = 'keyward.dev';

export async function readSnapshot(reader: ClusterReader): Promise<ClusterSnapshot> {
  const list = async <T>(path: string): Promise<Readout<T[]>> => mapRead(await reader.json<List<T>>(path), (l) => l.items ?? []);
  const [keyRings, keyPolicies, mutating, validating, deployments, daemonSets, pods, clusterRoles, roles, prometheusRules, apiserverReadyz] = await Promise.all([
    list<KeyRing>(`/apis/${keywardGroup}/v1alpha1/keyrings`),
    list<KeyPolicy>(`/apis/${keywardGroup}/v1alpha1/keypolicies`),
    list<Omit<WebhookConfiguration, 'kind'>>('/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations'),
    list<Omit<WebhookConfiguration, 'kind'>>('/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations'),
    list<RawWorkload>('/apis/apps/v1/deployments'),
    list<RawWorkload>('/apis/apps/v1/daemonsets'),
    list<RawWorkload>(`/api/v1/pods?labelSelector=${encodeURIComponent('app.kubernetes.io/component=kms-plugin')}`),
    list<Omit<RbacRole, 'kind'>>(`/apis/rbac.authorization.k8s.io/v1/clusterroles?labelSelector=${encodeURIComponent('app.kubernetes.io/name=keyward')}`),
    list<Omit<RbacRole, 'kind'>>(`/apis/rbac.authorization.k8s.io/v1/roles?labelSelector=${encodeURIComponent('app.kubernetes.io/name=keyward')}`),
    list<PrometheusRule>('/apis/monitoring.coreos.com/v1/prometheusrules'),
    reader.text('/readyz?verbose'),
  ]);
  return {
    server: reader.server,
    context: reader.context,
    keyRings,
    keyPolicies,
    webhooks: mapRead(
      combine<WebhookConfiguration>([
        mapRead(mutating, (items) => items.map((c) => ({ ...c, kind: 'MutatingWebhookConfiguration' as const }))),
        mapRead(validating, (items) => items.map((c) => ({ ...c, kind: 'ValidatingWebhookConfiguration' as const }))),
      ]),
      (configs) => configs.filter((c) => (c.webhooks ?? []).some(targetsKeyward)),
    ),
    workloads: mapRead(
      combine<Workload>([
        mapRead(deployments, (items) => items.map((w) => workload('Deployment', w))),
        mapRead(daemonSets, (items) => items.map((w) => workload('DaemonSet', w))),
        mapRead(pods, (items) => items.map((w) => workload('Pod', w))),
      ]),
      (items) => items.filter((w) => keywardCommand(w) !== undefined),
    ),
    rbac: combine<RbacRole>([
      mapRead(clusterRoles, (items) => items.map((r) => ({ ...r, kind: 'ClusterRole' as const }))),
      mapRead(roles, (items) => items.map((r) => ({ ...r, kind: 'Role' as const }))),
    ]),
    prometheusRules,
    apiserverReadyz,
  };
}

/** Whether a webhook intercepts KeyRings or KeyPolicies. */
export function targetsKeyward(webhook: Webhook): boolean {
  return (webhook.rules ?? []).some((rule) => rule.apiGroups?.includes(keywardGroup));
}

/** The keyward subcommand a workload's container runs (operator, kms-plugin, csi-provider), if any. */
export function keywardCommand(workload: Workload): { container: Container; command: string; args: string[] } | undefined {
  for (const container of workload.containers) {
    const words = [...(container.command ?? []), ...(container.args ?? [])];
    const cli = words.findIndex((w) => /(^|\/)keyward(\.js)?$/.test(w));
    const command = cli >= 0 ? words[cli + 1] : undefined;
    // The image's entrypoint is keyward: a container with only args names the command first.
    if (command) return { container, command, args: words.slice(cli + 2) };
    if (cli < 0 && !container.command && container.args?.[0] && ['operator', 'kms-plugin', 'csi-provider'].includes(container.args[0])) {
      return { container, command: container.args[0], args: container.args.slice(1) };
    }
  }
  return undefined;
}

interface RawWorkload {
  metadata: ObjectMeta;
  spec?: { replicas?: number; containers?: Container[]; template?: { spec?: { containers?: Container[] } } };
  status?: {
    availableReplicas?: number;
    numberReady?: number;
    desiredNumberScheduled?: number;
    conditions?: { type: string; status: string }[];
  };
}

function workload(kind: Workload['kind'], raw: RawWorkload): Workload {
  const containers = (kind === 'Pod' ? raw.spec?.containers : raw.spec?.template?.spec?.containers) ?? [];
  const podReady = raw.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ? 1 : 0;
  const counts = {
    Deployment: { ready: raw.status?.availableReplicas ?? 0, desired: raw.spec?.replicas ?? 1 },
    DaemonSet: { ready: raw.status?.numberReady ?? 0, desired: raw.status?.desiredNumberScheduled ?? 0 },
    Pod: { ready: podReady, desired: 1 },
  }[kind];
  return {
    kind,
    metadata: raw.metadata,
    containers,
    ...counts,
    staticPod: kind === 'Pod' && raw.metadata.annotations?.['kubernetes.io/config.mirror'] !== undefined,
  };
}

function mapRead<A, B>(readout: Readout<A>, f: (a: A) => B): Readout<B> {
  return readout.state === 'read' ? { state: 'read', value: f(readout.value) } : readout;
}

/** One readout of several lists: read when all were; otherwise the first that was not. */
function combine<T>(readouts: Readout<T[]>[]): Readout<T[]> {
  const missing = readouts.find((r) => r.state !== 'read');
  if (missing) return missing;
  return { state: 'read', value: readouts.flatMap((r) => (r.state === 'read' ? r.value : [])) };
}
