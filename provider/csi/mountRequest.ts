// A Secrets Store CSI MountRequest, as the driver sends it, parsed and validated. Every field is
// untrusted: `attributes` are the SecretProviderClass parameters overlaid with the pod's own
// volumeAttributes, so the pod author can set any key (even kubelet's csi.storage.k8s.io/* ones).
// The pod identity returned here is only a claim until the token is reviewed (a later step);
// this module decides only whether the request is well formed, and if not, refuses it with a
// short code (MountResponse.error.code, the metric label) and a message naming the problem.
// Messages never carry tokens, secrets or ciphertexts; they quote names and paths, truncated.
// Parsing comes in two steps so that a caller without a valid token costs little: the envelope
// (the small pod, token and path fields, parseMountEnvelope) before the token is reviewed, the
// objects YAML (parseMountObjects, cached) only after.
//
// The objects a SecretProviderClass asks for: `parameters.objects`, a YAML list.
//
//   apiVersion: secrets-store.csi.x-k8s.io/v1
//   kind: SecretProviderClass
//   metadata: { name: api-keys, namespace: shop }
//   spec:
//     provider: keyward
//     parameters:
//       objects: |
//         - type: dataKey            # a key derived in the HSM for this workload
//           name: db-volume          # object id; part of the derivation context
//           keyRing: volume-keys     # a derivation KeyRing in the pod's namespace
//           path: luks/db.key        # file name, relative to the volume
//           mode: "0400"             # optional, octal; default: the driver's permission (0644)
//           versions: "2"            # optional: also the 2 previous versions (0-10, default 0)
//         - type: volumeKey          # a 64-byte fscrypt key (AES-256-XTS) derived in the HSM
//           name: data               # object id; part of the derivation context
//           keyRing: volume-keys     # a derivation KeyRing in the pod's namespace
//           path: fscrypt/data.key   # `keyward volume unlock` reads it
//           versions: "1"            # optional, as for dataKey; mode defaults to 0400
//         - type: secret             # a value sealed with `keyward encrypt --ring app-secrets`
//           name: db-password
//           keyRing: app-secrets
//           path: db/password
//           ciphertext: |            # base64, line breaks allowed
//             AgEAAAAB...
//         - type: publicKey          # the public half of a signing or encryption ring
//           name: release-signing
//           keyRing: release
//           path: release.pub
//
// Fields, all strings (the YAML is read with the failsafe schema: no numbers, booleans or nulls,
// so `mode: 0440` means octal 0440 and never decimal 440, and nothing is coerced):
//   type        dataKey | volumeKey | secret | publicKey
//   name        1-63 letters, digits, '.', '_', '-', starting and ending with a letter or digit;
//               unique in the list; the object's id in MountResponse.object_version; for a
//               dataKey or volumeKey part of the derivation context
//   keyRing     a KeyRing name (DNS subdomain) in the pod's own namespace; no "namespace/" prefix
//   path        a relative file path: '/'-separated segments, none empty, '.' or containing "..",
//               no backslash, NUL or control characters, at most 1024 bytes (255 per segment);
//               unique, and no path may be a directory of another
//   mode        optional, octal with a leading zero, "0000"-"0777". Default: the driver's permission,
//               always 0644 (the driver's own constant, not the pod's choice), except for a
//               volumeKey: 0400, since the driver's files are root's and 0644 would let every
//               user in the pod read the key that opens the volume
//   versions    dataKey and volumeKey only, optional, "0"-"10": previous versions delivered
//               besides the primary. `path` holds the primary; with versions >= 1 the provider
//               also writes `<path>.v<N>` for the primary and each delivered previous version N
//               (the KeyRing version number), so no other object may use a path of that form
//   ciphertext  secret only, required: base64 of the sealed value (up to 64 KiB of plaintext sealed)
// Unknown fields are refused (a typo such as `verions` must not silently mean 0).
import { createHash } from 'node:crypto';
import { posix } from 'node:path';
import { FAILSAFE_SCHEMA, load, YAMLException } from 'js-yaml';
import { maxSealedSecretBytes } from '../../core/formats/sealedSecret.js';
import type { TtlCache } from './ttlCache.js';

/** The short codes a refusal carries: a fixed set, so metric labels stay low-cardinality. */
export const mountRefusalCodes = [
  'InvalidAttributes',
  'InvalidSecrets',
  'InvalidPermission',
  'InvalidTargetPath',
  'MissingPodAttribute',
  'InvalidPodAttribute',
  'MissingToken',
  'InvalidToken',
  'MissingObjects',
  'InvalidObjects',
  'TooManyObjects',
  'UnknownObjectType',
  'InvalidObjectPath',
  'DuplicateObjectPath',
  'DuplicateObjectName',
] as const;
export type MountRefusalCode = (typeof mountRefusalCodes)[number];

export interface MountRefusal {
  code: MountRefusalCode;
  message: string;
}

/** The attribute keys this module reads; kubelet sets the csi.storage.k8s.io ones. */
export const attributeKeys = {
  podName: 'csi.storage.k8s.io/pod.name',
  podNamespace: 'csi.storage.k8s.io/pod.namespace',
  podUid: 'csi.storage.k8s.io/pod.uid',
  serviceAccountName: 'csi.storage.k8s.io/serviceAccount.name',
  serviceAccountTokens: 'csi.storage.k8s.io/serviceAccount.tokens',
  secretProviderClass: 'secretProviderClass',
  objects: 'objects',
} as const;

/** Size limits; each refusal names the limit it hit. */
export const mountRequestLimits = {
  attributesBytes: 1024 * 1024,
  attributeCount: 128,
  attributeKeyBytes: 512,
  attributeValueBytes: 256 * 1024,
  secretsBytes: 64 * 1024,
  targetPathBytes: 4096,
  tokensBytes: 64 * 1024,
  tokenAudiences: 16,
  tokenBytes: 16 * 1024,
  objects: 64,
  objectPathBytes: 1024,
  objectPathSegmentBytes: 255,
  objectNameChars: 63,
  keyRingNameChars: 253,
  previousVersions: 10,
  /** A sealed value of 64 KiB of plaintext, the most `keyward encrypt` seals. */
  ciphertextBytes: maxSealedSecretBytes,
} as const;

export type MountObjectType = 'dataKey' | 'volumeKey' | 'secret' | 'publicKey';
export const mountObjectTypes: readonly MountObjectType[] = ['dataKey', 'volumeKey', 'secret', 'publicKey'];
/**
 * A volumeKey's mode when the object names none. The driver's files are root's, with the mode the
 * provider gives; its default permission is a fixed 0644, readable by every user in the pod.
 */
export const volumeKeyDefaultMode = 0o400;

interface MountObjectCommon {
  /** Unique in the request; MountResponse.object_version id. */
  name: string;
  /** A KeyRing name in the pod's namespace. */
  keyRing: string;
  /** Clean relative file path. */
  path: string;
  /** File mode 0-511: the object's own, or the request's default permission. */
  mode: number;
}
export interface DataKeyObject extends MountObjectCommon {
  type: 'dataKey';
  /** How many previous versions to deliver besides the primary (0 = primary only). */
  previousVersions: number;
}
/** A 64-byte key for fscrypt v2 (AES-256-XTS), derived like a data key but unrelated to any. */
export interface VolumeKeyObject extends MountObjectCommon {
  type: 'volumeKey';
  /** How many previous versions to deliver besides the primary (0 = primary only). */
  previousVersions: number;
}
export interface SecretObject extends MountObjectCommon {
  type: 'secret';
  /** The sealed value, base64-decoded; opened later, only for a pod allowed to decrypt. */
  ciphertext: Uint8Array;
}
export interface PublicKeyObject extends MountObjectCommon {
  type: 'publicKey';
}
export type MountObject = DataKeyObject | VolumeKeyObject | SecretObject | PublicKeyObject;
/** The objects derived from a derivation ring, with previous versions as `<path>.v<N>`. */
export type DerivedKeyObject = DataKeyObject | VolumeKeyObject;
export const isDerivedKey = (object: MountObject): object is DerivedKeyObject => object.type === 'dataKey' || object.type === 'volumeKey';

/** Who the attributes say the pod is. A claim, until the token review confirms it. */
export interface ClaimedPod {
  name: string;
  namespace: string;
  uid: string;
  serviceAccountName: string;
}

/** The pod's ServiceAccount token for the configured audience. */
export interface PodToken {
  audience: string;
  expiresAt: Date;
  /** Where it came from: the CSI secrets (Kubernetes 1.35+ with the driver opting in) or the attributes. */
  source: 'secrets' | 'attributes';
  /** The JWT. Non-enumerable, so a log line or JSON of the request cannot carry it. */
  readonly value: string;
}

export interface ParsedMountRequest {
  pod: ClaimedPod;
  token: PodToken;
  /** The volume's tmpfs; the driver writes the files there, not us. */
  targetPath: string;
  /** The driver's default file mode. */
  defaultMode: number;
  /** The SecretProviderClass name, when the attributes carry a well-formed one; for logs only. */
  secretProviderClass?: string;
  objects: readonly MountObject[];
}

export type MountRequestResult = { ok: true; request: ParsedMountRequest } | { ok: false; refusal: MountRefusal };

/** A request before its objects are parsed: what the token review needs, and the objects' YAML as text. */
export interface MountEnvelope extends Omit<ParsedMountRequest, 'objects'> {
  objectsYaml: string | undefined;
}

export type MountEnvelopeResult = { ok: true; envelope: MountEnvelope } | { ok: false; refusal: MountRefusal };
export type MountObjectsResult = { ok: true; objects: readonly MountObject[] } | { ok: false; refusal: MountRefusal };

/** Parsed objects by a digest of their YAML and default mode. */
export type ObjectsCache = TtlCache<string, readonly MountObject[]>;

/** The MountRequest fields this module reads; the generated MountRequest message fits. */
export interface MountRequestInput {
  attributes: string;
  secrets: string;
  targetPath: string;
  permission: string;
}

export interface MountRequestOptions {
  /** The audience the CSIDriver's tokenRequests mint a token for, and that TokenReview will expect. */
  audience: string;
  /**
   * Objects already parsed, by a digest of their YAML: a pod remounting every minute sends the
   * same text, and parsing it is the largest part of a warm Mount.
   */
  objectsCache?: ObjectsCache;
}

class Refused extends Error {
  constructor(readonly refusal: MountRefusal) {
    super(refusal.message);
  }
}
function refuse(code: MountRefusalCode, message: string): never {
  throw new Refused({ code, message });
}

const bytes = (s: string): number => Buffer.byteLength(s, 'utf8');
/** Quotes an untrusted name or path for a message: JSON-escaped, at most 80 characters. */
const quote = (s: string): string => JSON.stringify(s.length > 80 ? `${s.slice(0, 77)}...` : s);
const kind = (v: unknown): string => (v === null ? 'null' : Array.isArray(v) ? 'a list' : typeof v === 'object' ? 'an object' : `a ${typeof v}`);
const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const kib = (n: number): string => (n % 1024 === 0 ? `${n / 1024} KiB` : `${n} bytes`);

const dnsLabel = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const dnsSubdomain = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const podUid = /^[0-9A-Za-z-]{1,64}$/;
const objectName = /^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$/;
const jwt = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;
const rfc3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:[Zz]|([+-])(\d{2}):(\d{2}))$/;
const decimalMode = /^(0|[1-9][0-9]{0,2})$/;
const octalMode = /^0[0-7]{3}$/;
const decimalCount = /^(0|[1-9][0-9]?)$/;
const base64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
// eslint-disable-next-line no-control-regex -- control characters are exactly what it looks for
const controlCharacter = /[\u0000-\u001f\u007f]/;
/** kubelet's layout, on a canonical path: <root>/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount. */
const kubeletTargetPath = /^\/(?:[^/]+\/)*pods\/([^/]+)\/volumes\/kubernetes\.io~csi\/[^/]+\/mount$/;

/**
 * Parses a MountRequest as the Secrets Store CSI driver sends it, both steps at once. Never throws
 * for bad input: returns the typed request, or a refusal with a short code and a message naming
 * the problem. The objects schema is described at the top of this file and in provider/csi/README.md.
 */
export function parseMountRequest(input: MountRequestInput, options: MountRequestOptions): MountRequestResult {
  const parsed = parseMountEnvelope(input, options);
  if (!parsed.ok) return parsed;
  const objects = parseMountObjects(parsed.envelope, options.objectsCache);
  if (!objects.ok) return objects;
  const request: ParsedMountRequest & { objectsYaml?: string } = { ...parsed.envelope, objects: objects.objects };
  delete request.objectsYaml;
  return { ok: true, request };
}

/**
 * The first step: every field but the objects, in time linear in the request's size and with
 * nothing cached, so that it can run before the token is reviewed.
 */
export function parseMountEnvelope(input: MountRequestInput, { audience }: Pick<MountRequestOptions, 'audience'>): MountEnvelopeResult {
  if (audience === '') throw new Error('parseMountEnvelope needs the configured token audience');
  return refusable<MountEnvelopeResult>(() => {
    const attributes = parseAttributes(input.attributes);
    const secrets = parseSecrets(input.secrets);
    const defaultMode = parsePermission(input.permission);
    const pod = claimedPod(attributes);
    const targetPath = parseTargetPath(input.targetPath, pod);
    const token = podToken(secrets, attributes, audience);
    const envelope: MountEnvelope = { pod, token, targetPath, defaultMode, objectsYaml: attributes.get(attributeKeys.objects) };
    const spc = attributes.get(attributeKeys.secretProviderClass);
    if (spc !== undefined && spc.length <= 253 && dnsSubdomain.test(spc)) envelope.secretProviderClass = spc;
    return { ok: true, envelope };
  });
}

/** The second step, once the token is the pod's: the objects, from the cache when this YAML was seen. */
export function parseMountObjects(envelope: Pick<MountEnvelope, 'objectsYaml' | 'defaultMode'>, objectsCache?: ObjectsCache): MountObjectsResult {
  return refusable<MountObjectsResult>(() => {
    const { objectsYaml, defaultMode } = envelope;
    // A digest, so a cached entry holds 43 bytes of key and not the YAML.
    const cacheKey = objectsYaml === undefined ? undefined : createHash('sha256').update(`${defaultMode}\0`).update(objectsYaml).digest('base64url');
    let objects = cacheKey === undefined ? undefined : objectsCache?.get(cacheKey);
    if (!objects) {
      objects = parseObjects(objectsYaml, defaultMode).map((object) => Object.freeze(withOwnStrings(object)));
      if (cacheKey !== undefined) objectsCache?.set(cacheKey, objects);
    }
    return { ok: true, objects };
  });
}

/**
 * The object with a copy of each of its strings. V8 keeps a substring as a slice of the string it
 * was cut from, so the names and paths js-yaml cuts from the YAML would keep the whole text (up
 * to 256 KiB a request) alive in the cache, unseen by its byte bound.
 */
function withOwnStrings<T extends object>(object: T): T {
  const copy = { ...object };
  for (const [key, value] of Object.entries(copy)) {
    if (typeof value === 'string') (copy as Record<string, unknown>)[key] = Buffer.from(value, 'utf8').toString('utf8');
  }
  return copy;
}

/**
 * What a list of parsed objects costs in memory, over-estimated: an object's fields and
 * headers, its strings at two bytes a character, its ciphertext's bytes and buffer.
 */
export function parsedObjectsBytes(objects: readonly MountObject[]): number {
  let total = 128;
  for (const object of objects) {
    total += 256 + 2 * (object.name.length + object.keyRing.length + object.path.length);
    if (object.type === 'secret') total += 128 + object.ciphertext.byteLength;
  }
  return total;
}

function refusable<T>(step: () => T): T | { ok: false; refusal: MountRefusal } {
  try {
    return step();
  } catch (err) {
    if (err instanceof Refused) return { ok: false, refusal: err.refusal };
    throw err;
  }
}

/** A JSON object of strings, within the limits; a Map, so keys such as "__proto__" stay data. */
function parseStringMap(json: string, what: string, code: MountRefusalCode): Map<string, string> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch {
    // The parser's own message quotes the input, which may hold tokens: never pass it on.
    return refuse(code, `${what} is not valid JSON`);
  }
  if (!isRecord(parsed)) return refuse(code, `${what} is ${kind(parsed)}; it must be a JSON object of strings`);
  const map = new Map<string, string>();
  for (const [key, value] of Object.entries(parsed)) {
    if (typeof value !== 'string') refuse(code, `${what} key ${quote(key)} is ${kind(value)}; every value must be a string`);
    map.set(key, value);
  }
  return map;
}

function parseAttributes(json: string): Map<string, string> {
  const limits = mountRequestLimits;
  if (json === '') refuse('InvalidAttributes', 'attributes are empty; the driver sends the SecretProviderClass parameters as a JSON object');
  if (bytes(json) > limits.attributesBytes) {
    refuse('InvalidAttributes', `attributes are ${bytes(json)} bytes; the limit is ${kib(limits.attributesBytes)}`);
  }
  const attributes = parseStringMap(json, 'attributes', 'InvalidAttributes');
  if (attributes.size > limits.attributeCount) {
    refuse('InvalidAttributes', `attributes have ${attributes.size} keys; the limit is ${limits.attributeCount}`);
  }
  for (const [key, value] of attributes) {
    if (key === '') refuse('InvalidAttributes', 'attributes have an empty key');
    if (bytes(key) > limits.attributeKeyBytes) {
      refuse('InvalidAttributes', `attribute key ${quote(key)} is ${bytes(key)} bytes; the limit is ${limits.attributeKeyBytes}`);
    }
    if (bytes(value) > limits.attributeValueBytes) {
      refuse('InvalidAttributes', `attribute ${quote(key)} is ${bytes(value)} bytes; the limit is ${kib(limits.attributeValueBytes)}`);
    }
  }
  return attributes;
}

/** The nodePublishSecretRef data: the literal "null" (or nothing) when the volume has none. */
function parseSecrets(json: string): Map<string, string> {
  if (json === '' || json === 'null') return new Map();
  if (bytes(json) > mountRequestLimits.secretsBytes) {
    refuse('InvalidSecrets', `secrets are ${bytes(json)} bytes; the limit is ${kib(mountRequestLimits.secretsBytes)}`);
  }
  return parseStringMap(json, 'secrets', 'InvalidSecrets');
}

function parsePermission(permission: string): number {
  if (!decimalMode.test(permission) || Number(permission) > 0o777) {
    refuse(
      'InvalidPermission',
      `permission ${quote(permission)} is not a file mode: it must be a decimal number from 0 to 511 without leading zeros ("420" is 0644)`,
    );
  }
  return Number(permission);
}

function claimedPod(attributes: Map<string, string>): ClaimedPod {
  const read = (key: string, valid: (v: string) => boolean, shape: string): string => {
    const value = attributes.get(key);
    if (value === undefined || value === '') {
      return refuse(
        'MissingPodAttribute',
        `attribute ${key} is ${value === undefined ? 'missing' : 'empty'}; kubelet sets it when the CSIDriver has podInfoOnMount: true`,
      );
    }
    if (!valid(value)) refuse('InvalidPodAttribute', `attribute ${key} is ${quote(value)}; it must be ${shape}`);
    return value;
  };
  const subdomain = (v: string): boolean => v.length <= 253 && dnsSubdomain.test(v);
  return {
    name: read(attributeKeys.podName, subdomain, 'a pod name (a DNS subdomain, at most 253 characters)'),
    namespace: read(attributeKeys.podNamespace, (v) => v.length <= 63 && dnsLabel.test(v), 'a namespace name (a DNS label, at most 63 characters)'),
    uid: read(attributeKeys.podUid, (v) => podUid.test(v), "a pod UID (letters, digits and '-', at most 64)"),
    serviceAccountName: read(attributeKeys.serviceAccountName, subdomain, 'a ServiceAccount name (a DNS subdomain, at most 253 characters)'),
  };
}

/**
 * The driver's tmpfs for the volume. kubelet chooses it, not the pod author, so it vouches for the
 * pod UID: it must be canonical (no '.', '..', '//' or trailing '/', which would let text match
 * one pod and the path name another) and be that pod's volume in kubelet's layout.
 */
function parseTargetPath(targetPath: string, pod: ClaimedPod): string {
  if (targetPath === '') refuse('InvalidTargetPath', 'target_path is empty');
  if (bytes(targetPath) > mountRequestLimits.targetPathBytes) {
    refuse('InvalidTargetPath', `target_path is ${bytes(targetPath)} bytes; the limit is ${mountRequestLimits.targetPathBytes}`);
  }
  if (controlCharacter.test(targetPath)) refuse('InvalidTargetPath', 'target_path contains a control character');
  if (!targetPath.startsWith('/')) refuse('InvalidTargetPath', `target_path ${quote(targetPath)} is not an absolute path`);
  const canonical = posix.normalize(targetPath);
  if (canonical !== targetPath || targetPath.endsWith('/')) {
    refuse('InvalidTargetPath', `target_path ${quote(targetPath)} is not canonical (it has a '.', '..' or empty segment, or a trailing '/')`);
  }
  const uidInPath = kubeletTargetPath.exec(targetPath)?.[1];
  if (uidInPath === undefined) {
    refuse('InvalidTargetPath', `target_path ${quote(targetPath)} is not a volume in kubelet's layout (<root>/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount)`);
  }
  if (uidInPath !== pod.uid) {
    refuse('InvalidPodAttribute', `attribute ${attributeKeys.podUid} is ${quote(pod.uid)} but target_path is the volume of pod ${quote(uidInPath)}`);
  }
  return targetPath;
}

/** kubelet's tokens, `{"<audience>":{"token":"<jwt>","expirationTimestamp":"<RFC3339>"}}`: the CSI secrets first, as the driver reads them. */
function podToken(secrets: Map<string, string>, attributes: Map<string, string>, audience: string): PodToken {
  const key = attributeKeys.serviceAccountTokens;
  const inSecrets = secrets.get(key);
  const source = inSecrets !== undefined ? 'secrets' : 'attributes';
  const json = inSecrets ?? attributes.get(key);
  if (json === undefined || json === '') {
    return refuse(
      'MissingToken',
      `no ServiceAccount token: ${source === 'secrets' ? 'secret' : 'attribute'} ${key} is ${json === undefined ? 'missing' : 'empty'}; the secrets-store CSIDriver must have tokenRequests with audience ${quote(audience)}`,
    );
  }
  const limits = mountRequestLimits;
  if (bytes(json) > limits.tokensBytes) refuse('InvalidToken', `${key} is ${bytes(json)} bytes; the limit is ${kib(limits.tokensBytes)}`);
  let tokens: unknown;
  try {
    tokens = JSON.parse(json);
  } catch {
    return refuse('InvalidToken', `${key} is not valid JSON`);
  }
  if (!isRecord(tokens)) return refuse('InvalidToken', `${key} is ${kind(tokens)}; it must be a JSON object keyed by audience`);
  const audiences = Object.keys(tokens);
  if (audiences.length > limits.tokenAudiences) {
    refuse('InvalidToken', `${key} has ${audiences.length} audiences; the limit is ${limits.tokenAudiences}`);
  }
  if (!Object.hasOwn(tokens, audience)) {
    const present = audiences.length === 0 ? 'none' : audiences.map(quote).join(', ');
    return refuse('MissingToken', `${key} has no token for audience ${quote(audience)} (audiences present: ${present})`);
  }
  const entry = tokens[audience];
  const where = `${key} audience ${quote(audience)}`;
  if (!isRecord(entry)) return refuse('InvalidToken', `${where} is ${kind(entry)}; it must be {"token": ..., "expirationTimestamp": ...}`);
  const { token, expirationTimestamp } = entry;
  if (typeof token !== 'string' || token === '') return refuse('InvalidToken', `${where} has no token string`);
  if (bytes(token) > limits.tokenBytes) refuse('InvalidToken', `${where} token is ${bytes(token)} bytes; the limit is ${kib(limits.tokenBytes)}`);
  if (!jwt.test(token)) refuse('InvalidToken', `${where} token is not a JWT (three base64url parts separated by '.')`);
  if (typeof expirationTimestamp !== 'string') return refuse('InvalidToken', `${where} has no expirationTimestamp string`);
  const expiresAt = parseRfc3339(expirationTimestamp);
  if (expiresAt === undefined) refuse('InvalidToken', `${where} expirationTimestamp ${quote(expirationTimestamp)} is not an RFC 3339 time`);
  const parsed = { audience, expiresAt, source } as PodToken;
  Object.defineProperty(parsed, 'value', { value: token, enumerable: false });
  return parsed;
}

/** An RFC 3339 time as Go writes it (RFC3339Nano), to the millisecond; undefined unless it is a real date and time. */
function parseRfc3339(text: string): Date | undefined {
  const m = rfc3339.exec(text);
  if (m === null) return undefined;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  const millis = Number((m[7] ?? '').padEnd(3, '0').slice(0, 3));
  const offset = m[8] === undefined ? 0 : (m[8] === '-' ? -1 : 1) * (Number(m[9]) * 60 + Number(m[10]));
  if (month < 1 || month > 12 || hour > 23 || minute > 59 || second > 59 || Math.abs(offset) > 23 * 60 + 59) return undefined;
  const local = new Date(Date.UTC(year, month - 1, day, hour, minute, second, millis));
  if (local.getUTCDate() !== day || local.getUTCMonth() !== month - 1) return undefined;
  return new Date(local.getTime() - offset * 60_000);
}

const objectFields = ['type', 'name', 'keyRing', 'path', 'mode', 'versions', 'ciphertext'] as const;
type ObjectField = (typeof objectFields)[number];

function parseObjects(yaml: string | undefined, defaultMode: number): MountObject[] {
  const key = attributeKeys.objects;
  if (yaml === undefined) return refuse('MissingObjects', `attribute ${key} is missing: the SecretProviderClass lists what to mount in parameters.${key}`);
  if (yaml.trim() === '') return refuse('MissingObjects', `attribute ${key} is empty: the SecretProviderClass lists what to mount in parameters.${key}`);
  let list: unknown;
  try {
    // Failsafe schema: every scalar stays a string; no aliases, so nothing expands.
    list = load(yaml, { schema: FAILSAFE_SCHEMA, maxAliases: 0, maxDepth: 8 });
  } catch (err) {
    // js-yaml's message quotes the source; keep only the reason and the position.
    if (!(err instanceof YAMLException)) return refuse('InvalidObjects', `${key} is not valid YAML`);
    const at = err.mark ? ` at line ${err.mark.line + 1}, column ${err.mark.column + 1}` : '';
    return refuse('InvalidObjects', `${key} is not valid YAML: ${err.reason}${at}`);
  }
  if (!Array.isArray(list)) {
    return refuse('InvalidObjects', `${key} is ${kind(list)}; it must be a YAML list of objects, each with type, name, keyRing and path`);
  }
  if (list.length === 0) return refuse('MissingObjects', `${key} lists no objects`);
  if (list.length > mountRequestLimits.objects) {
    refuse('TooManyObjects', `${key} lists ${list.length} objects; the limit is ${mountRequestLimits.objects}`);
  }
  const objects = list.map((item, index) => parseObject(item, index, defaultMode));
  checkUnique(objects);
  return objects;
}

function parseObject(item: unknown, index: number, defaultMode: number): MountObject {
  let label = `objects[${index}]`;
  if (!isRecord(item)) return refuse('InvalidObjects', `${label} is ${kind(item)}; each object is a mapping with type, name, keyRing and path`);
  const nameValid = (n: unknown): n is string => typeof n === 'string' && n.length <= mountRequestLimits.objectNameChars && objectName.test(n);
  const claimedName = Object.hasOwn(item, 'name') ? item.name : undefined;
  if (nameValid(claimedName)) label = `${label} (${quote(claimedName)})`;
  const fields = new Map<ObjectField, string>();
  for (const [field, value] of Object.entries(item)) {
    if (!(objectFields as readonly string[]).includes(field)) {
      refuse('InvalidObjects', `${label} has unknown field ${quote(field)}; the fields are ${objectFields.join(', ')}`);
    }
    if (typeof value !== 'string') refuse('InvalidObjects', `${label} field ${field} is ${kind(value)}; it must be a string`);
    fields.set(field as ObjectField, value);
  }
  const required = (field: ObjectField): string => {
    const value = fields.get(field);
    if (value === undefined || value === '') return refuse('InvalidObjects', `${label} has no ${field}`);
    return value;
  };

  const type = required('type');
  if (!(mountObjectTypes as readonly string[]).includes(type)) {
    refuse('UnknownObjectType', `${label} has unknown type ${quote(type)}; the types are ${mountObjectTypes.join(', ')}`);
  }

  const name = required('name');
  if (!nameValid(name)) {
    refuse(
      'InvalidObjects',
      `${label} name ${quote(name)} must be 1-${mountRequestLimits.objectNameChars} letters, digits, '.', '_' or '-', starting and ending with a letter or digit`,
    );
  }

  const keyRing = required('keyRing');
  if (keyRing.includes('/')) {
    refuse('InvalidObjects', `${label} keyRing ${quote(keyRing)} names a namespace: a KeyRing is named in the pod's own namespace, without a prefix`);
  }
  if (keyRing.length > mountRequestLimits.keyRingNameChars || !dnsSubdomain.test(keyRing)) {
    refuse('InvalidObjects', `${label} keyRing ${quote(keyRing)} is not a KeyRing name (a DNS subdomain, at most ${mountRequestLimits.keyRingNameChars} characters)`);
  }

  const path = required('path');
  const pathProblem = objectPathProblem(path);
  if (pathProblem !== undefined) refuse('InvalidObjectPath', `${label} path ${quote(path)} ${pathProblem}`);

  let mode = type === 'volumeKey' ? volumeKeyDefaultMode : defaultMode;
  const modeField = fields.get('mode');
  if (modeField !== undefined) {
    if (!octalMode.test(modeField)) refuse('InvalidObjects', `${label} mode ${quote(modeField)} must be octal with a leading zero, "0000" to "0777" (e.g. "0440")`);
    mode = parseInt(modeField, 8);
  }

  const versions = fields.get('versions');
  if (versions !== undefined && type !== 'dataKey' && type !== 'volumeKey') refuse('InvalidObjects', `${label} has versions, which only dataKey and volumeKey objects take`);
  const ciphertext = fields.get('ciphertext');
  if (ciphertext !== undefined && type !== 'secret') refuse('InvalidObjects', `${label} has a ciphertext, which only secret objects take`);

  const common = { name, keyRing, path, mode };
  let previousVersions = 0;
  if (versions !== undefined) {
    const max = mountRequestLimits.previousVersions;
    if (!decimalCount.test(versions) || Number(versions) > max) {
      refuse('InvalidObjects', `${label} versions ${quote(versions)} must be a whole number from 0 to ${max}: how many previous versions to deliver`);
    }
    previousVersions = Number(versions);
  }
  switch (type as MountObjectType) {
    case 'dataKey':
      return { type: 'dataKey', ...common, previousVersions };
    case 'volumeKey':
      return { type: 'volumeKey', ...common, previousVersions };
    case 'secret':
      return { type: 'secret', ...common, ciphertext: decodeCiphertext(required('ciphertext'), label) };
    case 'publicKey':
      return { type: 'publicKey', ...common };
  }
}

function decodeCiphertext(text: string, label: string): Uint8Array {
  const max = mountRequestLimits.ciphertextBytes;
  const compact = text.replace(/[ \t\r\n]/g, '');
  // Checked on the encoded length first, so an oversize value is never decoded.
  if (compact.length > Math.ceil(max / 3) * 4) refuse('InvalidObjects', `${label} ciphertext is ${compact.length} base64 characters; the limit is ${kib(max)} decoded`);
  if (!base64.test(compact)) refuse('InvalidObjects', `${label} ciphertext is not base64 (the output of keyward encrypt)`);
  const decoded = Buffer.from(compact, 'base64');
  if (decoded.length === 0) refuse('InvalidObjects', `${label} has an empty ciphertext`);
  if (decoded.length > max) refuse('InvalidObjects', `${label} ciphertext is ${decoded.length} bytes; the limit is ${kib(max)}`);
  return new Uint8Array(decoded);
}

/** Why `path` cannot be a file name in the volume, or undefined when it can. */
export function objectPathProblem(path: string): string | undefined {
  const limits = mountRequestLimits;
  if (path === '') return 'is empty';
  if (bytes(path) > limits.objectPathBytes) return `is ${bytes(path)} bytes; the limit is ${limits.objectPathBytes}`;
  if (path.includes('\0')) return 'contains a NUL character';
  if (path.includes('\\')) return "contains a backslash; separate directories with '/'";
  if (controlCharacter.test(path)) return 'contains a control character';
  if (path.startsWith('/')) return 'is absolute; it must be relative to the volume';
  if (path.includes('..')) return 'contains ".."';
  for (const segment of path.split('/')) {
    if (segment === '') return "has an empty segment (a leading, trailing or doubled '/')";
    if (segment === '.') return "has a '.' segment";
    if (bytes(segment) > limits.objectPathSegmentBytes) return `has a segment of ${bytes(segment)} bytes; the limit is ${limits.objectPathSegmentBytes}`;
  }
  // The checks above already imply it; this says it of the path as the filesystem reads it.
  if (posix.normalize(path) !== path) return 'is not in canonical form';
  return undefined;
}

/** Names and paths unique; no file where another object needs a directory; derived keys' version files reserved. */
function checkUnique(objects: readonly MountObject[]): void {
  const names = new Map<string, number>();
  const files = new Map<string, number>();
  objects.forEach((object, index) => {
    const earlier = names.get(object.name);
    if (earlier !== undefined) refuse('DuplicateObjectName', `objects[${earlier}] and objects[${index}] are both named ${quote(object.name)}`);
    names.set(object.name, index);
    const other = files.get(object.path);
    if (other !== undefined) {
      refuse('DuplicateObjectPath', `objects[${other}] and objects[${index}] (${quote(object.name)}) both write ${quote(object.path)}`);
    }
    files.set(object.path, index);
  });
  objects.forEach((object, index) => {
    const segments = object.path.split('/');
    for (let n = 1; n < segments.length; n++) {
      const directory = segments.slice(0, n).join('/');
      const other = files.get(directory);
      if (other !== undefined) {
        refuse(
          'DuplicateObjectPath',
          `objects[${index}] (${quote(object.name)}) path ${quote(object.path)} needs directory ${quote(directory)}, which objects[${other}] writes as a file`,
        );
      }
    }
    if (isDerivedKey(object) && object.previousVersions > 0) {
      const prefix = `${object.path}.v`;
      for (const [path, other] of files) {
        if (path.startsWith(prefix) && /^[0-9]+$/.test(path.slice(prefix.length))) {
          refuse(
            'DuplicateObjectPath',
            `objects[${other}] path ${quote(path)} is reserved: objects[${index}] (${quote(object.name)}) asks for versions and writes ${quote(`${prefix}<N>`)}`,
          );
        }
      }
    }
  });
}
