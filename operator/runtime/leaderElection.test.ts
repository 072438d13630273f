import { CoordinationV1Api, KubeConfig, V1MicroTime, type V1Lease } from '@kubernetes/client-node';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { isConflict } from './leaseLock.js';
import { startLeaderElection, type LeaderElectionOptions, type LeaderElector } from './leaderElection.js';
import { createLogger } from '../../core/observability/logger.js';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';

// Short timings so takeovers happen in seconds; assertions use generous bounds, never exact times.
const fast = { leaseDurationMs: 3_000, renewDeadlineMs: 2_000, retryPeriodMs: 500 };
const namespace = 'default';
const logger = createLogger('leader-election-test', process.env.KEYWARD_LOG_LEVEL ?? 'silent');

interface Candidate {
  identity: string;
  elector: LeaderElector;
  /** onNewLeader calls, in order. */
  leaders: string[];
  signal?: AbortSignal;
  startedAt?: number;
  workEndedAt?: number;
  stoppedAt?: number;
}

async function eventually(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) assert.fail(`${what} did not happen within ${timeoutMs} ms`);
    await sleep(50);
  }
}

/**
 * A TCP relay to the apiserver that can go silent: after blackhole() it forwards nothing and
 * answers nothing, so requests through it hang, like a partitioned network.
 */
async function startRelay(target: URL): Promise<{ url: string; blackhole(): void; close(): void }> {
  const sockets = new Set<Socket>();
  let silent = false;
  const track = (socket: Socket): void => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket)).on('error', () => socket.destroy());
  };
  const server = createServer((client) => {
    track(client);
    if (silent) return;
    const upstream = connect(Number(target.port), target.hostname);
    track(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  assert.ok(address && typeof address === 'object');
  return {
    url: `https://127.0.0.1:${address.port}`,
    blackhole: () => {
      silent = true;
      for (const socket of sockets) socket.unpipe().pause();
    },
    close: () => {
      for (const socket of sockets) socket.destroy();
      server.close();
    },
  };
}

describe('leader election against a real control plane', function () {
  this.timeout(300_000);
  let cp: ControlPlane;
  let api: CoordinationV1Api;
  let candidates: Candidate[] = [];

  before(async () => {
    cp = await startControlPlane();
    api = cp.kubeConfig.makeApiClient(CoordinationV1Api);
  });

  afterEach(async () => {
    await Promise.all(candidates.map((c) => c.elector.stop()));
    candidates = [];
  });

  after(async () => {
    await cp?.stop();
  });

  function candidate(
    lease: string,
    identity: string,
    options: Partial<LeaderElectionOptions> & { workMs?: number } = {},
  ): Candidate {
    const { workMs = 0, ...overrides } = options;
    const c = { identity, leaders: [] as string[] } as unknown as Candidate;
    c.elector = startLeaderElection({
      kubeConfig: cp.kubeConfig,
      namespace,
      name: lease,
      identity,
      ...fast,
      logger,
      ...overrides,
      callbacks: {
        // Leads until told to stop, then takes workMs to wind down, like a controller draining.
        onStartedLeading: async (signal) => {
          c.startedAt = performance.now();
          c.signal = signal;
          if (!signal.aborted) await once(signal, 'abort');
          await sleep(workMs);
          c.workEndedAt = performance.now();
        },
        onStoppedLeading: () => {
          c.stoppedAt = performance.now();
        },
        onNewLeader: (leader) => c.leaders.push(leader),
      },
    });
    candidates.push(c);
    return c;
  }

  const readLease = (name: string): Promise<V1Lease> => api.readNamespacedLease({ name, namespace });
  const leaders = (...cs: Candidate[]): Candidate[] => cs.filter((c) => c.elector.isLeader());

  it('elects exactly one of two candidates; the other follows it', async () => {
    const a = candidate('one-leader', 'a');
    const b = candidate('one-leader', 'b');
    await eventually(() => leaders(a, b).length === 1, 'a leader');
    const [leader] = leaders(a, b);
    const follower = leader === a ? b : a;
    assert.ok(leader);
    await eventually(() => follower.elector.leader() === leader.identity, 'the follower to observe the leader');

    await sleep(4 * fast.retryPeriodMs);
    assert.deepEqual(leaders(a, b), [leader], 'still one leader, the same one, after several renewals');
    assert.equal(follower.startedAt, undefined);
    assert.deepEqual(follower.leaders, [leader.identity]);
    assert.deepEqual(leader.leaders, [leader.identity]);

    const lease = await readLease('one-leader');
    assert.equal(lease.spec?.holderIdentity, leader.identity);
    assert.equal(lease.spec?.leaseDurationSeconds, 3);
    assert.equal(lease.spec?.leaseTransitions, 0);
    // client-node 1.4.0 returns MicroTime fields as the apiserver's string, six fraction digits.
    assert.match(String(lease.spec?.renewTime), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/);
    assert.ok(Date.parse(String(lease.spec?.renewTime)) >= Date.parse(String(lease.spec?.acquireTime)));
  });

  it('a leader that stops gracefully finishes its work, releases the Lease, and the other leads promptly', async () => {
    // Default 15 s lease: a takeover well within it can only come from the release.
    const slow = { leaseDurationMs: 15_000, renewDeadlineMs: 10_000, retryPeriodMs: 500 };
    const a = candidate('graceful', 'a', { ...slow, workMs: 300 });
    await eventually(() => a.elector.isLeader(), 'a to lead');
    const b = candidate('graceful', 'b', slow);
    await eventually(() => b.elector.leader() === 'a', 'b to observe a');

    const stopping = performance.now();
    await a.elector.stop();
    assert.equal(a.signal?.aborted, true);
    assert.ok(a.workEndedAt !== undefined && a.stoppedAt !== undefined && a.workEndedAt <= a.stoppedAt, 'work ended, then onStoppedLeading');
    assert.equal(a.elector.isLeader(), false);

    await eventually(() => b.elector.isLeader(), 'b to lead', 10_000);
    assert.ok(b.startedAt !== undefined && b.startedAt >= a.workEndedAt, 'b started after a had wound down');
    assert.ok(performance.now() - stopping < 10_000, 'taken over before the 15 s lease could have expired');
    const lease = await readLease('graceful');
    assert.equal(lease.spec?.holderIdentity, 'b');
    assert.equal(lease.spec?.leaseTransitions, 1);
    assert.deepEqual(b.leaders, ['a', 'b']);
  });

  it('a leader that dies keeps the Lease until it expires; then the other takes over', async () => {
    const a = candidate('dies', 'a', { releaseOnStop: false });
    await eventually(() => a.elector.isLeader(), 'a to lead');
    const b = candidate('dies', 'b');
    await eventually(() => b.elector.leader() === 'a', 'b to observe a');
    const before = await readLease('dies');

    await a.elector.stop(); // stops renewing, does not release: as if the process died
    const orphaned = await readLease('dies');
    assert.equal(orphaned.spec?.holderIdentity, 'a', 'not released');
    assert.equal(b.elector.isLeader(), false, 'b does not take a Lease it last saw renewed');

    await eventually(() => b.elector.isLeader(), 'b to lead once the Lease expired');
    const after = await readLease('dies');
    assert.equal(after.spec?.holderIdentity, 'b');
    assert.equal(after.spec?.leaseTransitions, (before.spec?.leaseTransitions ?? 0) + 1);
  });

  it('a leader whose Lease is taken behind its back steps down', async () => {
    const a = candidate('usurped', 'a');
    await eventually(() => a.elector.isLeader(), 'a to lead');

    // Another writer claims the Lease with a fresh renewTime; retry if a's renewal races it.
    await eventually(async () => {
      const lease = await readLease('usurped');
      const now = new V1MicroTime();
      const spec = { ...lease.spec, holderIdentity: 'intruder', renewTime: now, acquireTime: now, leaseDurationSeconds: 60 };
      try {
        await api.replaceNamespacedLease({ name: 'usurped', namespace, body: { ...lease, spec } });
        return true;
      } catch (err) {
        if (isConflict(err)) return false;
        throw err;
      }
    }, 'the intruder to write the Lease');

    await eventually(() => a.stoppedAt !== undefined, 'a to step down', 10_000);
    assert.equal(a.elector.isLeader(), false);
    assert.equal(a.signal?.aborted, true);
    await a.elector.done;
    assert.equal(a.elector.leader(), 'intruder');
    assert.equal((await readLease('usurped')).spec?.holderIdentity, 'intruder', 'a did not overwrite it');
  });

  it('a leader cut off from the apiserver steps down within its renew deadline; the other takes over', async () => {
    const relay = await startRelay(new URL(cp.apiserverUrl));
    try {
      const cluster = cp.kubeConfig.getCurrentCluster();
      const user = cp.kubeConfig.getCurrentUser();
      assert.ok(cluster && user);
      const cutOff = new KubeConfig();
      cutOff.loadFromClusterAndUser({ ...cluster, server: relay.url }, user);

      const a = candidate('partitioned', 'a', { kubeConfig: cutOff, releaseOnStop: false });
      await eventually(() => a.elector.isLeader(), 'a to lead');
      const b = candidate('partitioned', 'b');
      await eventually(() => b.elector.leader() === 'a', 'b to observe a');

      relay.blackhole(); // a's requests now hang until their timeouts
      await eventually(() => a.stoppedAt !== undefined, 'a to step down', 10_000);
      assert.equal(a.elector.isLeader(), false);
      await eventually(() => b.elector.isLeader(), 'b to lead');
      assert.ok(b.startedAt !== undefined && a.stoppedAt !== undefined && b.startedAt > a.stoppedAt, 'no overlap: a had stepped down');
      assert.equal((await readLease('partitioned')).spec?.holderIdentity, 'b');
    } finally {
      relay.close();
    }
  });
});

describe('leader election settings', () => {
  const base = {
    kubeConfig: new KubeConfig(),
    namespace,
    name: 'lease',
    identity: 'a',
    callbacks: { onStartedLeading: () => undefined },
  };

  it('refuses timings that would let two leaders overlap, naming the limit', () => {
    assert.throws(() => startLeaderElection({ ...base, leaseDurationMs: 10_000, renewDeadlineMs: 10_000 }), /leaseDurationMs \(10000\) must be greater than renewDeadlineMs \(10000\)/);
    assert.throws(() => startLeaderElection({ ...base, renewDeadlineMs: 2_000, retryPeriodMs: 2_000 }), /renewDeadlineMs \(2000\) must be greater than 1.2 × retryPeriodMs \(2000\)/);
    assert.throws(() => startLeaderElection({ ...base, retryPeriodMs: 0 }), /retryPeriodMs must be > 0/);
  });

  it('refuses an empty identity or Lease name', () => {
    assert.throws(() => startLeaderElection({ ...base, identity: '' }), /identity must not be empty/);
    assert.throws(() => startLeaderElection({ ...base, name: '' }), /name must not be empty/);
  });
});
