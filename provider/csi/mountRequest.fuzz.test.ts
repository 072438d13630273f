// Property-based fuzzing of the MountRequest decoder: arbitrary attributes JSON, secrets JSON,
// objects YAML and target paths, from pure noise to near-valid requests with one part mutated.
// Every input either decodes or is refused with one of the provider's codes; nothing else is
// ever thrown, and what decodes keeps the invariants later steps rely on.
import assert from 'node:assert/strict';
import { posix } from 'node:path';
import fc from 'fast-check';
import { attributeKeys, mountRefusalCodes, parseMountEnvelope, parseMountRequest, type MountRequestInput } from './mountRequest.js';

const audience = 'keyward';
const podUid = '6f1c1b7e-3c2a-4a59-9a3e-2f0d4c1b9e77';
const jwt = 'eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsia2V5d2FyZCJdfQ.c2lnbmF0dXJl';
const sealed = Buffer.from('a sealed value, opaque here').toString('base64');

/** Pieces that sit near the parser's edges, mixed with arbitrary text. */
const word = fc.oneof(
  fc.constantFrom('', '.', '..', '...', 'pods', podUid, 'volumes', 'kubernetes.io~csi', 'keys', 'mount', 'a', '0', 'null', '~', '\\', '\0', 'é', '\ud800'),
  fc.string({ maxLength: 12 }),
);

const targetPath = fc.oneof(
  fc.string({ maxLength: 64 }),
  fc.array(word, { maxLength: 12 }).map((segments) => segments.join('/')),
  fc.array(word, { maxLength: 12 }).map((segments) => `/${segments.join('/')}`),
  fc
    .tuple(fc.constantFrom('/var/lib/kubelet', '/var/lib/kubelet/', '/x/../var', '//var', '/./var'), fc.constantFrom(podUid, `${podUid}/.`, `./${podUid}`, 'other', ''), fc.constantFrom('', '/', '/.', '/..', '//x'))
    .map(([root, uid, tail]) => `${root}/pods/${uid}/volumes/kubernetes.io~csi/keys/mount${tail}`),
);

const scalar = fc.oneof(word, fc.constantFrom('dataKey', 'volumeKey', 'secret', 'publicKey', 'db-volume', 'volume-keys', 'luks/db.key', '"0400"', '0777', '"2"', '11', sealed, '[]', '{}', '&a x', '*a', '!!str x', '|', '>'));
const objectField = fc.tuple(fc.constantFrom('type', 'name', 'keyRing', 'path', 'mode', 'versions', 'ciphertext', 'verions', '__proto__', ''), scalar);
const objectsYaml = fc.oneof(
  fc.string({ maxLength: 200 }),
  fc.array(fc.array(objectField, { maxLength: 8 }), { maxLength: 6 }).map((objects) =>
    objects.map((fields) => fields.map(([k, v], i) => `${i === 0 ? '-' : ' '} ${k}: ${v}`).join('\n')).join('\n'),
  ),
  fc.constant(`- type: dataKey\n  name: db-volume\n  keyRing: volume-keys\n  path: luks/db.key\n  versions: "2"\n- type: secret\n  name: s\n  keyRing: app-secrets\n  path: db/password\n  ciphertext: ${sealed}\n`),
);

const tokens = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.json({ maxDepth: 3 }),
  fc.record({ token: fc.oneof(fc.constant(jwt), word), expirationTimestamp: fc.oneof(fc.constant('2030-01-02T03:04:05Z'), word, fc.constant('2030-02-30T00:00:00Z')) }).map((entry) => JSON.stringify({ [audience]: entry })),
);

/** Attributes: noise, any JSON, or the driver's keys with arbitrary or near-valid values. */
const attributes = fc.oneof(
  fc.string({ maxLength: 80 }),
  fc.json({ maxDepth: 4 }),
  fc
    .record({
      name: fc.oneof(fc.constant('web'), word),
      namespace: fc.oneof(fc.constant('shop'), word),
      uid: fc.oneof(fc.constant(podUid), word),
      serviceAccount: fc.oneof(fc.constant('app'), word),
      tokens,
      objects: objectsYaml,
      extra: fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(fc.string({ maxLength: 8 }), fc.integer(), fc.constant(null)), { maxKeys: 3 }),
    })
    .map((a) =>
      JSON.stringify({
        ...a.extra,
        [attributeKeys.podName]: a.name,
        [attributeKeys.podNamespace]: a.namespace,
        [attributeKeys.podUid]: a.uid,
        [attributeKeys.serviceAccountName]: a.serviceAccount,
        [attributeKeys.serviceAccountTokens]: a.tokens,
        [attributeKeys.objects]: a.objects,
        secretProviderClass: 'keys',
      }),
    ),
);

const secrets = fc.oneof(fc.constantFrom('', 'null', '{}'), fc.string({ maxLength: 40 }), fc.json({ maxDepth: 3 }), tokens.map((t) => JSON.stringify({ [attributeKeys.serviceAccountTokens]: t })));
const permission = fc.oneof(fc.constantFrom('420', '0', '511', '512', '0644', '-1', ''), fc.string({ maxLength: 5 }));

const validAttributes = {
  [attributeKeys.podName]: 'web',
  [attributeKeys.podNamespace]: 'shop',
  [attributeKeys.podUid]: podUid,
  [attributeKeys.serviceAccountName]: 'app',
  [attributeKeys.serviceAccountTokens]: JSON.stringify({ [audience]: { token: jwt, expirationTimestamp: '2030-01-02T03:04:05Z' } }),
  [attributeKeys.objects]: '- type: publicKey\n  name: k\n  keyRing: release\n  path: k.pub\n',
};
const valid: MountRequestInput = {
  attributes: JSON.stringify(validAttributes),
  secrets: 'null',
  targetPath: `/var/lib/kubelet/pods/${podUid}/volumes/kubernetes.io~csi/keys/mount`,
  permission: '420',
};

/** A valid request with one part replaced: reaches every later check with the others passing. */
const nearValid = fc.oneof(
  targetPath.map((v) => ({ ...valid, targetPath: v })),
  secrets.map((v) => ({ ...valid, secrets: v })),
  permission.map((v) => ({ ...valid, permission: v })),
  objectsYaml.map((v) => ({ ...valid, attributes: JSON.stringify({ ...validAttributes, [attributeKeys.objects]: v }) })),
  tokens.map((v) => ({ ...valid, attributes: JSON.stringify({ ...validAttributes, [attributeKeys.serviceAccountTokens]: v }) })),
  fc.tuple(fc.constantFrom(...Object.values(attributeKeys)), word).map(([k, v]) => ({ ...valid, attributes: JSON.stringify({ ...validAttributes, [k]: v }) })),
);

const request: fc.Arbitrary<MountRequestInput> = fc.oneof(fc.record({ attributes, secrets, targetPath, permission }), nearValid);

describe('CSI MountRequest decoder, fuzzed', function () {
  this.timeout(20_000);

  it('decodes or refuses with a provider code, never anything else, and keeps its invariants', () => {
    let decoded = 0;
    fc.assert(
      fc.property(request, (input) => {
        const result = parseMountRequest(input, { audience });
        const envelope = parseMountEnvelope(input, { audience });
        if (!result.ok) {
          assert.ok((mountRefusalCodes as readonly string[]).includes(result.refusal.code), result.refusal.code);
          assert.ok(!result.refusal.message.includes(jwt), 'no token in a message');
          // A refusal of the envelope is the refusal of the whole request.
          if (!envelope.ok) assert.deepEqual(envelope.refusal, result.refusal);
          return;
        }
        decoded++;
        assert.ok(envelope.ok);
        const { targetPath: path, pod, objects } = result.request;
        assert.equal(posix.normalize(path), path, 'a canonical target path');
        assert.ok(path.endsWith(`/pods/${pod.uid}/volumes/kubernetes.io~csi/${path.split('/').at(-2)}/mount`), "the claimed pod's volume");
        for (const object of objects) {
          assert.equal(posix.normalize(object.path), object.path);
          assert.ok(!object.path.startsWith('/') && !object.path.split('/').includes('..'));
        }
      }),
      { seed: 20261207, numRuns: 4000 },
    );
    // The generators reach past the envelope: some requests decode whole.
    assert.ok(decoded >= 100, `${decoded} inputs decode`);
  });
});
