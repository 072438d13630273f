// The cost of an encrypted workload directory (volume/, fscrypt v2 AES-256-XTS) on one ext4 made
// with -O encrypt on a loop device: `keyward volume unlock` as a pod's init container runs it
// (the whole process, first use and a later start), and write and read throughput in the
// encrypted directory against a plain directory of the same filesystem, measured in turns so
// drift in the machine's load falls on both. Reads start from a cold page cache. JSON lines.
//   npm run bench:volume        (root: loop device, mount, drop_caches)
import { execFileSync } from 'node:child_process';
import { closeSync, fsyncSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createEncryptedFilesystem, nodeUnsupportedReason } from '../testbed/volume/encryptedFilesystem.js';
import { emit, load1m, percentile, round, warnIfBusy } from './report.js';

const rounds = Number(process.env.KEYWARD_BENCH_ROUNDS ?? 5);
const fileMiB = Number(process.env.KEYWARD_BENCH_FILE_MIB ?? 128);
const unlockRuns = 10;
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

function main(): void {
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
  } finally {
    rmSync(keys, { recursive: true, force: true });
    fs.stop();
  }
}

try {
  main();
} catch (err) {
  console.error(err);
  process.exitCode = 1;
}
