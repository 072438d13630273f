// The CSIDriverProvider service: Version, and Mount, which answers with every object a
// SecretProviderClass asks for or with none. A Mount is taken in this order, and the first refusal
// ends it with a short code in MountResponse.error (the driver's metric label); the message goes
// to the log and the audit record, since the driver shows the pod only the code.
//   0. the request fits the budget of request bytes in flight (mountAdmission, asked by the gRPC
//      server before it reads the message; else RESOURCE_EXHAUSTED "Overloaded: ...");
//   1. its envelope is well formed: pod, token, target path (mountRequest.ts);
//   2. the token is the pod's, reviewed by the apiserver (podIdentity.ts);
//   3. only now, the objects YAML is parsed (or found in the cache);
//   4. per object: the KeyPolicy grants its operation on its ring to the pod's ServiceAccount
//      (before the HSM is asked anything, so a pod cannot learn which rings exist), the ring
//      exists and has the right purpose, and the HSM produces the content (keyMaterial.ts);
//   5. the response stays under 1 MiB.
// So a caller without a valid token costs the provider the bytes it sent and a TokenReview, and
// leaves nothing behind but a cached refusal.
// Every object gets an audit record per Mount: served, refused, or withheld because another
// object of the same Mount was refused.
import { create } from '@bufbuild/protobuf';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { AuditLog, AuditRecord } from '../../core/audit/auditLog.js';
import { KeywardError } from '../../core/errors.js';
import type { UnaryHandlers } from '../../core/grpc/grpcServer.js';
import { pkcs11Code } from '../../core/hsm/hsmToken.js';
import { primaryVersion, type RingState, type RingVersion } from '../../core/hsm/ringState.js';
import type { Logger } from '../../core/observability/logger.js';
import type { Operation } from '../../core/policy/operations.js';
import type { PolicySet } from '../../core/policy/policySet.js';
import { parseSealedSecret, SealedSecretError } from '../../core/formats/sealedSecret.js';
import type { KeyUseRecorder } from '../../core/keyUse/keyUseRecorder.js';
import { MountResponseSchema, VersionResponseSchema, type CSIDriverProvider, type MountResponse } from '../../proto/gen/csi/v1alpha1/service_pb.js';
import type { CsiMetrics } from './csiMetrics.js';
import type { HsmCallCount, KeyMaterial } from './keyMaterial.js';
import { parseMountEnvelope, parseMountObjects, parsedObjectsBytes, type MountObject, type MountObjectType, type MountRequestInput, type ObjectsCache } from './mountRequest.js';
import { createObjectVersioner, type ObjectVersioner, type ServedFile } from './objectVersion.js';
import type { PodIdentity, VerifiedPod } from './podIdentity.js';
import { TtlCache } from './ttlCache.js';

/** Refusals before the request is read: the provider is busy with as many bytes as it takes. */
export const admissionRefusalCodes = ['Overloaded'] as const;

/**
 * Request bytes held at once, provider-wide, from the moment a message's length is read until its
 * call is answered. A Mount holds several times its size in memory while read and parsed (the
 * message, its decoded strings, the attributes' JSON, the YAML's objects); the 100 MiB DaemonSet
 * limit holds the process, its caches and about this many request bytes at work (measured in
 * provider/csi/README.md, Memory): two of the largest requests, or hundreds of usual ones.
 */
export const defaultMaxInFlightBytes = 2 * 1024 * 1024;

export interface MountAdmissionDeps {
  audit: AuditLog;
  metrics: CsiMetrics;
  log: Logger;
  /** Default defaultMaxInFlightBytes. */
  maxInFlightBytes?: number;
}

/**
 * The gRPC server's admission (GrpcServerOptions.admit): a message is let in while the bytes in
 * flight stay within the budget, and one is always let in, so a budget below the largest request
 * still serves. A refusal is answered before the message is read, so it cannot be a
 * MountResponse: it is RESOURCE_EXHAUSTED, whose message starts with the code "Overloaded". Not
 * UNAVAILABLE, which is what the driver sees of a provider that is down; the driver fails the
 * mount either way and kubelet retries it with backoff.
 */
export function mountAdmission(deps: MountAdmissionDeps): (method: string, messageBytes: number) => (() => void) | string {
  const budget = deps.maxInFlightBytes ?? defaultMaxInFlightBytes;
  let inFlight = 0;
  return (method, messageBytes) => {
    if (inFlight > 0 && inFlight + messageBytes > budget) {
      const message = `Overloaded: the provider holds ${inFlight} request bytes and this request has ${messageBytes}; the budget is ${budget}: retry shortly`;
      const operation = method.slice(method.lastIndexOf('/') + 1).toLowerCase();
      deps.audit.record({ requestId: randomUUID(), actor: 'unverified', operation, result: 'failed', code: 'Overloaded', reason: message });
      deps.metrics.mounts.inc({ result: 'failed', code: 'Overloaded' });
      deps.log.warn({ code: 'Overloaded', method }, `call refused: ${message}`);
      return message;
    }
    inFlight += messageBytes;
    deps.metrics.inFlightBytes.set(inFlight);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      inFlight -= messageBytes;
      deps.metrics.inFlightBytes.set(inFlight);
    };
  };
}

/** Refusals after parsing and identity: per object, or of the whole response. */
export const objectRefusalCodes = [
  'NotAuthorized',
  'KeyRingNotFound',
  'WrongRingPurpose',
  'NoUsableVersion',
  'KeyVersionUnavailable',
  'InvalidSealedSecret',
  'SealedForAnotherRing',
  'SealedSecretTampered',
  'ResponseTooLarge',
  'HsmUnavailable',
  'Internal',
] as const;
type ObjectRefusalCode = (typeof objectRefusalCodes)[number];

/**
 * The operation each object type needs on its ring. A volumeKey is deriveKey too: what a grant
 * yields is still only the ServiceAccount's own keys of that ring, whatever their type.
 */
export const operationOf: Record<MountObjectType, Operation> = { dataKey: 'deriveKey', volumeKey: 'deriveKey', secret: 'decrypt', publicKey: 'getPublicKey' };

/**
 * The driver's guidance; gRPC's own limit is 4 MiB. The request limits (mountRequest.ts) already
 * keep a response far below it: this is the last guard, should those limits ever grow.
 */
export const maxResponseBytes = 1024 * 1024;

export interface MountServiceDeps {
  audience: string;
  identity: PodIdentity;
  /** The KeyPolicies as they are now (an informer cache). */
  policies: () => PolicySet;
  material: KeyMaterial;
  audit: AuditLog;
  metrics: CsiMetrics;
  log: Logger;
  versioner?: ObjectVersioner;
  /** Notes the key versions each served Mount derived from or opened with, for the operator. */
  keyUse?: KeyUseRecorder;
  /** Default maxResponseBytes; lowered only by tests of the guard. */
  maxResponseBytes?: number;
  now?: () => Date;
}

class ObjectRefused extends Error {
  constructor(
    readonly code: ObjectRefusalCode,
    message: string,
    readonly audit: Partial<AuditRecord> = {},
  ) {
    super(message);
  }
}

const runtimeVersion = (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

export function csiProviderHandlers(deps: MountServiceDeps): UnaryHandlers<(typeof CSIDriverProvider)['method']> {
  const versioner = deps.versioner ?? createObjectVersioner();
  const now = deps.now ?? (() => new Date());
  const { metrics, audit, log } = deps;
  const responseLimit = deps.maxResponseBytes ?? maxResponseBytes;
  // Filled only for pods whose token was reviewed; keyed by a digest of the YAML.
  const objectsCache: ObjectsCache = new TtlCache({ ttlMs: 10 * 60_000, maxEntries: 10_000, maxWeight: 4 * 1024 * 1024, weigh: parsedObjectsBytes });

  const refused = (code: string, message: string, started: bigint, context: Record<string, unknown>): MountResponse => {
    const result = code === 'HsmUnavailable' || code === 'Internal' || code === 'TokenReviewUnavailable' ? 'failed' : 'refused';
    metrics.mounts.inc({ result, code });
    metrics.latency.observe({ result }, seconds(started));
    log.warn({ code, ...context }, `mount refused: ${message}`);
    return create(MountResponseSchema, { error: { code } });
  };

  return {
    version: () => Promise.resolve(create(VersionResponseSchema, { version: 'v1alpha1', runtimeName: 'keyward', runtimeVersion })),

    mount: async (input) => {
      const started = process.hrtime.bigint();
      const requestId = randomUUID();
      return mount(input, started, requestId);
    },
  };

  async function mount(input: MountRequestInput, started: bigint, requestId: string): Promise<MountResponse> {
    const parsed = parseMountEnvelope(input, { audience: deps.audience });
    if (!parsed.ok) {
      const { code, message } = parsed.refusal;
      audit.record({ requestId, actor: 'unverified', operation: 'mount', result: 'denied', code, reason: message });
      return refused(code, message, started, { requestId });
    }
    const envelope = parsed.envelope;
    const claimed = `${envelope.pod.namespace}/${envelope.pod.name}`;
    const context = { requestId, pod: claimed, secretProviderClass: envelope.secretProviderClass };

    const identity = await deps.identity.verify(envelope.token, envelope.pod);
    metrics.cache.inc({ cache: 'tokenReview', outcome: identity.cached ? 'hit' : 'miss' });
    if (!identity.ok) {
      const result = identity.code === 'TokenReviewUnavailable' ? 'failed' : 'denied';
      audit.record({ requestId, actor: `unverified pod ${claimed}`, pod: claimed, operation: 'mount', result, code: identity.code, reason: identity.message });
      return refused(identity.code, identity.message, started, context);
    }
    const pod = identity.pod;

    const parsedObjects = parseMountObjects(envelope, objectsCache);
    if (!parsedObjects.ok) {
      const { code, message } = parsedObjects.refusal;
      audit.record({ requestId, actor: pod.requester.username, pod: claimed, operation: 'mount', result: 'denied', code, reason: message });
      return refused(code, message, started, context);
    }
    const request = { ...envelope, objects: parsedObjects.objects };
    const calls: HsmCallCount = { hsmCalls: 0 };
    const served: { object: MountObject; files: ServedFile[]; record: Partial<AuditRecord>; used: VersionUsed[] }[] = [];
    let failure: { index: number; error: ObjectRefused } | undefined;
    for (const [index, object] of request.objects.entries()) {
      try {
        served.push({ object, ...(await serveObject(deps, pod, object, now(), calls)) });
      } catch (err) {
        failure = { index, error: err instanceof ObjectRefused ? err : unexpected(err, log) };
        break;
      }
    }
    metrics.hsmCallsPerMount.observe(calls.hsmCalls);

    let response: MountResponse | undefined;
    if (!failure) {
      response = create(MountResponseSchema, {
        objectVersion: served.map(({ object, files }) => ({ id: object.name, version: versioner(pod.uid, object, files) })),
        files: served.flatMap(({ files }) => files),
      });
      const size = encodedSizeBound(response);
      if (size > responseLimit) {
        response = undefined;
        failure = { index: -1, error: new ObjectRefused('ResponseTooLarge', `the response would be ${size} bytes; the limit is ${responseLimit}: split the objects over several SecretProviderClasses`) };
      }
    }

    // One record per object, whatever happened to the Mount.
    for (const [index, object] of request.objects.entries()) {
      const base: AuditRecord = {
        requestId,
        actor: pod.requester.username,
        pod: claimed,
        object: object.name,
        operation: operationOf[object.type],
        ring: `${pod.namespace}/${object.keyRing}`,
        result: 'allowed',
      };
      if (!failure) {
        audit.record({ ...base, ...served[index]?.record, code: 'Served' });
        metrics.objects.inc({ type: object.type, result: 'served' });
      } else if (index === failure.index || failure.index < 0) {
        const result = failure.error.code === 'HsmUnavailable' || failure.error.code === 'Internal' ? 'failed' : 'denied';
        audit.record({ ...base, ...failure.error.audit, result, code: failure.error.code, reason: failure.error.message });
        metrics.objects.inc({ type: object.type, result: 'refused' });
      } else {
        audit.record({ ...base, result: 'denied', code: 'Withheld', reason: `not served: objects[${failure.index}] was refused (${failure.error.code})` });
        metrics.objects.inc({ type: object.type, result: 'withheld' });
      }
    }
    if (failure) {
      const where = failure.index < 0 ? '' : `objects[${failure.index}] (${JSON.stringify(request.objects[failure.index]?.name)}): `;
      return refused(failure.error.code, where + failure.error.message, started, context);
    }
    // Only a Mount answered with its files is a use: a refused one delivered no key.
    for (const { used } of served) for (const { ringId, keyId } of used) deps.keyUse?.used(ringId, keyId);
    metrics.mounts.inc({ result: 'served', code: '' });
    metrics.latency.observe({ result: 'served' }, seconds(started));
    log.debug({ ...context, objects: request.objects.length, hsmCalls: calls.hsmCalls }, 'mount served');
    return response!;
  }
}


async function serveObject(
  deps: MountServiceDeps,
  pod: VerifiedPod,
  object: MountObject,
  now: Date,
  calls: HsmCallCount,
): Promise<{ files: ServedFile[]; record: Partial<AuditRecord>; used: VersionUsed[] }> {
  const operation = operationOf[object.type];
  const decision = deps.policies().decide(pod.requester, pod.namespace, object.keyRing, operation, now);
  const record: Partial<AuditRecord> = { rule: decision.rule, ...(decision.breakGlass ? { breakGlass: true } : {}) };
  if (!decision.allowed) throw new ObjectRefused('NotAuthorized', `${decision.reason}: ${decision.message}`, record);

  const ring = await hsm(() => deps.material.ring(pod.namespace, object.keyRing, calls));
  if (!ring) throw new ObjectRefused('KeyRingNotFound', `KeyRing '${object.keyRing}' does not exist in namespace ${pod.namespace} (or has no keys in the HSM yet)`, record);
  record.ringId = ring.ringId;
  const material = deps.material;
  const cacheHit = (hit: boolean): void => deps.metrics.cache.inc({ cache: 'material', outcome: hit ? 'hit' : 'miss' });

  switch (object.type) {
    case 'dataKey':
    case 'volumeKey': {
      requirePurpose(ring, 'derivation', object, record);
      const versions = [usablePrimary(ring, record), ...previousVersions(ring, object.previousVersions)];
      const workload = { namespace: pod.namespace, serviceAccountName: pod.serviceAccountName, objectName: object.name };
      const derive = (version: RingVersion) => (object.type === 'dataKey' ? material.dataKey(ring, version, workload, calls) : material.volumeKey(ring, version, workload, calls));
      const files: ServedFile[] = [];
      for (const [i, version] of versions.entries()) {
        const { key, hit } = await hsm(() => derive(version), record);
        cacheHit(hit);
        if (i === 0) files.push({ path: object.path, mode: object.mode, contents: key });
        if (object.previousVersions > 0) files.push({ path: `${object.path}.v${version.number}`, mode: object.mode, contents: i === 0 ? Buffer.from(key) : key });
      }
      return { files, record, used: versions.map((v) => ({ ringId: ring.ringId, keyId: v.keyId })) };
    }
    case 'secret': {
      requirePurpose(ring, 'encryption', object, record);
      const { plaintext, hit } = await hsm(() => material.secret(ring, object.ciphertext, calls), record);
      cacheHit(hit);
      // It opened, so it parses; its key id names the version that opened it.
      const used = [{ ringId: ring.ringId, keyId: parseSealedSecret(object.ciphertext).keyId }];
      return { files: [{ path: object.path, mode: object.mode, contents: plaintext }], record, used };
    }
    case 'publicKey': {
      if (ring.purpose !== 'signing') {
        throw new ObjectRefused('WrongRingPurpose', `KeyRing '${object.keyRing}' is a ${ring.purpose} ring (${ring.algorithm}): it has no public key; publicKey needs a signing ring`, record);
      }
      const version = usablePrimary(ring, record);
      const { der, hit } = await hsm(() => material.publicKey(ring, version, calls), record);
      cacheHit(hit);
      // Handing out a public key uses no key material in the HSM: not a use of the version.
      return { files: [{ path: object.path, mode: object.mode, contents: Buffer.from(pem(der)) }], record, used: [] };
    }
  }
}

/** A version whose key a served object was made with. */
interface VersionUsed {
  ringId: string;
  keyId: string;
}

function requirePurpose(ring: RingState, purpose: RingState['purpose'], object: MountObject, record: Partial<AuditRecord>): void {
  if (ring.purpose === purpose) return;
  throw new ObjectRefused('WrongRingPurpose', `KeyRing '${object.keyRing}' is a ${ring.purpose} ring (${ring.algorithm}); a ${object.type} needs a ${purpose} ring`, record);
}

function usablePrimary(ring: RingState, record: Partial<AuditRecord>): RingVersion {
  const primary = primaryVersion(ring);
  record.keyVersion = primary.number;
  record.keyId = primary.keyId;
  if (primary.state !== 'Enabled') throw new ObjectRefused('NoUsableVersion', `the primary version ${primary.number} of KeyRing '${ring.name}' is ${primary.state}`, record);
  return primary;
}

/** Up to `count` Enabled versions older than the primary, newest first. */
function previousVersions(ring: RingState, count: number): RingVersion[] {
  return ring.versions
    .filter((v) => v.number < ring.primary && v.state === 'Enabled')
    .sort((a, b) => b.number - a.number)
    .slice(0, count);
}

/** Runs an HSM step, turning its failures into refusal codes. */
async function hsm<T>(step: () => Promise<T>, record: Partial<AuditRecord> = {}): Promise<T> {
  try {
    return await step();
  } catch (err) {
    if (err instanceof SealedSecretError) {
      const code = ({ Malformed: 'InvalidSealedSecret', WrongRing: 'SealedForAnotherRing', Tampered: 'SealedSecretTampered', VersionUnavailable: 'KeyVersionUnavailable' } as const)[err.reason];
      throw new ObjectRefused(code, err.message, record);
    }
    if (err instanceof KeywardError && err.code === 'FailedPrecondition') throw new ObjectRefused('KeyVersionUnavailable', err.message, record);
    if ((err instanceof KeywardError && err.code === 'Unavailable') || pkcs11Code(err) !== undefined) {
      throw new ObjectRefused('HsmUnavailable', `the HSM failed: ${(err as Error).message}`, record);
    }
    throw err;
  }
}

function unexpected(err: unknown, log: Logger): ObjectRefused {
  log.error({ err }, 'unexpected failure serving an object');
  return new ObjectRefused('Internal', 'internal error');
}

function pem(der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN PUBLIC KEY-----\n${lines.join('\n')}\n-----END PUBLIC KEY-----\n`;
}

/**
 * An upper bound of the response's protobuf size, without encoding it (gRPC does that once):
 * each field costs its bytes plus a tag and a length of at most 6 bytes, each message 6 more.
 */
function encodedSizeBound(response: MountResponse): number {
  const text = (s: string): number => Buffer.byteLength(s, 'utf8') + 6;
  let size = 0;
  for (const file of response.files) size += 6 + text(file.path) + 6 + file.contents.length + 6;
  for (const v of response.objectVersion) size += 6 + text(v.id) + text(v.version);
  return size;
}

const seconds = (started: bigint): number => Number(process.hrtime.bigint() - started) / 1e9;
