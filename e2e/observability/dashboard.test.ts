// The Grafana dashboard, the chart's monitoring objects and the Prometheus fixture. The dashboard:
// well formed (unique panel ids, every panel queries something), every expression parsed by a
// real Prometheus (Debian's, on an empty TSDB: a parse error is a 400 bad_data), and every metric
// it names is one docs/metrics.md promises or a standard process_/nodejs_/kube-apiserver metric.
// The chart: the dashboard ConfigMap, ServiceMonitor and PodMonitor render only when enabled, and
// then point at what the chart really serves. The fixture: it scrapes, evaluates rules, answers
// queries, and leaves no process and no directory behind.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KubernetesObject, V1ConfigMap, V1DaemonSet, V1Deployment, V1PodTemplateSpec, V1Service } from '@kubernetes/client-node';
import { eventually } from '../../testbed/eventually.js';
import { PrometheusApiError, PrometheusServer } from '../../testbed/prometheus/prometheusServer.js';
import { chartDir, helmIn, renderChart, repoRoot, type Helm } from '../helm/helm.js';

const dashboardFile = join(chartDir, 'files', 'grafana', 'keyward-dashboard.json');
const releaseNamespace = 'keyward-system';

interface Target {
  refId: string;
  expr?: string;
}
interface Panel {
  id: number;
  type: string;
  title: string;
  targets?: Target[];
  panels?: Panel[];
}
interface Dashboard {
  schemaVersion: number;
  uid: string;
  panels: Panel[];
  templating: { list: { name: string; type: string; query: unknown; definition?: string }[] };
}

const readDashboard = (): Dashboard => JSON.parse(readFileSync(dashboardFile, 'utf8')) as Dashboard;

/** Every panel, rows' nested panels included. */
function allPanels(dashboard: Dashboard): Panel[] {
  return dashboard.panels.flatMap((panel) => [panel, ...(panel.panels ?? [])]);
}

/** The panels that query (rows only group them). */
function queryPanels(dashboard: Dashboard): Panel[] {
  return allPanels(dashboard).filter((panel) => panel.type !== 'row');
}

/** What Grafana substitutes before Prometheus sees an expression: "All" namespaces, its interval variables. */
function substituteVariables(expr: string): string {
  return expr.replaceAll('$namespace', '.*').replaceAll('$__rate_interval', '1m').replaceAll('$__range', '1h');
}

/** The metric names an expression selects: identifiers that are not functions, keywords, labels, strings or durations. */
function metricNames(expr: string): string[] {
  const keywords = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset', 'inf', 'nan']);
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, '')
    .replace(/\[[^\]]*\]/g, '')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '');
  const names = new Set<string>();
  for (const match of stripped.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
    const after = stripped.slice((match.index ?? 0) + match[0].length);
    if (/^\s*\(/.test(after) || keywords.has(match[0].toLowerCase())) continue;
    names.add(match[0]);
  }
  return [...names];
}

/** The metric names docs/metrics.md promises (first column of its tables). */
function documentedMetrics(): Set<string> {
  const text = readFileSync(join(repoRoot, 'docs', 'metrics.md'), 'utf8');
  return new Set([...text.matchAll(/^\| `([a-z_:][a-z0-9_:]*)` \|/gm)].map((match) => match[1] as string));
}

/** Node's standard metrics and kube-apiserver's (the healthcheck gauge is served on its /metrics/slis). */
const standardMetric = (name: string): boolean => /^(process|nodejs|apiserver)_/.test(name) || name === 'kubernetes_healthcheck';

describe('observability: the Grafana dashboard', () => {
  const dashboard = readDashboard();

  it('is well formed: current schema, unique panel ids, every panel but rows queries an expression', () => {
    assert.ok(dashboard.schemaVersion >= 39, `schemaVersion ${dashboard.schemaVersion}`);
    assert.equal(dashboard.uid, 'keyward-overview');
    const ids = allPanels(dashboard).map((panel) => panel.id);
    const duplicates = ids.filter((id, i) => ids.indexOf(id) !== i);
    assert.deepEqual(duplicates, [], 'duplicate panel ids');
    assert.ok(ids.every((id) => Number.isInteger(id) && id > 0), 'panel ids are positive integers');
    for (const panel of queryPanels(dashboard)) {
      assert.ok(panel.targets && panel.targets.length > 0, `panel ${panel.id} "${panel.title}" has targets`);
      for (const target of panel.targets) {
        assert.ok(target.expr?.trim(), `panel ${panel.id} "${panel.title}" target ${target.refId} has an expr`);
      }
      const refIds = panel.targets.map((target) => target.refId);
      assert.equal(new Set(refIds).size, refIds.length, `panel ${panel.id} "${panel.title}": refIds unique`);
    }
    const rows = allPanels(dashboard).filter((panel) => panel.type === 'row').map((panel) => panel.title);
    for (const row of ['KeyRings', 'KMS plugin', 'kube-apiserver: KMS', 'CSI provider', 'HSM', 'Policy', 'Operator', 'Process']) {
      assert.ok(rows.includes(row), `row ${row}`);
    }
  });

  it('has a Prometheus datasource variable and a namespace variable from keyward_keyring_ready', () => {
    const variables = new Map(dashboard.templating.list.map((variable) => [variable.name, variable]));
    assert.deepEqual([variables.get('datasource')?.type, variables.get('datasource')?.query], ['datasource', 'prometheus']);
    assert.equal(variables.get('namespace')?.type, 'query');
    assert.equal(variables.get('namespace')?.definition, 'label_values(keyward_keyring_ready, namespace)');
  });

  it('names only metrics docs/metrics.md promises, or standard process_, nodejs_ and kube-apiserver metrics', () => {
    const documented = documentedMetrics();
    assert.ok(documented.has('keyward_keyring_ready') && documented.size > 30, `docs/metrics.md lists ${documented.size} metrics`);
    const known = (name: string): boolean => documented.has(name.replace(/_(bucket|count|sum)$/, '')) || documented.has(name) || standardMetric(name);
    const unknown: string[] = [];
    for (const panel of queryPanels(dashboard)) {
      for (const target of panel.targets ?? []) {
        for (const name of metricNames(target.expr ?? '')) {
          if (!known(name)) unknown.push(`panel ${panel.id} "${panel.title}": ${name}`);
        }
      }
    }
    assert.deepEqual(unknown, []);
    // The parser itself, on the shapes the dashboard uses.
    assert.deepEqual(
      metricNames('histogram_quantile(0.99, sum by (method, le) (rate(keyward_kms_request_duration_seconds_bucket{code!="OK"}[$__rate_interval])))'),
      ['keyward_kms_request_duration_seconds_bucket'],
    );
    assert.deepEqual(metricNames('count(a_b{x=~"y"} > 0) or vector(0)'), ['a_b']);
  });

  describe('against a real Prometheus', () => {
    let prometheus: PrometheusServer;
    before(async () => {
      prometheus = await PrometheusServer.start();
    });
    after(async () => {
      await prometheus?.stop();
    });

    it('parses every expression (each run as an instant query, variables substituted as Grafana does)', async () => {
      const failures: string[] = [];
      let queried = 0;
      for (const panel of queryPanels(dashboard)) {
        for (const target of panel.targets ?? []) {
          const expr = substituteVariables(target.expr ?? '');
          assert.ok(!expr.includes('$'), `panel ${panel.id} "${panel.title}": unknown variable in ${expr}`);
          try {
            await prometheus.query(expr);
            queried++;
          } catch (err) {
            if (err instanceof PrometheusApiError && err.status === 400 && err.errorType === 'bad_data') {
              failures.push(`panel ${panel.id} "${panel.title}" ${target.refId}: ${err.error}`);
            } else {
              throw err;
            }
          }
        }
      }
      assert.deepEqual(failures, []);
      assert.ok(queried >= queryPanels(dashboard).length, `${queried} expressions queried`);
      // And a broken one is refused as such, so the check above can fail.
      await assert.rejects(prometheus.query('sum by (le (rate(x[1m]))'), (err) => err instanceof PrometheusApiError && err.errorType === 'bad_data');
    });
  });
});

// ---------------------------------------------------------------- the chart's monitoring objects

const ofKind = <T extends KubernetesObject>(objects: KubernetesObject[], kind: string): T[] => objects.filter((o) => o.kind === kind) as T[];

/** Does `selector` (matchLabels, matchExpressions with In) select `labels`? */
function selects(
  selector: { matchLabels?: Record<string, string>; matchExpressions?: { key: string; operator: string; values?: string[] }[] },
  labels: Record<string, string> = {},
): boolean {
  const byLabel = Object.entries(selector.matchLabels ?? {}).every(([key, value]) => labels[key] === value);
  const byExpression = (selector.matchExpressions ?? []).every((expression) => {
    assert.equal(expression.operator, 'In');
    return expression.values?.includes(labels[expression.key] ?? '') ?? false;
  });
  return byLabel && byExpression;
}

/** The pod templates of the rendered workloads, by component label. */
function podTemplates(objects: KubernetesObject[]): Map<string, V1PodTemplateSpec> {
  const workloads = [...ofKind<V1Deployment>(objects, 'Deployment'), ...ofKind<V1DaemonSet>(objects, 'DaemonSet')];
  return new Map(workloads.map((w) => [w.spec?.template.metadata?.labels?.['app.kubernetes.io/component'] ?? '', w.spec!.template]));
}

const metricsContainerPort = (template: V1PodTemplateSpec): number | undefined =>
  template.spec?.containers.flatMap((c) => c.ports ?? []).find((port) => port.name === 'metrics')?.containerPort;

interface Monitor extends KubernetesObject {
  spec: {
    namespaceSelector: { matchNames: string[] };
    selector: { matchLabels?: Record<string, string>; matchExpressions?: { key: string; operator: string; values?: string[] }[] };
    endpoints?: Record<string, unknown>[];
    podMetricsEndpoints?: Record<string, unknown>[];
  };
}

describe('observability: the chart renders the dashboard, ServiceMonitor and PodMonitor on request', () => {
  let home: string;
  let helm: Helm;
  const daemonSets = ['--set', 'kmsPlugin.enabled=true', '--set', 'csiProvider.enabled=true', '--set', 'hsm.softhsm.hostPath=/var/lib/keyward/softhsm'];

  before(() => {
    home = mkdtempSync(join(tmpdir(), 'keyward-helm-'));
    helm = helmIn(home);
  });
  after(() => {
    rmSync(home, { recursive: true, force: true });
  });

  it('renders none of them by default', async () => {
    const objects = await renderChart(helm, releaseNamespace, daemonSets);
    assert.deepEqual(ofKind(objects, 'ServiceMonitor'), []);
    assert.deepEqual(ofKind(objects, 'PodMonitor'), []);
    assert.deepEqual(ofKind<V1ConfigMap>(objects, 'ConfigMap').filter((c) => c.data?.['keyward-dashboard.json']), []);
    const services = ofKind<V1Service>(objects, 'Service').map((s) => s.metadata?.name);
    assert.deepEqual(services.sort(), ['keyward-operator-metrics', 'keyward-operator-webhook']);
  });

  it('puts the dashboard in a ConfigMap with the sidecar label (configurable)', async () => {
    const objects = await renderChart(helm, releaseNamespace, ['--set', 'monitoring.grafanaDashboard.enabled=true']);
    const [configMap] = ofKind<V1ConfigMap>(objects, 'ConfigMap').filter((c) => c.data?.['keyward-dashboard.json']);
    assert.ok(configMap, 'dashboard ConfigMap rendered');
    assert.equal(configMap.metadata?.name, 'keyward-grafana-dashboard');
    assert.equal(configMap.metadata?.namespace, releaseNamespace);
    assert.equal(configMap.metadata?.labels?.grafana_dashboard, '1');
    assert.deepEqual(JSON.parse(configMap.data?.['keyward-dashboard.json'] ?? ''), readDashboard());

    const custom = await renderChart(helm, releaseNamespace, [
      '--set', 'monitoring.grafanaDashboard.enabled=true',
      '--set', 'monitoring.grafanaDashboard.namespace=monitoring',
      '--set', 'monitoring.grafanaDashboard.labelKey=example.com/dashboard',
      '--set-string', 'monitoring.grafanaDashboard.labelValue=keyward',
      '--set', 'monitoring.grafanaDashboard.annotations.grafana_folder=Keyward',
    ]);
    const [moved] = ofKind<V1ConfigMap>(custom, 'ConfigMap').filter((c) => c.data?.['keyward-dashboard.json']);
    assert.equal(moved?.metadata?.namespace, 'monitoring');
    assert.equal(moved?.metadata?.labels?.['example.com/dashboard'], 'keyward');
    assert.equal(moved?.metadata?.labels?.grafana_dashboard, undefined);
    assert.equal(moved?.metadata?.annotations?.grafana_folder, 'Keyward');
  });

  it('ServiceMonitor: scrapes the operator metrics Service and headless Services for both DaemonSets, each reaching a metrics port', async () => {
    const objects = await renderChart(helm, releaseNamespace, [
      ...daemonSets,
      '--set', 'monitoring.serviceMonitor.enabled=true',
      '--set', 'monitoring.serviceMonitor.labels.release=kube-prometheus-stack',
      '--set', 'monitoring.serviceMonitor.interval=15s',
      '--set', 'monitoring.serviceMonitor.scrapeTimeout=5s',
    ]);
    const [monitor, ...more] = ofKind<Monitor>(objects, 'ServiceMonitor');
    assert.ok(monitor && more.length === 0, 'one ServiceMonitor');
    assert.equal(monitor.apiVersion, 'monitoring.coreos.com/v1');
    assert.equal(monitor.metadata?.labels?.release, 'kube-prometheus-stack');
    assert.deepEqual(monitor.spec.namespaceSelector.matchNames, [releaseNamespace]);
    assert.deepEqual(monitor.spec.endpoints, [{ port: 'metrics', path: '/metrics', interval: '15s', scrapeTimeout: '5s', honorLabels: true, scheme: 'http' }]);

    const templates = podTemplates(objects);
    const scraped = ofKind<V1Service>(objects, 'Service').filter(
      (s) => s.metadata?.namespace === releaseNamespace && selects(monitor.spec.selector, s.metadata?.labels) && s.spec?.ports?.some((p) => p.name === 'metrics'),
    );
    const components = scraped.map((service) => {
      const component = service.spec?.selector?.['app.kubernetes.io/component'] ?? '';
      const template = templates.get(component);
      assert.ok(template, `${service.metadata?.name} selects the ${component} pods`);
      assert.ok(selects({ matchLabels: service.spec?.selector }, template.metadata?.labels), `${service.metadata?.name} selects its pods`);
      const port = service.spec?.ports?.find((p) => p.name === 'metrics');
      assert.equal(port?.targetPort, 'metrics');
      assert.equal(port?.port, metricsContainerPort(template), `${service.metadata?.name}: the container's metrics port`);
      if (component !== 'operator') assert.equal(service.spec?.clusterIP, 'None', `${service.metadata?.name} is headless`);
      return component;
    });
    assert.deepEqual(components.sort(), ['csi-provider', 'kms-plugin', 'operator']);

    const tls = await renderChart(helm, releaseNamespace, [
      '--set', 'monitoring.serviceMonitor.enabled=true',
      '--set', 'monitoring.serviceMonitor.scheme=https',
      '--set', 'monitoring.serviceMonitor.tlsConfig.serverName=keyward',
      '--set', 'monitoring.serviceMonitor.tlsConfig.ca.secret.name=metrics-ca',
      '--set', 'monitoring.serviceMonitor.tlsConfig.ca.secret.key=ca.crt',
    ]);
    const endpoint = ofKind<Monitor>(tls, 'ServiceMonitor')[0]?.spec.endpoints?.[0];
    assert.equal(endpoint?.scheme, 'https');
    assert.deepEqual(endpoint?.tlsConfig, { serverName: 'keyward', ca: { secret: { name: 'metrics-ca', key: 'ca.crt' } } });
    assert.deepEqual(ofKind<V1Service>(tls, 'Service').map((s) => s.metadata?.name).sort(), ['keyward-operator-metrics', 'keyward-operator-webhook'], 'no DaemonSet Services when the DaemonSets are off');
  });

  it('PodMonitor: selects the operator, KMS plugin and CSI provider pods, each with a metrics port, and nothing else', async () => {
    const objects = await renderChart(helm, releaseNamespace, [...daemonSets, '--set', 'monitoring.podMonitor.enabled=true', '--set', 'monitoring.podMonitor.labels.release=prom']);
    const [monitor, ...more] = ofKind<Monitor>(objects, 'PodMonitor');
    assert.ok(monitor && more.length === 0, 'one PodMonitor');
    assert.equal(monitor.apiVersion, 'monitoring.coreos.com/v1');
    assert.equal(monitor.metadata?.labels?.release, 'prom');
    assert.deepEqual(monitor.spec.podMetricsEndpoints, [{ port: 'metrics', path: '/metrics', interval: '30s', honorLabels: true, scheme: 'http' }]);
    const selected = [...podTemplates(objects)].filter(([, template]) => selects(monitor.spec.selector, template.metadata?.labels));
    assert.deepEqual(selected.map(([component]) => component).sort(), ['csi-provider', 'kms-plugin', 'operator']);
    for (const [component, template] of selected) assert.ok(metricsContainerPort(template), `${component} has a container port named metrics`);
    const jobPods = objects.filter((o) => o.kind === 'Job' || o.kind === 'Pod');
    for (const other of jobPods) {
      const labels = (other as { spec?: { template?: V1PodTemplateSpec } }).spec?.template?.metadata?.labels ?? other.metadata?.labels;
      assert.ok(!selects(monitor.spec.selector, labels), `${other.kind} ${other.metadata?.name} is not scraped`);
    }
    assert.deepEqual(ofKind(objects, 'ServiceMonitor'), []);
  });

  it('refuses a ServiceMonitor with a PodMonitor, or without the operator metrics Service, and a malformed interval', async () => {
    await assert.rejects(
      renderChart(helm, releaseNamespace, ['--set', 'monitoring.serviceMonitor.enabled=true', '--set', 'monitoring.podMonitor.enabled=true']),
      /monitoring.serviceMonitor and monitoring.podMonitor are both enabled/,
    );
    await assert.rejects(
      renderChart(helm, releaseNamespace, ['--set', 'monitoring.serviceMonitor.enabled=true', '--set', 'operator.metricsService.enabled=false']),
      /needs operator.metricsService.enabled/,
    );
    await assert.rejects(renderChart(helm, releaseNamespace, ['--set', 'monitoring.podMonitor.interval=soon']), /monitoring\/podMonitor\/interval/);
    await assert.rejects(renderChart(helm, releaseNamespace, ['--set', 'monitoring.serviceMonitor.intervall=30s']), /intervall/);
  });
});

// ---------------------------------------------------------------- the Prometheus fixture

describe('observability: the Prometheus fixture', () => {
  let target: Server;
  let scrapes = 0;
  let rulesDir: string;

  before(async () => {
    target = createServer((req, res) => {
      scrapes++;
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end('# TYPE keyward_fixture_answer gauge\nkeyward_fixture_answer{kind="known"} 42\n');
    });
    await new Promise<void>((resolve) => target.listen(0, '127.0.0.1', resolve));
    rulesDir = mkdtempSync(join(tmpdir(), 'keyward-fixture-rules-'));
  });
  after(() => {
    target?.close();
    rmSync(rulesDir, { recursive: true, force: true });
  });

  it('scrapes a target, answers instant and range queries, evaluates rules, and stops leaving no process and no directory', async () => {
    const ruleFile = join(rulesDir, 'fixture.yml');
    writeFileSync(
      ruleFile,
      'groups:\n  - name: fixture\n    rules:\n      - alert: FixtureAnswerKnown\n        expr: keyward_fixture_answer == 42\n        labels: {severity: info}\n',
    );
    const port = (target.address() as AddressInfo).port;
    const prometheus = await PrometheusServer.start({
      scrapeConfigs: [{ job_name: 'fixture', static_configs: [{ targets: [`127.0.0.1:${port}`] }] }],
      ruleFiles: [ruleFile],
    });
    const { pid, dir } = { pid: prometheus.pid, dir: prometheus.dir };
    try {
      assert.ok(pid && existsSync(dir), 'running, with its directory');
      const sample = await eventually('the scraped sample', 20_000, async () => {
        const result = await prometheus.query('keyward_fixture_answer');
        return result.resultType === 'vector' ? result.result[0] : undefined;
      }, 250);
      assert.equal(sample.value[1], '42');
      assert.deepEqual(sample.metric, { __name__: 'keyward_fixture_answer', instance: `127.0.0.1:${port}`, job: 'fixture', kind: 'known' });
      assert.ok(scrapes > 0);

      const targets = await prometheus.targets();
      assert.deepEqual(targets.map((t) => [t.scrapePool, t.health]), [['fixture', 'up']]);

      const alert = await eventually('the alert', 20_000, async () => (await prometheus.alerts()).find((a) => a.labels.alertname === 'FixtureAnswerKnown'), 250);
      assert.equal(alert.state, 'firing');
      assert.equal(alert.labels.severity, 'info');

      const now = Date.now() / 1000;
      const series = await prometheus.queryRange('keyward_fixture_answer', now - 60, now, 1);
      assert.equal(series.length, 1);
      assert.ok(series[0]?.values.every(([, value]) => value === '42'));

      const empty = await prometheus.query('absent_metric_name_for_the_test');
      assert.deepEqual(empty, { resultType: 'vector', result: [] });
    } finally {
      await prometheus.stop();
    }
    assert.equal(prometheus.running, false);
    assert.throws(() => process.kill(pid, 0), /ESRCH/, `prometheus (pid ${pid}) is gone`);
    assert.equal(existsSync(dir), false, `${dir} removed`);
  });
});
