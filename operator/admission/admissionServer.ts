// The HTTPS admission webhook every operator replica serves (not only the leader): KeyRing changes
// are authorised by KeyPolicy and stamped for two-person destruction, KeyPolicies are checked for
// what CEL cannot see. It answers from informer caches, so a policy change counts as soon as the
// watch delivers it. Any failure refuses: the webhooks are registered with failurePolicy Fail.
import { X509Certificate } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { AuditLog } from '../../core/audit/auditLog.js';
import type { Logger } from '../../core/observability/logger.js';
import { parseListenAddress } from '../../core/observability/metricsServer.js';
import type { KeyPolicy } from '../../core/api/keyPolicy.js';
import type { KeyRing } from '../../core/api/keyRing.js';
import type { PolicyCache } from '../../core/policy/policyCache.js';
import { auditActs, parseReview, requesterOf, respond, type AdmissionRequest, type Verdict } from './admissionReview.js';
import { admitKeyPolicy } from './keyPolicyAdmission.js';
import { admitKeyRing } from './keyRingAdmission.js';

export const keyRingWebhookPath = '/admit/keyrings';
export const keyPolicyWebhookPath = '/admit/keypolicies';

export interface AdmissionServerConfig {
  /** host:port to listen on. */
  address: string;
  /** Directory holding tls.crt and tls.key (a kubernetes.io/tls Secret mounted as files). */
  certDir: string;
  policies: PolicyCache;
  audit: AuditLog;
  /** Decisions, break-glass uses, reviews by result, the serving certificate's expiry. */
  metrics: AdmissionMetrics;
  log: Logger;
  now: () => Date;
  approvalWindowMs?: number;
}

/** The operator metrics the webhook feeds (see OperatorMetrics). */
export interface AdmissionMetrics {
  policyDecisions: { inc(labels: { operation: string; reason: string }): void };
  breakGlassUses: { inc(labels: { namespace: string; keyring: string; operation: string }): void };
  admissionRequests: { inc(labels: { resource: string; result: 'allowed' | 'denied' | 'error' }): void };
  admissionCertificateExpiry: { set(seconds: number): void };
}

export interface AdmissionServer {
  readonly address: string;
  close(): Promise<void>;
}

const maxBodyBytes = 3 * 1024 * 1024;
const certReloadMs = 60_000;

export async function startAdmissionServer(config: AdmissionServerConfig): Promise<AdmissionServer> {
  const { log } = config;
  const certFile = join(config.certDir, 'tls.crt');
  const keyFile = join(config.certDir, 'tls.key');
  const loadCert = (): { cert: Buffer; key: Buffer } => {
    const loaded = { cert: readFileSync(certFile), key: readFileSync(keyFile) };
    config.metrics.admissionCertificateExpiry.set(Date.parse(new X509Certificate(loaded.cert).validTo) / 1000);
    return loaded;
  };
  const server: Server = createServer({ ...loadCert(), minVersion: 'TLSv1.2' }, (req, res) => {
    const reply = (status: number, body: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    };
    if (req.method === 'GET' && req.url === '/healthz') return reply(200, { ok: true });
    const path = req.url?.split('?')[0];
    if (req.method !== 'POST' || (path !== keyRingWebhookPath && path !== keyPolicyWebhookPath)) return reply(404, { error: 'not found' });
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxBodyBytes) req.destroy();
      else chunks.push(chunk);
    });
    const resource = path === keyRingWebhookPath ? 'keyrings' : 'keypolicies';
    req.on('end', () => {
      let request: AdmissionRequest;
      try {
        request = parseReview(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch (err) {
        config.metrics.admissionRequests.inc({ resource, result: 'error' });
        return reply(400, { error: (err as Error).message });
      }
      let verdict: Verdict;
      try {
        verdict = path === keyRingWebhookPath ? admitKeyRingRequest(config, request) : admitKeyPolicyRequest(config, request);
        config.metrics.admissionRequests.inc({ resource, result: verdict.allowed ? 'allowed' : 'denied' });
      } catch (err) {
        log.error({ err: (err as Error).message, uid: request.uid }, 'admission failed; refusing');
        config.metrics.admissionRequests.inc({ resource, result: 'error' });
        verdict = { allowed: false, message: `Keyward admission failed: ${(err as Error).message}` };
      }
      reply(200, respond(request, verdict));
    });
  });

  // A renewed certificate (cert-manager, a rotated Secret) is picked up without a restart.
  let certMtime = statSync(certFile).mtimeMs;
  const reload = setInterval(() => {
    try {
      const mtime = statSync(certFile).mtimeMs;
      if (mtime !== certMtime) {
        server.setSecureContext(loadCert());
        certMtime = mtime;
        log.info('admission certificate reloaded');
      }
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'admission certificate reload failed; keeping the current one');
    }
  }, certReloadMs);
  reload.unref();

  const { host, port } = parseListenAddress(config.address, 'webhook');
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const { address, port: bound } = server.address() as AddressInfo;
  return {
    address: `${address.includes(':') ? `[${address}]` : address}:${bound}`,
    close: () =>
      new Promise<void>((resolve) => {
        clearInterval(reload);
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function admitKeyRingRequest(config: AdmissionServerConfig, request: AdmissionRequest): Verdict {
  if (request.operation !== 'CREATE' && request.operation !== 'UPDATE') return { allowed: true };
  const object = request.object as KeyRing;
  const verdict = admitKeyRing({
    operation: request.operation,
    requester: requesterOf(request),
    namespace: request.namespace ?? '',
    name: request.name ?? object.metadata?.name ?? '',
    object,
    oldObject: request.oldObject as KeyRing | undefined,
    policies: config.policies.policySet(),
    now: config.now(),
    approvalWindowMs: config.approvalWindowMs,
  });
  auditActs(config.audit, request, `${request.namespace ?? ''}/${request.name ?? ''}`, verdict.acts ?? []);
  for (const act of verdict.acts ?? []) {
    config.metrics.policyDecisions.inc({ operation: act.operation, reason: act.decision.reason });
    // Granted by a break-glass rule only (decide prefers any other grant), in a request that goes
    // ahead: a refused or dry-run request uses nothing.
    if (verdict.allowed && act.decision.allowed && act.decision.breakGlass && !request.dryRun) {
      config.metrics.breakGlassUses.inc({ namespace: request.namespace ?? '', keyring: request.name ?? object.metadata?.name ?? '', operation: act.operation });
    }
  }
  return verdict;
}

function admitKeyPolicyRequest(config: AdmissionServerConfig, request: AdmissionRequest): Verdict {
  if (request.operation !== 'CREATE' && request.operation !== 'UPDATE') return { allowed: true };
  const message = admitKeyPolicy({
    object: request.object as KeyPolicy,
    oldObject: request.oldObject as KeyPolicy | undefined,
    admitted: config.policies.list(),
    now: config.now(),
  });
  if (!message) return { allowed: true };
  const policy = `${request.namespace ?? ''}/${request.name ?? ''}`;
  config.log.info({ uid: request.uid, user: request.userInfo.username, policy, message }, 'KeyPolicy refused');
  config.audit.record({
    requestId: request.uid,
    actor: request.userInfo.username ?? '',
    operation: 'writeKeyPolicy',
    result: 'denied',
    policy,
    code: 'PolicyRefused',
    reason: message,
    ...(request.dryRun ? { dryRun: true } : {}),
  });
  return { allowed: false, message: `KeyPolicy ${policy}: ${message}` };
}
