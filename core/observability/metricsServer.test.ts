import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Counter, Registry } from 'prom-client';
import { createPki, issueClientCertificate, issueServingCertificate } from '../../testbed/control-plane/pki.js';
import { startMetricsServer, startTlsMetricsServer, type MetricsServer } from './metricsServer.js';

/** GET https://address/path with an optional client certificate; the status and body, or the error. */
function get(address: string, path: string, ca: Buffer, client?: { cert: string; key: string }): Promise<{ status: number; body: string } | Error> {
  const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))];
  return new Promise((resolve) => {
    const req = request(
      { host, port, path, ca, ...(client ? { cert: readFileSync(client.cert), key: readFileSync(client.key) } : {}), agent: false },
      (res) => {
        let body = '';
        res.on('data', (chunk: Buffer) => (body += chunk.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        res.on('error', resolve);
      },
    );
    req.on('error', resolve);
    req.end();
  });
}

describe('metrics over mutual TLS', function () {
  let dir: string;
  let server: MetricsServer;
  let ca: Buffer;
  let trusted: { cert: string; key: string };
  let foreign: { cert: string; key: string };
  const registry = new Registry();
  new Counter({ name: 'keyward_test_total', help: 'A counter the scrape must see.', registers: [registry] }).inc(3);

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keyward-metrics-tls-'));
    const pki = createPki(dir);
    const serving = issueServingCertificate(dir, 'metrics', ['keyward-kms-plugin']);
    trusted = issueClientCertificate(dir, 'prometheus', 'prometheus');
    // The same kind of certificate from a CA the listener does not trust.
    const otherDir = join(dir, 'other');
    mkdirSync(otherDir);
    createPki(otherDir);
    foreign = issueClientCertificate(otherDir, 'prometheus', 'prometheus');
    ca = readFileSync(pki.caCert);
    server = await startTlsMetricsServer({ address: '127.0.0.1:0', certFile: serving.cert, keyFile: serving.key, clientCaFile: pki.caCert }, registry);
  });

  after(async () => {
    await server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves /metrics to a client whose certificate the CA signed', async () => {
    const answer = await get(server.address, '/metrics', ca, trusted);
    assert.ok(!(answer instanceof Error), `scrape failed: ${answer instanceof Error ? answer.message : ""}`);
    assert.equal(answer.status, 200);
    assert.match(answer.body, /^keyward_test_total 3$/m);
  });

  it('refuses a client without a certificate', async () => {
    const answer = await get(server.address, '/metrics', ca);
    assert.ok(answer instanceof Error, `answered ${JSON.stringify(answer)}`);
    assert.match(answer.message, /certificate required/);
  });

  it('refuses a client certificate another CA signed', async () => {
    const answer = await get(server.address, '/metrics', ca, foreign);
    // The server ends the handshake (TLS 1.3: after the client's Finished, so the client may see only the hang-up).
    assert.ok(answer instanceof Error, `answered ${JSON.stringify(answer)}`);
    assert.match(answer.message, /unknown ca|socket hang up|ECONNRESET/);
  });

  it('serves no health endpoints: the probes use the loopback listener', async () => {
    for (const path of ['/healthz', '/livez']) {
      const answer = await get(server.address, path, ca, trusted);
      assert.ok(!(answer instanceof Error));
      assert.equal(answer.status, 404, path);
    }
  });

  it('keeps the plain listener serving health and metrics', async () => {
    const plain = await startMetricsServer('127.0.0.1:0', registry, () => ({ ok: false, reason: 'HSM down' }));
    try {
      const health = await fetch(`http://${plain.address}/healthz`);
      assert.equal(health.status, 503);
      assert.equal(await health.text(), 'HSM down\n');
      assert.match(await (await fetch(`http://${plain.address}/metrics`)).text(), /^keyward_test_total 3$/m);
    } finally {
      await plain.close();
    }
  });
});
