// The fast-check properties of Keyward's decoders of outside input, shared by the short fixed-seed
// runs in the `*.fuzz.test.ts` files and the long run of bench/fuzzDecoders.ts. One rule for all:
// any input decodes to a value that is valid and no larger than the input (plus a constant), or
// is refused with a KeywardError; never another exception, and never slowly.
import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import fc from 'fast-check';
import { KeywardError } from '../../core/errors.js';
import { ciphertextFormatV1, algorithmAes256Gcm, maxCiphertextBytes, parseCiphertext } from '../../core/formats/kmsCiphertext.js';
import { maxSealedSecretBytes, parseSealedSecret, sealedSecretFormatV1 } from '../../core/formats/sealedSecret.js';
import { assertKeyIdWellFormed } from '../../core/hsm/ringState.js';
import { parseReview, requesterOf, respond } from '../../operator/admission/admissionReview.js';
import { checkAnnotations, formatAnnotation } from '../../provider/kms/kmsService.js';
import { DecryptRequestSchema, EncryptRequestSchema, StatusRequestSchema } from '../../proto/gen/kms/v2/api_pb.js';

/** Longer than this for one input is a defect (super-linear work), with room for a GC pause on 2 busy cores. */
export const maxCaseMs = 250;

/** How many inputs each decoder accepted and refused: a run that accepts nothing tests only the first check. */
export const outcomes: Record<string, { accepted: number; refused: number }> = {};

/** The property's verdict on one input: the decoder's value is checked by `valid`, a throw must be a KeywardError. */
function decodesOrRefuses<I, O>(name: string, decode: (input: I) => O, valid: (value: O, input: I) => void): (input: I) => void {
  const counts = (outcomes[name] = { accepted: 0, refused: 0 });
  return (input) => {
    const started = performance.now();
    let outcome: { value: O } | { error: unknown };
    try {
      outcome = { value: decode(input) };
    } catch (error) {
      outcome = { error };
    }
    const took = performance.now() - started;
    if (took > maxCaseMs) throw new Error(`took ${took.toFixed(0)} ms`);
    if ('error' in outcome) {
      const { error } = outcome;
      if (!(error instanceof KeywardError)) throw new Error(`threw ${nameOf(error)}, not a KeywardError`, { cause: error });
      if (error.code !== 'InvalidArgument') throw new Error(`refused with ${error.code}, not InvalidArgument: ${error.message}`, { cause: error });
      counts.refused++;
      return;
    }
    valid(outcome.value, input);
    counts.accepted++;
  };
}

const nameOf = (err: unknown): string => (err instanceof Error ? `${err.constructor.name}: ${err.message}` : `a non-Error ${typeof err}`);

function check(condition: boolean, what: string): void {
  if (!condition) throw new Error(`accepted an invalid input: ${what}`);
}

/** Binary input as the gRPC server hands it over: sometimes a view into a larger buffer, at an odd offset. */
const bytesIn = (content: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Uint8Array> =>
  fc.tuple(content, fc.nat({ max: 7 }), fc.nat({ max: 7 })).map(([bytes, before, after]) => {
    const backing = new Uint8Array(before + bytes.length + after).fill(0xee);
    backing.set(bytes, before);
    return backing.subarray(before, before + bytes.length);
  });

/** Random bytes, and bytes that begin like the format (so the checks past the first bytes are reached). */
function formatBytes(prefixes: fc.Arbitrary<number[]>, maxLength: number): fc.Arbitrary<Uint8Array> {
  return fc.oneof(
    fc.uint8Array({ maxLength: 64 }),
    fc.uint8Array({ maxLength, size: 'max' }),
    fc.tuple(prefixes, fc.uint8Array({ maxLength, size: 'max' }), fc.nat({ max: maxLength + 8 })).map(([prefix, rest, cut]) => {
      const bytes = Uint8Array.from([...prefix, ...rest]);
      return bytes.subarray(0, cut % (bytes.length + 1));
    }),
  );
}

const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(a, b) === 0;

/** Mostly the right format and algorithm, so the checks past them are reached. */
const kmsCiphertexts = formatBytes(
  fc.tuple(fc.constantFrom(ciphertextFormatV1, ciphertextFormatV1, ciphertextFormatV1, 0, 2, 255), fc.constantFrom(algorithmAes256Gcm, algorithmAes256Gcm, 0, 2), fc.nat({ max: 3 })).map(([f, a, v]) => [f, a, 0, 0, 0, v]),
  maxCiphertextBytes + 8,
);

export const kmsCiphertextProperty = fc.property(
  bytesIn(kmsCiphertexts),
  decodesOrRefuses('kmsCiphertext', parseCiphertext, (parsed, input) => {
    check(input.length <= maxCiphertextBytes, 'longer than the limit');
    check(input[0] === ciphertextFormatV1 && input[1] === algorithmAes256Gcm, 'another format or algorithm');
    check(parsed.iv.length === 12 && parsed.sealed.length > 16, 'no IV or no tag');
    // The parts are the input's bytes, all of them and nothing else (no copy, no read past the view).
    check(sameBytes(Buffer.concat([parsed.header, parsed.iv, parsed.sealed]), input), 'the parts are not the input');
    check(parsed.keyVersion === Buffer.from(input).readUInt32BE(2), 'another key version');
  }),
);

const keyIdChars = fc.constantFrom(...'kw1-abcXYZ_09', ' ', '\u00e9', '\u0000', '\u007f');

export const sealedSecretProperty = fc.property(
  bytesIn(
    fc.oneof(
      formatBytes(
        fc
          .tuple(fc.constantFrom(sealedSecretFormatV1, 1, 0, 3), fc.constantFrom(algorithmAes256Gcm, 0), fc.nat({ max: 2 }), fc.nat({ max: 70 }), fc.array(keyIdChars, { maxLength: 70 }))
          .map(([f, a, v, length, id]) => [f, a, 0, 0, 0, v, length, ...Buffer.from(id.join(''), 'latin1')]),
        200,
      ),
      // Around the size limit, with a well-formed header.
      fc.integer({ min: maxSealedSecretBytes - 2, max: maxSealedSecretBytes + 2 }).map((size) => {
        const bytes = new Uint8Array(size).fill(0x41);
        bytes.set([sealedSecretFormatV1, algorithmAes256Gcm, 0, 0, 0, 1, 36]);
        return bytes;
      }),
    ),
  ),
  decodesOrRefuses('sealedSecret', parseSealedSecret, (parsed, input) => {
    check(input.length <= maxSealedSecretBytes, 'longer than the limit');
    check(input[0] === sealedSecretFormatV1 && input[1] === algorithmAes256Gcm, 'another format or algorithm');
    check(parsed.keyVersion >= 1, 'key version 0');
    check(/^[\x21-\x7e]{1,64}$/.test(parsed.keyId), `key id ${JSON.stringify(parsed.keyId)}`);
    check(parsed.header.length === 7 + parsed.keyId.length && parsed.iv.length === 12 && parsed.sealed.length > 16, 'parts of the wrong size');
    check(sameBytes(Buffer.concat([parsed.header, parsed.iv, parsed.sealed]), input), 'the parts are not the input');
  }),
);

const goodKeyId = fc.stringMatching(/^kw1-[A-Za-z0-9_-]{32}$/);
/** Key ids as a caller might send them: well formed, nearly so, or anything. */
const keyIds = fc.oneof(
  goodKeyId,
  fc.tuple(goodKeyId, fc.nat({ max: 40 }), fc.string({ unit: 'binary', maxLength: 3 })).map(([id, at, insert]) => id.slice(0, at) + insert + id.slice(at + insert.length)),
  fc.string({ unit: 'binary', maxLength: 64 }),
  fc.nat({ max: 4096 }).map((n) => `kw1-${'a'.repeat(n)}`),
);

export const keyIdProperty = fc.property(
  keyIds,
  decodesOrRefuses('keyId', assertKeyIdWellFormed, (_, keyId) => {
    // Accepted key ids are audited and quoted in messages: plain ASCII of a fixed length.
    check(/^kw1-[A-Za-z0-9_-]{32}$/.test(keyId), `key id ${JSON.stringify(keyId.slice(0, 80))}`);
  }),
);

const dnsLabel = fc.stringMatching(/^[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?$/);
const annotationKeys = fc.oneof(
  fc.array(dnsLabel, { minLength: 1, maxLength: 4 }).map((labels) => labels.join('.')),
  fc.constantFrom(formatAnnotation, '__proto__', 'constructor', 'a..b', '.a.b', 'a.b.', 'A.b', `${'a'.repeat(250)}.bc`, `${'a'.repeat(251)}.bc`),
  fc.string({ unit: 'binary', maxLength: 300 }),
);
const annotationValues = fc.oneof(fc.constant(Buffer.from('1')), fc.uint8Array({ maxLength: 16 }), fc.nat({ max: 40_000 }).map((n) => new Uint8Array(n)));

export const annotationsProperty = fc.property(
  fc.array(fc.tuple(annotationKeys, annotationValues), { maxLength: 6 }).map((entries) => {
    // As protobuf-es decodes a map: an object without a prototype, so '__proto__' is an ordinary key.
    const annotations: Record<string, Uint8Array> = Object.create(null) as Record<string, Uint8Array>;
    for (const [key, value] of entries) annotations[key] = value;
    return annotations;
  }),
  decodesOrRefuses('annotations', checkAnnotations, (_, annotations) => {
    let total = 0;
    for (const [key, value] of Object.entries(annotations)) {
      check(key.length <= 253 && /^[a-z0-9-]+(\.[a-z0-9-]+)+$/.test(key) && !/(^|\.)-|-(\.|$)/.test(key), `annotation key ${JSON.stringify(key.slice(0, 80))}`);
      total += key.length + value.length;
    }
    check(total <= 32 * 1024, `${total} bytes of annotations`);
    const format = annotations[formatAnnotation];
    check(format === undefined || Buffer.from(format).toString('latin1') === '1', 'an unknown ciphertext format');
  }),
);

/** Valid messages, as encoded, then cut, spliced or bit-flipped; and plain random bytes. */
function wireBytes(valid: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Uint8Array> {
  const mutated = fc.tuple(valid, fc.nat(), fc.nat({ max: 255 }), fc.uint8Array({ maxLength: 8 })).map(([bytes, at, flip, insert]) => {
    const out = Uint8Array.from([...bytes.subarray(0, at % (bytes.length + 1)), ...insert, ...bytes.subarray(at % (bytes.length + 1))]);
    if (out.length > 0) out[at % out.length] = (out[at % out.length] ?? 0) ^ flip;
    return out;
  });
  return fc.oneof(valid, mutated, fc.tuple(mutated, fc.nat()).map(([bytes, n]) => bytes.subarray(0, n % (bytes.length + 1))), fc.uint8Array({ maxLength: 512 }));
}

/** Decrypt requests as kube-apiserver sends them (a key id and the format annotation), or not. */
const decryptRequests = fc
  .record({
    uid: fc.string({ maxLength: 40 }),
    ciphertext: kmsCiphertexts,
    keyId: fc.oneof({ arbitrary: goodKeyId, weight: 3 }, keyIds),
    annotations: fc.oneof({ arbitrary: fc.constant({ [formatAnnotation]: Buffer.from('1') }), weight: 3 }, fc.dictionary(annotationKeys, annotationValues.filter((v) => v.length < 64), { maxKeys: 3 })),
  })
  .map((fields) => toBinary(DecryptRequestSchema, create(DecryptRequestSchema, fields)));
const encryptRequests = fc.record({ uid: fc.string({ maxLength: 40 }), plaintext: fc.uint8Array({ maxLength: 64 }) }).map((fields) => toBinary(EncryptRequestSchema, create(EncryptRequestSchema, fields)));

/**
 * fromBinary of arbitrary bytes: a message about the size of its input, or an Error, which the gRPC
 * server answers as INVALID_ARGUMENT (core/grpc/grpcServer.ts); here a KeywardError, to be counted.
 */
function decodeKms<D extends DescMessage>(schema: D, bytes: Uint8Array): MessageShape<D> {
  let message: MessageShape<D>;
  try {
    message = fromBinary(schema, bytes, { readUnknownFields: false });
  } catch (err) {
    if (!(err instanceof Error)) throw new Error(`fromBinary threw a non-Error ${typeof err}`, { cause: err });
    throw new KeywardError('InvalidArgument', `not a valid ${schema.typeName}`, { cause: err });
  }
  // Re-encoded, a message is no larger than its input, except that a map entry sent without its
  // key or value (2 bytes at least) comes back with both: 4 bytes more each, so at most 3x.
  const size = toBinary(schema, message).length;
  const entries = 'annotations' in message ? Object.keys(message.annotations as object).length : 0;
  check(size <= bytes.length + 4 * entries, `a ${size}-byte message with ${entries} map entries from ${bytes.length} bytes`);
  return message;
}

const checkDecrypt = decodesOrRefuses('kmsDecryptRequest', (bytes: Uint8Array) => {
  const request = decodeKms(DecryptRequestSchema, bytes);
  // In the order the Decrypt handler checks its input.
  assertKeyIdWellFormed(request.keyId);
  checkAnnotations(request.annotations);
  parseCiphertext(request.ciphertext);
}, () => undefined);

const decodeEncrypt = decodesOrRefuses('kmsEncryptRequest', (bytes: Uint8Array) => decodeKms(EncryptRequestSchema, bytes), () => undefined);
const decodeStatus = decodesOrRefuses('kmsStatusRequest', (bytes: Uint8Array) => decodeKms(StatusRequestSchema, bytes), () => undefined);

export const kmsRequestProperty = fc.property(
  fc.oneof(wireBytes(decryptRequests).map((bytes) => ({ kind: 'decrypt' as const, bytes })), wireBytes(encryptRequests).map((bytes) => ({ kind: 'encrypt' as const, bytes }))),
  ({ kind, bytes }) => {
    if (kind === 'decrypt') return checkDecrypt(bytes);
    decodeEncrypt(bytes);
    decodeStatus(bytes);
  },
);

const loose = fc.jsonValue({ maxDepth: 2 });
/** AdmissionReview-shaped bodies with every field sometimes of the wrong type; and any JSON. */
const admissionBodies = fc.oneof(
  fc.jsonValue({ maxDepth: 4 }),
  fc.record(
    {
      apiVersion: fc.constant('admission.k8s.io/v1'),
      kind: fc.constant('AdmissionReview'),
      request: fc.oneof(
        loose,
        fc.record(
          {
            uid: fc.oneof({ arbitrary: fc.uuid(), weight: 4 }, fc.string({ maxLength: 200 }), loose),
            operation: fc.oneof({ arbitrary: fc.constantFrom('CREATE', 'UPDATE', 'DELETE', 'CONNECT', 'create', ''), weight: 4 }, loose),
            namespace: fc.oneof({ arbitrary: fc.string({ maxLength: 20 }), weight: 4 }, loose),
            name: fc.oneof({ arbitrary: fc.string({ maxLength: 20 }), weight: 4 }, loose),
            userInfo: fc.oneof(
              {
                arbitrary: fc.record(
                  {
                    username: fc.oneof({ arbitrary: fc.string({ maxLength: 20 }), weight: 4 }, loose),
                    groups: fc.oneof({ arbitrary: fc.array(fc.string({ maxLength: 20 }), { maxLength: 3 }), weight: 4 }, loose),
                  },
                  { requiredKeys: [] },
                ),
                weight: 4,
              },
              loose,
            ),
            object: loose,
            oldObject: loose,
            dryRun: fc.oneof({ arbitrary: fc.boolean(), weight: 4 }, loose),
          },
          { requiredKeys: ['uid', 'operation', 'userInfo'] },
        ),
      ),
    },
    { requiredKeys: ['request'] },
  ),
);

export const admissionReviewProperty = fc.property(
  // As the webhook receives it: JSON text, parsed.
  admissionBodies.map((body) => JSON.stringify(body)),
  decodesOrRefuses(
    'admissionReview',
    (text: string) => parseReview(JSON.parse(text)),
    (request, text) => {
      check(typeof request.uid === 'string' && request.uid.length > 0 && request.uid.length <= 128, 'a uid that is not a short string');
      check(['CREATE', 'UPDATE', 'DELETE', 'CONNECT'].includes(request.operation), `operation ${JSON.stringify(request.operation)}`);
      check(JSON.stringify(request).length <= text.length, 'a request larger than the body');
      // What the webhook does with every parsed request must not throw.
      const requester = requesterOf(request);
      check(typeof requester.username === 'string' && requester.groups.every((g) => typeof g === 'string'), 'a requester of the wrong types');
      const answer = JSON.stringify(respond(request, { allowed: false, message: 'refused' }));
      check(answer.length <= text.length + 256, 'an answer much larger than the body');
    },
  ),
);

/** Each decoder's property by name, for the long run. */
export const decoderProperties = {
  kmsCiphertext: kmsCiphertextProperty,
  sealedSecret: sealedSecretProperty,
  keyId: keyIdProperty,
  annotations: annotationsProperty,
  kmsRequest: kmsRequestProperty,
  admissionReview: admissionReviewProperty,
} as const;
