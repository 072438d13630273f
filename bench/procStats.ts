// What a benchmark reads about a process under test from /proc: CPU time and resident memory.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

const clockTicksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/** utime + stime of every thread of the process, in seconds. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name may hold spaces; the fields after it are fixed. utime and stime are fields
  // 14 and 15, which are 12th and 13th after the ')' that ends field 2.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / clockTicksPerSecond;
}

export function rssMib(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!match) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(match[1]) / 1024;
}

/** Resident memory split into anonymous (heap, stacks) and file-backed pages (the node binary, libraries). */
export function memoryMib(pid: number): { rss: number; anon: number; file: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(status)?.[1] ?? NaN);
  return { rss: kib('VmRSS') / 1024, anon: kib('RssAnon') / 1024, file: kib('RssFile') / 1024 };
}

/**
 * Samples RSS every `everyMs` until the returned function is called; it returns the peak seen
 * while the process lived (a process that died stops the sampling, it does not fail it).
 */
export function watchPeakRss(pid: number, everyMs = 200): () => number {
  let peak = rssMib(pid);
  const sample = (): void => {
    try {
      peak = Math.max(peak, rssMib(pid));
    } catch {
      clearInterval(timer);
    }
  };
  const timer = setInterval(sample, everyMs);
  return () => {
    clearInterval(timer);
    sample();
    return peak;
  };
}
