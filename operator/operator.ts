// The operator process: a leader-elected KeyRing controller (informer → work queue → reconcilers)
// and an HSM janitor, over one PKCS#11 token. Only the leader touches the HSM or the KeyRings.
import { hostname } from 'node:os';
import { CustomObjectsApi, makeInformer, type KubeConfig } from '@kubernetes/client-node';
import { HsmToken } from '../core/hsm/hsmToken.js';
import { RingStore } from '../core/hsm/ringStore.js';
import { startMetricsServer, type MetricsServer } from '../core/observability/metricsServer.js';
import type { Logger } from '../core/observability/logger.js';
import { keyRingResource, type KeyRing } from './api/keyRing.js';
import { startHsmJanitor } from './hsmJanitor.js';
import { KeyRingClient } from './keyRing/keyRingClient.js';
import { keyRingReconciler } from './keyRing/keyRingReconciler.js';
import { OperatorMetrics } from './operatorMetrics.js';
import { startControllerLoop } from './runtime/controllerLoop.js';
import { startLeaderElection } from './runtime/leaderElection.js';
import { WorkQueue } from './runtime/workQueue.js';

export interface OperatorConfig {
  kubeConfig: KubeConfig;
  modulePath: string;
  tokenLabel: string;
  pin: string;
  /** Where the leader-election Lease lives. */
  leaseNamespace: string;
  identity?: string;
  metricsAddress?: string;
  workers?: number;
  janitorIntervalMs?: number;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  /** The clock for rotation and destruction times; tests move it forward. */
  now?: () => Date;
}

export interface Operator {
  readonly metricsAddress: string;
  /** Settles when this process stops leading or campaigning; a Deployment restarts it. */
  readonly done: Promise<void>;
  stop(): Promise<void>;
}

const informerRestartMs = 1000;

export async function startOperator(config: OperatorConfig, log: Logger): Promise<Operator> {
  const identity = config.identity ?? `${hostname()}-${process.pid}`;
  const metrics = new OperatorMetrics();
  // A wrong PIN or an absent token shows on the KeyRings as Ready=False, retried with backoff.
  const token = HsmToken.connectOnDemand({ modulePath: config.modulePath, tokenLabel: config.tokenLabel, pin: config.pin, poolSize: 4 });
  const store = new RingStore(token, config.now);
  let leading = false;
  let metricsServer: MetricsServer;
  try {
    metricsServer = await startMetricsServer(config.metricsAddress ?? '127.0.0.1:0', metrics.registry, () =>
      leading ? { ok: true, reason: 'leading' } : { ok: true, reason: 'standing by' },
    );
  } catch (err) {
    token.close();
    throw err;
  }

  const lead = async (signal: AbortSignal): Promise<void> => {
    leading = true;
    log.info({ identity }, 'leading: starting the KeyRing controller');
    const objects = config.kubeConfig.makeApiClient(CustomObjectsApi);
    const informer = makeInformer<KeyRing>(
      config.kubeConfig,
      `/apis/${keyRingResource.group}/${keyRingResource.version}/${keyRingResource.plural}`,
      () => objects.listClusterCustomObject({ ...keyRingResource }),
    );
    const queue = new WorkQueue({ name: 'keyrings', registry: metrics.registry });
    const enqueue = (keyRing: KeyRing): void => queue.add(`${keyRing.metadata.namespace}/${keyRing.metadata.name}`);
    informer.on('add', enqueue);
    informer.on('update', enqueue);
    informer.on('delete', enqueue);
    // A dropped watch (apiserver restart, timeout) ends with an error: list again and carry on.
    informer.on('error', (err: unknown) => {
      if (signal.aborted) return;
      log.warn({ err: (err as Error)?.message }, 'KeyRing watch failed; listing again');
      setTimeout(() => {
        if (!signal.aborted) informer.start().catch(() => undefined);
      }, informerRestartMs);
    });
    const loop = startControllerLoop({
      name: 'keyring',
      queue,
      workers: config.workers ?? 4,
      logger: log,
      reconcile: keyRingReconciler({
        store,
        client: new KeyRingClient(config.kubeConfig, identity),
        keyRings: informer,
        tokenLabel: config.tokenLabel,
        metrics,
        log,
        recoverHsm: () => token.recover(),
        now: config.now,
      }),
    });
    const janitor = startHsmJanitor({
      store,
      metrics,
      log,
      intervalMs: config.janitorIntervalMs ?? 60_000,
      now: config.now ?? (() => new Date()),
      // Rings of live KeyRings are their reconciler's; the janitor finishes those of deleted ones.
      ownedRingIds: () => new Set(informer.list().map((keyRing) => keyRing.metadata.uid ?? '')),
    });
    await informer.start().catch((err: unknown) => log.warn({ err: (err as Error).message }, 'first KeyRing list failed; retrying'));
    await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    log.info('leadership ending: draining the KeyRing controller');
    await informer.stop();
    await janitor.stop();
    await loop.stop();
    leading = false;
  };

  const elector = startLeaderElection({
    kubeConfig: config.kubeConfig,
    namespace: config.leaseNamespace,
    name: 'keyward-operator',
    identity,
    leaseDurationMs: config.leaseDurationMs,
    renewDeadlineMs: config.renewDeadlineMs,
    retryPeriodMs: config.retryPeriodMs,
    logger: log,
    callbacks: {
      onStartedLeading: lead,
      onNewLeader: (leader) => log.info({ leader }, 'leader observed'),
    },
  });

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      await elector.stop();
      await metricsServer.close();
      token.close();
    })());

  return { metricsAddress: metricsServer.address, done: elector.done, stop };
}
