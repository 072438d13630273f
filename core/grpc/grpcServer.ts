// The gRPC server of both node-side sockets (KMS plugin, CSI provider), on node:http2 over a unix
// socket. It speaks what kube-apiserver and the Secrets Store CSI driver (both grpc-go) send:
// unary calls, binary protobuf, no compression, HTTP/2 with prior knowledge. That is small enough
// to serve directly, and a call then costs a fraction of a general gRPC stack (README.md, "KMS
// plugin"). Every refusal is a gRPC status with a precise code; a request larger than allowed is
// refused from its 5-byte prefix, before its body is read. grpc.health.v1 is served on every socket.
import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import type { GenService, GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import { existsSync, unlinkSync } from 'node:fs';
import { constants, createServer, type Http2Session, type IncomingHttpHeaders, type ServerHttp2Stream } from 'node:http2';
import { KeywardError } from '../errors.js';
import { Health, HealthCheckResponse_ServingStatus, HealthCheckResponseSchema } from '../../proto/gen/grpc/health/v1/health_pb.js';
import { encodeGrpcMessage, GrpcCode, grpcStatusOf, type GrpcCodeName } from './grpcStatus.js';
import { listenOnUnixSocket, prepareSocketPath } from './unixSocket.js';

export type UnaryHandlers<M extends GenServiceMethods> = {
  [K in keyof M]: (request: MessageShape<M[K]['input']>) => Promise<MessageShape<M[K]['output']>>;
};

interface Route {
  input: DescMessage;
  output: DescMessage;
  handler: (request: MessageShape<DescMessage>) => Promise<MessageShape<DescMessage>>;
}

/** A service and its handlers, as startGrpcServer takes them. */
export interface ServedService {
  typeName: string;
  routes: Map<string, Route>;
}

export function unaryService<M extends GenServiceMethods>(service: GenService<M>, handlers: UnaryHandlers<M>): ServedService {
  const routes = new Map<string, Route>();
  for (const method of service.methods) {
    const handler = handlers[method.localName as keyof M] as unknown as Route['handler'];
    routes.set(`/${service.typeName}/${method.name}`, { input: method.input, output: method.output, handler });
  }
  return { typeName: service.typeName, routes };
}

export interface GrpcServerOptions {
  socketPath: string;
  services: ServedService[];
  /** The largest request message accepted. */
  maxRequestBytes: number;
  /**
   * Asked when a message's length is known, before its bytes are read: a function that releases
   * them when the call ends, or a refusal message, answered with RESOURCE_EXHAUSTED. Bounds the
   * request bytes held at once; every call is admitted without it.
   */
  admit?: (method: string, messageBytes: number) => (() => void) | string;
  /** What the health service reports while the server is not stopping; SERVING by default. */
  healthy?: () => boolean;
}

export interface GrpcServer {
  readonly socketPath: string;
  /** Stops taking calls, lets those in flight finish for up to `drainMs`, cuts the rest. */
  stop(drainMs: number): Promise<void>;
}

const grpcContentType = /^application\/grpc(\+proto)?(;|$)/;

export async function startGrpcServer(options: GrpcServerOptions): Promise<GrpcServer> {
  await prepareSocketPath(options.socketPath);
  const routes = new Map<string, Route>();
  for (const service of options.services) for (const [path, route] of service.routes) routes.set(path, route);
  let stopping = false;
  const served = new Set(options.services.map((s) => s.typeName));
  const health = unaryService(Health, {
    check: (request) => {
      if (request.service !== '' && !served.has(request.service)) return Promise.reject(new KeywardError('NotFound', `no service ${request.service} here`));
      const up = !stopping && (options.healthy?.() ?? true);
      return Promise.resolve(create(HealthCheckResponseSchema, { status: up ? HealthCheckResponse_ServingStatus.SERVING : HealthCheckResponse_ServingStatus.NOT_SERVING }));
    },
  });
  for (const [path, route] of health.routes) routes.set(path, route);

  const sessions = new Set<Http2Session>();
  const server = createServer();
  server.on('session', (session) => {
    sessions.add(session);
    session.once('close', () => sessions.delete(session));
    // A peer that breaks the protocol loses its connection, never the process.
    session.on('error', () => session.destroy());
  });
  server.on('stream', (stream, headers) => {
    stream.on('error', () => stream.destroy());
    if (stopping) return respondStatus(stream, 'UNAVAILABLE', 'the server is shutting down');
    serveCall(stream, headers, routes, options.maxRequestBytes, options.admit);
  });
  await listenOnUnixSocket(server, options.socketPath);

  let stopped: Promise<void> | undefined;
  return {
    socketPath: options.socketPath,
    stop: (drainMs) =>
      (stopped ??= new Promise<void>((resolve) => {
        stopping = true;
        const cut = setTimeout(() => {
          for (const session of sessions) session.destroy();
        }, drainMs);
        server.close(() => {
          clearTimeout(cut);
          if (existsSync(options.socketPath)) unlinkSync(options.socketPath);
          resolve();
        });
        // GOAWAY: calls in flight finish, no new ones start on these connections.
        for (const session of sessions) session.close();
      })),
  };
}

/** Reads the one message of a unary call, runs its handler and answers, or refuses. */
function serveCall(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, routes: Map<string, Route>, maxRequestBytes: number, admit: GrpcServerOptions['admit']): void {
  const route = routes.get(headers[':path'] ?? '');
  const contentType = headers['content-type'] ?? '';
  if (!grpcContentType.test(contentType)) return respondStatus(stream, 'INVALID_ARGUMENT', `content-type ${contentType || '(none)'} is not application/grpc`, 415);
  if (headers[':method'] !== 'POST') return respondStatus(stream, 'UNIMPLEMENTED', `method ${headers[':method']} is not POST`, 405);
  if (!route) return respondStatus(stream, 'UNIMPLEMENTED', `unknown method ${headers[':path']}`);
  const encoding = headers['grpc-encoding'] as string | undefined;
  if (encoding !== undefined && encoding !== 'identity') return respondStatus(stream, 'UNIMPLEMENTED', `grpc-encoding ${encoding} is not supported; send uncompressed messages`);
  const timeout = headers['grpc-timeout'] as string | undefined;
  const timeoutMs = parseTimeout(timeout);
  if (timeoutMs === null) return respondStatus(stream, 'INVALID_ARGUMENT', `grpc-timeout ${timeout} is malformed`);

  const reader = new MessageReader(maxRequestBytes, admit && ((bytes) => admit(headers[':path'] ?? '', bytes)));
  // Admitted bytes come back when the handler is done, even if the caller went away before:
  // a cancelled call still holds its request until then.
  let handling = false;
  stream.once('close', () => {
    if (!handling) reader.release();
  });
  stream.on('data', (chunk: Buffer) => {
    const refusal = reader.push(chunk);
    if (!refusal) return;
    respondStatus(stream, refusal.code, refusal.message);
    // The status is on its way; RST_STREAM(NO_ERROR) tells the client to stop sending the rest.
    stream.close(constants.NGHTTP2_NO_ERROR);
  });
  stream.once('end', () => {
    if (stream.headersSent) return;
    const message = reader.message();
    if (!message) return respondStatus(stream, 'INVALID_ARGUMENT', 'the request ended before its message was complete');
    let request: MessageShape<DescMessage>;
    try {
      request = fromBinary(route.input, message, { readUnknownFields: false });
    } catch {
      return respondStatus(stream, 'INVALID_ARGUMENT', `the request is not a valid ${route.input.typeName}`);
    }
    const deadline = timeoutMs === undefined ? undefined : setTimeout(() => respondStatus(stream, 'DEADLINE_EXCEEDED', 'the call took longer than its grpc-timeout'), timeoutMs);
    handling = true;
    const release = (): void => reader.release();
    route
      .handler(request)
      .then(
        (response) => {
          clearTimeout(deadline);
          respondMessage(stream, toBinary(route.output, response));
        },
        (err: unknown) => {
          clearTimeout(deadline);
          const status = grpcStatusOf(err);
          respondStatus(stream, status.code, status.message);
        },
      )
      .then(release, release);
  });
}

/** Collects the single length-prefixed message of a unary request, refusing what is not one. */
class MessageReader {
  private readonly prefix = Buffer.alloc(5);
  private prefixBytes = 0;
  private body: Buffer | undefined;
  private bodyBytes = 0;
  private failed = false;
  private admitted: (() => void) | undefined;

  constructor(
    private readonly maxBytes: number,
    private readonly admit?: (messageBytes: number) => (() => void) | string,
  ) {}

  /** Gives back what admission granted; once. */
  release(): void {
    this.admitted?.();
    this.admitted = undefined;
  }

  /** Takes the next chunk of the request body; returns a refusal once, then ignores the rest. */
  push(chunk: Buffer): { code: GrpcCodeName; message: string } | undefined {
    if (this.failed) return undefined;
    let offset = 0;
    while (offset < chunk.length) {
      if (this.body && this.bodyBytes === this.body.length) return this.fail('INVALID_ARGUMENT', 'a unary call carries exactly one message');
      if (!this.body) {
        const n = Math.min(5 - this.prefixBytes, chunk.length - offset);
        chunk.copy(this.prefix, this.prefixBytes, offset, offset + n);
        this.prefixBytes += n;
        offset += n;
        if (this.prefixBytes < 5) break;
        if (this.prefix[0] !== 0) return this.fail('UNIMPLEMENTED', 'compressed messages are not supported; send uncompressed messages');
        const length = this.prefix.readUInt32BE(1);
        if (length > this.maxBytes) return this.fail('RESOURCE_EXHAUSTED', `the request message is ${length} bytes; at most ${this.maxBytes} are accepted`);
        const admitted = this.admit?.(length);
        if (typeof admitted === 'string') return this.fail('RESOURCE_EXHAUSTED', admitted);
        this.admitted = admitted;
        this.body = Buffer.allocUnsafe(length);
        continue;
      }
      const n = Math.min(this.body.length - this.bodyBytes, chunk.length - offset);
      chunk.copy(this.body, this.bodyBytes, offset, offset + n);
      this.bodyBytes += n;
      offset += n;
    }
    return undefined;
  }

  /** The message, once exactly one has arrived whole. */
  message(): Buffer | undefined {
    return !this.failed && this.body && this.bodyBytes === this.body.length ? this.body : undefined;
  }

  private fail(code: GrpcCodeName, message: string): { code: GrpcCodeName; message: string } {
    this.failed = true;
    this.body = undefined;
    return { code, message };
  }
}

const timeoutUnitMs: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000_001 };

/** grpc-timeout in ms; undefined when absent, null when malformed. */
function parseTimeout(value: string | undefined): number | undefined | null {
  if (value === undefined) return undefined;
  const match = /^(\d{1,8})([HMSmun])$/.exec(value);
  if (!match) return null;
  return Math.min(Number(match[1]) * timeoutUnitMs[match[2]!]!, 2 ** 31 - 1);
}

function respondMessage(stream: ServerHttp2Stream, message: Uint8Array): void {
  if (stream.headersSent || stream.destroyed) return;
  const frame = Buffer.allocUnsafe(5 + message.length);
  frame[0] = 0;
  frame.writeUInt32BE(message.length, 1);
  frame.set(message, 5);
  stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
  stream.once('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
  stream.end(frame);
}

/** A trailers-only response; the rest of the request body, if any, is not read. */
function respondStatus(stream: ServerHttp2Stream, code: GrpcCodeName, message: string, httpStatus = 200): void {
  if (stream.headersSent || stream.destroyed) return;
  stream.respond(
    {
      ':status': httpStatus,
      'content-type': 'application/grpc',
      'grpc-status': String(GrpcCode[code]),
      'grpc-message': encodeGrpcMessage(message),
      ...(code === 'UNIMPLEMENTED' ? { 'grpc-accept-encoding': 'identity' } : {}),
    },
    { endStream: true },
  );
}
