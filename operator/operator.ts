// The operator process: leader-elected KeyRing and KeyPolicy controllers (informer → work queue →
// reconcilers) and an HSM janitor over one PKCS#11 token; only the leader touches the HSM or
// writes status. Every replica serves the admission webhook from its own KeyPolicy cache.
import { hostname } from 'node:os';
import type { KubeConfig } from '@kubernetes/client-node';
import type { AuditLog } from '../core/audit/auditLog.js';
import { HsmRecords } from '../core/hsm/hsmRecords.js';
import { HsmToken } from '../core/hsm/hsmToken.js';
import { KeyUseRecords } from '../core/keyUse/keyUseRecords.js';
import { RingStore } from '../core/hsm/ringStore.js';
import { startMetricsServer, type MetricsServer } from '../core/observability/metricsServer.js';
import type { Logger } from '../core/observability/logger.js';
import { keyPolicyResource, type KeyPolicy } from '../core/api/keyPolicy.js';
import { keyRingResource, type KeyRing } from '../core/api/keyRing.js';
import { startAdmissionServer, type AdmissionServer } from './admission/admissionServer.js';
import { startHsmHealthCheck } from './hsmHealthCheck.js';
import { startHsmJanitor } from './hsmJanitor.js';
import { keyPolicyReconciler, policiesToReconcile } from './keyPolicy/keyPolicyReconciler.js';
import { PolicyCache } from '../core/policy/policyCache.js';
import { KeyRingClient } from './keyRing/keyRingClient.js';
import { keyRingReconciler } from './keyRing/keyRingReconciler.js';
import { OperatorMetrics } from './operatorMetrics.js';
import { ReEncryptionJobs } from './retirement/reEncryptionJobs.js';
import { startControllerLoop } from './runtime/controllerLoop.js';
import { startLeaderElection } from './runtime/leaderElection.js';
import { resourceInformer } from './runtime/resourceInformer.js';
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
  /** How often every replica checks the HSM for keyward_hsm_up (default 30 s). */
  hsmCheckIntervalMs?: number;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  /** Where audit records go. */
  audit: AuditLog;
  /** Serve the admission webhook (KeyPolicy enforcement for KeyRing changes) here. */
  admission?: { address: string; certDir: string };
  /** How long a destruction request waits for approval, and an approval for use (default 1 h). */
  approvalWindowMs?: number;
  /** The clock for rotation and destruction times; tests move it forward. */
  now?: () => Date;
  /** Rewrite etcd after a rotation (default true); false where the operator may not list and update the encrypted resources. */
  reEncryption?: boolean;
}

export interface Operator {
  readonly metricsAddress: string;
  /** host:port of the admission webhook, when served. */
  readonly admissionAddress: string | undefined;
  /** Settles when this process stops leading or campaigning; a Deployment restarts it. */
  readonly done: Promise<void>;
  stop(): Promise<void>;
}

export async function startOperator(config: OperatorConfig, log: Logger): Promise<Operator> {
  const identity = config.identity ?? `${hostname()}-${process.pid}`;
  const metrics = new OperatorMetrics(config.now);
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

  const now = config.now ?? (() => new Date());
  const policies = new PolicyCache(resourceInformer<KeyPolicy>(config.kubeConfig, keyPolicyResource, log));
  let admission: AdmissionServer | undefined;
  try {
    await policies.start();
    if (config.admission) {
      admission = await startAdmissionServer({
        ...config.admission,
        policies,
        audit: config.audit,
        metrics,
        log,
        now,
        approvalWindowMs: config.approvalWindowMs,
      });
      log.info({ address: admission.address }, 'admission webhook serving');
    }
  } catch (err) {
    await policies.stop();
    await metricsServer.close();
    token.close();
    throw err;
  }
  const hsmCheck = startHsmHealthCheck({
    check: () => token.check(),
    recover: () => token.recover(),
    metrics,
    log,
    intervalMs: config.hsmCheckIntervalMs ?? 30_000,
  });
  let policyQueue: WorkQueue | undefined;
  policies.onChange((policy) => {
    for (const key of policiesToReconcile(policies, policy)) policyQueue?.add(key);
  });

  const lead = async (signal: AbortSignal): Promise<void> => {
    leading = true;
    metrics.leader.set(1);
    log.info({ identity }, 'leading: starting the KeyRing controller');
    const informer = resourceInformer<KeyRing>(config.kubeConfig, keyRingResource, log);
    const queue = new WorkQueue({ name: 'keyrings', registry: metrics.registry });
    const enqueue = (keyRing: KeyRing): void => queue.add(`${keyRing.metadata.namespace}/${keyRing.metadata.name}`);
    informer.on('add', enqueue);
    informer.on('update', enqueue);
    informer.on('delete', enqueue);
    const jobs = new ReEncryptionJobs(config.kubeConfig, (key) => queue.add(key), log);
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
        audit: config.audit,
        approvalWindowMs: config.approvalWindowMs,
        retirement: { keyUse: new KeyUseRecords(new HsmRecords(token)), jobs, rewrite: config.reEncryption !== false },
        now: config.now,
      }),
    });
    policyQueue = new WorkQueue({ name: 'keypolicies', registry: metrics.registry });
    const policyLoop = startControllerLoop({
      name: 'keypolicy',
      queue: policyQueue,
      workers: 1,
      logger: log,
      reconcile: keyPolicyReconciler({ kubeConfig: config.kubeConfig, policies, log, now }),
    });
    for (const policy of policies.list()) policyQueue.add(`${policy.metadata.namespace}/${policy.metadata.name}`);
    const janitor = startHsmJanitor({
      store,
      metrics,
      log,
      intervalMs: config.janitorIntervalMs ?? 60_000,
      now,
      // Rings of live KeyRings are their reconciler's; the janitor finishes those of deleted ones.
      ownedRingIds: () => new Set(informer.list().map((keyRing) => keyRing.metadata.uid ?? '')),
    });
    await informer.start();
    await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
    log.info('leadership ending: draining the KeyRing controller');
    await informer.stop();
    jobs.stopAll();
    await janitor.stop();
    await loop.stop();
    await policyLoop.stop();
    policyQueue = undefined;
    // A standby exports no KeyRing series: the next leader's are the current ones.
    metrics.forgetKeyRings();
    metrics.leader.set(0);
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
      // The Lease is no longer ours, even while the controllers still drain.
      onStoppedLeading: () => metrics.leader.set(0),
      onNewLeader: (leader) => log.info({ leader }, 'leader observed'),
    },
  });

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      await elector.stop();
      await hsmCheck.stop();
      await admission?.close();
      await policies.stop();
      await metricsServer.close();
      token.close();
    })());

  return { metricsAddress: metricsServer.address, admissionAddress: admission?.address, done: elector.done, stop };
}
