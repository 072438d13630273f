// What a running node changes on the host, recorded before it starts and undone when it stops, or
// by the next start when the run was killed: the processes it started (by pid and start time),
// mounts under its directory, network namespaces, kubepods cgroups, its CNI bridge, iptables
// chains, sysctls and the CNI cache. One node per machine: the record doubles as a lock.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setupError } from '../../core/errors.js';

const recordDir = '/run/keyward-test-node';
const recordFile = join(recordDir, 'record.json');

/** Values kubelet, kube-proxy and the CNI bridge plugin may set. */
const watchedSysctls = [
  'net/ipv4/ip_forward',
  'net/ipv4/conf/all/route_localnet',
  'net/bridge/bridge-nf-call-iptables',
  'net/bridge/bridge-nf-call-ip6tables',
  'vm/overcommit_memory',
  'vm/panic_on_oom',
  'kernel/panic',
  'kernel/panic_on_oops',
  'kernel/keys/root_maxkeys',
  'kernel/keys/root_maxbytes',
];

const iptablesVariants = ['iptables', 'iptables-legacy', 'ip6tables', 'ip6tables-legacy'];
const iptablesTables = ['filter', 'nat', 'mangle'];
const addedChainPrefixes = ['KUBE-', 'CNI-'];
const cgroupRoot = '/sys/fs/cgroup';
const cniCacheDir = '/var/lib/cni';
const containerdRunDir = '/run/containerd';

interface StartedProcess {
  pid: number;
  /** /proc/<pid>/stat field 22: tells a reused pid from ours. */
  startTime: string;
  name: string;
}

interface HostRecord {
  owner: StartedProcess;
  dir: string;
  bridge: string;
  sysctls: Record<string, string>;
  netns: string[];
  existed: { cniCache: boolean; containerdRun: boolean; netnsDir: boolean };
  processes: StartedProcess[];
  /** containerd sockets: shims started for them are ours too. */
  containerdSockets: string[];
}

function procStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

function isAlive(p: StartedProcess): boolean {
  return procStartTime(p.pid) === p.startTime;
}

function readSysctl(name: string): string | undefined {
  try {
    return readFileSync(join('/proc/sys', name), 'utf8').trim();
  } catch {
    return undefined;
  }
}

function has(command: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;
}

/** Reading a legacy table the kernel has not made yet would make it: only read existing ones. */
function tableExists(variant: string, table: string): boolean {
  if (!variant.endsWith('-legacy')) return true;
  const names = variant.startsWith('ip6') ? '/proc/net/ip6_tables_names' : '/proc/net/ip_tables_names';
  return existsSync(names) && readFileSync(names, 'utf8').split('\n').includes(table);
}

/** The lines of `<variant>-save -t <table>`; none when the table does not exist. */
function saveTable(variant: string, table: string): string[] {
  if (!tableExists(variant, table)) return [];
  const out = spawnSync(`${variant}-save`, ['-t', table], { encoding: 'utf8' });
  return out.status === 0 ? out.stdout.split('\n') : [];
}

const chainNames = (lines: string[]): string[] => lines.filter((l) => l.startsWith(':')).map((l) => l.slice(1).split(' ')[0]!);
const isNodeChain = (name: string): boolean => addedChainPrefixes.some((p) => name.startsWith(p));

function kubepodsCgroups(): string[] {
  if (!existsSync(cgroupRoot)) return [];
  return readdirSync(cgroupRoot)
    .map((h) => join(cgroupRoot, h, 'kubepods'))
    .filter((p) => existsSync(p));
}

function listNetns(): string[] {
  return existsSync('/run/netns') ? readdirSync('/run/netns') : [];
}

/** Kubernetes or CNI chains in any table, as `variant/table:chain`. */
function nodeChains(): string[] {
  return iptablesVariants.filter(has).flatMap((variant) =>
    iptablesTables.flatMap((table) => chainNames(saveTable(variant, table)).filter(isNodeChain).map((n) => `${variant}/${table}:${n}`)),
  );
}

function writeRecord(record: HostRecord): void {
  writeFileSync(recordFile, JSON.stringify(record, null, 1), { mode: 0o600 });
}

/** The host as a node found it; `undo()` puts it back. Throws naming the owner if a node runs. */
export class HostChanges {
  private constructor(private record: HostRecord) {}

  static take(dir: string, bridge: string): HostChanges {
    mkdirSync(recordDir, { recursive: true, mode: 0o700 });
    if (existsSync(recordFile)) {
      const previous = JSON.parse(readFileSync(recordFile, 'utf8')) as HostRecord;
      if (isAlive(previous.owner) && previous.owner.pid !== process.pid) {
        throw setupError(`a test node already runs on this machine (process ${previous.owner.pid}, directory ${previous.dir}): one node per machine`);
      }
      // A killed run: undo what it left before recording the host afresh.
      new HostChanges(previous).undo();
    }
    const self: StartedProcess = { pid: process.pid, startTime: procStartTime(process.pid) ?? '', name: 'test runner' };
    // So every such chain present at undo is this node's.
    const foreign = nodeChains();
    if (foreign.length > 0) {
      throw setupError(`iptables already holds Kubernetes or CNI chains (${foreign.slice(0, 5).join(', ')}): another Kubernetes runs on this machine`);
    }
    const [kubepods] = kubepodsCgroups();
    if (kubepods) throw setupError(`cgroup ${kubepods} exists: another kubelet runs on this machine`);
    const record: HostRecord = {
      owner: self,
      dir,
      bridge,
      sysctls: Object.fromEntries(watchedSysctls.flatMap((n) => { const v = readSysctl(n); return v === undefined ? [] : [[n, v]]; })),
      netns: listNetns(),
      existed: { cniCache: existsSync(cniCacheDir), containerdRun: existsSync(containerdRunDir), netnsDir: existsSync('/run/netns') },
      processes: [],
      containerdSockets: [],
    };
    writeRecord(record);
    return new HostChanges(record);
  }

  /** Remember a process this node started, so a later run can stop it if this one is killed. */
  started(name: string, pid: number | undefined): void {
    if (pid === undefined) return;
    this.record.processes.push({ pid, startTime: procStartTime(pid) ?? '', name });
    writeRecord(this.record);
  }

  containerdSocket(path: string): void {
    this.record.containerdSockets.push(path);
    writeRecord(this.record);
  }

  /** Undo every change, best effort, in an order that frees each resource before its parent. */
  undo(): string[] {
    const problems: string[] = [];
    const attempt = (what: string, fn: () => void): void => {
      try {
        fn();
      } catch (err) {
        problems.push(`${what}: ${(err as Error).message}`);
      }
    };
    attempt('stop processes', () => this.killProcesses());
    attempt('unmount', () => this.unmountAll());
    attempt('network namespaces', () => this.removeNetns());
    attempt('containers', () => killContainers());
    attempt('cgroups', () => kubepodsCgroups().forEach(removeCgroupTree));
    attempt('bridge', () => {
      if (existsSync(`/sys/class/net/${this.record.bridge}`)) execFileSync('ip', ['link', 'delete', this.record.bridge]);
    });
    attempt('iptables', () => this.removeChains());
    attempt('sysctls', () => {
      for (const [name, value] of Object.entries(this.record.sysctls)) {
        if (readSysctl(name) !== value) writeFileSync(join('/proc/sys', name), value);
      }
    });
    attempt('files', () => {
      if (!this.record.existed.cniCache) rmSync(cniCacheDir, { recursive: true, force: true });
      if (!this.record.existed.containerdRun) rmSync(containerdRunDir, { recursive: true, force: true });
      if (!this.record.existed.netnsDir && existsSync('/run/netns') && readdirSync('/run/netns').length === 0) rmdirSync('/run/netns');
      rmSync(this.record.dir, { recursive: true, force: true });
    });
    if (problems.length === 0) rmSync(recordFile, { force: true });
    return problems;
  }

  private killProcesses(): void {
    const ours = [...this.record.processes].reverse().filter(isAlive);
    for (const socket of this.record.containerdSockets) ours.push(...shimsOf(socket));
    killAndWait(ours.map((p) => p.pid), () => ours.some(isAlive));
  }

  private unmountAll(): void {
    const under = (path: string): boolean => path === this.record.dir || path.startsWith(`${this.record.dir}/`);
    // Deepest first; some mounts stack (kubelet bind-mounts its root onto itself).
    for (let round = 0; round < 5; round++) {
      const targets = mountPoints().filter(under).sort((a, b) => b.length - a.length);
      if (targets.length === 0) return;
      for (const target of targets) {
        if (spawnSync('umount', [target], { stdio: 'ignore' }).status !== 0) spawnSync('umount', ['-l', target], { stdio: 'ignore' });
      }
    }
    const left = mountPoints().filter(under);
    if (left.length > 0) throw new Error(`still mounted: ${left.join(', ')}`);
  }

  private removeNetns(): void {
    for (const name of listNetns()) {
      if (this.record.netns.includes(name) || !name.startsWith('cni-')) continue;
      const path = join('/run/netns', name);
      spawnSync('umount', [path], { stdio: 'ignore' });
      rmSync(path, { force: true });
    }
  }

  private removeChains(): void {
    for (const variant of iptablesVariants.filter(has)) {
      for (const table of iptablesTables) {
        const lines = saveTable(variant, table);
        // take() refused a host that had any: every one now is the node's.
        const added = chainNames(lines).filter(isNodeChain);
        if (added.length === 0) continue;
        const jumps = lines.filter((l) => {
          const m = /^-A (\S+) .*-j (\S+)/.exec(l);
          return m !== null && !added.includes(m[1]!) && added.includes(m[2]!);
        });
        const script = [
          `*${table}`,
          ...jumps.map((l) => `-D${l.slice(2)}`),
          ...added.map((n) => `-F ${n}`),
          ...added.map((n) => `-X ${n}`),
          'COMMIT',
          '',
        ].join('\n');
        execFileSync(`${variant}-restore`, ['--noflush'], { input: script, stdio: ['pipe', 'ignore', 'pipe'] });
      }
    }
  }
}

function mountPoints(): string[] {
  // Field 5 of mountinfo is the mount point, with spaces and such octal-escaped.
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(' ')[4]!.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
}

/** Container processes outlive a killed shim: every process in the kubepods cgroups is the node's. */
function killContainers(): void {
  const pids = new Set<number>();
  const collect = (path: string): void => {
    for (const entry of readdirSync(path)) {
      const child = join(path, entry);
      if (entry === 'cgroup.procs') readFileSync(child, 'utf8').split('\n').filter(Boolean).forEach((p) => pids.add(Number(p)));
      else if (statSync(child).isDirectory()) collect(child);
    }
  };
  kubepodsCgroups().forEach(collect);
  killAndWait([...pids], () => [...pids].some((pid) => existsSync(`/proc/${pid}`)));
}

/** SIGKILL to each pid, then up to 5 s for `anyAlive` to turn false (synchronous: exit hooks run it). */
function killAndWait(pids: number[], anyAlive: () => boolean): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  const deadline = Date.now() + 5000;
  while (anyAlive() && Date.now() < deadline) spawnSync('sleep', ['0.1']);
}

function removeCgroupTree(path: string): void {
  for (const entry of readdirSync(path)) {
    const child = join(path, entry);
    if (statSync(child).isDirectory()) removeCgroupTree(child);
  }
  rmdirSync(path);
}

/** containerd-shim-runc-v2 processes serving the containerd at `socket`. */
function shimsOf(socket: string): StartedProcess[] {
  const found: StartedProcess[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
    } catch {
      continue;
    }
    if (!argv[0]?.endsWith('containerd-shim-runc-v2')) continue;
    const address = argv[argv.indexOf('-address') + 1];
    if (argv.includes('-address') && address === socket) {
      const pid = Number(entry);
      found.push({ pid, startTime: procStartTime(pid) ?? '', name: 'containerd shim' });
    }
  }
  return found;
}
