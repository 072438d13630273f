// The KMS v2 service: Status, Encrypt and Decrypt over the ring's HSM keys. Every Encrypt and
// Decrypt is audited, allowed or refused; errors name the problem and never carry data.
import { create } from '@bufbuild/protobuf';
import pkcs11js from 'pkcs11js';
import type { AuditLog } from '../../core/audit/auditLog.js';
import { additionalData, ciphertextHeader, encodeCiphertext, maxPlaintextBytes, parseCiphertext } from '../../core/formats/kmsCiphertext.js';
import { KeywardError } from '../../core/errors.js';
import type { UnaryHandlers } from '../../core/grpc/grpcServer.js';
import { grpcStatusOf } from '../../core/grpc/grpcStatus.js';
import { aesGcmDecrypt, aesGcmEncrypt, gcmAuthenticationFailures } from '../../core/hsm/aesGcm.js';
import type { HsmToken } from '../../core/hsm/hsmToken.js';
import { hsmError, pkcs11Code } from '../../core/hsm/hsmToken.js';
import { assertKeyIdWellFormed } from '../../core/hsm/ringState.js';
import {
  DecryptResponseSchema,
  EncryptResponseSchema,
  StatusResponseSchema,
  type KeyManagementService,
} from '../../proto/gen/kms/v2/api_pb.js';
import type { KeyUseRecorder } from '../../core/keyUse/keyUseRecorder.js';
import type { KmsMetrics } from './kmsMetrics.js';
import type { RingView } from './ringView.js';

/** The annotation every Keyward ciphertext carries; stored in clear by the apiserver. */
export const formatAnnotation = 'ciphertext-format.keyward.dev';
const formatAnnotationValue = Buffer.from('1');
const maxAnnotationBytes = 32 * 1024;
const dnsSubdomain = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+$/;

const invalid = (message: string): KeywardError => new KeywardError('InvalidArgument', message);

/** The apiserver's own rules for annotations, and ours for the one we set. */
export function checkAnnotations(annotations: Record<string, Uint8Array>): void {
  let total = 0;
  for (const [key, value] of Object.entries(annotations)) {
    if (key.length > 253 || !dnsSubdomain.test(key)) {
      throw invalid(`annotation key '${key.slice(0, 64)}' is not a lowercase fully-qualified domain name with at least two labels`);
    }
    total += key.length + value.length;
  }
  if (total > maxAnnotationBytes) throw invalid(`annotations are ${total} bytes; the limit is ${maxAnnotationBytes}`);
  const format = annotations[formatAnnotation];
  if (format !== undefined && !Buffer.from(format).equals(formatAnnotationValue)) {
    throw invalid(`annotation ${formatAnnotation} names an unknown ciphertext format`);
  }
}

export interface KmsServiceDeps {
  token: HsmToken;
  view: RingView;
  audit: AuditLog;
  metrics: KmsMetrics;
  /** Notes which key id Status reported and which versions encrypted and decrypted, for the operator. */
  keyUse?: KeyUseRecorder;
  /** Who calls: the socket is 0600, so only the apiserver's user can. */
  actor?: string;
}

export function kmsHandlers(deps: KmsServiceDeps): UnaryHandlers<(typeof KeyManagementService)['method']> {
  const { token, view, audit, metrics, keyUse } = deps;
  const actor = deps.actor ?? 'kube-apiserver';


  /** Times a call, counts it by status code, and audits it (except Status, which touches no key). */
  const served = async <T>(method: string, uid: string, fn: (note: AuditNote) => Promise<T>): Promise<T> => {
    const started = process.hrtime.bigint();
    const note: AuditNote = {};
    let code = 'OK';
    try {
      return await fn(note);
    } catch (err) {
      ({ code, message: note.reason } = grpcStatusOf(err));
      throw err;
    } finally {
      metrics.observeCall(method, code, Number(process.hrtime.bigint() - started) / 1e9);
      if (method !== 'status') {
        audit.record({
          requestId: uid || 'none',
          actor,
          operation: method,
          result: code === 'OK' ? 'allowed' : code === 'UNAVAILABLE' || code === 'INTERNAL' ? 'failed' : 'denied',
          code,
          ...note,
        });
      }
    }
  };

  return {
    status: async () =>
      served('status', '', () => {
        const health = view.health();
        const snapshot = view.snapshot();
        // Only a healthy answer moves kube-apiserver to a key id.
        if (health.ok && snapshot) keyUse?.status(snapshot.ring.ringId, snapshot.primary.version.keyId);
        return Promise.resolve(
          create(StatusResponseSchema, {
            version: 'v2',
            healthz: health.ok && snapshot ? 'ok' : health.reason,
            keyId: snapshot?.primary.version.keyId ?? '',
          }),
        );
      }),

    encrypt: async ({ plaintext, uid }) =>
      served('encrypt', uid, async (note) => {
        if (plaintext.length === 0) throw invalid('plaintext is empty');
        if (plaintext.length > maxPlaintextBytes) {
          throw invalid(`plaintext is ${plaintext.length} bytes; the limit is ${maxPlaintextBytes}`);
        }
        // One snapshot for the whole call: the key_id returned is the key used.
        const { ring, primary } = view.usableSnapshot();
        Object.assign(note, { ring: ring.name, ringId: ring.ringId, keyVersion: primary.version.number, keyId: primary.version.keyId });
        const header = ciphertextHeader(primary.version.number);
        const sealed = await hsmCall(() =>
          aesGcmEncrypt(token, primary.handle, Buffer.from(plaintext), additionalData(header, primary.version.keyId)),
        );
        keyUse?.encrypted(ring.ringId, primary.version.keyId);
        return create(EncryptResponseSchema, {
          ciphertext: encodeCiphertext(header, sealed),
          keyId: primary.version.keyId,
          annotations: { [formatAnnotation]: formatAnnotationValue },
        });
      }),

    decrypt: async ({ ciphertext, uid, keyId, annotations }) =>
      served('decrypt', uid, async (note) => {
        assertKeyIdWellFormed(keyId);
        note.keyId = keyId;
        checkAnnotations(annotations);
        const parsed = parseCiphertext(ciphertext);
        let snapshot = view.usableSnapshot();
        if (!snapshot.byKeyId.has(keyId)) {
          // Perhaps a version newer than our last refresh: look again once before refusing.
          await view.refresh();
          snapshot = view.usableSnapshot();
        }
        const current = snapshot.byKeyId.get(keyId);
        // Not a version of the ring: perhaps of one that held its name before (ringView.ts).
        const { ring, view: entry } = current ? { ring: snapshot.ring, view: current } : ((await view.releasedVersion(keyId)) ?? { ring: snapshot.ring, view: undefined });
        Object.assign(note, { ring: ring.name, ringId: ring.ringId });
        if (!entry) throw new KeywardError('NotFound', 'key_id names no version of this ring');
        note.keyVersion = entry.version.number;
        if (parsed.keyVersion !== entry.version.number) {
          throw invalid(`ciphertext was made under key version ${parsed.keyVersion}, but key_id names version ${entry.version.number}`);
        }
        if (entry.version.state !== 'Enabled' || entry.handle === undefined) {
          throw new KeywardError('FailedPrecondition', `key version ${entry.version.number} is ${entry.version.state}; it may not decrypt`);
        }
        const handle = entry.handle;
        const plaintext = await hsmCall(
          () => aesGcmDecrypt(token, handle, parsed, additionalData(parsed.header, keyId)),
          () => view.health().ok,
        );
        keyUse?.decrypted(ring.ringId, keyId);
        return create(DecryptResponseSchema, { plaintext });
      }),
  };
}

interface AuditNote {
  ring?: string;
  ringId?: string;
  keyVersion?: number;
  keyId?: string;
  reason?: string;
}

/**
 * PKCS#11 failures as caller-facing errors: a failed tag check is the caller's input, the rest is
 * ours. SoftHSM2 reports a failed GCM tag as CKR_GENERAL_ERROR, so for decryption that code counts
 * as the input's fault only while the HSM is otherwise healthy (its round-trip probe passes).
 */
async function hsmCall<T>(fn: () => Promise<T>, hsmHealthy?: () => boolean): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof KeywardError) throw err;
    const code = pkcs11Code(err);
    const decrypting = hsmHealthy !== undefined;
    if (decrypting && (gcmAuthenticationFailures.has(code ?? -1) || (code === pkcs11js.CKR_GENERAL_ERROR && hsmHealthy()))) {
      throw invalid('ciphertext failed authentication: tampered, or not made under this key_id');
    }
    throw hsmError(err);
  }
}
