import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { MountRequestSchema, type MountRequest } from '../../proto/gen/csi/v1alpha1/service_pb.js';
import {
  attributeKeys,
  mountRefusalCodes,
  mountRequestLimits,
  parseMountEnvelope,
  parseMountRequest,
  parsedObjectsBytes,
  volumeKeyDefaultMode,
  type MountObject,
  type MountRefusalCode,
  type MountRequestInput,
  type ParsedMountRequest,
} from './mountRequest.js';
import { admissionRefusalCodes, objectRefusalCodes } from './mountService.js';
import { identityRefusalCodes } from './podIdentity.js';
import { TtlCache } from './ttlCache.js';

const audience = 'keyward.dev/csi';
const podUid = '6f1c1b7e-3c2a-4a59-9a3e-2f0d4c1b9e77';
// A JWT-shaped token; its parts are never decoded here (TokenReview checks it, in a later step).
const jwt = 'eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJhdWQiOlsia2V5d2FyZC5kZXYvY3NpIl0sInN1YiI6InN5c3RlbTpzZXJ2aWNlYWNjb3VudDpzaG9wOmFwaSJ9.c2lnbmF0dXJlLW5vdC1jaGVja2VkLWhlcmU';
const targetPath = `/var/lib/kubelet/pods/${podUid}/volumes/kubernetes.io~csi/secrets-store-inline/mount`;
const sealed = Buffer.from('a sealed value: opaque bytes here; the provider opens it later').toString('base64');

const objectsYaml = `- type: dataKey
  name: db-volume
  keyRing: volume-keys
  path: luks/db.key
  mode: "0400"
  versions: "2"
- type: secret
  name: db-password
  keyRing: app-secrets
  path: db/password
  ciphertext: |
    ${sealed.slice(0, 40)}
    ${sealed.slice(40)}
- type: publicKey
  name: release-signing
  keyRing: release
  path: release.pub
`;

/** kubelet's tokens attribute: audience -> {token, expirationTimestamp}, as the driver passes it. */
const tokens = (entries: Record<string, unknown> = { [audience]: { token: jwt, expirationTimestamp: '2030-01-02T03:04:05Z' } }): string =>
  JSON.stringify(entries);

/** What the driver sends: SecretProviderClass parameters overlaid with kubelet's volume context. */
const driverAttributes = (): Record<string, unknown> => ({
  'csi.storage.k8s.io/ephemeral': 'true',
  'csi.storage.k8s.io/pod.name': 'api-7d9c5b6f4-x2k8q',
  'csi.storage.k8s.io/pod.namespace': 'shop',
  'csi.storage.k8s.io/pod.uid': podUid,
  'csi.storage.k8s.io/serviceAccount.name': 'api',
  'csi.storage.k8s.io/serviceAccount.tokens': tokens(),
  objects: objectsYaml,
  secretProviderClass: 'api-keys',
});

/** Go's json.Marshal of a map[string]string: keys sorted. */
const goJson = (map: Record<string, unknown>): string =>
  JSON.stringify(Object.fromEntries(Object.entries(map).sort(([a], [b]) => (a < b ? -1 : 1))));

/** A MountRequest as the driver builds it, through the wire and back. */
const driverRequest = (changes: Partial<MountRequestInput> = {}): MountRequest =>
  fromBinary(
    MountRequestSchema,
    toBinary(MountRequestSchema, create(MountRequestSchema, { attributes: goJson(driverAttributes()), secrets: 'null', targetPath, permission: '420', ...changes })),
  );

const withAttributes = (change: (a: Record<string, unknown>) => void): MountRequest => {
  const attributes = driverAttributes();
  change(attributes);
  return driverRequest({ attributes: goJson(attributes) });
};
const withObjects = (yaml: string | undefined): MountRequest =>
  withAttributes((a) => {
    if (yaml === undefined) delete a.objects;
    else a.objects = yaml;
  });
/** One object, with `fields` overriding a valid secret object's. */
const oneObject = (fields: Record<string, string | undefined>): MountRequest => {
  const base: Record<string, string | undefined> = { type: 'secret', name: 'db-password', keyRing: 'app-secrets', path: 'db/password', ciphertext: sealed };
  const yaml = Object.entries({ ...base, ...fields })
    .filter((entry): entry is [string, string] => entry[1] !== undefined)
    .map(([k, v], i) => `${i === 0 ? '-' : ' '} ${k}: ${JSON.stringify(v)}`)
    .join('\n');
  return withObjects(yaml);
};

const parse = (request: MountRequestInput) => parseMountRequest(request, { audience });
const accepted = (request: MountRequestInput): ParsedMountRequest => {
  const result = parse(request);
  assert.ok(result.ok, result.ok ? '' : `refused: ${result.refusal.code}: ${result.refusal.message}`);
  return result.request;
};
const refused = (request: MountRequestInput, code: MountRefusalCode, message: RegExp): string => {
  const result = parse(request);
  assert.ok(!result.ok, `expected ${code}, but the request was accepted`);
  assert.equal(result.refusal.code, code, result.refusal.message);
  assert.match(result.refusal.message, message);
  assert.ok(!result.refusal.message.includes(jwt), 'the message never carries the token');
  return result.refusal.message;
};

describe('CSI MountRequest parsing', () => {
  describe('requests shaped as the driver sends them', () => {
    it('yields the claimed pod, the token for the audience, the default mode and typed objects', () => {
      const request = accepted(driverRequest());
      assert.deepEqual(request.pod, { name: 'api-7d9c5b6f4-x2k8q', namespace: 'shop', uid: podUid, serviceAccountName: 'api' });
      assert.equal(request.token.audience, audience);
      assert.equal(request.token.value, jwt);
      assert.equal(request.token.source, 'attributes');
      assert.equal(request.token.expiresAt.toISOString(), '2030-01-02T03:04:05.000Z');
      assert.equal(request.targetPath, targetPath);
      assert.equal(request.defaultMode, 0o644);
      assert.equal(request.secretProviderClass, 'api-keys');
      assert.equal(accepted(withAttributes((a) => (a.secretProviderClass = 'Not A Name'))).secretProviderClass, undefined);
      assert.deepEqual(request.objects, [
        { type: 'dataKey', name: 'db-volume', keyRing: 'volume-keys', path: 'luks/db.key', mode: 0o400, previousVersions: 2 },
        { type: 'secret', name: 'db-password', keyRing: 'app-secrets', path: 'db/password', mode: 0o644, ciphertext: new Uint8Array(Buffer.from(sealed, 'base64')) },
        { type: 'publicKey', name: 'release-signing', keyRing: 'release', path: 'release.pub', mode: 0o644 },
      ]);
    });

    it('yields a volumeKey like a dataKey, with mode 0400 unless it names one: the driver asks for 0644', () => {
      const yaml = '- {type: volumeKey, name: data, keyRing: volume-keys, path: fscrypt/data.key, versions: "3"}\n- {type: volumeKey, name: logs, keyRing: volume-keys, path: logs.key, mode: "0440"}';
      assert.deepEqual(accepted(withObjects(yaml)).objects, [
        { type: 'volumeKey', name: 'data', keyRing: 'volume-keys', path: 'fscrypt/data.key', mode: 0o400, previousVersions: 3 },
        { type: 'volumeKey', name: 'logs', keyRing: 'volume-keys', path: 'logs.key', mode: 0o440, previousVersions: 0 },
      ]);
      assert.equal(volumeKeyDefaultMode, 0o400);
      // Whatever the driver's default, a volumeKey without a mode stays 0400; other objects take the driver's.
      const objects = accepted({ ...withObjects(`${yaml}\n- {type: publicKey, name: p, keyRing: r, path: p.pub}`), permission: '511' }).objects;
      assert.deepEqual(objects.map((o) => o.mode), [0o400, 0o440, 0o777]);
    });

    it('keeps the token out of JSON and logs of the parsed request', () => {
      const request = accepted(driverRequest());
      assert.ok(!JSON.stringify(request).includes(jwt));
      assert.ok(!Object.keys(request.token).includes('value'));
    });

    it('reads the tokens from the CSI secrets first (Kubernetes 1.35+), as the driver does', () => {
      const other = 'aaaa.bbbb.cccc';
      const secrets = JSON.stringify({ [attributeKeys.serviceAccountTokens]: tokens({ [audience]: { token: other, expirationTimestamp: '2030-01-01T00:00:00.123456789+02:00' } }) });
      const request = accepted(driverRequest({ secrets }));
      assert.equal(request.token.source, 'secrets');
      assert.equal(request.token.value, other);
      assert.equal(request.token.expiresAt.toISOString(), '2029-12-31T22:00:00.123Z');
      const onlyInSecrets = withAttributes((a) => delete a[attributeKeys.serviceAccountTokens]);
      assert.equal(accepted({ ...onlyInSecrets, secrets }).token.source, 'secrets');
      const emptyInSecrets = JSON.stringify({ [attributeKeys.serviceAccountTokens]: '' });
      refused({ ...onlyInSecrets, secrets: emptyInSecrets }, 'MissingToken', /secret csi\.storage\.k8s\.io\/serviceAccount\.tokens is empty/);
    });

    it('accepts secrets as "null" (no nodePublishSecretRef), empty, or an object of strings', () => {
      for (const secrets of ['null', '', '{}', '{"username":"u","password":"p"}']) accepted(driverRequest({ secrets }));
    });

    it('ignores tokens for other audiences, even malformed ones', () => {
      accepted(withAttributes((a) => (a[attributeKeys.serviceAccountTokens] = tokens({ vault: 'junk', [audience]: { token: jwt, expirationTimestamp: '2030-01-01T00:00:00Z' } }))));
    });

    it('accepts a kubelet volume under any root dir, and any decimal mode 0-511', () => {
      accepted(driverRequest({ targetPath: `/data/kubelet/pods/${podUid}/volumes/kubernetes.io~csi/keys/mount` }));
      for (const permission of ['0', '256', '511']) assert.equal(accepted(driverRequest({ permission })).defaultMode, Number(permission));
    });
  });

  describe('attributes', () => {
    it('refuses malformed JSON without quoting it', () => {
      const message = refused(driverRequest({ attributes: `{"csi.storage.k8s.io/serviceAccount.tokens": "${jwt}",` }), 'InvalidAttributes', /^attributes is not valid JSON$/);
      assert.ok(!message.includes('eyJ'));
    });

    it('refuses empty attributes', () => {
      refused(driverRequest({ attributes: '' }), 'InvalidAttributes', /attributes are empty/);
    });

    it('refuses JSON that is not an object', () => {
      refused(driverRequest({ attributes: '["objects"]' }), 'InvalidAttributes', /attributes is a list; it must be a JSON object of strings/);
      refused(driverRequest({ attributes: '"objects"' }), 'InvalidAttributes', /attributes is a string; it must be a JSON object/);
      refused(driverRequest({ attributes: 'null' }), 'InvalidAttributes', /attributes is null/);
    });

    it('refuses values that are not strings, naming the key', () => {
      refused(withAttributes((a) => (a.objects = 3)), 'InvalidAttributes', /attributes key "objects" is a number; every value must be a string/);
      refused(withAttributes((a) => (a['csi.storage.k8s.io/pod.name'] = { name: 'x' })), 'InvalidAttributes', /key "csi.storage.k8s.io\/pod.name" is an object/);
      refused(withAttributes((a) => (a.secretProviderClass = null)), 'InvalidAttributes', /key "secretProviderClass" is null/);
    });

    it('refuses attributes over the size limits', () => {
      const big = 'x'.repeat(mountRequestLimits.attributeValueBytes + 1);
      refused(withAttributes((a) => (a.extra = big)), 'InvalidAttributes', /attribute "extra" is 262145 bytes; the limit is 256 KiB/);
      refused(withAttributes((a) => (a[big.slice(0, 600)] = 'v')), 'InvalidAttributes', /attribute key "x{77}\.\.\." is 600 bytes; the limit is 512/);
      refused(
        withAttributes((a) => {
          for (let i = 0; i < mountRequestLimits.attributeCount; i++) a[`p${i}`] = 'v';
        }),
        'InvalidAttributes',
        /attributes have 136 keys; the limit is 128/,
      );
      refused(driverRequest({ attributes: goJson({ a: 'x'.repeat(mountRequestLimits.attributesBytes) }) }), 'InvalidAttributes', /attributes are \d+ bytes; the limit is 1024 KiB/);
    });

    it('keeps a "__proto__" key as data', () => {
      const attributes = goJson(driverAttributes()).replace(/^\{/, '{"__proto__":"x",');
      accepted(driverRequest({ attributes }));
    });
  });

  describe('secrets and permission', () => {
    it('refuses malformed secrets without quoting them', () => {
      const message = refused(driverRequest({ secrets: '{"password": "hunter2"' }), 'InvalidSecrets', /^secrets is not valid JSON$/);
      assert.ok(!message.includes('hunter2'));
    });

    it('refuses secrets that are not an object of strings', () => {
      refused(driverRequest({ secrets: '[]' }), 'InvalidSecrets', /secrets is a list/);
      refused(driverRequest({ secrets: '"null"' }), 'InvalidSecrets', /secrets is a string/);
      refused(driverRequest({ secrets: '{"password": 1234}' }), 'InvalidSecrets', /secrets key "password" is a number/);
      refused(driverRequest({ secrets: JSON.stringify({ a: 'x'.repeat(mountRequestLimits.secretsBytes) }) }), 'InvalidSecrets', /the limit is 64 KiB/);
    });

    it('refuses a permission that is not a decimal 0-511', () => {
      for (const permission of ['', '512', '-1', '0644', '644.0', ' 420', '0x1a4', 'rw-r--r--', '4200']) {
        refused(driverRequest({ permission }), 'InvalidPermission', /must be a decimal number from 0 to 511 without leading zeros/);
      }
    });
  });

  describe('pod attributes', () => {
    for (const key of [attributeKeys.podName, attributeKeys.podNamespace, attributeKeys.podUid, attributeKeys.serviceAccountName]) {
      it(`refuses a request without ${key}`, () => {
        refused(withAttributes((a) => delete a[key]), 'MissingPodAttribute', new RegExp(`attribute ${key.replace(/\./g, '\\.')} is missing; kubelet sets it`));
        refused(withAttributes((a) => (a[key] = '')), 'MissingPodAttribute', /is empty/);
      });
    }

    it('refuses pod attributes of the wrong shape, naming the attribute', () => {
      refused(withAttributes((a) => (a[attributeKeys.podNamespace] = 'Shop')), 'InvalidPodAttribute', /pod\.namespace is "Shop"; it must be a namespace name/);
      refused(withAttributes((a) => (a[attributeKeys.podNamespace] = 'a/b')), 'InvalidPodAttribute', /pod\.namespace is "a\/b"/);
      refused(withAttributes((a) => (a[attributeKeys.podName] = 'x'.repeat(254))), 'InvalidPodAttribute', /pod\.name is "x+\.\.\."; it must be a pod name/);
      refused(withAttributes((a) => (a[attributeKeys.podUid] = '../other')), 'InvalidPodAttribute', /pod\.uid is "\.\.\/other"; it must be a pod UID/);
      refused(withAttributes((a) => (a[attributeKeys.serviceAccountName] = 'system:admin')), 'InvalidPodAttribute', /serviceAccount\.name is "system:admin"/);
    });

    it('refuses a pod UID that is not the one kubelet put in target_path', () => {
      const other = '0a0a0a0a-1b1b-4c4c-8d8d-2e2e2e2e2e2e';
      refused(withAttributes((a) => (a[attributeKeys.podUid] = other)), 'InvalidPodAttribute', new RegExp(`pod\\.uid is "${other}" but target_path is the volume of pod "${podUid}"`));
    });

    it('refuses an empty, relative or control-character target path', () => {
      refused(driverRequest({ targetPath: '' }), 'InvalidTargetPath', /target_path is empty/);
      refused(driverRequest({ targetPath: 'var/lib/kubelet/x' }), 'InvalidTargetPath', /is not an absolute path/);
      refused(driverRequest({ targetPath: '/var/lib/\0x' }), 'InvalidTargetPath', /control character/);
      refused(driverRequest({ targetPath: `/${'x'.repeat(4096)}` }), 'InvalidTargetPath', /4097 bytes; the limit is 4096/);
    });

    it('checks the target path as the filesystem reads it: canonical, and the volume of pod.uid', () => {
      const other = '0f0e0d0c-0b0a-0908-0706-050403020100';
      const volume = (uid: string) => `/var/lib/kubelet/pods/${uid}/volumes/kubernetes.io~csi/keys/mount`;
      // Each names another pod's volume (or a parent of ours) by text that the old pattern did not match.
      const disguised = [
        `${volume(other)}/.`,
        `${volume(other)}/..`,
        `${volume(other)}/`,
        volume(other).replace('/pods/', '/pods//'),
        volume(other).replace('/pods/', '/pods/./'),
        volume(other).replace('/var/', '/var/../var/'),
        `${volume(podUid)}/../../../../${other}/volumes/kubernetes.io~csi/keys/mount/.`,
        `${volume(podUid)}/..`,
      ];
      for (const path of disguised) refused(driverRequest({ targetPath: path }), 'InvalidTargetPath', /is not canonical/);
      refused(driverRequest({ targetPath: '/tmp/keyward-test/mount' }), 'InvalidTargetPath', /not a volume in kubelet's layout/);
      refused(driverRequest({ targetPath: `/var/lib/kubelet/pods/${podUid}/volumes/kubernetes.io~csi/keys` }), 'InvalidTargetPath', /not a volume in kubelet's layout/);
      refused(driverRequest({ targetPath: volume(other) }), 'InvalidPodAttribute', /target_path is the volume of pod/);
    });
  });

  describe('ServiceAccount token', () => {
    const withTokens = (value: unknown): MountRequest => withAttributes((a) => (a[attributeKeys.serviceAccountTokens] = value));

    it('refuses a request without the tokens attribute, naming the audience to configure', () => {
      refused(withAttributes((a) => delete a[attributeKeys.serviceAccountTokens]), 'MissingToken', /serviceAccount\.tokens is missing; the secrets-store CSIDriver must have tokenRequests with audience "keyward\.dev\/csi"/);
      refused(withTokens(''), 'MissingToken', /is empty/);
    });

    it('refuses malformed tokens JSON', () => {
      refused(withTokens(`{"${audience}":{"token":"${jwt}"`), 'InvalidToken', /serviceAccount\.tokens is not valid JSON$/);
      refused(withTokens('[]'), 'InvalidToken', /is a list; it must be a JSON object keyed by audience/);
    });

    it('refuses tokens without the configured audience, listing those present', () => {
      refused(withTokens(tokens({ vault: { token: jwt, expirationTimestamp: '2030-01-01T00:00:00Z' } })), 'MissingToken', /no token for audience "keyward\.dev\/csi" \(audiences present: "vault"\)/);
      refused(withTokens('{}'), 'MissingToken', /audiences present: none/);
    });

    it('refuses a malformed entry for the audience', () => {
      refused(withTokens(tokens({ [audience]: jwt })), 'InvalidToken', /audience "keyward\.dev\/csi" is a string; it must be \{"token": \.\.\., "expirationTimestamp": \.\.\.\}/);
      refused(withTokens(tokens({ [audience]: { expirationTimestamp: '2030-01-01T00:00:00Z' } })), 'InvalidToken', /has no token string/);
      refused(withTokens(tokens({ [audience]: { token: 42, expirationTimestamp: '2030-01-01T00:00:00Z' } })), 'InvalidToken', /has no token string/);
      refused(withTokens(tokens({ [audience]: { token: 'not a jwt', expirationTimestamp: '2030-01-01T00:00:00Z' } })), 'InvalidToken', /token is not a JWT/);
      refused(withTokens(tokens({ [audience]: { token: jwt } })), 'InvalidToken', /has no expirationTimestamp string/);
      refused(withTokens(tokens({ [audience]: { token: jwt, expirationTimestamp: 'tomorrow' } })), 'InvalidToken', /expirationTimestamp "tomorrow" is not an RFC 3339 time/);
      for (const time of ['2030-02-31T00:00:00', '2030-02-31T00:00:00Z', '2030-01-01T24:00:00Z', '2030-13-01T00:00:00Z', '2030-01-01 00:00:00Z', '1893456000']) {
        refused(withTokens(tokens({ [audience]: { token: jwt, expirationTimestamp: time } })), 'InvalidToken', /is not an RFC 3339 time/);
      }
    });

    it('refuses tokens over the size limits', () => {
      const huge = `${'a'.repeat(mountRequestLimits.tokenBytes)}.b.c`;
      refused(withTokens(tokens({ [audience]: { token: huge, expirationTimestamp: '2030-01-01T00:00:00Z' } })), 'InvalidToken', /token is 16388 bytes; the limit is 16 KiB/);
      const many = Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`aud${i}`, {}]));
      refused(withTokens(tokens(many)), 'InvalidToken', /has 17 audiences; the limit is 16/);
    });
  });

  describe('objects', () => {
    it('refuses a request without objects', () => {
      refused(withObjects(undefined), 'MissingObjects', /attribute objects is missing: the SecretProviderClass lists what to mount in parameters\.objects/);
      refused(withObjects('  \n'), 'MissingObjects', /attribute objects is empty/);
      refused(withObjects('[]'), 'MissingObjects', /objects lists no objects/);
    });

    it('refuses malformed YAML with the position, not the source', () => {
      const message = refused(withObjects('- type: secret\n  name: [db-password\n  ciphertext: c2VjcmV0'), 'InvalidObjects', /^objects is not valid YAML: .+ at line \d+, column \d+$/);
      assert.ok(!message.includes('c2VjcmV0'));
      refused(withObjects('- type: secret\n  type: dataKey'), 'InvalidObjects', /duplicated mapping key at line 2/);
    });

    it('refuses YAML aliases and tags', () => {
      refused(withObjects('- &o {type: publicKey, name: a, keyRing: r, path: a}\n- *o'), 'InvalidObjects', /aliases exceeded/);
      refused(withObjects('- !!js/function "x"'), 'InvalidObjects', /unknown .*tag/);
    });

    it('refuses objects that are not a list of mappings', () => {
      refused(withObjects('type: secret\nname: x'), 'InvalidObjects', /objects is an object; it must be a YAML list of objects/);
      refused(withObjects('db-password'), 'InvalidObjects', /objects is a string/);
      refused(withObjects('- db-password'), 'InvalidObjects', /objects\[0\] is a string; each object is a mapping/);
      refused(withObjects('- [a, b]'), 'InvalidObjects', /objects\[0\] is a list/);
    });

    it('refuses unknown and non-string fields', () => {
      refused(oneObject({ type: 'dataKey', ciphertext: undefined, verions: '2' }), 'InvalidObjects', /objects\[0\] \("db-password"\) has unknown field "verions"; the fields are type, name, keyRing, path, mode, versions, ciphertext/);
      refused(withObjects('- type: publicKey\n  name: a\n  keyRing: r\n  path: [a, b]'), 'InvalidObjects', /objects\[0\] \("a"\) field path is a list; it must be a string/);
    });

    it('refuses an unknown object type', () => {
      refused(oneObject({ type: 'privateKey' }), 'UnknownObjectType', /objects\[0\] \("db-password"\) has unknown type "privateKey"; the types are dataKey, volumeKey, secret, publicKey/);
      refused(oneObject({ type: 'DataKey' }), 'UnknownObjectType', /unknown type "DataKey"/);
    });

    it('refuses objects without a required field', () => {
      for (const field of ['type', 'name', 'keyRing', 'path', 'ciphertext']) {
        refused(oneObject({ [field]: undefined }), 'InvalidObjects', new RegExp(`objects\\[0\\].* has no ${field}$`));
      }
      refused(oneObject({ keyRing: '' }), 'InvalidObjects', /has no keyRing/);
    });

    it('refuses bad names and KeyRing names, and KeyRings of another namespace', () => {
      refused(oneObject({ name: '-db' }), 'InvalidObjects', /objects\[0\] name "-db" must be 1-63 letters/);
      refused(oneObject({ name: 'x'.repeat(64) }), 'InvalidObjects', /name "x+" must be 1-63/);
      refused(oneObject({ keyRing: 'payments/app-secrets' }), 'InvalidObjects', /keyRing "payments\/app-secrets" names a namespace: a KeyRing is named in the pod's own namespace/);
      refused(oneObject({ keyRing: 'App_Secrets' }), 'InvalidObjects', /keyRing "App_Secrets" is not a KeyRing name \(a DNS subdomain/);
    });

    it('refuses bad modes, versions and ciphertexts', () => {
      for (const mode of ['420', '0800', '0o644', '644', '00644', 'rw']) {
        refused(oneObject({ mode }), 'InvalidObjects', /mode ".*" must be octal with a leading zero, "0000" to "0777"/);
      }
      const dataKey = { type: 'dataKey', ciphertext: undefined };
      for (const versions of ['11', '-1', '01', 'two', '1.5', '']) {
        refused(oneObject({ ...dataKey, versions }), 'InvalidObjects', /versions ".*" must be a whole number from 0 to 10/);
      }
      for (const versions of ['11', '-1', '01']) {
        refused(oneObject({ type: 'volumeKey', ciphertext: undefined, versions }), 'InvalidObjects', /versions ".*" must be a whole number from 0 to 10/);
      }
      refused(oneObject({ versions: '1' }), 'InvalidObjects', /has versions, which only dataKey and volumeKey objects take/);
      refused(oneObject({ type: 'volumeKey' }), 'InvalidObjects', /has a ciphertext, which only secret objects take/);
      refused(oneObject({ type: 'publicKey' }), 'InvalidObjects', /has a ciphertext, which only secret objects take/);
      refused(oneObject({ ciphertext: 'not base64!' }), 'InvalidObjects', /ciphertext is not base64/);
      refused(oneObject({ ciphertext: 'abc' }), 'InvalidObjects', /ciphertext is not base64/);
      refused(oneObject({ ciphertext: '====' }), 'InvalidObjects', /ciphertext is not base64/);
      const tooBig = Buffer.alloc(mountRequestLimits.ciphertextBytes + 3).toString('base64');
      const limit = mountRequestLimits.ciphertextBytes;
      refused(oneObject({ ciphertext: tooBig }), 'InvalidObjects', new RegExp(`ciphertext is ${tooBig.length} base64 characters; the limit is ${limit} bytes decoded`));
      const oneOver = Buffer.alloc(limit + 1).toString('base64');
      refused(oneObject({ ciphertext: oneOver }), 'InvalidObjects', new RegExp(`ciphertext is ${limit + 1} bytes; the limit is ${limit} bytes$`));
      assert.equal(accepted(oneObject({ ciphertext: Buffer.alloc(mountRequestLimits.ciphertextBytes).toString('base64') })).objects.length, 1);
    });

    const pathCases: [string, RegExp][] = [
      ['/etc/passwd', /is absolute; it must be relative to the volume/],
      ['../../etc/passwd', /contains "\.\."/],
      ['a/../b', /contains "\.\."/],
      ['..data', /contains "\.\."/],
      ['a/..', /contains "\.\."/],
      ['a//b', /has an empty segment/],
      ['a/', /has an empty segment/],
      ['./a', /has a '\.' segment/],
      ['a\\b', /contains a backslash/],
      ['..\\..\\windows', /contains a backslash/],
      ['a\0b', /contains a NUL character/],
      ['a\nb', /contains a control character/],
      [`${'x'.repeat(256)}`, /has a segment of 256 bytes; the limit is 255/],
      [`${'x/'.repeat(512)}x`, /is 1025 bytes; the limit is 1024/],
    ];
    for (const [path, message] of pathCases) {
      it(`refuses the path ${JSON.stringify(path.length > 20 ? `${path.slice(0, 20)}...` : path)}`, () => {
        refused(oneObject({ path }), 'InvalidObjectPath', new RegExp(`objects\\[0\\] \\("db-password"\\) path ".*" ${message.source}`));
      });
    }

    it('refuses duplicate paths and names', () => {
      const two = (a: string, b: string): MountRequest =>
        withObjects(`- {type: publicKey, name: ${a.split(' ')[0]}, keyRing: r, path: ${a.split(' ')[1]}}\n- {type: publicKey, name: ${b.split(' ')[0]}, keyRing: r, path: ${b.split(' ')[1]}}`);
      refused(two('a x.pub', 'b x.pub'), 'DuplicateObjectPath', /objects\[0\] and objects\[1\] \("b"\) both write "x\.pub"/);
      refused(two('a x.pub', 'a y.pub'), 'DuplicateObjectName', /objects\[0\] and objects\[1\] are both named "a"/);
      refused(two('a keys', 'b keys/x.pub'), 'DuplicateObjectPath', /objects\[1\] \("b"\) path "keys\/x\.pub" needs directory "keys", which objects\[0\] writes as a file/);
      refused(two('b keys/x.pub', 'a keys'), 'DuplicateObjectPath', /needs directory "keys", which objects\[1\] writes as a file/);
    });

    for (const type of ['dataKey', 'volumeKey']) {
      it(`refuses a path that a ${type}'s previous versions need`, () => {
        const yaml = `- {type: ${type}, name: k, keyRing: r, path: data.key, versions: "1"}\n- {type: publicKey, name: p, keyRing: r, path: data.key.v3}`;
        refused(withObjects(yaml), 'DuplicateObjectPath', /objects\[1\] path "data\.key\.v3" is reserved: objects\[0\] \("k"\) asks for versions and writes "data\.key\.v<N>"/);
        accepted(withObjects(yaml.replace('versions: "1"', 'versions: "0"')));
        accepted(withObjects(yaml.replace('data.key.v3', 'data.key.v3.pub')));
      });
    }

    it('refuses too many objects', () => {
      const many = Array.from({ length: mountRequestLimits.objects + 1 }, (_, i) => `- {type: publicKey, name: k${i}, keyRing: r, path: k${i}.pub}`).join('\n');
      refused(withObjects(many), 'TooManyObjects', /objects lists 65 objects; the limit is 64/);
      accepted(withObjects(many.split('\n').slice(1).join('\n')));
    });
  });

  it('reuses parsed objects for the same YAML and default mode, never across modes or for refusals', () => {
    const objectsCache = new TtlCache<string, readonly MountObject[]>({ ttlMs: 60_000, maxEntries: 10 });
    const first = parseMountRequest(driverRequest(), { audience, objectsCache });
    const again = parseMountRequest(driverRequest(), { audience, objectsCache });
    assert.ok(first.ok && again.ok);
    assert.equal(again.request.objects, first.request.objects, 'the same parsed list');
    assert.ok(Object.isFrozen(first.request.objects[0]), 'shared objects cannot be changed by one Mount');
    const otherMode = parseMountRequest(driverRequest({ permission: '256' }), { audience, objectsCache });
    assert.ok(otherMode.ok);
    assert.notEqual(otherMode.request.objects, first.request.objects);
    assert.equal(objectsCache.size, 2);
    assert.equal(parseMountRequest(withObjects('- type: nope\n'), { audience, objectsCache }).ok, false);
    assert.equal(objectsCache.size, 2, 'a refused list is not kept');
  });

  it('parses the envelope without the objects, and caches objects by a digest, weighed by their bytes', () => {
    const yaml = `- type: nope\n  junk: ${'x'.repeat(200_000)}\n`;
    const envelope = parseMountEnvelope(withObjects(yaml), { audience });
    assert.ok(envelope.ok, 'the objects are not read before the token is reviewed');
    assert.equal(envelope.envelope.objectsYaml, yaml);
    const objectsCache = new TtlCache<string, readonly MountObject[]>({ ttlMs: 60_000, maxEntries: 10, maxWeight: 1 << 20, weigh: parsedObjectsBytes });
    const parsed = parseMountRequest(driverRequest(), { audience, objectsCache });
    assert.ok(parsed.ok);
    const [key] = [...(objectsCache as unknown as { entries: Map<string, unknown> }).entries.keys()];
    assert.match(key ?? '', /^[A-Za-z0-9_-]{43}$/, 'a SHA-256, not the YAML');
    assert.equal(objectsCache.totalWeight, parsedObjectsBytes(parsed.request.objects));
    assert.ok(objectsCache.totalWeight > 256 * parsed.request.objects.length);
  });

  it('never throws on garbage, and refuses it', () => {
    const good = driverRequest();
    const garbage = ['', '{', '}', '[', 'null', 'true', '0', '"', '\u0000', '{"a":', '{"a":{"b":[]}}', '\ud800'];
    for (const value of garbage) {
      for (const field of ['attributes', 'secrets', 'permission', 'targetPath'] as const) {
        const result = parse({ ...good, [field]: value });
        const valid = (field === 'secrets' && (value === '' || value === 'null')) || (field === 'permission' && value === '0');
        if (valid) assert.ok(result.ok);
        else assert.ok(!result.ok, `${field} = ${JSON.stringify(value)}`);
      }
      // Some garbage ('0', 'null', 'true') is a valid pod or ServiceAccount name.
      const validName = /^[a-z0-9]+$/.test(value);
      for (const key of Object.values(attributeKeys)) {
        if (key === attributeKeys.secretProviderClass || (validName && key !== attributeKeys.objects && key !== attributeKeys.serviceAccountTokens)) continue;
        assert.ok(!parse(withAttributes((a) => (a[key] = value))).ok, `${key} = ${JSON.stringify(value)}`);
      }
    }
  });

  it('documents every refusal code of the provider in provider/csi/README.md, in order', () => {
    const readme = readFileSync(join(import.meta.dirname, '..', '..', '..', 'provider', 'csi', 'README.md'), 'utf8');
    const table = readme.slice(readme.indexOf('| code | when |'));
    assert.ok(table.length < readme.length, 'README has a table headed "code | when"');
    const documented = [...table.matchAll(/^\| `(\w+)`(?:, `(\w+)`)? \|/gm)].flatMap((m) => m.slice(1).filter(Boolean));
    assert.deepEqual(documented, [...admissionRefusalCodes, ...mountRefusalCodes, ...identityRefusalCodes, ...objectRefusalCodes]);
  });
});
