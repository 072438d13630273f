// The alerting rules, checked by Prometheus's own promtool: the file parses and every expression
// compiles (`promtool check rules`), and the unit tests of files/prometheus/tests make each alert
// fire on its series and stay quiet on the others (`promtool test rules`). Then the pieces around
// it: each alert has a severity, a summary, a description and a runbook_url whose anchor is a
// section of docs/runbooks.md (and each section an alert), each has a test where it fires and one
// where it is quiet, and the chart's PrometheusRule carries the plain file as its spec.
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { load } from 'js-yaml';
import { chartDir, helmIn, renderChart, repoRoot, type Helm } from '../helm/helm.js';

const rulesDir = join(chartDir, 'files', 'prometheus');
const rulesFile = join(rulesDir, 'keyward-alerts.yaml');
const testsDir = join(rulesDir, 'tests');
const runbooks = join(repoRoot, 'docs', 'runbooks.md');
const runbookBase = 'https://github.com/keyward/keyward/blob/main/docs/runbooks.md#';
const severities = ['critical', 'warning', 'info'];

interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface RulesFile {
  groups: { name: string; rules: Rule[] }[];
}
interface UnitTests {
  rule_files: string[];
  tests: { name: string; alert_rule_test?: { alertname: string; exp_alerts?: unknown[] }[] }[];
}

function run(command: string, args: string[], cwd: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(command, args, { cwd, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, output: `${stdout}${stderr}` });
    });
  });
}

const hasPromtool = (): boolean => spawnSync('sh', ['-c', 'command -v promtool'], { stdio: 'ignore' }).status === 0;

/** promtool, installed by testbed/setup.sh (Debian's prometheus package) when missing and the machine can; else why not. */
function promtoolUnavailableReason(): string | undefined {
  if (hasPromtool()) return undefined;
  const canInstall = process.getuid?.() === 0 && spawnSync('sh', ['-c', 'command -v apt-get'], { stdio: 'ignore' }).status === 0;
  if (!canInstall) return 'promtool is not installed and this machine cannot install it (needs root and apt-get): apt-get install prometheus';
  const setup = spawnSync('bash', [join(repoRoot, 'testbed', 'setup.sh')], { cwd: repoRoot, encoding: 'utf8' });
  if (hasPromtool()) return undefined;
  throw new Error(`promtool is missing and testbed/setup.sh did not install it: ${setup.stderr.trim().split('\n').slice(-5).join('\n')}`);
}

/** GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens. */
function headingAnchor(heading: string): string {
  return heading
    .trim()
    .toLowerCase()
    .replace(/[^\p{L}\p{N} _-]/gu, '')
    .replace(/ /g, '-');
}

describe('Alerting rules charts/keyward/files/prometheus', function () {
  this.timeout(120_000);
  const rules = load(readFileSync(rulesFile, 'utf8')) as RulesFile;
  const alerts = rules.groups.flatMap((group) => group.rules).filter((rule): rule is Rule & { alert: string } => rule.alert !== undefined);
  const testFiles = readdirSync(testsDir).filter((name) => name.endsWith('.yaml')).sort();

  describe('promtool', () => {
    before(function () {
      const reason = promtoolUnavailableReason();
      if (reason) {
        if (process.env.CI) throw new Error(`${reason}; in CI it must run`);
        console.error(`    skipped: ${reason}`);
        this.skip();
      }
    });

    it('promtool check rules: the file parses and every expression compiles', async () => {
      const { code, output } = await run('promtool', ['check', 'rules', rulesFile], rulesDir);
      assert.equal(code, 0, output);
      assert.match(output, new RegExp(`SUCCESS: ${alerts.length} rules found`), output);
    });

    it('promtool test rules: each alert fires on its series with its labels and annotations, and stays quiet otherwise [practice:monitoring]', async () => {
      const { code, output } = await run('promtool', ['test', 'rules', ...testFiles], testsDir);
      assert.equal(code, 0, output);
      assert.equal(output.match(/SUCCESS/g)?.length, testFiles.length, output);
    });
  });

  it('has a test where each alert fires and one where it stays quiet, against this rules file', () => {
    const firing = new Set<string>();
    const quiet = new Set<string>();
    for (const file of testFiles) {
      const unit = load(readFileSync(join(testsDir, file), 'utf8')) as UnitTests;
      assert.deepEqual(unit.rule_files, ['../keyward-alerts.yaml'], file);
      for (const test of unit.tests) {
        for (const check of test.alert_rule_test ?? []) {
          ((check.exp_alerts ?? []).length > 0 ? firing : quiet).add(check.alertname);
        }
      }
    }
    const names = alerts.map((rule) => rule.alert);
    assert.deepEqual(names.filter((name) => !firing.has(name)), [], 'alerts no test makes fire');
    assert.deepEqual(names.filter((name) => !quiet.has(name)), [], 'alerts no test shows quiet');
    assert.deepEqual([...firing, ...quiet].filter((name) => !names.includes(name)), [], 'tests of alerts the file does not have');
  });

  it('gives each alert a unique name, a severity, a summary, a description and a runbook section of its own', () => {
    const text = readFileSync(runbooks, 'utf8');
    const sections = [...text.matchAll(/^## (.+)$/gm)].map((match) => match[1] ?? '');
    const anchors = new Set(sections.map(headingAnchor));
    const names = alerts.map((rule) => rule.alert);
    assert.equal(new Set(names).size, names.length, 'duplicate alert names');
    for (const rule of alerts) {
      assert.ok(severities.includes(rule.labels?.severity ?? ''), `${rule.alert}: severity ${rule.labels?.severity}`);
      assert.ok(rule.annotations?.summary, `${rule.alert}: no summary`);
      assert.ok(rule.annotations?.description, `${rule.alert}: no description`);
      const url = rule.annotations?.runbook_url ?? '';
      assert.equal(url, runbookBase + rule.alert.toLowerCase(), `${rule.alert}: runbook_url`);
      assert.ok(anchors.has(url.slice(runbookBase.length)), `${rule.alert}: docs/runbooks.md has no section #${url.slice(runbookBase.length)}`);
    }
    // Every alert-named section is an alert, but for the one announced and not built yet.
    const alertSections = sections.filter((heading) => /^Keyward[A-Za-z]+$/.test(heading));
    assert.deepEqual(alertSections.filter((heading) => !names.includes(heading)), ['KeywardRetirementStuck']);
    assert.match(readFileSync(rulesFile, 'utf8'), /# KeywardRetirementStuck comes with issue 17/);
  });

  describe('the chart', () => {
    let home: string;
    let helm: Helm;

    before(() => {
      home = mkdtempSync(join(tmpdir(), 'keyward-helm-'));
      helm = helmIn(home);
    });

    after(() => rmSync(home, { recursive: true, force: true }));

    it('renders no PrometheusRule by default', async () => {
      const objects = await renderChart(helm, 'keyward-system');
      assert.deepEqual(objects.filter((object) => object.kind === 'PrometheusRule'), []);
    });

    it('renders, with monitoring.prometheusRule.enabled, a PrometheusRule whose spec is the plain rules file, with the extra labels', async () => {
      const objects = await renderChart(helm, 'keyward-system', [
        '--set', 'monitoring.prometheusRule.enabled=true',
        '--set', 'monitoring.prometheusRule.labels.release=kube-prometheus-stack',
      ]);
      const found = objects.filter((object) => object.kind === 'PrometheusRule');
      assert.equal(found.length, 1);
      const rule = found[0] as { apiVersion: string; metadata: { namespace: string; labels: Record<string, string> }; spec: unknown };
      assert.equal(rule.apiVersion, 'monitoring.coreos.com/v1');
      assert.equal(rule.metadata.namespace, 'keyward-system');
      assert.equal(rule.metadata.labels.release, 'kube-prometheus-stack');
      assert.equal(rule.metadata.labels['app.kubernetes.io/instance'], 'keyward');
      assert.deepEqual(rule.spec, JSON.parse(JSON.stringify(rules)));
    });

    it('refuses an unknown monitoring.prometheusRule value (the schema is strict)', async () => {
      await assert.rejects(renderChart(helm, 'keyward-system', ['--set', 'monitoring.prometheusRule.enabeld=true']), /additional properties 'enabeld' not allowed/);
    });
  });
});
