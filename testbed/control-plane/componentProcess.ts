// A control-plane component run as a child process, its output in a log file. Every live
// component is killed, and its directory removed, when this process exits or is interrupted,
// so a failing or interrupted test leaves nothing behind.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, rmSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { setupError } from '../../core/errors.js';

const live = new Set<ComponentProcess>();
const liveDirs = new Set<string>();
const cleanups = new Set<() => void>();

function killAllNow(): void {
  for (const component of live) component.killNow();
  for (const cleanup of cleanups) {
    try {
      cleanup();
    } catch {
      // an exit hook must not throw; the next run's start cleans up what is left
    }
  }
  for (const dir of liveDirs) rmSync(dir, { recursive: true, force: true });
}

let hooksInstalled = false;
function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', killAllNow);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = (): void => {
      killAllNow();
      // Re-raise so the default (or another listener, such as mocha's) decides what happens next.
      process.off(signal, onSignal);
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
    };
    process.on(signal, onSignal);
  }
}

/** A synchronous clean-up run after the components are killed, if the process exits or is interrupted. */
export function onExitCleanup(cleanup: () => void): () => void {
  installExitHooks();
  cleanups.add(cleanup);
  return () => cleanups.delete(cleanup);
}

/** A directory removed with the process's components if the process is interrupted. */
export function trackDirectory(dir: string): () => void {
  installExitHooks();
  liveDirs.add(dir);
  return () => {
    liveDirs.delete(dir);
    rmSync(dir, { recursive: true, force: true });
  };
}

export function logTail(logFile: string, lines = 30): string {
  if (!existsSync(logFile)) return '(no log)';
  const text = readFileSync(logFile, 'utf8').trimEnd().split('\n');
  return text.slice(-lines).join('\n');
}

export class ComponentProcess {
  private readonly child: ChildProcess;
  private exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private readonly exitPromise: Promise<void>;
  private spawnError: Error | undefined;

  constructor(
    readonly name: string,
    binary: string,
    args: string[],
    readonly logFile: string,
    env: NodeJS.ProcessEnv = process.env,
  ) {
    installExitHooks();
    const fd = openSync(logFile, 'a');
    try {
      this.child = spawn(binary, args, { stdio: ['ignore', fd, fd], env });
    } finally {
      closeSync(fd);
    }
    live.add(this);
    this.exitPromise = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exited = { code, signal };
        live.delete(this);
        resolve();
      });
      this.child.once('error', (err) => {
        this.exited = { code: null, signal: null };
        live.delete(this);
        this.spawnError = err;
        resolve();
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** How the process ended, once it has. */
  get exitStatus(): { code: number | null; signal: NodeJS.Signals | null } | undefined {
    return this.exited;
  }

  get running(): boolean {
    return this.exited === undefined;
  }

  /** Polls `probe` until it returns true; fails with the log tail on exit or time-out. */
  async waitReady(probe: () => Promise<boolean>, timeoutMs: number, what = 'ready'): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!this.running) throw this.exitError();
      if (await probe().catch(() => false)) return;
      if (Date.now() >= deadline) {
        throw setupError(
          `${this.name} did not become ${what} within ${Math.round(timeoutMs / 1000)}s; last lines of ${this.logFile}:\n${logTail(this.logFile)}`,
        );
      }
      await sleep(Math.min(250, Math.max(0, deadline - Date.now())));
    }
  }

  private exitError(): Error {
    if (this.spawnError) return setupError(`${this.name} could not be started: ${this.spawnError.message}`);
    const tail = logTail(this.logFile);
    const port = /listen tcp [\d.]+:(\d+): bind: address already in use|address already in use.*?:(\d+)/.exec(tail);
    const how = this.exited?.signal ? `signal ${this.exited.signal}` : `code ${this.exited?.code}`;
    if (port) {
      return setupError(`${this.name} exited: port ${port[1] ?? port[2]} on 127.0.0.1 is in use; last lines of its log:\n${tail}`);
    }
    return setupError(`${this.name} exited with ${how} before becoming ready; last lines of ${this.logFile}:\n${tail}`);
  }

  /** SIGTERM, then SIGKILL after graceMs. */
  async stop(graceMs = 10_000): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exitPromise;
    clearTimeout(timer);
  }

  /** SIGKILL without waiting: for crash tests and for exit hooks. */
  killNow(): void {
    if (this.running) this.child.kill('SIGKILL');
  }

  exitedPromise(): Promise<void> {
    return this.exitPromise;
  }
}
