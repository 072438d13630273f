// A stand-in for a network HSM: `p11-kit server` exports one SoftHSM2 token on a unix socket, and
// Keyward loads p11-kit's client module (p11-kit-client.so) as its --pkcs11-module, reaching the
// token over the socket the way a node reaches a network HSM through its vendor's client library.
// For e2e tests and the node test; nothing here is product code.
import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, rmSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { setupError } from '../../core/errors.js';
import type { SoftHsmToken } from '../../core/hsm/softHsmToken.js';

/** Where Debian's p11-kit-modules puts the client module, per architecture. */
export const p11KitClientCandidates = [
  '/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so',
  '/usr/lib/aarch64-linux-gnu/pkcs11/p11-kit-client.so',
  '/usr/lib64/pkcs11/p11-kit-client.so',
  '/usr/lib/pkcs11/p11-kit-client.so',
];

export function findP11KitClient(candidates: readonly string[] = p11KitClientCandidates): string {
  const found = candidates.find((path) => existsSync(path));
  if (!found) {
    throw setupError(`p11-kit's client module is not installed: no p11-kit-client.so at ${candidates.join(', ')} (Debian: apt-get install p11-kit-modules)`);
  }
  return found;
}

export interface NetworkHsm {
  /** The PKCS#11 module Keyward loads: p11-kit's client, not SoftHSM2. */
  readonly modulePath: string;
  /** The environment a process needs to reach the server (the client module reads it at C_Initialize). */
  readonly env: { P11_KIT_SERVER_ADDRESS: string };
  readonly socketPath: string;
  /** The server's pid; it serves each connection from a p11-kit-remote child in its process group. */
  readonly pid: number;
  /** Stops the server and its connection children, then removes the socket directory. */
  stop(): Promise<void>;
}

export interface NetworkHsmOptions {
  /** The SoftHSM2 token to export: the server loads its module with its SOFTHSM2_CONF. */
  token: Pick<SoftHsmToken, 'modulePath' | 'label' | 'env'>;
  /**
   * Give the socket (and its directory) to this uid/gid, e.g. 65532 for the pods. `p11-kit server
   * -u` takes only a user name, which nodes rarely have for 65532, so the fixture chowns instead.
   */
  socketOwner?: { uid: number; gid: number };
  parentDir?: string;
  clientModulePath?: string;
  /** The p11-kit command (a test points it elsewhere to see the setup error). */
  p11Kit?: string;
  readyTimeoutMs?: number;
}

export async function startNetworkHsm(options: NetworkHsmOptions): Promise<NetworkHsm> {
  const modulePath = options.clientModulePath ?? findP11KitClient();
  const dir = mkdtempSync(join(options.parentDir ?? tmpdir(), 'keyward-p11kit-'));
  const socketPath = join(dir, 'pkcs11.sock');
  const { token } = options;
  // Token labels in a PKCS#11 URI are percent-encoded.
  const uri = `pkcs11:token=${encodeURIComponent(token.label)}`;
  // detached: the server leads its own process group, so stop() reaches the p11-kit-remote
  // children it forks per connection (they outlive a server killed alone and keep serving).
  const server = spawn(options.p11Kit ?? 'p11-kit', ['server', '-f', '-n', socketPath, '--provider', token.modulePath, uri], {
    env: { ...process.env, ...token.env },
    stdio: ['ignore', 'ignore', 'pipe'],
    detached: true,
  });
  let stderr = '';
  server.stderr?.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exited = new Promise<NodeJS.ErrnoException | number | null>((resolve) => {
    server.once('error', resolve);
    server.once('exit', (code) => resolve(code));
  });
  let failure: NodeJS.ErrnoException | number | null | undefined;
  void exited.then((result) => (failure = result));
  const remove = () => rmSync(dir, { recursive: true, force: true });

  const deadline = Date.now() + (options.readyTimeoutMs ?? 10_000);
  while (!existsSync(socketPath)) {
    if (failure !== undefined) {
      remove();
      if (failure instanceof Error && failure.code === 'ENOENT') {
        throw setupError(`p11-kit is not installed: '${options.p11Kit ?? 'p11-kit'}' is not on PATH (Debian: apt-get install p11-kit p11-kit-modules)`);
      }
      const why = failure instanceof Error ? failure.message : `exited with ${String(failure)}`;
      throw setupError(`p11-kit server for token '${token.label}' ${why}: ${stderr.trim() || 'no output'}`);
    }
    if (Date.now() > deadline) {
      await stopGroup(server, exited);
      remove();
      throw setupError(`p11-kit server did not create ${socketPath} within ${(options.readyTimeoutMs ?? 10_000) / 1000} s: ${stderr.trim()}`);
    }
    await sleep(25);
  }
  if (options.socketOwner) {
    const { uid, gid } = options.socketOwner;
    chownSync(dir, uid, gid);
    chmodSync(dir, 0o750);
    // Connecting needs write permission on the socket; p11-kit makes it 0711, owner only.
    chownSync(socketPath, uid, gid);
  }
  let stopped: Promise<void> | undefined;
  return {
    modulePath,
    env: { P11_KIT_SERVER_ADDRESS: `unix:path=${socketPath}` },
    socketPath,
    pid: server.pid!,
    stop: () => (stopped ??= stopGroup(server, exited).finally(remove)),
  };
}

/** SIGTERM to the server's own process group (server and its connection children), SIGKILL if it lingers. */
async function stopGroup(server: ChildProcess, exited: Promise<unknown>): Promise<void> {
  const pid = server.pid;
  if (pid === undefined) return;
  const signal = (name: NodeJS.Signals) => {
    try {
      process.kill(-pid, name);
    } catch {
      // Already gone.
    }
  };
  signal('SIGTERM');
  const done = await Promise.race([exited.then(() => true), sleep(5_000).then(() => false)]);
  // While the leader lives its group id cannot be reused, so a SIGKILL here reaches only ours.
  if (!done) signal('SIGKILL');
  await exited;
}
