// The shipped alerts and dashboard against a real Prometheus scraping a real run: Keyward installed
// on the test node (helm, the KMS plugin as the chart's static pod with its mutual-TLS metrics
// listener, the real Secrets Store CSI driver), Debian's Prometheus on the host scraping the
// operator and the CSI provider at their pod IPs, the plugin over mutual TLS at the node address,
// and kube-apiserver with the admin client certificate. Real activity runs through it (Secrets,
// a pod's volume, rotations, a two-person destruction, a refused mount), then three faults, each
// read back from Prometheus' /api/v1/alerts: a break-glass grant used, the HSM out of reach (the
// operator's and the plugin's HSM alerts, kube-apiserver's KMS health), and a rotation made
// overdue by moving the operator's clock while the HSM is away. Last, every dashboard panel's
// query is evaluated against what Prometheus holds.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, writeFileSync, chmodSync, chownSync, copyFileSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { status } from '@grpc/grpc-js';
import { dump, load } from 'js-yaml';
import { eventually } from '../../testbed/eventually.js';
import { trackDirectory } from '../../testbed/control-plane/componentProcess.js';
import { freePort, httpsGet } from '../../testbed/control-plane/network.js';
import { issueClientCertificate, issueServingCertificate } from '../../testbed/control-plane/pki.js';
import { grpcClient, type UnaryClient } from '../../testbed/grpcClient.js';
import { buildKeywardImage, type KeywardImage } from '../../testbed/image/keywardImage.js';
import { nodeUnsupportedReason, startTestNode, type TestNode } from '../../testbed/node/testNode.js';
import { PrometheusServer, type Alert } from '../../testbed/prometheus/prometheusServer.js';
import { KeyManagementService } from '../../proto/gen/kms/v2/api_pb.js';
import { chartDir } from '../helm/helm.js';
import { identityEncryptionConfig } from '../kms/kmsPluginProcess.js';
import { applyKeyRing, applyShopWorkload, expectMountRefused, keywardPod, primaryVersion, readPodFile, shop, waitKeyRingReady, waitPodRunning } from '../install/clusterChecks.js';
import {
  createNodeToken,
  enableKmsEncryption,
  imageUid,
  installKeyward,
  installKmsStaticPod,
  releaseNamespace,
  waitKeywardReady,
  waitPodReady,
  type KmsStaticPod,
  type NodeToken,
} from '../install/keywardOnNode.js';

const etcdRing = { namespace: 'kube-system', name: 'etcd-secrets' };
const admin = 'keyward-admin';
const rulesFile = join(chartDir, 'files', 'prometheus', 'keyward-alerts.yaml');
const dashboardFile = join(chartDir, 'files', 'grafana', 'keyward-dashboard.json');
/** Debian's libfaketime, bind-mounted into the operator container only. */
const faketimeLibDir = '/usr/lib/x86_64-linux-gnu/faketime';
/** The shortened `for:` of every rule in the copy Prometheus loads. */
const shortFor = '5s';
/** Rings of this test, all in the shop namespace. */
const rings = { destroyed: 'records', breakGlass: 'emergency', overdue: 'rotating' };
const hour = 3600_000;

/** Seconds since `since`, one decimal, for the report lines. */
const secondsSince = (since: number): number => Math.round((Date.now() - since) / 100) / 10;

describe('observability live: alerts fire and the dashboard has data on a real node, scraped by a real Prometheus', function () {
  this.timeout(900_000);
  let dir: string;
  let removeDir: (() => void) | undefined;
  let image: KeywardImage;
  let node: TestNode;
  let token: NodeToken;
  let kms: KmsStaticPod;
  let prometheus: PrometheusServer | undefined;
  let clockFile: string | undefined;
  /** Where the token's directory waits while the HSM is "unreachable"; undefined while in place. */
  let tokenMoved: { from: string; to: string } | undefined;
  let stopReadyzProbe: (() => Promise<void>) | undefined;
  let kmsTlsPort: number;
  let prometheusStartedAt: number;
  /** Lines for the report: what fired and when. */
  const timings: string[] = [];
  const note = (line: string): void => {
    timings.push(line);
    console.error(`      [liveAlerts] ${line}`);
  };

  before(async function () {
    if (nodeUnsupportedReason()) this.skip();
    if (!existsSync(join(faketimeLibDir, 'libfaketime.so.1'))) throw new Error(`${faketimeLibDir}/libfaketime.so.1 is missing: run testbed/setup.sh (Debian package libfaketime)`);
    dir = mkdtempSync(join(tmpdir(), 'keyward-live-alerts-'));
    removeDir = trackDirectory(dir);
    image = await buildKeywardImage();
    node = await startTestNode({ images: [image.dockerArchive], controlPlane: { encryptionConfig: identityEncryptionConfig(dir) } });
    token = createNodeToken(join(node.dir, 'softhsm'));
    await installKeyward(node, image.ref, token, join(dir, 'helm'));
    await applyKeyRing(node, etcdRing.namespace, etcdRing.name, { purpose: 'encryption' });

    // The KMS plugin's metrics for Prometheus, as the chart file's header says: its mutual-TLS
    // listener turned on, with tls.crt and tls.key (the node's address in the SANs) and
    // client-ca.crt in /etc/keyward/metrics/. The certificates are the control plane's
    // throw-away PKI, removed with the node.
    const pki = node.controlPlane.pki;
    kms = await installKmsStaticPod(node, image.ref, token, etcdRing);
    kmsTlsPort = await freePort();
    const pod = load(readFileSync(kms.manifestPath, 'utf8')) as StaticPod;
    const metricsDir = join(pod.spec.volumes.find((v) => v.name === 'config')!.hostPath.path, 'metrics');
    mkdirSync(metricsDir, { mode: 0o700 });
    chownSync(metricsDir, imageUid, imageUid);
    const serving = issueServingCertificate(pki.dir, 'kms-metrics', [node.name], [node.address]);
    const files: Record<string, string> = { 'tls.crt': serving.cert, 'tls.key': serving.key, 'client-ca.crt': pki.caCert };
    for (const [name, source] of Object.entries(files)) {
      copyFileSync(source, join(metricsDir, name));
      chownSync(join(metricsDir, name), imageUid, imageUid);
      chmodSync(join(metricsDir, name), 0o600);
    }
    // The commented-out flags of the chart file, rewritten as installKmsStaticPod rewrites the
    // others: only the port differs (ports are chosen free on this machine).
    const container = pod.spec.containers[0]!;
    container.args = [
      ...container.args,
      `--metrics-tls-address=0.0.0.0:${kmsTlsPort}`,
      '--metrics-tls-cert-file=/etc/keyward/metrics/tls.crt',
      '--metrics-tls-key-file=/etc/keyward/metrics/tls.key',
      '--metrics-client-ca-file=/etc/keyward/metrics/client-ca.crt',
    ];
    writeFileSync(kms.manifestPath, dump(pod));
    const prometheusClient = issueClientCertificate(pki.dir, 'prometheus', 'prometheus');
    // The first manifest may have started a pod already: only the rewritten one serves TLS.
    await eventually('the plugin serving /metrics over mutual TLS', 120_000, async () => ((await kmsMetricsGet(prometheusClient)).status === 200 ? true : undefined), 1000);
    await waitPodReady(node, 'kube-system', 'app.kubernetes.io/component=kms-plugin');
    await enableKmsEncryption(node, dir, kms.socketPath);

    await applyShopWorkload(node, releaseNamespace, admin, 'live-alerts-password');
    await applyKeyRing(node, shop.namespace, rings.destroyed, { purpose: 'encryption', destroyScheduledDuration: '720h' });
    await applyKeyRing(node, shop.namespace, rings.breakGlass, { purpose: 'encryption' });
    // The only ring with a rotation period: the moved clock makes it, and only it, overdue.
    await applyKeyRing(node, shop.namespace, rings.overdue, { purpose: 'encryption', rotationPeriod: '24h' });
    await applyPeople();

    // The operator's clock, movable: libfaketime preloaded into its container only, reading the
    // offset from a file this test writes (re-read every second). The monotonic clock stays true,
    // so timers, the work queue and leader election run as usual; only wall-clock time moves.
    const clockDir = join(dir, 'clock');
    mkdirSync(clockDir, { mode: 0o755 });
    clockFile = join(clockDir, 'offset');
    setOperatorClock('+0');
    await patchOperatorWithFaketime(clockDir);
    const offsetMs = await operatorClockOffsetMs();
    assert.ok(Math.abs(offsetMs) < 10_000, `the operator's clock at +0 is off by ${offsetMs} ms`);
    note(`operator clock offset read in its container with libfaketime at +0: ${Math.round(offsetMs)} ms`);

    const targets = await scrapeTargets(prometheusClient);
    // A copy of the shipped rules with every `for:` shortened: the promtool unit tests
    // (e2e/observability/alertRules.test.ts) prove the durations; this run proves that the
    // expressions fire on the series real components serve, which the shipped durations (up to
    // an hour) would make too slow for a test.
    const shipped = readFileSync(rulesFile, 'utf8');
    const shortened = shipped.replace(/^(\s+)for: \S+$/gm, `$1for: ${shortFor}`);
    assert.equal(shortened.match(/^\s+for: /gm)?.length, shipped.match(/^\s+for: /gm)?.length);
    const rulesCopy = join(dir, 'keyward-alerts-short-for.yaml');
    writeFileSync(rulesCopy, shortened);
    prometheusStartedAt = Date.now();
    prometheus = await PrometheusServer.start({ scrapeConfigs: targets, ruleFiles: [rulesCopy], scrapeInterval: '2s', evaluationInterval: '1s' });
    stopReadyzProbe = probeApiserverReadyz();
  });

  after(async () => {
    await stopReadyzProbe?.();
    // The token back first, so the pods end on a working HSM whatever failed.
    restoreToken();
    if (clockFile && existsSync(clockFile)) setOperatorClock('+0');
    if (prometheus && !prometheus.running) console.error(prometheus.logTail());
    await prometheus?.stop();
    await node?.stop();
    removeDir?.();
    if (timings.length > 0) console.error(`      [liveAlerts] summary:\n        ${timings.join('\n        ')}`);
  });

  it('Prometheus scrapes the operator and CSI provider at their pod IPs, the KMS plugin over mutual TLS only, and kube-apiserver with a client certificate', async () => {
    const jobs = ['keyward-operator', 'keyward-csi-provider', 'keyward-kms-plugin', 'apiserver', 'apiserver-slis'];
    const targets = await eventually('every target up', 60_000, async () => {
      const all = await prometheus!.targets();
      return jobs.every((job) => all.some((t) => t.scrapePool === job && t.health === 'up')) ? all : undefined;
    }, 1000);
    note(`targets up: ${targets.map((t) => `${t.scrapePool} ${t.scrapeUrl}`).join(', ')}`);
    // Without a client certificate the TLS listener refuses; the plain one answers on loopback only.
    await assert.rejects(kmsMetricsGet(undefined), /certificate|socket hang up|ECONNRESET|EPROTO|alert/i);
    await assert.rejects(fetch(`http://${node.address}:${kms.metricsPort}/metrics`));
    assert.equal((await fetch(`http://127.0.0.1:${kms.metricsPort}/metrics`)).status, 200);
    const up = await prometheus!.query('keyward_kms_hsm_up');
    assert.equal(up.resultType === 'vector' && up.result[0]?.value[1], '1');
  });

  it('real activity shows in the series: Secrets through the KMS plugin, a pod volume, a rotation, a two-person destruction (its alert fires), a refused mount [practice:monitoring]', async () => {
    for (let i = 0; i < 5; i++) await node.kubectl(['-n', 'default', 'create', 'secret', 'generic', `live-${i}`, `--from-literal=password=value-${i}`]);
    await node.kubectl(['get', 'secrets', '-A', '-o', 'name']);

    await node.kubectl(['apply', '-f', '-'], keywardPod('web', shop.serviceAccount, node.images.busybox.ref));
    await waitPodRunning(node, 'web');
    assert.equal((await readPodFile(node, 'web', 'db/password')).toString(), 'live-alerts-password');

    const before = await primaryVersion(node, shop.namespace, shop.secretRing);
    await node.kubectl(['-n', shop.namespace, 'patch', 'keyring', shop.secretRing, '--type=merge', '-p', `{"spec":{"rotationRequest":"live-${Date.now()}"}}`]);
    await eventually('app-secrets rotated', 30_000, async () => ((await primaryVersion(node, shop.namespace, shop.secretRing)) === before + 1 ? true : undefined), 500);

    // Two people: alice rotates, disables version 1 and asks for its destruction; bob approves.
    await patchAs('alice', rings.destroyed, { rotationRequest: 'before-destruction' });
    await eventually('records version 2 primary', 30_000, async () => ((await primaryVersion(node, shop.namespace, rings.destroyed)) === 2 ? true : undefined), 500);
    await patchAs('alice', rings.destroyed, { versions: [{ number: 1, state: 'Disabled' }] });
    await eventually('records version 1 Disabled', 30_000, async () => ((await versionState(rings.destroyed, 1)) === 'Disabled' ? true : undefined), 500);
    await patchAs('alice', rings.destroyed, { versions: [{ number: 1, state: 'DestroyScheduled' }] });
    await patchAs('bob', rings.destroyed, { versions: [{ number: 1, state: 'DestroyScheduled', approveDestroy: true }] });
    const approved = Date.now();
    await eventually('records version 1 DestroyScheduled', 30_000, async () => ((await versionState(rings.destroyed, 1)) === 'DestroyScheduled' ? true : undefined), 500);
    const destruction = await waitAlert('KeywardDestructionScheduled', { keyring: rings.destroyed }, 60_000);
    note(`KeywardDestructionScheduled firing ${secondsSince(approved)} s after bob's approval (severity ${destruction.labels.severity})`);

    await node.kubectl(['apply', '-f', '-'], keywardPod('intruder', 'intruder', node.images.busybox.ref));
    await expectMountRefused(node, 'intruder', 'NotAuthorized');

    const expected = [
      'keyward_kms_requests_total{method="encrypt", code="OK"}',
      'keyward_csi_mounts_total{result="refused", code="NotAuthorized"}',
      'keyward_csi_mounts_total{result!="refused"}',
      `keyward_keyring_versions{keyring="${rings.destroyed}", state="DestroyScheduled"} == 1`,
      'keyward_policy_decisions_total',
    ];
    let missing: string[] = expected;
    await eventually('the activity in Prometheus', 30_000, async () => {
      missing = [];
      for (const expr of expected) if (((await prometheus!.query(expr)) as { result: unknown[] }).result.length === 0) missing.push(expr);
      return missing.length === 0 ? true : undefined;
    }, 1000).catch(() => assert.fail(`no series for ${missing.join(', ')}`));
  });

  it('a break-glass grant used fires KeywardBreakGlassUsed [practice:monitoring]', async () => {
    // erin's only grant on the ring is break-glass, expiring in 2 h (at most 24 h is admitted).
    await node.kubectl(['apply', '-f', '-'], JSON.stringify({
      apiVersion: 'keyward.dev/v1alpha1',
      kind: 'KeyPolicy',
      metadata: { name: 'emergency-access', namespace: shop.namespace },
      spec: { rules: [{ name: 'oncall', subjects: [{ kind: 'User', name: 'erin' }], keyRings: [rings.breakGlass], roles: ['BreakGlassAdministrator'], expiresAt: new Date(Date.now() + 2 * hour).toISOString() }] },
    }));
    const before = await primaryVersion(node, shop.namespace, rings.breakGlass);
    // The webhook's policy cache sees the new KeyPolicy a moment after it is stored.
    const used = await eventually('erin allowed by the break-glass grant', 30_000, () => patchAs('erin', rings.breakGlass, { rotationRequest: 'incident-1' }).then(() => Date.now()), 1000);
    await eventually('the break-glass rotation done', 30_000, async () => ((await primaryVersion(node, shop.namespace, rings.breakGlass)) === before + 1 ? true : undefined), 500);
    const alert = await waitAlert('KeywardBreakGlassUsed', { keyring: rings.breakGlass, operation: 'rotate' }, 60_000);
    assert.equal(alert.labels.namespace, shop.namespace);
    assert.equal(alert.labels.severity, 'critical');
    note(`KeywardBreakGlassUsed firing ${secondsSince(used)} s after erin's rotation (no for:)`);
  });

  it('the HSM out of reach fires KeywardHSMUnreachable (operator), KeywardKMSPluginUnhealthy (plugin), KeywardKMSProviderUnhealthy (kube-apiserver) and KeywardKMSDecryptFailures [practice:monitoring]', async () => {
    const sealed = await kmsCall((client) => client.encrypt({ plaintext: Buffer.from('live-alerts-dek-seed'), uid: 'before-outage' }));
    const moved = Date.now();
    moveTokenAway();
    // A client of the plugin during the outage: kube-apiserver reading a DEK seed it has not
    // cached (after its restart, say) retries its Decrypt; so does this, every 2 s, while the
    // alerts are awaited. A single failure would not fire (a rate needs a second sample).
    let retrying = true;
    let unavailable = 0;
    const retries = (async () => {
      while (retrying) {
        const decrypt = kmsCall((client) => client.decrypt({ ciphertext: sealed.ciphertext, keyId: sealed.keyId, uid: `during-outage-${Date.now()}` }));
        if (await decrypt.then(() => false, (err: { code?: number }) => err.code === status.UNAVAILABLE)) unavailable++;
        await sleep(2000);
      }
    })();
    const waits = ['KeywardKMSPluginUnhealthy', 'KeywardHSMUnreachable', 'KeywardKMSProviderUnhealthy', 'KeywardKMSDecryptFailures'].map(async (name) => {
      await waitAlert(name, {}, 150_000);
      note(`${name} firing ${secondsSince(moved)} s after the token was moved away (for: ${shortFor})`);
    });
    try {
      await Promise.all(waits);
    } finally {
      retrying = false;
      await retries;
    }
    assert.ok(unavailable > 0, 'Decrypt refused as UNAVAILABLE during the outage');
    note(`${unavailable} Decrypt calls refused as UNAVAILABLE during the outage`);
  });

  it('with the HSM away and the operator clock 25 h ahead KeywardKeyRingRotationOverdue fires; once the HSM is back the HSM alerts resolve, the operator rotates and the overdue alert resolves [practice:monitoring]', async () => {
    assert.ok(tokenMoved, 'the HSM is still away from the test before');
    const ringBefore = await primaryVersion(node, shop.namespace, rings.overdue);
    const jumped = Date.now();
    setOperatorClock('+25h');
    const offsetMs = await eventually('the operator clock 25 h ahead', 30_000, async () => {
      const offset = await operatorClockOffsetMs();
      return Math.abs(offset - 25 * hour) < 60_000 ? offset : undefined;
    }, 1000);
    note(`operator clock offset read in its container: ${(offsetMs / hour).toFixed(3)} h`);
    // The operator tries (a change to the KeyRing queues it) and cannot rotate: the HSM is away.
    await touchKeyRing(rings.overdue);
    const overdue = await waitAlert('KeywardKeyRingRotationOverdue', { keyring: rings.overdue }, 60_000);
    note(`KeywardKeyRingRotationOverdue firing ${secondsSince(jumped)} s after the clock moved (value ${Math.round(Number(overdue.value))} s overdue)`);
    const notReady = await waitAlert('KeywardKeyRingNotReady', { keyring: rings.overdue }, 60_000).then(() => secondsSince(jumped));
    note(`KeywardKeyRingNotReady firing ${notReady} s after the clock moved (the reconcile failed on the HSM)`);
    assert.equal(await primaryVersion(node, shop.namespace, rings.overdue), ringBefore, 'no rotation without the HSM');

    const restored = Date.now();
    restoreToken();
    await Promise.all(['KeywardHSMUnreachable', 'KeywardKMSPluginUnhealthy', 'KeywardKMSProviderUnhealthy'].map(async (name) => {
      await waitAlertGone(name, {}, 150_000);
      note(`${name} resolved ${secondsSince(restored)} s after the token came back`);
    }));
    // The failed KeyRing waits on its backoff (up to minutes after a long outage): a change queues it now.
    await touchKeyRing(rings.overdue);
    await eventually('the overdue ring rotated', 60_000, async () => ((await primaryVersion(node, shop.namespace, rings.overdue)) === ringBefore + 1 ? true : undefined), 1000);
    note(`${rings.overdue} rotated to version ${ringBefore + 1} ${secondsSince(restored)} s after the token came back`);
    await waitAlertGone('KeywardKeyRingRotationOverdue', { keyring: rings.overdue }, 60_000);
    note(`KeywardKeyRingRotationOverdue resolved ${secondsSince(restored)} s after the token came back`);
    setOperatorClock('+0');
    await eventually('the operator clock back', 30_000, async () => (Math.abs(await operatorClockOffsetMs()) < 10_000 ? true : undefined), 1000);
    await waitKeyRingReady(node, shop.namespace, rings.overdue);
  });

  it('every dashboard panel query returns series from this run [practice:monitoring]', async () => {
    // A short pause so rates over the last minute include the recovery above.
    await sleep(5000);
    const end = Math.floor(Date.now() / 1000);
    const start = Math.floor(prometheusStartedAt / 1000);
    const substitute = (expr: string): string => expr.replaceAll('$namespace', '.*').replaceAll('$__rate_interval', '1m').replaceAll('$__range', `${end - start}s`);
    const empty: string[] = [];
    const onlyByVectorZero: string[] = [];
    let queried = 0;
    for (const panel of queryPanels(JSON.parse(readFileSync(dashboardFile, 'utf8')) as Dashboard)) {
      for (const target of panel.targets ?? []) {
        const expr = substitute(target.expr ?? '');
        queried++;
        // As Grafana draws a panel over the run: a range query, data when any point is a number.
        if (!(await hasData(expr, start, end))) empty.push(`"${panel.title}" ${target.refId}: ${expr}`);
        else if (/\s+or\s+vector\(0\)\s*$/.test(expr) && !(await hasData(expr.replace(/\s+or\s+vector\(0\)\s*$/, ''), start, end))) {
          onlyByVectorZero.push(`"${panel.title}" ${target.refId}`);
        }
      }
    }
    note(`dashboard: ${queried} queries, ${empty.length} without data`);
    if (onlyByVectorZero.length > 0) note(`counts showing 0 only through "or vector(0)": ${onlyByVectorZero.join('; ')}`);
    assert.deepEqual(empty, [], 'panels without data');
  });

  /** GET of the plugin's TLS /metrics, with Prometheus's client certificate or none. */
  function kmsMetricsGet(client: { cert: string; key: string } | undefined): Promise<{ status: number }> {
    return new Promise((resolve, reject) => {
      const req = request(
        `https://${node.address}:${kmsTlsPort}/metrics`,
        {
          ca: readFileSync(node.controlPlane.pki.caCert),
          cert: client && readFileSync(client.cert),
          key: client && readFileSync(client.key),
          timeout: 5000,
        },
        (res) => {
          res.resume();
          res.on('end', () => resolve({ status: res.statusCode ?? 0 }));
        },
      );
      req.on('timeout', () => req.destroy(new Error('timed out')));
      req.on('error', reject);
      req.end();
    });
  }

  /** The scrape configs: what a ServiceMonitor/PodMonitor would make, as static targets. */
  async function scrapeTargets(client: { cert: string; key: string }): Promise<object[]> {
    const pki = node.controlPlane.pki;
    const podOf = async (component: string): Promise<{ name: string; ip: string }> => {
      const [name = '', ip = ''] = (await node.kubectl(['-n', releaseNamespace, 'get', 'pods', '-l', `app.kubernetes.io/component=${component}`, '-o', 'jsonpath={.items[0].metadata.name} {.items[0].status.podIP}'])).trim().split(' ');
      assert.ok(ip, `${component} has a pod IP`);
      return { name, ip };
    };
    const operator = await podOf('operator');
    const provider = await podOf('csi-provider');
    const apiserver = new URL(node.controlPlane.apiserverUrl).host;
    const adminTls = { ca_file: pki.caCert, cert_file: pki.adminCert, key_file: pki.adminKey };
    // honor_labels keeps the KeyRing metrics' own namespace label, as the chart's monitors do.
    return [
      { job_name: 'keyward-operator', honor_labels: true, static_configs: [{ targets: [`${operator.ip}:9465`], labels: { namespace: releaseNamespace, pod: operator.name } }] },
      { job_name: 'keyward-csi-provider', honor_labels: true, static_configs: [{ targets: [`${provider.ip}:9466`], labels: { namespace: releaseNamespace, pod: provider.name } }] },
      {
        job_name: 'keyward-kms-plugin',
        scheme: 'https',
        tls_config: { ca_file: pki.caCert, cert_file: client.cert, key_file: client.key },
        static_configs: [{ targets: [`${node.address}:${kmsTlsPort}`], labels: { namespace: 'kube-system', pod: `keyward-kms-plugin-${node.name}` } }],
      },
      // kube-apiserver's metrics are large: every 5 s is enough for its rates.
      { job_name: 'apiserver', scheme: 'https', scrape_interval: '5s', tls_config: adminTls, static_configs: [{ targets: [apiserver] }] },
      { job_name: 'apiserver-slis', scheme: 'https', metrics_path: '/metrics/slis', tls_config: adminTls, static_configs: [{ targets: [apiserver] }] },
    ];
  }

  /**
   * kube-apiserver sets kubernetes_healthcheck only when its health endpoints are asked. kubelet's
   * readiness probe asks /readyz every few seconds on a kubeadm node; here the apiserver is a
   * process, so the test asks in its place.
   */
  function probeApiserverReadyz(): () => Promise<void> {
    const pki = node.controlPlane.pki;
    const tls = { ca: readFileSync(pki.caCert), cert: readFileSync(pki.adminCert), key: readFileSync(pki.adminKey) };
    let running = true;
    const loop = (async () => {
      while (running) {
        await httpsGet(`${node.controlPlane.apiserverUrl}/readyz`, tls).catch(() => undefined);
        await sleep(2000);
      }
    })();
    return async () => {
      running = false;
      await loop;
    };
  }

  /** Users alice, bob (custodians of `records`) and erin (nobody's, until break-glass): KeyRing edits through RBAC, decided by KeyPolicy. */
  async function applyPeople(): Promise<void> {
    await node.kubectl(['apply', '-f', '-'], `apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: { name: keyring-editor, namespace: ${shop.namespace} }
rules:
  - apiGroups: [keyward.dev]
    resources: [keyrings]
    verbs: [get, list, watch, patch, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: { name: keyring-editors, namespace: ${shop.namespace} }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: Role, name: keyring-editor }
subjects:
  - { apiGroup: rbac.authorization.k8s.io, kind: User, name: alice }
  - { apiGroup: rbac.authorization.k8s.io, kind: User, name: bob }
  - { apiGroup: rbac.authorization.k8s.io, kind: User, name: erin }
---
apiVersion: keyward.dev/v1alpha1
kind: KeyPolicy
metadata: { name: records-custody, namespace: ${shop.namespace} }
spec:
  rules:
    - name: custodians
      subjects: [{ kind: User, name: alice }, { kind: User, name: bob }]
      keyRings: [${rings.destroyed}]
      roles: [Administrator]
`);
  }

  /** A merge patch of a shop KeyRing's spec as `user` (impersonated: the webhook sees that user). */
  function patchAs(user: string, ring: string, spec: object): Promise<string> {
    return node.kubectl([`--as=${user}`, '-n', shop.namespace, 'patch', 'keyring', ring, '--type=merge', '-p', JSON.stringify({ spec })]);
  }

  async function versionState(ring: string, version: number): Promise<string> {
    return node.kubectl(['-n', shop.namespace, 'get', 'keyring', ring, '-o', `jsonpath={.status.versions[?(@.number==${version})].state}`]);
  }

  /** An annotation change: the operator's informer queues the KeyRing for a reconcile now. */
  async function touchKeyRing(ring: string): Promise<void> {
    await node.kubectl(['-n', shop.namespace, 'annotate', '--overwrite', 'keyring', ring, `live-alerts/touched=${Date.now()}`]);
  }

  function setOperatorClock(offset: string): void {
    writeFileSync(clockFile!, `${offset}\n`, { mode: 0o644 });
  }

  /** libfaketime into the operator's Deployment: its library and the offset file as hostPath volumes. */
  async function patchOperatorWithFaketime(clockDir: string): Promise<void> {
    const deployment = (await node.kubectl(['-n', releaseNamespace, 'get', 'deployments', '-l', 'app.kubernetes.io/component=operator', '-o', 'name'])).trim();
    const patch = {
      spec: {
        template: {
          spec: {
            volumes: [
              { name: 'faketime-lib', hostPath: { path: faketimeLibDir, type: 'Directory' } },
              { name: 'faketime-clock', hostPath: { path: clockDir, type: 'Directory' } },
            ],
            containers: [
              {
                name: 'operator',
                env: [
                  { name: 'LD_PRELOAD', value: '/faketime/libfaketime.so.1' },
                  { name: 'FAKETIME_TIMESTAMP_FILE', value: '/faketime-clock/offset' },
                  { name: 'FAKETIME_CACHE_DURATION', value: '1' },
                  { name: 'FAKETIME_DONT_FAKE_MONOTONIC', value: '1' },
                ],
                volumeMounts: [
                  { name: 'faketime-lib', mountPath: '/faketime', readOnly: true },
                  { name: 'faketime-clock', mountPath: '/faketime-clock', readOnly: true },
                ],
              },
            ],
          },
        },
      },
    };
    await node.kubectl(['-n', releaseNamespace, 'patch', deployment, '--type=strategic', '-p', JSON.stringify(patch)]);
    await node.kubectl(['-n', releaseNamespace, 'rollout', 'status', deployment, '--timeout=180s']);
    // The old replica gone (it releases the Lease), so the one left leads and is the one scraped.
    await eventually('one operator pod', 90_000, async () => {
      const pods = (await node.kubectl(['-n', releaseNamespace, 'get', 'pods', '-l', 'app.kubernetes.io/component=operator', '-o', 'name'])).trim().split('\n').filter(Boolean);
      return pods.length === 1 ? true : undefined;
    }, 1000);
    await waitKeywardReady(node);
    await eventually('the operator leading again', 60_000, async () => {
      const holder = await node.kubectl(['-n', releaseNamespace, 'get', 'leases', '-o', 'jsonpath={.items[*].spec.holderIdentity}']);
      const pod = await node.kubectl(['-n', releaseNamespace, 'get', 'pods', '-l', 'app.kubernetes.io/component=operator', '-o', 'jsonpath={.items[0].metadata.name}']);
      return holder.split(' ').includes(pod.trim()) ? true : undefined;
    }, 1000);
  }

  /** The operator container's wall clock minus the host's, as Node in that container reads it. */
  async function operatorClockOffsetMs(): Promise<number> {
    const pod = (await node.kubectl(['-n', releaseNamespace, 'get', 'pods', '-l', 'app.kubernetes.io/component=operator', '-o', 'jsonpath={.items[0].metadata.name}'])).trim();
    const before = Date.now();
    const inside = Number(await node.kubectl(['-n', releaseNamespace, 'exec', pod, '-c', 'operator', '--', 'node', '-e', 'process.stdout.write(String(Date.now()))']));
    return inside - (before + Date.now()) / 2;
  }

  /** The token's directory (the one SoftHSM2 made) out of the directory the pods mount, on the same filesystem. */
  function moveTokenAway(): void {
    const [uuid, ...others] = readdirSync(token.tokenDir);
    assert.ok(uuid && others.length === 0, `one token directory in ${token.tokenDir}`);
    tokenMoved = { from: join(token.tokenDir, uuid), to: join(token.dir, `${uuid}.away`) };
    renameSync(tokenMoved.from, tokenMoved.to);
  }

  function restoreToken(): void {
    if (!tokenMoved) return;
    renameSync(tokenMoved.to, tokenMoved.from);
    tokenMoved = undefined;
  }


  /** One call to the plugin over its socket, as kube-apiserver makes it. */
  async function kmsCall<T>(call: (client: UnaryClient<typeof KeyManagementService.method>) => Promise<T>): Promise<T> {
    const client = grpcClient(KeyManagementService, `unix:${kms.socketPath}`);
    try {
      return await call(client);
    } finally {
      client.close();
    }
  }

  function matches(alert: Alert, name: string, labels: Record<string, string>): boolean {
    return alert.labels.alertname === name && Object.entries(labels).every(([k, v]) => alert.labels[k] === v);
  }

  async function waitAlert(name: string, labels: Record<string, string>, timeoutMs: number): Promise<Alert> {
    return eventually(`alert ${name} firing`, timeoutMs, async () => (await prometheus!.alerts()).find((a) => matches(a, name, labels) && a.state === 'firing'), 1000);
  }

  async function waitAlertGone(name: string, labels: Record<string, string>, timeoutMs: number): Promise<void> {
    await eventually(`alert ${name} resolved`, timeoutMs, async () => ((await prometheus!.alerts()).some((a) => matches(a, name, labels)) ? undefined : true), 1000);
  }

  /** Whether a range query over the run has any numeric point (NaN, as from a quantile of no requests, is no data). */
  async function hasData(expr: string, start: number, end: number): Promise<boolean> {
    const series = await prometheus!.queryRange(expr, start, end, 10);
    return series.some((s) => s.values.some(([, value]) => !Number.isNaN(Number(value))));
  }
});

interface StaticPod {
  spec: { containers: { args: string[] }[]; volumes: { name: string; hostPath: { path: string } }[] };
}

interface Panel {
  type: string;
  title: string;
  targets?: { refId: string; expr?: string }[];
  panels?: Panel[];
}
interface Dashboard {
  panels: Panel[];
}

/** The panels that query: rows only group them (their nested panels included). */
function queryPanels(dashboard: Dashboard): Panel[] {
  return dashboard.panels.flatMap((panel) => [panel, ...(panel.panels ?? [])]).filter((panel) => panel.type !== 'row');
}
