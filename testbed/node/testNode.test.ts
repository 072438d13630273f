// The test node itself: a pod runs on it and reaches the apiserver through its Service, and the
// host is left exactly as it was found, after a clean stop and after a run killed with SIGKILL.
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { eventually } from '../eventually.js';
import { nodeUnsupportedReason, startTestNode, type TestNode } from './testNode.js';

/** What the harness promises to restore, read the same way before and after. */
function hostSnapshot(): Record<string, unknown> {
  const sh = (cmd: string): string => spawnSync('sh', ['-c', cmd], { encoding: 'utf8' }).stdout.trim();
  return {
    mounts: sh("grep -c keyward-node- /proc/self/mountinfo || true"),
    netns: existsSync('/run/netns') ? readdirSync('/run/netns').sort() : [],
    kubepods: sh('ls -d /sys/fs/cgroup/*/kubepods 2>/dev/null || true'),
    links: sh("ip -o link show | awk -F': ' '{print $2}' | sort"),
    chains: sh("for t in filter nat mangle; do iptables-save -t $t | grep '^:' | cut -d' ' -f1; done | sort"),
    ipForward: readFileSync('/proc/sys/net/ipv4/ip_forward', 'utf8').trim(),
    nodeDirs: readdirSync('/tmp').filter((d) => d.startsWith('keyward-node-') || d.startsWith('keyward-cp-')),
    processes: sh("ps -eo comm | grep -E '^(containerd|kubelet|kube-proxy|secrets-store|registrar|containerd-shim)' || true"),
  };
}

describe('test node (real kubelet, containerd, CSI driver)', function () {
  this.timeout(300_000);
  let initial: Record<string, unknown>;
  let node: TestNode | undefined;

  before(function () {
    const reason = nodeUnsupportedReason();
    if (reason) this.skip();
    initial = hostSnapshot();
  });

  after(async () => {
    await node?.stop();
  });

  it('runs a pod that reaches the apiserver through the kubernetes Service', async () => {
    node = await startTestNode();
    const busybox = node.images.busybox.ref;
    await node.apply(`apiVersion: v1
kind: Pod
metadata: { name: probe, namespace: default }
spec:
  automountServiceAccountToken: false
  containers:
    - name: probe
      image: ${busybox}
      imagePullPolicy: Never
      command: [sh, -c, 'nc -w 3 10.0.0.1 443 </dev/null && echo reached; sleep 3600']
`);
    await node.kubectl(['wait', '--for=condition=Ready', 'pod/probe', '--timeout=60s']);
    const log = await eventually('the probe log', 20_000, async () => {
      const out = await node!.kubectl(['logs', 'probe']);
      return out.includes('reached') ? out : undefined;
    }, 500);
    assert.match(log, /reached/);
    const csiNode = await node.kubectl(['get', 'csinode', node.name, '-o', 'jsonpath={.spec.drivers[*].name}']);
    assert.equal(csiNode, 'secrets-store.csi.k8s.io');
  });

  it('leaves the host as it found it after stop', async () => {
    await node!.stop();
    node = undefined;
    assert.deepEqual(hostSnapshot(), initial);
  });

  it('undoes what a killed run left behind when the next node starts', async () => {
    // A child process starts a node and is killed with SIGKILL: no exit hook runs.
    const child = spawn(process.execPath, ['--input-type=module', '-e', `
      const { startTestNode } = await import(${JSON.stringify(join(import.meta.dirname, 'testNode.js'))});
      await startTestNode();
      console.log('node up');
      setInterval(() => {}, 1000);
    `], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (chunk: Buffer) => chunk.toString().includes('node up') && resolve());
      child.once('exit', (code) => reject(new Error(`the child exited with ${code} before its node was up`)));
    });
    child.kill('SIGKILL');
    await new Promise((resolve) => child.once('exit', resolve));
    assert.notDeepEqual(hostSnapshot(), initial, 'a killed run leaves changes behind');

    node = await startTestNode();
    await node.stop();
    node = undefined;
    assert.deepEqual(hostSnapshot(), initial);
    assert.equal(execFileSync('sh', ['-c', 'ls /run/keyward-test-node 2>/dev/null || true'], { encoding: 'utf8' }).trim(), '');
  });
});
