// The cost of an encrypted workload directory (volume/, fscrypt v2 AES-256-XTS) on one ext4 made
// with -O encrypt on a loop device, as JSON lines:
//   - `keyward volume unlock` as a process (first use, and later starts);
//   - write and read throughput in the encrypted directory against a plain directory of the same
//     filesystem, in turns so drift in the machine's load falls on both; reads from a cold page
//     cache; with the kernel's AES-XTS driver and, for scale, OpenSSL's AES-256-XTS in this process;
//   - on a real node, pod create → Ready of the example's pod (unlock init container, hold
//     sidecar) against the same pod without the two, alternated: the unlock's cost at pod start.
//   npm run bench:volume        (root: loop device, mount, drop_caches, the test node)
import { CoreV1Api, type V1Pod } from '@kubernetes/client-node';
import { execFileSync } from 'node:child_process';
import { closeSync, fsyncSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { createCipheriv, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { trackDirectory } from '../testbed/control-plane/componentProcess.js';
import { eventually } from '../testbed/eventually.js';
import { buildKeywardImage } from '../testbed/image/keywardImage.js';
import { nodeUnsupportedReason as nodeUnsupported, startTestNode, type TestNode } from '../testbed/node/testNode.js';
import { createEncryptedFilesystem, nodeUnsupportedReason, type EncryptedFilesystem } from '../testbed/volume/encryptedFilesystem.js';
import { createNodeToken, installKeyward } from '../e2e/install/keywardOnNode.js';
import { applyEncryptedLocalStorage, encryptedVolumeExample, forNode } from '../e2e/volume/encryptedVolumeOnNode.js';
import { emit, load1m, percentile, round, warnIfBusy } from './report.js';

const rounds = Number(process.env.KEYWARD_BENCH_ROUNDS ?? 5);
const fileMiB = Number(process.env.KEYWARD_BENCH_FILE_MIB ?? 128);
const unlockRuns = 10;
const podRounds = Number(process.env.KEYWARD_BENCH_POD_ROUNDS ?? 10);
const cli = fileURLToPath(new URL('../cli/keyward.js', import.meta.url));
const progress = (line: string): void => console.error(`[bench:volume] ${line}`);

function keyward(args: string[]): number {
  const start = performance.now();
  execFileSync(process.execPath, [cli, ...args, '--audit-log=/dev/null'], { stdio: ['ignore', 'ignore', 'pipe'] });
  return performance.now() - start;
}

function dropCaches(): void {
  execFileSync('sync');
  writeFileSync('/proc/sys/vm/drop_caches', '3');
}

/** MiB/s writing `fileMiB` in 1 MiB writes, fsync included. */
function writeThroughput(path: string, chunk: Buffer): number {
  const start = performance.now();
  const fd = openSync(path, 'w');
  try {
    for (let i = 0; i < fileMiB; i++) writeSync(fd, chunk);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return fileMiB / ((performance.now() - start) / 1000);
}

/** MiB/s reading the file back from a cold cache. */
function readThroughput(path: string): number {
  dropCaches();
  const buffer = Buffer.alloc(1 << 20);
  const start = performance.now();
  const fd = openSync(path, 'r');
  try {
    while (readSync(fd, buffer, 0, buffer.length, null) > 0);
  } finally {
    closeSync(fd);
  }
  return fileMiB / ((performance.now() - start) / 1000);
}

const median = (values: number[]): number => percentile([...values].sort((a, b) => a - b), 50);

/** The kernel's implementation of xts(aes), the one fscrypt encrypts contents with. */
function kernelXtsDriver(): string {
  const entry = readFileSync('/proc/crypto', 'utf8').split('\n\n').find((block) => /^name\s*: xts\(aes\)$/m.test(block));
  return /^driver\s*: (.*)$/m.exec(entry ?? '')?.[1] ?? 'none';
}

/** MiB/s of OpenSSL's AES-256-XTS in this process (AES-NI when the CPU has it), 4 KiB units as fscrypt uses. */
function opensslXtsThroughput(): number {
  const key = randomBytes(64);
  const block = randomBytes(4096);
  const iv = Buffer.alloc(16);
  const blocks = (fileMiB * 1024 * 1024) / block.length;
  const start = performance.now();
  for (let i = 0; i < blocks; i++) {
    iv.writeUInt32LE(i, 0);
    createCipheriv('aes-256-xts', key, iv).update(block);
  }
  return fileMiB / ((performance.now() - start) / 1000);
}

function onTheFilesystem(): void {
  const reason = nodeUnsupportedReason();
  if (reason) throw new Error(`bench:volume cannot run here: ${reason}`);
  warnIfBusy(progress);
  const fs = createEncryptedFilesystem({ sizeMiB: fileMiB * 2 + 64 });
  const keys = mkdtempSync(join(tmpdir(), 'keyward-volume-bench-'));
  try {
    const keyFile = join(keys, 'data.key');
    writeFileSync(keyFile, randomBytes(64), { mode: 0o400 });
    const plain = join(fs.mountPoint, 'plain');
    const encrypted = join(fs.mountPoint, 'encrypted');
    mkdirSync(plain);

    progress(`unlock: ${unlockRuns} starts of \`keyward volume unlock\` (a pod's init container), the first one encrypting the directory`);
    const firstUse = keyward(['volume', 'unlock', `--dir=${encrypted}`, `--key=${keyFile}`, '--key-version=1']);
    const later: number[] = [];
    for (let i = 0; i < unlockRuns; i++) {
      keyward(['volume', 'lock', `--dir=${encrypted}`]);
      later.push(keyward(['volume', 'unlock', `--dir=${encrypted}`, `--key=${keyFile}`, '--key-version=1']));
    }
    const sortedLater = [...later].sort((a, b) => a - b);
    emit({ bench: 'volume', figure: 'unlock', firstUseMs: round(firstUse, 1), laterP50Ms: round(percentile(sortedLater, 50), 1), laterMaxMs: round(sortedLater.at(-1)!, 1), runs: unlockRuns, note: 'whole CLI process, Node start included', load1m: load1m() });

    progress(`throughput: ${rounds} rounds of ${fileMiB} MiB written (fsync) and read (cold cache), plain and encrypted in turn`);
    const chunk = randomBytes(1 << 20);
    const results = { plain: { write: [] as number[], read: [] as number[] }, encrypted: { write: [] as number[], read: [] as number[] } };
    for (let r = 0; r < rounds; r++) {
      const order = r % 2 === 0 ? (['plain', 'encrypted'] as const) : (['encrypted', 'plain'] as const);
      for (const kind of order) {
        const path = join(kind === 'plain' ? plain : encrypted, 'blob');
        results[kind].write.push(writeThroughput(path, chunk));
        results[kind].read.push(readThroughput(path));
        rmSync(path);
      }
    }
    for (const op of ['write', 'read'] as const) {
      const plainMiBs = median(results.plain[op]);
      const encryptedMiBs = median(results.encrypted[op]);
      emit({ bench: 'volume', figure: `${op}Throughput`, plainMiBs: round(plainMiBs, 1), encryptedMiBs: round(encryptedMiBs, 1), ratio: round(encryptedMiBs / plainMiBs, 3), target: 0.8, fileMiB, rounds, load1m: load1m() });
    }
    emit({ bench: 'volume', figure: 'cipher', kernelXtsDriver: kernelXtsDriver(), opensslXtsMiBs: round(opensslXtsThroughput(), 1), load1m: load1m() });
  } finally {
    rmSync(keys, { recursive: true, force: true });
    fs.stop();
  }
}

/** Create → Ready of one pod, by polling its status (sequential pods: no watch needed). */
async function timedPodStart(core: CoreV1Api, pod: V1Pod): Promise<number> {
  const { namespace, name } = pod.metadata as { namespace: string; name: string };
  const start = performance.now();
  await core.createNamespacedPod({ namespace, body: pod });
  for (;;) {
    const status = (await core.readNamespacedPod({ namespace, name })).status;
    if (status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True')) break;
    if (performance.now() - start > 120_000) throw new Error(`pod ${name} not Ready in 120 s: ${JSON.stringify(status?.containerStatuses ?? status?.initContainerStatuses ?? [])}`);
    await sleep(25);
  }
  const elapsed = performance.now() - start;
  // Deleted with its grace period, so the hold sidecar locks the directory before the next pod.
  await core.deleteNamespacedPod({ namespace, name });
  while (await core.readNamespacedPod({ namespace, name }).then(() => true, () => false)) await sleep(100);
  return elapsed;
}

async function atPodStart(dir: string): Promise<void> {
  const image = await buildKeywardImage();
  let node: TestNode | undefined;
  let fs: EncryptedFilesystem | undefined;
  try {
    node = await startTestNode({ images: [image.dockerArchive], progress });
    await installKeyward(node, image.ref, createNodeToken(join(node.dir, 'softhsm')), join(dir, 'helm'));
    fs = createEncryptedFilesystem({ sizeMiB: 64 });
    await applyEncryptedLocalStorage(node, fs, 64);
    // The example as users apply it; its first pod encrypts the directory, then it is scaled to 0
    // and its pod template is started as bare pods on the same claim.
    await node.kubectl(['apply', '-f', '-'], forNode(encryptedVolumeExample, node, image.ref));
    const ns = ['-n', 'records'];
    // The StatefulSet controller creates the pod a moment after the apply.
    await eventually('ledger-0 Ready', 180_000, () => node!.kubectl([...ns, 'wait', '--for=condition=Ready', 'pod/ledger-0', '--timeout=5s']).then(() => true, () => undefined), 1000);
    await node.kubectl([...ns, 'scale', 'statefulset', 'ledger', '--replicas=0']);
    await node.kubectl([...ns, 'wait', '--for=delete', 'pod/ledger-0', '--timeout=90s']).catch(() => undefined);
    const template = (JSON.parse(await node.kubectl([...ns, 'get', 'statefulset', 'ledger', '-o', 'json'])) as { spec: { template: { spec: NonNullable<V1Pod['spec']> } } }).spec.template.spec;
    const podOf = (name: string, unlock: boolean): V1Pod => {
      const spec = structuredClone(template);
      // The same application in both: it only sleeps, so it needs no unlocked directory.
      spec.containers[0]!.command = ['sleep', '2147483647'];
      spec.volumes = [...(spec.volumes ?? []), { name: 'data', persistentVolumeClaim: { claimName: 'data-ledger-0' } }];
      if (!unlock) {
        // The key volume stays, mounted by the application: the CSI mount costs both the same.
        spec.containers[0]!.volumeMounts = [...(spec.containers[0]!.volumeMounts ?? []), { name: 'volume-key', mountPath: '/run/keyward/volume', readOnly: true }];
        spec.initContainers = [];
      }
      return { apiVersion: 'v1', kind: 'Pod', metadata: { name, namespace: 'records' }, spec };
    };
    const core = node.kubeConfig.makeApiClient(CoreV1Api);
    progress(`pod start: ${podRounds} rounds of the example's pod with and without unlock + hold, in turns`);
    const times = { unlock: [] as number[], baseline: [] as number[] };
    for (let r = 0; r < podRounds; r++) {
      const order = r % 2 === 0 ? (['unlock', 'baseline'] as const) : (['baseline', 'unlock'] as const);
      for (const kind of order) times[kind].push(await timedPodStart(core, podOf(`bench-${kind}-${r}`, kind === 'unlock')));
    }
    const sorted = (values: number[]): number[] => [...values].sort((a, b) => a - b);
    const [unlock, baseline] = [sorted(times.unlock), sorted(times.baseline)];
    emit({
      bench: 'volume',
      figure: 'podStart',
      withUnlockP50Ms: round(percentile(unlock, 50), 0),
      withUnlockMaxMs: round(unlock.at(-1)!, 0),
      baselineP50Ms: round(percentile(baseline, 50), 0),
      baselineMaxMs: round(baseline.at(-1)!, 0),
      unlockCostP50Ms: round(percentile(unlock, 50) - percentile(baseline, 50), 0),
      rounds: podRounds,
      load1m: load1m(),
    });
  } finally {
    await node?.stop();
    fs?.stop();
  }
}

async function main(): Promise<void> {
  onTheFilesystem();
  const reason = nodeUnsupported();
  if (reason) {
    progress(`no pod-start figure: ${reason}`);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'keyward-volume-bench-node-'));
  const removeDir = trackDirectory(dir);
  try {
    await atPodStart(dir);
  } finally {
    removeDir();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
