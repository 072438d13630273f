// Serves a protobuf-es service description with @grpc/grpc-js: typed unary handlers, messages
// (de)serialised by protobuf-es, and KeywardErrors turned into gRPC status codes.
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from '@bufbuild/protobuf';
import type { GenService, GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import {
  credentials,
  makeGenericClientConstructor,
  status as grpcStatus,
  type handleUnaryCall,
  type MethodDefinition,
  type ServiceDefinition,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import type { KeywardErrorCode } from '../errors.js';
import { KeywardError } from '../errors.js';

export type UnaryHandlers<M extends GenServiceMethods> = {
  [K in keyof M]: (request: MessageShape<M[K]['input']>) => Promise<MessageShape<M[K]['output']>>;
};

const statusOf: Record<KeywardErrorCode, grpcStatus> = {
  SetupError: grpcStatus.FAILED_PRECONDITION,
  InvalidArgument: grpcStatus.INVALID_ARGUMENT,
  NotFound: grpcStatus.NOT_FOUND,
  FailedPrecondition: grpcStatus.FAILED_PRECONDITION,
  Unavailable: grpcStatus.UNAVAILABLE,
  PermissionDenied: grpcStatus.PERMISSION_DENIED,
  Internal: grpcStatus.INTERNAL,
};

export function grpcStatusOf(err: unknown): grpcStatus {
  return err instanceof KeywardError ? statusOf[err.code] : grpcStatus.INTERNAL;
}

/** Only KeywardError messages are written for callers; anything else is reported as internal. */
export function grpcMessageOf(err: unknown): string {
  return err instanceof KeywardError ? err.message : 'internal error';
}

export function grpcServiceDefinition(service: GenService<GenServiceMethods>): ServiceDefinition {
  const definition: Record<string, MethodDefinition<MessageShape<DescMessage>, MessageShape<DescMessage>>> = {};
  for (const method of service.methods) {
    const input: DescMessage = method.input;
    const output: DescMessage = method.output;
    definition[method.localName] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: false,
      responseStream: false,
      requestSerialize: (message: MessageShape<DescMessage>) => Buffer.from(toBinary(input, message)),
      requestDeserialize: (bytes: Buffer) => fromBinary(input, bytes),
      responseSerialize: (message: MessageShape<DescMessage>) => Buffer.from(toBinary(output, message)),
      responseDeserialize: (bytes: Buffer) => fromBinary(output, bytes),
    };
  }
  return definition;
}

/** grpc-js implementation from promise-returning handlers; failures become status codes. */
export function grpcImplementation<M extends GenServiceMethods>(
  service: GenService<M>,
  handlers: UnaryHandlers<M>,
): UntypedServiceImplementation {
  const implementation: Record<string, handleUnaryCall<unknown, unknown>> = {};
  for (const method of service.methods) {
    const handler = handlers[method.localName as keyof M] as (request: unknown) => Promise<unknown>;
    implementation[method.localName] = (call, callback) => {
      handler(call.request).then(
        (response) => callback(null, response),
        (err: unknown) => callback({ code: grpcStatusOf(err), details: grpcMessageOf(err) }),
      );
    };
  }
  return implementation;
}

export type UnaryClient<M extends GenServiceMethods> = {
  [K in keyof M]: (request: MessageInitShape<M[K]['input']>) => Promise<MessageShape<M[K]['output']>>;
} & { close(): void };

/** A promise-based client for tests and tools; errors are grpc-js ServiceErrors with `code`. */
export function grpcClient<M extends GenServiceMethods>(service: GenService<M>, address: string): UnaryClient<M> {
  const Client = makeGenericClientConstructor(grpcServiceDefinition(service), service.typeName);
  const client = new Client(address, credentials.createInsecure());
  const methods: Record<string, unknown> = { close: () => client.close() };
  for (const method of service.methods) {
    type UnaryCall = (request: unknown, callback: (err: Error | null, response: unknown) => void) => void;
    const call = (client as unknown as Record<string, UnaryCall>)[method.localName]!.bind(client);
    methods[method.localName] = (request: MessageInitShape<DescMessage>) =>
      new Promise((resolve, reject) => call(create(method.input, request), (err, response) => (err ? reject(err) : resolve(response))));
  }
  return methods as UnaryClient<M>;
}
