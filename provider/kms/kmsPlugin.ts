// `keyward kms-plugin`: the KMS v2 gRPC server on a unix socket (mode 0600, stale socket removed,
// path fixed), reading its ring from the HSM so it starts without the apiserver, with metrics and
// health on a separate loopback listener (and optionally /metrics alone over mutual TLS). SIGTERM drains in-flight calls before exit.
import { createAuditLog } from '../../core/audit/auditLog.js';
import { startGrpcServer, unaryService } from '../../core/grpc/grpcServer.js';
import { HsmToken } from '../../core/hsm/hsmToken.js';
import type { RingRef } from '../../core/hsm/ringState.js';
import { HsmRecords } from '../../core/hsm/hsmRecords.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import { KeyUseRecorder, keyUseHost } from '../../core/keyUse/keyUseRecorder.js';
import { KeyUseRecords } from '../../core/keyUse/keyUseRecords.js';
import { createLogger, type Logger } from '../../core/observability/logger.js';
import { startMetricsServer, startTlsMetricsServer, type TlsMetricsConfig } from '../../core/observability/metricsServer.js';
import { Teardown } from '../../core/teardown.js';
import { KeyManagementService } from '../../proto/gen/kms/v2/api_pb.js';
import { KmsMetrics } from './kmsMetrics.js';
import { kmsHandlers } from './kmsService.js';
import { RingView } from './ringView.js';

/** kube-apiserver sends at most 64 KiB of plaintext (a DEK seed in practice); ciphertexts are smaller. */
const maxKmsRequestBytes = 64 * 1024;

export interface KmsPluginConfig {
  socketPath: string;
  modulePath: string;
  tokenLabel: string;
  pin: string;
  ring: RingRef;
  /** host:port for /metrics, /healthz, /livez; loopback by default. */
  metricsAddress?: string;
  /** Also /metrics over HTTPS to clients with a certificate from one CA (for the node address). */
  metricsTls?: TlsMetricsConfig;
  /** File for audit records, or '-' for standard output. */
  auditLog?: string;
  refreshMs?: number;
  sessionPoolSize?: number;
  /** How long SIGTERM waits for in-flight calls. */
  drainMs?: number;
  /** The node, for the key-use record; NODE_NAME or the hostname by default. */
  nodeName?: string;
}

export interface KmsPlugin {
  readonly socketPath: string;
  readonly metricsAddress: string;
  /** host:port of the HTTPS /metrics listener, when configured. */
  readonly metricsTlsAddress: string | undefined;
  readonly view: RingView;
  stop(): Promise<void>;
}

export async function startKmsPlugin(config: KmsPluginConfig, log: Logger = createLogger('kms-plugin')): Promise<KmsPlugin> {
  const teardown = new Teardown();
  try {
    const token = HsmToken.open({ modulePath: config.modulePath, tokenLabel: config.tokenLabel, pin: config.pin, poolSize: config.sessionPoolSize ?? 4 });
    teardown.add(() => token.close());
    const audit = createAuditLog('kms-plugin', config.auditLog ?? '-');
    teardown.add(() => audit.flush());
    const metrics = new KmsMetrics();
    const view = new RingView(token, new RingStore(token), config.ring, { refreshMs: config.refreshMs ?? 2000 });
    teardown.add(() => view.stop());
    let wasHealthy: boolean | undefined;
    view.onRefresh = (snapshot, health) => {
      metrics.observeRing(snapshot, health);
      if (health.ok !== wasHealthy) {
        if (health.ok) log.info({ keyId: snapshot?.primary.version.keyId, version: snapshot?.primary.version.number }, 'HSM healthy');
        else log.warn({ reason: health.reason }, 'HSM unhealthy');
        wasHealthy = health.ok;
      }
    };
    await view.start();
    // Stopped after the gRPC server has drained (teardown runs newest first), so its last write has every call.
    const keyUse = new KeyUseRecorder(new KeyUseRecords(new HsmRecords(token)), { component: 'kms-plugin', host: keyUseHost(config.nodeName), log, registry: metrics.registry });
    keyUse.start();
    teardown.add(() => keyUse.stop());
    const metricsServer = await startMetricsServer(config.metricsAddress ?? '127.0.0.1:0', metrics.registry, () => view.health());
    teardown.add(() => metricsServer.close());
    const tlsMetricsServer = config.metricsTls ? await startTlsMetricsServer(config.metricsTls, metrics.registry) : undefined;
    if (tlsMetricsServer) teardown.add(() => tlsMetricsServer.close());
    const server = await startGrpcServer({
      socketPath: config.socketPath,
      services: [unaryService(KeyManagementService, kmsHandlers({ token, view, audit, metrics, keyUse }))],
      maxRequestBytes: maxKmsRequestBytes,
      healthy: () => view.health().ok,
    });
    teardown.add(async () => {
      log.info('draining in-flight calls');
      await server.stop(config.drainMs ?? 10_000);
    });
    log.info({ socket: config.socketPath, metrics: metricsServer.address, metricsTls: tlsMetricsServer?.address }, 'KMS v2 plugin serving');
    return {
      socketPath: config.socketPath,
      metricsAddress: metricsServer.address,
      metricsTlsAddress: tlsMetricsServer?.address,
      view,
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
