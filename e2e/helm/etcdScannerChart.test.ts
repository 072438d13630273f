// The etcd scanner as the chart ships it: a second container of the KMS static pod (kubeadm
// paths), and of the KMS plugin DaemonSet when kmsPlugin.etcdScanner.enabled. Read-only etcd
// client files, locked down like every Keyward container, liveness only, flags the CLI accepts.
import type { KubernetesObject, V1Container, V1DaemonSet, V1Pod, V1PodSpec } from '@kubernetes/client-node';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { keywardCli } from '../kms/kmsPluginProcess.js';
import { chartDir, helmIn, parseManifests, renderChart, type Helm } from './helm.js';

const releaseNamespace = 'keyward-system';
const withPlugin = ['--set', 'kmsPlugin.enabled=true', '--set', 'hsm.softhsm.hostPath=/var/lib/keyward/softhsm'];

const only = <T>(objects: KubernetesObject[], kind: string): T => {
  const found = objects.filter((o) => o.kind === kind);
  assert.equal(found.length, 1, `one ${kind}`);
  return found[0] as T;
};
const scannerOf = (spec: V1PodSpec | undefined): V1Container | undefined => spec?.containers.find((c) => c.name === 'etcd-scanner');

function assertScannerLockedDown(where: string, container: V1Container): void {
  const sc = container.securityContext ?? {};
  assert.equal(sc.runAsNonRoot, true, `${where}: runAsNonRoot`);
  assert.ok((sc.runAsUser ?? 0) > 0, `${where}: non-zero uid`);
  assert.equal(sc.readOnlyRootFilesystem, true, `${where}: read-only root filesystem`);
  assert.equal(sc.allowPrivilegeEscalation, false, `${where}: no privilege escalation`);
  assert.deepEqual(sc.capabilities?.drop, ['ALL'], `${where}: drops ALL`);
  assert.equal(sc.capabilities?.add, undefined, `${where}: adds none`);
  assert.equal(container.readinessProbe, undefined, `${where}: liveness only, a failed scan is not unreadiness`);
  assert.equal(container.livenessProbe?.httpGet?.path, '/livez', `${where}: liveness on /livez`);
  for (const kind of ['cpu', 'memory']) assert.ok(container.resources?.limits?.[kind], `${where}: ${kind} limit`);
}

/** The etcd client files the container reads, each mounted read-only from a hostPath File. */
function assertEtcdFilesReadOnly(where: string, spec: V1PodSpec, container: V1Container): void {
  const flags = ['--etcd-cafile=', '--etcd-certfile=', '--etcd-keyfile='];
  for (const flag of flags) {
    const path = container.args?.find((a) => a.startsWith(flag))?.slice(flag.length);
    assert.ok(path, `${where}: ${flag}`);
    const mount = container.volumeMounts?.find((m) => path === m.mountPath || path.startsWith(`${m.mountPath}/`));
    assert.ok(mount, `${where}: ${path} is mounted`);
    assert.equal(mount.readOnly, true, `${where}: ${path} mounted read-only`);
    assert.ok(spec.volumes?.find((v) => v.name === mount.name)?.hostPath, `${where}: ${path} comes from the node`);
  }
}

describe('the etcd scanner in the chart', function () {
  this.timeout(120_000);
  let home: string;
  let helm: Helm;

  before(() => {
    home = mkdtempSync(join(tmpdir(), 'keyward-helm-scanner-'));
    helm = helmIn(home);
  });
  after(() => {
    if (home) rmSync(home, { recursive: true, force: true });
  });

  it('runs beside the KMS plugin in the static pod, with kubeadm etcd paths, read-only client files, locked down', () => {
    const pod = only<V1Pod>(parseManifests(readFileSync(join(chartDir, 'files', 'kms-plugin-static-pod.yaml'), 'utf8')), 'Pod');
    const spec = pod.spec!;
    assert.equal(spec.containers[0]?.name, 'kms-plugin', 'the plugin stays the first container');
    const scanner = scannerOf(spec);
    assert.ok(scanner);
    assert.deepEqual(scanner.command?.slice(-2), ['/app/dist/cli/keyward.js', 'etcd-scanner']);
    for (const flag of ['--etcd-endpoints=https://127.0.0.1:2379', '--etcd-cafile=/etc/kubernetes/pki/etcd/ca.crt', '--provider-name=keyward', '--ring=etcd-secrets', '--namespace=kube-system']) {
      assert.ok(scanner.args?.includes(flag), `static pod scanner arg ${flag}`);
    }
    assert.equal(spec.volumes?.find((v) => v.name === 'etcd-ca')?.hostPath?.type, 'File');
    assertScannerLockedDown('static pod etcd-scanner', scanner);
    assertEtcdFilesReadOnly('static pod etcd-scanner', spec, scanner);
    // hostNetwork: its listener must not collide with the plugin's (9464) or the plugin's TLS metrics (9467).
    const port = (c: V1Container) => c.args?.find((a) => a.startsWith('--metrics-address='));
    assert.equal(port(scanner), '--metrics-address=127.0.0.1:9468');
    assert.notEqual(port(scanner), port(spec.containers[0]));
  });

  it('is off in the DaemonSet by default, and on with kmsPlugin.etcdScanner.enabled: node-address endpoint, read-only client files', async () => {
    const [off, on] = await Promise.all([
      renderChart(helm, releaseNamespace, withPlugin),
      renderChart(helm, releaseNamespace, [...withPlugin, '--set', 'kmsPlugin.etcdScanner.enabled=true', '--set', 'kmsPlugin.etcdScanner.encryptedResources={secrets,widgets.example.com}']),
    ]);
    assert.equal(scannerOf(only<V1DaemonSet>(off, 'DaemonSet').spec?.template.spec), undefined);
    const spec = only<V1DaemonSet>(on, 'DaemonSet').spec!.template.spec!;
    const scanner = scannerOf(spec);
    assert.ok(scanner);
    assert.ok(scanner.args?.includes('--etcd-endpoints=https://$(HOST_IP):2379'));
    assert.ok(scanner.args?.includes('--resources=secrets,widgets.example.com'));
    assert.equal(scanner.env?.find((e) => e.name === 'HOST_IP')?.valueFrom?.fieldRef?.fieldPath, 'status.hostIP');
    assertScannerLockedDown('DaemonSet etcd-scanner', scanner);
    assertEtcdFilesReadOnly('DaemonSet etcd-scanner', spec, scanner);
    await assert.rejects(
      renderChart(helm, releaseNamespace, [...withPlugin, '--set', 'kmsPlugin.etcdScanner.enabled=true', '--set', 'kmsPlugin.etcdScanner.providerName=a:b']),
      /providerName/,
    );
  });

  it('passes only flags the CLI accepts: the static pod\'s scanner arguments, with an unreachable etcd, fail on the HSM, not on parsing', () => {
    const pod = only<V1Pod>(parseManifests(readFileSync(join(chartDir, 'files', 'kms-plugin-static-pod.yaml'), 'utf8')), 'Pod');
    const args = scannerOf(pod.spec)!.args!.map((a) => (a.startsWith('--pin-file=') ? '--pin-file=/nonexistent/pin' : a));
    let stderr = '';
    try {
      execFileSync(process.execPath, [keywardCli, 'etcd-scanner', ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 20_000 });
    } catch (err) {
      stderr = String((err as { stderr?: Buffer }).stderr);
    }
    assert.match(stderr, /^keyward etcd-scanner: /);
    assert.doesNotMatch(stderr, /Unknown option|needs --|must be/, 'every flag parsed');
    assert.match(stderr, /pin|PIN|PKCS#11|module/, 'stopped at the HSM');
  });
});
