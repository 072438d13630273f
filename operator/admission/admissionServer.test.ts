import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KeyPolicy } from '../../core/api/keyPolicy.js';
import type { KeyRing, KeyRingSpec } from '../../core/api/keyRing.js';
import { createAuditLog } from '../../core/audit/auditLog.js';
import type { ObjectInformer } from '../../core/kube/listWatchInformer.js';
import { createLogger } from '../../core/observability/logger.js';
import { PolicyCache } from '../../core/policy/policyCache.js';
import { createPki, issueServingCertificate } from '../../testbed/control-plane/pki.js';
import { OperatorMetrics } from '../operatorMetrics.js';
import { keyRingWebhookPath, startAdmissionServer, type AdmissionServer } from './admissionServer.js';

const now = new Date('2026-11-23T12:00:00Z');
const policy: KeyPolicy = {
  apiVersion: 'keyward.dev/v1alpha1',
  kind: 'KeyPolicy',
  metadata: { name: 'p', namespace: 'shop', creationTimestamp: new Date('2026-01-01T00:00:00Z') },
  spec: {
    rules: [
      { subjects: [{ kind: 'User', name: 'bob' }], keyRings: ['orders'], roles: ['Administrator'] },
      { subjects: [{ kind: 'User', name: 'alice' }, { kind: 'User', name: 'bob' }], keyRings: ['orders'], roles: ['BreakGlassAdministrator'], expiresAt: '2026-11-23T20:00:00Z' },
    ],
  },
};

/** An informer holding one policy, announced once the cache listens. */
function policyInformer(): { informer: ObjectInformer<KeyPolicy>; announce: () => void } {
  const adds: ((p: KeyPolicy) => void)[] = [];
  return {
    informer: {
      on: (event, handler) => void (event === 'add' && adds.push(handler)),
      start: () => Promise.resolve(),
      stop: () => Promise.resolve(),
      list: (namespace) => (namespace === undefined || namespace === 'shop' ? [policy] : []),
      get: (name, namespace) => (name === 'p' && namespace === 'shop' ? policy : undefined),
    },
    announce: () => adds.forEach((add) => add(policy)),
  };
}

const keyRing = (spec: Partial<KeyRingSpec>): KeyRing => ({
  apiVersion: 'keyward.dev/v1alpha1',
  kind: 'KeyRing',
  metadata: { name: 'orders', namespace: 'shop' },
  spec: { purpose: 'encryption', destroyScheduledDuration: '720h', deletionPolicy: 'Retain', ...spec },
});

describe('admission webhook metrics', () => {
  let dir: string;
  let server: AdmissionServer;
  let ca: Buffer;
  const metrics = new OperatorMetrics();

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keyward-admission-'));
    const pki = createPki(dir);
    issueServingCertificate(dir, 'tls', ['keyward-webhook']);
    ca = readFileSync(pki.caCert);
    const { informer, announce } = policyInformer();
    const policies = new PolicyCache(informer);
    announce();
    server = await startAdmissionServer({
      address: '127.0.0.1:0',
      certDir: dir,
      policies,
      audit: createAuditLog('operator', '/dev/null'),
      metrics,
      log: createLogger('test', 'silent'),
      now: () => now,
    });
  });
  after(async () => {
    await server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const review = (username: string, body?: unknown, dryRun = false): Promise<{ allowed?: boolean; status: number }> => {
    const payload = JSON.stringify(
      body ?? {
        apiVersion: 'admission.k8s.io/v1',
        kind: 'AdmissionReview',
        request: { uid: `u-${Math.random()}`, operation: 'UPDATE', namespace: 'shop', name: 'orders', userInfo: { username }, object: keyRing({ rotationRequest: 'now' }), oldObject: keyRing({}), dryRun },
      },
    );
    const port = Number(server.address.slice(server.address.lastIndexOf(':') + 1));
    return new Promise((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path: keyRingWebhookPath, method: 'POST', ca, headers: { 'content-type': 'application/json' } }, (res) => {
        let text = '';
        res.on('data', (chunk: Buffer) => (text += chunk.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, allowed: res.statusCode === 200 ? (JSON.parse(text) as { response: { allowed: boolean } }).response.allowed : undefined }));
      });
      req.on('error', reject);
      req.end(payload);
    });
  };
  const count = async (series: string): Promise<number> => {
    const line = (await metrics.registry.metrics()).split('\n').find((l) => l.startsWith(`${series} `));
    return Number(line?.slice(series.length + 1) ?? 0);
  };
  const breakGlass = 'keyward_policy_break_glass_uses_total{namespace="shop",keyring="orders",operation="rotate"}';

  it('counts a request allowed only by a break-glass grant, and not one another grant allows', async () => {
    assert.equal((await review('alice')).allowed, true);
    assert.equal(await count(breakGlass), 1, 'alice holds only the break-glass grant');
    assert.equal((await review('bob')).allowed, true);
    assert.equal(await count(breakGlass), 1, 'bob is an Administrator too: not a break-glass use');
    assert.equal((await review('alice', undefined, true)).allowed, true);
    assert.equal(await count(breakGlass), 1, 'a dry run uses nothing');
    assert.equal((await review('carol')).allowed, false);
    assert.equal(await count('keyward_policy_decisions_total{operation="rotate",reason="Granted"}'), 3);
  });

  it('counts reviews by resource and result', async () => {
    assert.equal(await count('keyward_admission_requests_total{resource="keyrings",result="allowed"}'), 3);
    assert.equal(await count('keyward_admission_requests_total{resource="keyrings",result="denied"}'), 1);
    assert.equal((await review('alice', { not: 'a review' })).status, 400);
    assert.equal(await count('keyward_admission_requests_total{resource="keyrings",result="error"}'), 1);
  });

  it('exports the serving certificate\'s notAfter', async () => {
    const notAfter = Date.parse(new X509Certificate(readFileSync(join(dir, 'tls.crt'))).validTo) / 1000;
    assert.equal(await count('keyward_admission_certificate_expiry_timestamp_seconds'), notAfter);
    assert.ok(notAfter > Date.now() / 1000);
  });
});
