// A promise-based gRPC client for tests and benchmarks, on @grpc/grpc-js: a second, independent
// gRPC implementation talking to Keyward's server. Errors are grpc-js ServiceErrors with `code`.
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from '@bufbuild/protobuf';
import type { GenService, GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import { credentials, makeGenericClientConstructor, type MethodDefinition, type ServiceDefinition } from '@grpc/grpc-js';

export type UnaryClient<M extends GenServiceMethods> = {
  [K in keyof M]: (request: MessageInitShape<M[K]['input']>) => Promise<MessageShape<M[K]['output']>>;
} & { close(): void };

function serviceDefinition(service: GenService<GenServiceMethods>): ServiceDefinition {
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

export function grpcClient<M extends GenServiceMethods>(service: GenService<M>, address: string): UnaryClient<M> {
  const Client = makeGenericClientConstructor(serviceDefinition(service), service.typeName);
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
