import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createEncryptedFilesystem, nodeUnsupportedReason } from './encryptedFilesystem.js';

const mounted = (path: string): boolean => readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === path);
const attached = (device: string): boolean => spawnSync('losetup', [device], { stdio: 'ignore' }).status === 0;

describe('encryptable filesystem fixture', function () {
  before(function () {
    if (nodeUnsupportedReason()) this.skip();
  });

  it('mounts an ext4 with the encrypt feature on its own loop device, keeps files across remount, and undoes itself', () => {
    const fs = createEncryptedFilesystem();
    const device = fs.loopDevice;
    try {
      assert.ok(mounted(fs.mountPoint));
      assert.ok(attached(fs.loopDevice));
      assert.match(spawnSync('dumpe2fs', ['-h', fs.image], { encoding: 'utf8' }).stdout, /features:.*\bencrypt\b/);
      writeFileSync(join(fs.mountPoint, 'kept'), 'across remount');
      fs.remount();
      assert.equal(readFileSync(join(fs.mountPoint, 'kept'), 'utf8'), 'across remount');
    } finally {
      fs.stop();
    }
    assert.ok(!mounted(fs.mountPoint));
    assert.ok(!attached(device));
    assert.ok(!existsSync(dirname(fs.mountPoint)));
    fs.stop();
  });

  it('undoes itself when its process is stopped by SIGTERM', async () => {
    const module = new URL('./encryptedFilesystem.js', import.meta.url).href;
    const script = `import(${JSON.stringify(module)}).then((m) => {
      const fs = m.createEncryptedFilesystem();
      console.log(JSON.stringify({ mountPoint: fs.mountPoint, device: fs.loopDevice }));
      setInterval(() => undefined, 1000);
    });`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const line = await new Promise<string>((resolve) => child.stdout.once('data', (d: Buffer) => resolve(d.toString())));
    const { mountPoint, device } = JSON.parse(line) as { mountPoint: string; device: string };
    assert.ok(mounted(mountPoint) && attached(device));
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
    assert.ok(!mounted(mountPoint), 'unmounted');
    assert.ok(!attached(device), 'loop device detached');
    assert.ok(!existsSync(dirname(mountPoint)), 'directory removed');
  });
});
