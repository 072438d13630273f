import { AuthenticationV1Api, CoreV1Api, VersionApi } from '@kubernetes/client-node';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { startControlPlane, type ControlPlane } from './controlPlane.js';
import { readEtcdKey, secretEtcdKey } from './etcdClient.js';

const processAlive = (pid: number | undefined): boolean => {
  if (pid === undefined) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('a real control plane (etcd + kube-apiserver as processes)', function () {
  this.timeout(300_000);
  let cp: ControlPlane;

  before(async () => {
    cp = await startControlPlane();
  });
  after(async () => {
    await cp?.stop();
  });

  it('reports the real Kubernetes release on /version', async () => {
    const version = await cp.kubeConfig.makeApiClient(VersionApi).getCode();
    assert.equal(version.gitVersion, cp.kubernetesVersion);
  });

  it('stores a Secret that reads back through the API and sits in etcd in plain form', async () => {
    const core = cp.kubeConfig.makeApiClient(CoreV1Api);
    const value = `plain-value-${Date.now()}`;
    await core.createNamespacedSecret({
      namespace: 'default',
      body: { metadata: { name: 'plain' }, stringData: { password: value } },
    });
    const read = await core.readNamespacedSecret({ namespace: 'default', name: 'plain' });
    assert.equal(Buffer.from(read.data?.password ?? '', 'base64').toString(), value);

    const raw = await readEtcdKey(cp.etcdEndpoint, secretEtcdKey('default', 'plain'));
    assert.ok(raw, 'the Secret is in etcd');
    assert.ok(raw.subarray(0, 4).equals(Buffer.from('k8s\0')), 'stored as unencrypted protobuf');
    assert.ok(raw.includes(Buffer.from(value)), 'no encryption configured: the value is in etcd as is');
  });

  it('issues a ServiceAccount token through TokenRequest and verifies it with TokenReview', async () => {
    const core = cp.kubeConfig.makeApiClient(CoreV1Api);
    const auth = cp.kubeConfig.makeApiClient(AuthenticationV1Api);
    await core.createNamespacedServiceAccount({ namespace: 'default', body: { metadata: { name: 'workload' } } });
    const request = await core.createNamespacedServiceAccountToken({
      namespace: 'default',
      name: 'workload',
      body: { spec: { audiences: ['keyward-test'], expirationSeconds: 600 } },
    });
    const token = request.status?.token;
    assert.ok(token, 'a token was issued');

    const review = await auth.createTokenReview({ body: { spec: { token, audiences: ['keyward-test'] } } });
    assert.equal(review.status?.authenticated, true);
    assert.equal(review.status?.user?.username, 'system:serviceaccount:default:workload');
    assert.deepEqual(review.status?.audiences, ['keyward-test']);

    const wrongAudience = await auth.createTokenReview({ body: { spec: { token, audiences: ['someone-else'] } } });
    assert.notEqual(wrongAudience.status?.authenticated, true, 'a token for another audience is refused');
    const forged = await auth.createTokenReview({ body: { spec: { token: `${token.slice(0, -4)}AAAA` } } });
    assert.notEqual(forged.status?.authenticated, true, 'a tampered token is refused');
  });

  it('runs a second control plane, with kube-controller-manager, beside the first; stop leaves nothing behind', async () => {
    const second = await startControlPlane({ controllerManager: true });
    const pids = [second.etcd.pid, second.apiserver.pid, second.controllerManager?.pid];
    try {
      assert.notEqual(second.apiserverUrl, cp.apiserverUrl);
      assert.notEqual(second.etcdEndpoint, cp.etcdEndpoint);
      assert.notEqual(second.dir, cp.dir);
      const core = second.kubeConfig.makeApiClient(CoreV1Api);
      await core.createNamespacedConfigMap({ namespace: 'default', body: { metadata: { name: 'only-here' } } });
      const first = cp.kubeConfig.makeApiClient(CoreV1Api);
      await assert.rejects(first.readNamespacedConfigMap({ namespace: 'default', name: 'only-here' }), /404|not found/i);
      // The controller manager is really working: it gives each namespace a 'default' ServiceAccount.
      await core.createNamespace({ body: { metadata: { name: 'fresh' } } });
      let found = false;
      for (let i = 0; i < 120 && !found; i++) {
        found = (await core.listNamespacedServiceAccount({ namespace: 'fresh' })).items.some((sa) => sa.metadata?.name === 'default');
        if (!found) await new Promise((r) => setTimeout(r, 250));
      }
      assert.ok(found, "kube-controller-manager created the 'default' ServiceAccount");
    } finally {
      await second.stop();
    }
    assert.ok(!existsSync(second.dir), 'its directory is removed');
    assert.ok(pids.every((pid) => !processAlive(pid)), 'its processes are gone');
  });
});

describe('control plane set-up errors', function () {
  this.timeout(120_000);

  it('names the port when a requested port is in use', async () => {
    const blocker: Server = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as { port: number }).port;
    try {
      await assert.rejects(startControlPlane({ ports: { apiserver: port } }), new RegExp(`port ${port} on 127.0.0.1.*in use`));
    } finally {
      blocker.close();
    }
  });

  it('fails with the tail of the component log when a component does not become ready in time', async () => {
    // 1 ms is too short for any apiserver; the error must carry what the component logged.
    await assert.rejects(startControlPlane({ readyTimeoutMs: 1 }), (err: Error) => {
      assert.match(err.message, /did not become (healthy|ready).* within 0s; last lines of .*\.log:\n/s);
      return true;
    });
  });

  it('fails with the tail of the log when a component exits early', async () => {
    await assert.rejects(startControlPlane({ extraApiserverArgs: ['--no-such-flag=1'] }), (err: Error) => {
      assert.match(err.message, /kube-apiserver exited with code \d+ before becoming ready/);
      assert.match(err.message, /unknown flag: --no-such-flag/);
      return true;
    });
  });

  it('kills its components and removes its directory when the process is interrupted', async () => {
    // A child process starts a control plane, prints its pids and directory, and gets SIGTERM.
    const script = `
      import { startControlPlane } from ${JSON.stringify(join(import.meta.dirname, 'controlPlane.js'))};
      const cp = await startControlPlane();
      console.log(JSON.stringify({ dir: cp.dir, pids: [cp.etcd.pid, cp.apiserver.pid] }));
      setInterval(() => {}, 1000);
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (chunk: Buffer) => {
        out += chunk.toString();
        if (out.includes('\n')) resolve(out.split('\n')[0] ?? '');
      });
      child.once('exit', (code) => reject(new Error(`child exited with ${code} before starting`)));
    });
    const started = JSON.parse(line) as { dir: string; pids: number[] };
    assert.ok(started.pids.every(processAlive));
    child.kill('SIGTERM');
    await new Promise((resolve) => child.once('exit', resolve));
    for (let i = 0; i < 50 && started.pids.some(processAlive); i++) await new Promise((r) => setTimeout(r, 100));
    assert.ok(!started.pids.some(processAlive), 'etcd and kube-apiserver are gone');
    assert.ok(!existsSync(started.dir), 'the temporary directory is gone');
  });
});

describe('control-plane build errors', function () {
  this.timeout(120_000);
  const buildScript = join(import.meta.dirname, '..', '..', '..', 'testbed', 'control-plane', 'build.sh');
  const run = (env: NodeJS.ProcessEnv): string => {
    try {
      execFileSync('bash', [buildScript], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      return (err as { stderr: Buffer }).stderr.toString();
    }
    assert.fail('the build should have failed');
  };

  it('says that Go is missing', () => {
    const stderr = run({ PATH: '/usr/bin:/bin', HOME: process.env.HOME, KEYWARD_CACHE: '/nonexistent/keyward-cache' });
    assert.match(stderr, /FAILED: Go is not installed/);
  });

  it('says that the Go module proxy is unreachable', () => {
    const stderr = run({
      ...process.env,
      KEYWARD_CACHE: '/nonexistent/keyward-cache',
      GOPROXY: 'http://127.0.0.1:9/',
    });
    assert.match(stderr, /FAILED: the Go module proxy is unreachable \(GOPROXY=http:\/\/127\.0\.0\.1:9\/\)/);
  });
});
