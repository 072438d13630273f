// `keyward volume hold`: a Kubernetes native sidecar beside the workload. It checks the directory
// is encrypted, waits, and when the pod stops (SIGTERM) drops this user's claim on the key, so the
// data is locked once the pod is gone, without any privilege: v2 keys are claimed per user.
import { encryptedVolume, lockVolume } from './volumeLock.js';
import type { VolumeOutcome } from './volumeOutcome.js';

/** Waits for `stop` (e.g. a signal), then locks. Refuses at once a directory that is not encrypted. */
export async function holdVolume(dir: string, stop: Promise<unknown>): Promise<VolumeOutcome> {
  encryptedVolume(dir);
  // Nothing else keeps the event loop alive while waiting.
  const keepAlive = setInterval(() => undefined, 1 << 30);
  try {
    await stop;
  } finally {
    clearInterval(keepAlive);
  }
  return lockVolume(dir);
}
