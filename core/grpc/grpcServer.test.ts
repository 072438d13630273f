// The gRPC server against a client that speaks only HTTP/2 with prior knowledge, as grpc-go does
// (kube-apiserver, the Secrets Store CSI driver): every refusal must be a gRPC status with a
// precise code, whatever the request breaks. The real clients are in the KMS and node e2e tests.
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync, existsSync } from 'node:fs';
import { connect as connectHttp2, type ClientHttp2Session, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http2';
import { connect as connectSocket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { HealthCheckRequestSchema, HealthCheckResponse_ServingStatus, HealthCheckResponseSchema } from '../../proto/gen/grpc/health/v1/health_pb.js';
import { EncryptRequestSchema, EncryptResponseSchema, KeyManagementService, StatusResponseSchema } from '../../proto/gen/kms/v2/api_pb.js';
import { KeywardError } from '../errors.js';
import { startGrpcServer, unaryService, type GrpcServer } from './grpcServer.js';
import { GrpcCode } from './grpcStatus.js';

interface Answer {
  httpStatus: number;
  grpcStatus: number;
  grpcMessage: string;
  body: Buffer;
}

const grpcHeaders = (path: string, extra: OutgoingHttpHeaders = {}): OutgoingHttpHeaders => ({
  ':method': 'POST',
  ':path': path,
  'content-type': 'application/grpc',
  te: 'trailers',
  ...extra,
});

function frame(message: Uint8Array, flag = 0): Buffer {
  const out = Buffer.alloc(5 + message.length);
  out[0] = flag;
  out.writeUInt32BE(message.length, 1);
  out.set(message, 5);
  return out;
}

/** One call; `body` is written as given and the request ended unless `keepOpen`. */
function call(session: ClientHttp2Session, headers: OutgoingHttpHeaders, body: Buffer[], keepOpen = false): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const stream = session.request(headers, { endStream: false });
    let httpStatus = 0;
    let status: string | undefined;
    let message = '';
    const chunks: Buffer[] = [];
    const takeStatus = (h: IncomingHttpHeaders): void => {
      if (h['grpc-status'] !== undefined) [status, message] = [String(h['grpc-status']), String(h['grpc-message'] ?? '')];
    };
    stream.on('response', (h) => {
      httpStatus = Number(h[':status']);
      takeStatus(h);
    });
    stream.on('trailers', takeStatus);
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.on('error', reject);
    stream.on('close', () =>
      status === undefined
        ? reject(new Error(`no grpc-status (HTTP ${httpStatus}, RST code ${stream.rstCode})`))
        : resolve({ httpStatus, grpcStatus: Number(status), grpcMessage: decodeURIComponent(message), body: Buffer.concat(chunks) }),
    );
    for (const chunk of body) stream.write(chunk);
    if (!keepOpen) stream.end();
  });
}

function assertRefused(answer: Answer, code: keyof typeof GrpcCode, message: RegExp): void {
  assert.equal(answer.grpcStatus, GrpcCode[code], `expected ${code}, got ${answer.grpcStatus}: ${answer.grpcMessage}`);
  assert.match(answer.grpcMessage, message);
}

describe('gRPC server over HTTP/2 with prior knowledge', function () {
  this.timeout(20_000);
  let dir: string;
  let server: GrpcServer;
  let session: ClientHttp2Session;
  let releaseSlowCall: () => void = () => undefined;
  const maxRequestBytes = 1024;
  const encryptPath = '/v2.KeyManagementService/Encrypt';
  const statusPath = '/v2.KeyManagementService/Status';
  const encrypt = (uid: string, plaintext = Buffer.from('x')): Buffer => frame(toBinary(EncryptRequestSchema, create(EncryptRequestSchema, { uid, plaintext })));

  const open = (): ClientHttp2Session => {
    const client = connectHttp2('http://localhost', { createConnection: () => connectSocket(join(dir, 'test.sock')) });
    client.on('error', () => undefined);
    return client;
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'keyward-grpc-'));
    server = await startGrpcServer({
      socketPath: join(dir, 'test.sock'),
      maxRequestBytes,
      services: [
        unaryService(KeyManagementService, {
          status: () => Promise.resolve(create(StatusResponseSchema, { version: 'v2', healthz: 'ok', keyId: 'k1' })),
          // The uid picks the outcome, so one method covers every kind of handler failure.
          encrypt: async ({ uid }) => {
            if (uid === 'invalid') throw new KeywardError('InvalidArgument', 'plaintext is empty');
            if (uid === 'denied') throw new KeywardError('PermissionDenied', 'not granted: ünïcode % kept');
            if (uid === 'bug') throw new Error('secret detail from a bug');
            if (uid === 'slow') await new Promise<void>((resolve) => (releaseSlowCall = resolve));
            return create(EncryptResponseSchema, { ciphertext: Buffer.from('sealed'), keyId: 'k1' });
          },
          decrypt: () => Promise.reject(new KeywardError('NotFound', 'no such key')),
        }),
      ],
    });
    session = open();
  });

  after(async () => {
    session.destroy();
    await server.stop(100);
    rmSync(dir, { recursive: true, force: true });
  });

  it('listens on a 0600 socket and answers a unary call with its message and status 0 [practice:secure-transport]', async () => {
    assert.equal(statSync(join(dir, 'test.sock')).mode & 0o777, 0o600);
    const answer = await call(session, grpcHeaders(encryptPath), [encrypt('ok')]);
    assert.equal(answer.grpcStatus, 0);
    assert.equal(answer.body.readUInt32BE(1), answer.body.length - 5);
    const response = fromBinary(EncryptResponseSchema, answer.body.subarray(5));
    assert.deepEqual([Buffer.from(response.ciphertext).toString(), response.keyId], ['sealed', 'k1']);
  });

  it('turns handler failures into their codes, and anything unexpected into INTERNAL without its detail', async () => {
    assertRefused(await call(session, grpcHeaders(encryptPath), [encrypt('invalid')]), 'INVALID_ARGUMENT', /^plaintext is empty$/);
    assertRefused(await call(session, grpcHeaders(encryptPath), [encrypt('denied')]), 'PERMISSION_DENIED', /^not granted: ünïcode % kept$/);
    assertRefused(await call(session, grpcHeaders('/v2.KeyManagementService/Decrypt'), [frame(new Uint8Array())]), 'NOT_FOUND', /no such key/);
    const bug = await call(session, grpcHeaders(encryptPath), [encrypt('bug')]);
    assertRefused(bug, 'INTERNAL', /^internal error$/);
  });

  it('refuses what is not a gRPC call it serves', async () => {
    assertRefused(await call(session, grpcHeaders('/v2.KeyManagementService/Nope'), [frame(new Uint8Array())]), 'UNIMPLEMENTED', /unknown method \/v2.KeyManagementService\/Nope/);
    assertRefused(await call(session, grpcHeaders('/other.Service/Status'), [frame(new Uint8Array())]), 'UNIMPLEMENTED', /unknown method/);
    const json = await call(session, grpcHeaders(statusPath, { 'content-type': 'application/json' }), [Buffer.from('{}')]);
    assert.equal(json.httpStatus, 415);
    assertRefused(json, 'INVALID_ARGUMENT', /content-type application\/json is not application\/grpc/);
    assertRefused(await call(session, grpcHeaders(statusPath, { 'content-type': 'application/grpc+json' }), []), 'INVALID_ARGUMENT', /is not application\/grpc/);
    const get = await call(session, grpcHeaders(statusPath, { ':method': 'GET' }), []);
    assert.equal(get.httpStatus, 405);
    assertRefused(get, 'UNIMPLEMENTED', /method GET is not POST/);
  });

  it('refuses compression, malformed timeouts and calls that outlive their deadline', async () => {
    assertRefused(await call(session, grpcHeaders(encryptPath, { 'grpc-encoding': 'gzip' }), [encrypt('ok')]), 'UNIMPLEMENTED', /grpc-encoding gzip is not supported/);
    assertRefused(await call(session, grpcHeaders(encryptPath), [frame(Buffer.from('x'), 1)]), 'UNIMPLEMENTED', /compressed messages are not supported/);
    assertRefused(await call(session, grpcHeaders(encryptPath, { 'grpc-timeout': '5X' }), [encrypt('ok')]), 'INVALID_ARGUMENT', /grpc-timeout 5X is malformed/);
    assertRefused(await call(session, grpcHeaders(encryptPath, { 'grpc-timeout': '123456789S' }), [encrypt('ok')]), 'INVALID_ARGUMENT', /malformed/);
    const late = call(session, grpcHeaders(encryptPath, { 'grpc-timeout': '50m' }), [encrypt('slow')]);
    assertRefused(await late, 'DEADLINE_EXCEEDED', /longer than its grpc-timeout/);
    releaseSlowCall();
    assert.equal((await call(session, grpcHeaders(encryptPath), [encrypt('ok')])).grpcStatus, 0, 'the connection still serves');
  });

  it('refuses a message larger than allowed from its prefix, before the body arrives', async () => {
    const prefix = Buffer.alloc(5);
    prefix.writeUInt32BE(maxRequestBytes + 1, 1);
    // The body never comes: the answer must not wait for it.
    assertRefused(await call(session, grpcHeaders(encryptPath), [prefix], true), 'RESOURCE_EXHAUSTED', /is 1025 bytes; at most 1024 are accepted/);
    const huge = Buffer.alloc(5);
    huge.writeUInt32BE(0xffffffff, 1);
    assertRefused(await call(session, grpcHeaders(encryptPath), [huge], true), 'RESOURCE_EXHAUSTED', /4294967295 bytes/);
  });

  it('refuses a body that is not exactly one well-formed message, however it is split', async () => {
    const one = encrypt('ok');
    assertRefused(await call(session, grpcHeaders(encryptPath), [Buffer.concat([one, one])]), 'INVALID_ARGUMENT', /exactly one message/);
    assertRefused(await call(session, grpcHeaders(encryptPath), [one.subarray(0, one.length - 1)]), 'INVALID_ARGUMENT', /ended before its message was complete/);
    assertRefused(await call(session, grpcHeaders(encryptPath), [one.subarray(0, 3)]), 'INVALID_ARGUMENT', /ended before/);
    assertRefused(await call(session, grpcHeaders(encryptPath), []), 'INVALID_ARGUMENT', /ended before/);
    assertRefused(await call(session, grpcHeaders(encryptPath), [frame(Buffer.from([0xff, 0xff, 0xff]))]), 'INVALID_ARGUMENT', /not a valid v2.EncryptRequest/);
    const byteByByte = [...one].map((b) => Buffer.from([b]));
    assert.equal((await call(session, grpcHeaders(encryptPath), byteByByte)).grpcStatus, 0, 'a message split into 1-byte chunks is still one message');
  });

  it('serves grpc.health.v1 for the server and each of its services', async () => {
    const check = async (service: string): Promise<Answer> =>
      call(session, grpcHeaders('/grpc.health.v1.Health/Check'), [frame(toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, { service })))]);
    for (const service of ['', 'v2.KeyManagementService']) {
      const answer = await check(service);
      assert.equal(fromBinary(HealthCheckResponseSchema, answer.body.subarray(5)).status, HealthCheckResponse_ServingStatus.SERVING);
    }
    assertRefused(await check('nope.Service'), 'NOT_FOUND', /no service nope.Service here/);
  });

  it('survives a peer that does not speak HTTP/2 and keeps serving others', async () => {
    await new Promise<void>((resolve) => {
      const raw = connectSocket(join(dir, 'test.sock'), () => raw.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n' + 'garbage'.repeat(1000)));
      raw.resume();
      raw.on('error', () => resolve());
      raw.on('close', () => resolve());
    });
    assert.equal((await call(session, grpcHeaders(encryptPath), [encrypt('ok')])).grpcStatus, 0);
  });

  it('on stop, finishes calls in flight, refuses new ones, and removes its socket', async () => {
    const other = open();
    const inFlight = call(other, grpcHeaders(encryptPath), [encrypt('slow')]);
    await sleep(50);
    const stopped = server.stop(5_000);
    await sleep(50);
    releaseSlowCall();
    assert.equal((await inFlight).grpcStatus, 0, 'the call in flight completes');
    await stopped;
    other.destroy();
    assert.equal(existsSync(join(dir, 'test.sock')), false);
    await assert.rejects(call(open(), grpcHeaders(encryptPath), [encrypt('ok')]));
  });
});
