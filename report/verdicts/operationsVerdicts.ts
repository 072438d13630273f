// Verdicts on running Keyward: audit, monitoring and alerting, transport, continuity. They read
// the workloads that run a keyward command (their flags), the webhooks and the Prometheus
// Operator's rules.
import { keywardCommand, type ClusterSnapshot, type Workload } from '../clusterSnapshot.js';
import { fromEvidence, gap, info, ok, unreadable, type Assessment, type Evidence } from './assessment.js';
import { ringRef } from './policyFacts.js';

/** The value of --flag=value or --flag value, if given. */
export function flagValue(args: string[], flag: string): string | undefined {
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] ?? '';
    if (arg.startsWith(`${flag}=`)) return arg.slice(flag.length + 1);
    if (arg === flag) return args[i + 1];
  }
  return undefined;
}

const where = (w: Workload): string => `${w.kind} ${ringRef(w.metadata.namespace ?? '', w.metadata.name ?? '')}`;
const running = (workloads: Workload[], command: string) => workloads.flatMap((w) => {
  const found = keywardCommand(w);
  return found?.command === command ? [{ workload: w, args: found.args }] : [];
});
const loopback = (address: string | undefined): boolean => address === undefined || /^(127\.|localhost|\[?::1\]?)/.test(address);

export function audit(s: ClusterSnapshot): Assessment {
  if (s.workloads.state !== 'read') return unreadable(s.workloads, 'Deployments, DaemonSets and pods');
  const evidence: Evidence[] = [];
  for (const command of ['operator', 'kms-plugin', 'csi-provider']) {
    for (const { workload, args } of running(s.workloads.value, command)) {
      const destination = flagValue(args, '--audit-log') ?? '-';
      if (destination === '/dev/null') evidence.push(gap(`${where(workload)} (${command}) discards its audit records (--audit-log=/dev/null)`));
      else evidence.push(ok(`${where(workload)} (${command}) writes one audit record per operation to ${destination === '-' ? 'standard output (the container log, for the log collector)' : destination}`));
    }
  }
  const operators = running(s.workloads.value, 'operator');
  if (operators.length === 0) {
    evidence.push(info('no Deployment runs the keyward operator: it may run outside the cluster, where the report cannot see its flags'));
    return { verdict: 'unknown', evidence };
  }
  evidence.push(info('audit records carry actor, ring, version, operation, result and request id; never key material'));
  return fromEvidence(evidence);
}

export function monitoring(s: ClusterSnapshot): Assessment {
  const evidence: Evidence[] = [];
  let metricsServed = false;
  if (s.workloads.state === 'read') {
    for (const { workload, args } of running(s.workloads.value, 'operator')) {
      const address = flagValue(args, '--metrics-address');
      if (loopback(address)) evidence.push(gap(`${where(workload)} serves metrics on loopback only (${address ?? 'default 127.0.0.1:9465'}): Prometheus cannot scrape it`));
      else {
        metricsServed = true;
        evidence.push(ok(`${where(workload)} serves /metrics on ${address}`));
      }
    }
    if (!metricsServed && evidence.length === 0) evidence.push(info('no Deployment runs the keyward operator: its metrics are not visible to the report'));
  } else evidence.push(info(`workloads: ${s.workloads.reason}`));

  let rulesLoaded: boolean | undefined;
  if (s.prometheusRules.state === 'read') {
    const ours = s.prometheusRules.value.filter((r) => (r.spec?.groups ?? []).some((g) => (g.rules ?? []).some((rule) => rule.expr?.includes('keyward_'))));
    rulesLoaded = ours.length > 0;
    for (const rule of ours) {
      const alerts = (rule.spec?.groups ?? []).flatMap((g) => (g.rules ?? []).filter((r) => r.alert && r.expr?.includes('keyward_')).map((r) => r.alert ?? ''));
      evidence.push(ok(`PrometheusRule ${ringRef(rule.metadata.namespace ?? '', rule.metadata.name ?? '')}: ${alerts.length} Keyward alert(s): ${alerts.join(', ')}`));
    }
    if (!rulesLoaded) evidence.push(gap("the Prometheus Operator is installed, but no PrometheusRule alerts on Keyward's metrics"));
  } else if (s.prometheusRules.state === 'absent') {
    evidence.push(info("the Prometheus Operator's PrometheusRule CRD is not installed: whether Keyward's alert rules are loaded (the plain rules file) cannot be seen from the cluster"));
  } else evidence.push(info(`PrometheusRules: ${s.prometheusRules.reason}`));

  const verdict =
    rulesLoaded === false ? 'fails' : rulesLoaded && metricsServed && !evidence.some((e) => e.status === 'gap') ? 'holds' : rulesLoaded || metricsServed ? 'partial' : 'unknown';
  return { verdict, evidence };
}

export function secureTransport(s: ClusterSnapshot): Assessment {
  if (s.webhooks.state !== 'read') return unreadable(s.webhooks, 'admission webhook configurations');
  const evidence: Evidence[] = [];
  for (const config of s.webhooks.value) {
    for (const webhook of config.webhooks ?? []) {
      const client = webhook.clientConfig ?? {};
      const target = client.service ? `Service ${ringRef(client.service.namespace, client.service.name)}` : (client.url ?? '?');
      const trusted = client.caBundle ? 'its own CA (caBundle)' : config.metadata.annotations?.['cert-manager.io/inject-ca-from'] ? 'a CA cert-manager injects' : "the apiserver's system roots";
      evidence.push(ok(`webhook ${webhook.name}: the apiserver calls ${target} over TLS, trusting ${trusted}`));
    }
  }
  if (s.workloads.state === 'read') {
    for (const { workload, args } of running(s.workloads.value, 'kms-plugin')) {
      evidence.push(ok(`${where(workload)}: KMS on the unix socket ${flagValue(args, '--socket') ?? '?'} (0600), metrics on ${flagValue(args, '--metrics-address') ?? 'loopback'}`));
    }
  }
  evidence.push(info('the KMS plugin and the CSI provider listen on node-local unix sockets of mode 0600, by construction'));
  if (evidence.length === 1) return { verdict: 'unknown', evidence: [...evidence, info('no Keyward webhook or KMS plugin is registered in the cluster: no transport to judge')] };
  return fromEvidence(evidence);
}

export function continuity(s: ClusterSnapshot): Assessment {
  if (s.workloads.state !== 'read') return unreadable(s.workloads, 'Deployments, DaemonSets and pods');
  const evidence: Evidence[] = [info('serving through an HSM or apiserver outage is a property of the code, shown by the test suite')];
  const plugins = running(s.workloads.value, 'kms-plugin');
  const operators = running(s.workloads.value, 'operator');
  for (const { workload } of plugins) {
    const line = `${where(workload)}: ${workload.ready}/${workload.desired} ready${workload.staticPod ? ', a static pod: starts from the node, before and without the apiserver' : ''}`;
    evidence.push(workload.ready >= workload.desired && workload.desired > 0 ? ok(line) : gap(line));
  }
  for (const { workload } of operators) {
    const line = `${where(workload)}: ${workload.ready}/${workload.desired} replicas available${workload.desired > 1 ? ', leader-elected with standbys' : ''}`;
    evidence.push(workload.ready >= 1 ? ok(line) : gap(line));
  }
  if (plugins.length + operators.length === 0) return { verdict: 'unknown', evidence: [...evidence, info('neither the KMS plugin nor the operator runs in the cluster as far as the report can see')] };
  return fromEvidence(evidence, 'partial');
}
