// Deadlines of the lean apiserver client against a TCP server that accepts and never answers (not
// even the TLS handshake): every call fails with ApiTimeoutError in time and its connection is
// closed; a TokenReview shared by concurrent mounts frees them all at the deadline.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { apiserverTokenReviewer } from '../../provider/csi/csiProvider.js';
import type { PodToken } from '../../provider/csi/mountRequest.js';
import { PodIdentity } from '../../provider/csi/podIdentity.js';
import { ApiTimeoutError, loadApiConnection, type ApiConnection } from './apiConnection.js';

const timeoutMs = 300;

/** An unsigned JWT-shaped token for the audience, valid for an hour (only its claims are read before the review). */
function podToken(audience: string): PodToken {
  const part = (value: object): string => Buffer.from(JSON.stringify(value)).toString('base64url');
  const exp = Math.floor(Date.now() / 1000) + 3600;
  const value = `${part({ alg: 'none' })}.${part({ aud: [audience], exp })}.sig`;
  return { audience, expiresAt: new Date(exp * 1000), source: 'attributes', value };
}

describe('apiConnection deadlines (a server that never answers)', function () {
  this.timeout(10_000);
  let server: Server;
  let dir: string;
  let api: ApiConnection;
  const sockets: Socket[] = [];

  before(async () => {
    // Reads (and ignores) what the client sends, so its hang-up is seen.
    server = createServer((socket) => void sockets.push(socket.resume()));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    dir = mkdtempSync(join(tmpdir(), 'keyward-api-timeout-'));
    const port = (server.address() as AddressInfo).port;
    const kubeconfig = [
      'apiVersion: v1',
      'kind: Config',
      'current-context: hung',
      'contexts: [{name: hung, context: {cluster: hung, user: hung}}]',
      `clusters: [{name: hung, cluster: {server: "https://127.0.0.1:${port}"}}]`,
      'users: [{name: hung, user: {token: not-a-real-token}}]',
    ].join('\n');
    writeFileSync(join(dir, 'kubeconfig'), kubeconfig);
    api = loadApiConnection(join(dir, 'kubeconfig'), { requestTimeoutMs: timeoutMs, watchIdleMs: timeoutMs });
  });

  after(async () => {
    api.close();
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  });

  /** Runs `call`, which must reject with ApiTimeoutError; returns how long it took. */
  async function timesOut(call: () => Promise<unknown>): Promise<number> {
    const started = Date.now();
    await assert.rejects(call, (err: unknown) => {
      assert.ok(err instanceof ApiTimeoutError, `not an ApiTimeoutError: ${String(err)}`);
      assert.equal(err.timeoutMs, timeoutMs);
      return true;
    });
    return Date.now() - started;
  }

  it('a request fails with ApiTimeoutError at its deadline, and its connection is closed', async () => {
    const before = sockets.length;
    const took = await timesOut(() => api.request('GET', '/api/v1/namespaces'));
    assert.ok(took >= timeoutMs - 20 && took < timeoutMs + 700, `took ${took} ms`);
    const socket = sockets[before] ?? assert.fail('the request never connected');
    // The client hung up: the server side sees the end of the stream.
    await new Promise<void>((resolve, reject) => {
      if (socket.closed || socket.readableEnded) return resolve();
      socket.once('end', resolve).once('close', () => resolve());
      setTimeout(() => reject(new Error('the cancelled request kept its connection open')), 1000).unref();
    });
  });

  it('a watch that does not begin in time fails with ApiTimeoutError', async () => {
    const took = await timesOut(() => api.stream('/api/v1/namespaces?watch=1', () => undefined, new AbortController().signal));
    assert.ok(took < timeoutMs + 700, `took ${took} ms`);
  });

  it('a watch stopped by its caller ends with the caller’s reason, not a timeout', async () => {
    const stop = new AbortController();
    const watching = api.stream('/api/v1/namespaces?watch=1', () => undefined, stop.signal);
    stop.abort();
    await assert.rejects(watching, (err: unknown) => !(err instanceof ApiTimeoutError));
  });

  it('a TokenReview shared by concurrent mounts refuses them all with TokenReviewUnavailable at the deadline, and the next mount reviews again', async () => {
    const identity = new PodIdentity(apiserverTokenReviewer(api), { audience: 'keyward' });
    const token = podToken('keyward');
    const pod = { namespace: 'shop', name: 'web', uid: 'u-1', serviceAccountName: 'app' };
    const connected = sockets.length;
    const started = Date.now();
    const results = await Promise.all([identity.verify(token, pod), identity.verify(token, pod), identity.verify(token, pod)]);
    const took = Date.now() - started;
    assert.ok(took < timeoutMs + 700, `took ${took} ms`);
    for (const result of results) {
      assert.equal(result.ok, false);
      assert.equal(!result.ok && result.code, 'TokenReviewUnavailable');
      assert.match(!result.ok ? result.message : '', /did not answer within 300 ms/);
    }
    // One review for the three mounts: a single connection.
    assert.equal(sockets.length - connected, 1);
    // The failed load is not cached: the next mount tries the apiserver again and is refused in time too.
    const again = Date.now();
    const next = await identity.verify(token, pod);
    assert.equal(!next.ok && next.code, 'TokenReviewUnavailable');
    assert.ok(Date.now() - again < timeoutMs + 700);
    assert.equal(sockets.length - connected, 2);
  });
});
