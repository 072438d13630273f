// A server's unix socket: mode 0600 from the moment it exists, at a fixed path, replacing a stale
// socket left by a dead process but never one a live process still serves.
import { chmodSync, existsSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { connect, type Server } from 'node:net';
import { dirname } from 'node:path';
import { setupError } from '../errors.js';

/** Refuses to take over a socket another process still serves; removes a stale one. */
export async function prepareSocketPath(socketPath: string): Promise<void> {
  mkdirSync(dirname(socketPath), { recursive: true, mode: 0o700 });
  if (!existsSync(socketPath)) return;
  if (!lstatSync(socketPath).isSocket()) throw setupError(`${socketPath} exists and is not a socket; refusing to replace it`);
  const live = await new Promise<boolean>((resolve) => {
    const probe = connect(socketPath, () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw setupError(`another process is serving on ${socketPath}`);
  unlinkSync(socketPath);
}

export function listenOnUnixSocket(server: Server, socketPath: string): Promise<void> {
  // The socket is created 0600 from the start: the umask covers the window before chmod.
  const previous = process.umask(0o177);
  return new Promise<void>((resolve, reject) => {
    const failed = (err: Error): void => reject(setupError(`cannot listen on ${socketPath}: ${err.message}`));
    server.once('error', failed);
    server.listen(socketPath, () => {
      server.off('error', failed);
      resolve();
    });
  })
    .finally(() => process.umask(previous))
    .then(() => chmodSync(socketPath, 0o600));
}
