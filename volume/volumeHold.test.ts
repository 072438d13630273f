import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chownSync, closeSync, mkdirSync, openSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createEncryptedFilesystem, nodeUnsupportedReason, type EncryptedFilesystem } from '../testbed/volume/encryptedFilesystem.js';
import { volumeKeyFiles, type VolumeKeyFiles } from '../testbed/volume/volumeKeys.js';
import { volumeStatus } from './volumeCommands.js';

const cli = fileURLToPath(new URL('../cli/keyward.js', import.meta.url));
const podUid = 65532;
/** As the pod's unprivileged user, the way its containers run (no capabilities). */
const asPod = ['setpriv', `--reuid=${podUid}`, `--regid=${podUid}`, '--clear-groups', '--inh-caps=-all', process.execPath, cli];

interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Starts `keyward volume hold` and resolves once it says it holds the directory. */
async function startHold(dir: string): Promise<{ child: ChildProcess; finished: Promise<Finished> }> {
  const child = spawn(asPod[0]!, [...asPod.slice(1), 'volume', 'hold', `--dir=${dir}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  const finished = new Promise<Finished>((resolve) => child.once('exit', (code) => resolve({ code, stdout, stderr })));
  await new Promise<void>((resolve, reject) => {
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (stderr.includes('holding')) resolve();
    });
    child.once('exit', () => reject(new Error(`hold exited early: ${stderr}`)));
  });
  return { child, finished };
}

describe('keyward volume hold, as an unprivileged pod user', function () {
  let fs: EncryptedFilesystem;
  let keys: VolumeKeyFiles;
  let podVolume: string;
  before(function () {
    if (nodeUnsupportedReason()) this.skip();
    fs = createEncryptedFilesystem();
    keys = volumeKeyFiles(1, podUid);
    keys.deliver(1, [1]);
    // The volume as a pod with fsGroup/runAsUser sees it: a directory its user owns.
    podVolume = join(fs.mountPoint, 'pv');
    mkdirSync(podVolume);
    chownSync(podVolume, podUid, podUid);
  });
  after(() => {
    fs?.stop();
    keys?.remove();
  });

  function unlockAsPod(dir: string): void {
    const run = spawnSync(asPod[0]!, [...asPod.slice(1), 'volume', 'unlock', `--dir=${dir}`, `--key=${keys.primary}`], { encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
  }

  it('unlocks without privilege, and on SIGTERM drops the key and exits 0, leaving the directory locked', async () => {
    const dir = join(podVolume, 'data');
    unlockAsPod(dir);
    writeFileSync(join(dir, 'record.txt'), 'written by the workload');
    const { child, finished } = await startHold(dir);
    child.kill('SIGTERM');
    const done = await finished;
    assert.equal(done.code, 0, done.stderr);
    const record = JSON.parse(done.stdout) as Record<string, unknown>;
    assert.deepEqual([record.operation, record.result, record.code, record.keyVersion], ['volumeLock', 'allowed', 'Locked', 1]);
    assert.equal(volumeStatus(dir).key, 'absent');
    assert.notDeepEqual(readdirSync(dir), ['record.txt'], 'names are ciphertext again');
  });

  it('reports FilesBusy when a file is still open at SIGTERM, and still exits 0', async () => {
    const dir = join(podVolume, 'busy');
    unlockAsPod(dir);
    const { child, finished } = await startHold(dir);
    const open = openSync(join(dir, 'open.txt'), 'w');
    try {
      child.kill('SIGTERM');
      const done = await finished;
      assert.equal(done.code, 0, done.stderr);
      assert.equal((JSON.parse(done.stdout) as { code: string }).code, 'FilesBusy');
      assert.match(done.stderr, /FilesBusy/);
    } finally {
      closeSync(open);
    }
  });

  it('refuses at once, exit 1, a directory that is not encrypted', () => {
    const dir = join(podVolume, 'plain');
    mkdirSync(dir);
    const run = spawnSync(process.execPath, [cli, 'volume', 'hold', `--dir=${dir}`], { encoding: 'utf8', timeout: 10_000 });
    assert.equal(run.status, 1);
    assert.match(run.stderr, /NotEncrypted/);
  });
});
