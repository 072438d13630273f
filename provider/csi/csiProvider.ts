// `keyward csi-provider`: the Secrets Store CSI provider on `<dir>/keyward.sock` (mode 0600, stale
// socket removed, path fixed, since the driver caches it), with the gRPC health service on the
// same socket and metrics on a loopback listener. It needs the apiserver for TokenReview and the
// KeyPolicy informer (through core/kube's lean client, to fit the driver's 100 MiB per provider),
// and the HSM for the objects; SIGTERM drains in-flight mounts.
import { join } from 'node:path';
import { createAuditLog } from '../../core/audit/auditLog.js';
import { startGrpcServer, unaryService } from '../../core/grpc/grpcServer.js';
import { HsmRecords } from '../../core/hsm/hsmRecords.js';
import { HsmToken } from '../../core/hsm/hsmToken.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import { KeyUseRecorder, keyUseHost } from '../../core/keyUse/keyUseRecorder.js';
import { KeyUseRecords } from '../../core/keyUse/keyUseRecords.js';
import { ApiStatusError, ApiTimeoutError, loadApiConnection, type ApiConnection } from '../../core/kube/apiConnection.js';
import { listWatchInformer } from '../../core/kube/listWatchInformer.js';
import { createLogger, type Logger } from '../../core/observability/logger.js';
import { startMetricsServer } from '../../core/observability/metricsServer.js';
import { Teardown } from '../../core/teardown.js';
import { keyPolicyResource, type KeyPolicy } from '../../core/api/keyPolicy.js';
import { PolicyCache } from '../../core/policy/policyCache.js';
import { CSIDriverProvider } from '../../proto/gen/csi/v1alpha1/service_pb.js';
import { CsiMetrics } from './csiMetrics.js';
import { KeyMaterial } from './keyMaterial.js';
import { csiProviderHandlers, mountAdmission } from './mountService.js';
import { NodePods } from './nodePods.js';
import { PodIdentity, type TokenReviewer } from './podIdentity.js';

/** The driver finds a provider at `<provider-volume>/<spec.provider>.sock`. */
export const providerName = 'keyward';
export const defaultSocketDir = '/var/run/secrets-store-csi-providers';
export const defaultAudience = 'keyward';

export interface CsiProviderConfig {
  socketDir: string;
  modulePath: string;
  tokenLabel: string;
  pin: string;
  /** A kubeconfig file; by default KUBECONFIG, ~/.kube/config or the in-cluster ServiceAccount. */
  kubeconfigPath?: string;
  /** The audience of the tokens the CSIDriver's tokenRequests mint for us. */
  audience: string;
  /**
   * This node: its pods are watched, so a deleted pod's token stops mounting at once. The CLI
   * requires it; without it (in-process tests) a deleted pod's review lives out its TTL.
   */
  nodeName?: string;
  /** host:port for /metrics, /healthz, /livez; loopback by default. */
  metricsAddress?: string;
  /** File for audit records, or '-' for standard output. */
  auditLog?: string;
  tokenReviewTtlMs?: number;
  /** Deadline of each apiserver call (a TokenReview, a list, a watch's start); 10 s by default. */
  apiserverTimeoutMs?: number;
  materialTtlMs?: number;
  ringRefreshMs?: number;
  sessionPoolSize?: number;
  drainMs?: number;
  /** See mountService.ts; lowered only by tests of the guard. */
  maxResponseBytes?: number;
  /** Request bytes held at once before calls are refused with Overloaded (mountService.ts). */
  maxInFlightBytes?: number;
  /** Replaces TokenReview through the apiserver; for benchmarks that measure the provider alone. */
  tokenReviewer?: TokenReviewer;
}

export interface CsiProvider {
  readonly socketPath: string;
  readonly metricsAddress: string;
  readonly metrics: CsiMetrics;
  stop(): Promise<void>;
}

interface TokenReviewStatus {
  authenticated?: boolean;
  error?: string;
  audiences?: string[];
  user?: { username?: string; groups?: string[]; extra?: Record<string, string[]> };
}

/** TokenReview through the apiserver; errors name the failure (HTTP status, timeout, network), never the token. */
export function apiserverTokenReviewer(api: ApiConnection, onReview: (outcome: string) => void = () => undefined): TokenReviewer {
  return async (token, audience) => {
    let status: TokenReviewStatus;
    try {
      const body = { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences: [audience] } };
      status = (await api.request<{ status?: TokenReviewStatus }>('POST', '/apis/authentication.k8s.io/v1/tokenreviews', body)).status ?? {};
    } catch (err) {
      onReview('error');
      const why =
        err instanceof ApiStatusError
          ? `the apiserver answered HTTP ${err.statusCode}`
          : err instanceof ApiTimeoutError
            ? `the apiserver did not answer within ${err.timeoutMs} ms`
            : `the apiserver is unreachable (${(err as NodeJS.ErrnoException).code ?? (err as Error).name})`;
      throw new Error(why, { cause: err });
    }
    onReview(status.authenticated ? 'authenticated' : 'unauthenticated');
    return {
      authenticated: status.authenticated === true,
      error: status.error,
      audiences: status.audiences ?? [],
      username: status.user?.username ?? '',
      groups: status.user?.groups ?? [],
      extra: status.user?.extra ?? {},
    };
  };
}

export async function startCsiProvider(config: CsiProviderConfig, log: Logger = createLogger('csi-provider')): Promise<CsiProvider> {
  const socketPath = join(config.socketDir, `${providerName}.sock`);
  const metrics = new CsiMetrics();
  const teardown = new Teardown();
  let serving = false;
  try {
    const token = HsmToken.open({ modulePath: config.modulePath, tokenLabel: config.tokenLabel, pin: config.pin, poolSize: config.sessionPoolSize ?? 4 });
    teardown.add(() => token.close());
    const audit = createAuditLog('csi-provider', config.auditLog ?? '-');
    teardown.add(() => audit.flush());
    const api = loadApiConnection(config.kubeconfigPath, { requestTimeoutMs: config.apiserverTimeoutMs });
    teardown.add(() => api.close());
    const policies = new PolicyCache(listWatchInformer<KeyPolicy>(api, keyPolicyResource, log));
    teardown.add(() => policies.stop());
    const identity = new PodIdentity(config.tokenReviewer ?? apiserverTokenReviewer(api, (outcome) => metrics.tokenReviews.inc({ outcome })), {
      audience: config.audience,
      ttlMs: config.tokenReviewTtlMs,
    });
    const material = new KeyMaterial(token, new RingStore(token), { materialTtlMs: config.materialTtlMs, ringRefreshMs: config.ringRefreshMs });
    metrics.cacheSizes = () => ({ tokenReview: identity.cachedReviews, material: material.cachedSecrets });
    if (config.nodeName) {
      const pods = new NodePods(api, config.nodeName, log);
      teardown.add(() => pods.stop());
      pods.onGone((uid) => identity.forgetPod(uid));
      await pods.start();
    }
    // Mounts wait for the first list of KeyPolicies: deciding from an empty cache would refuse all.
    await policies.start();
    const metricsServer = await startMetricsServer(config.metricsAddress ?? '127.0.0.1:0', metrics.registry, () => ({ ok: serving, reason: serving ? 'ok' : 'stopping' }));
    teardown.add(() => metricsServer.close());
    // Stopped after the server has drained (teardown runs newest first), so its last write has every Mount.
    const keyUse = new KeyUseRecorder(new KeyUseRecords(new HsmRecords(token)), { component: 'csi-provider', host: keyUseHost(config.nodeName), log, registry: metrics.registry });
    keyUse.start();
    teardown.add(() => keyUse.stop());
    const handlers = csiProviderHandlers({ audience: config.audience, identity, policies: () => policies.policySet(), material, audit, metrics, log, keyUse, maxResponseBytes: config.maxResponseBytes });
    const server = await startGrpcServer({
      socketPath,
      services: [unaryService(CSIDriverProvider, handlers)],
      // The largest MountRequest mountRequest.ts accepts is 1 MiB of attributes plus the rest.
      maxRequestBytes: 2 * 1024 * 1024,
      admit: mountAdmission({ audit, metrics, log, maxInFlightBytes: config.maxInFlightBytes }),
    });
    teardown.add(async () => {
      serving = false;
      log.info('draining in-flight mounts');
      await server.stop(config.drainMs ?? 10_000);
    });
    serving = true;
    log.info({ socket: socketPath, audience: config.audience, metrics: metricsServer.address }, 'CSI provider serving');
    return {
      socketPath,
      metricsAddress: metricsServer.address,
      metrics,
      stop: async () => {
        await teardown.run();
        log.info('stopped');
      },
    };
  } catch (err) {
    await teardown.run();
    throw err;
  }
}
