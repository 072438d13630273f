import {
  CustomObjectsApi,
  loadYaml,
  setHeaderOptions,
  type V1CustomResourceDefinition,
} from '@kubernetes/client-node';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { installCrds } from '../../e2e/operator/crds.js';
import { crdFiles } from './generateCrds.js';
import { algorithmsByPurpose, keyRingCrd, keyRingResource, type KeyRing, type KeyRingSpec, type KeyRingStatus } from './keyRing.js';
import type { Schema } from './schema.js';
import { apiRefusal } from '../../testbed/apiRefusal.js';

const repoRoot = join(import.meta.dirname, '..', '..', '..');
const crdPath = 'crds/keyward.dev_keyrings.yaml';
const schema: Schema = keyRingCrd.spec.versions[0].schema.openAPIV3Schema;

// A KeyRing with every field of the schema set, spec and status: the types must allow all of it
// (it compiles) and the apiserver must accept all of it (tested below with strict validation).
const fullKeyRing: KeyRing = {
  apiVersion: 'keyward.dev/v1alpha1',
  kind: 'KeyRing',
  metadata: { name: 'full' },
  spec: {
    purpose: 'signing',
    algorithm: 'ECDSA-P384',
    rotationPeriod: '2160h',
    destroyScheduledDuration: '1440h',
    deletionPolicy: 'Destroy',
    approveDestroy: true,
    deletionDestroyRequest: { requestedBy: 'alice', requestedAt: '2025-06-01T11:00:00Z', approvedBy: 'bob', approvedAt: '2025-06-01T11:10:00Z' },
    rotationRequest: '2025-06-01T12:00:00Z',
    reEncryption: { enabled: true, maxWritesPerSecond: 100, method: 'Auto' },
    versions: [
      {
        number: 1,
        state: 'DestroyScheduled',
        approveDestroy: true,
        destroyRequest: { requestedBy: 'alice', requestedAt: '2025-06-01T12:00:00Z', approvedBy: 'bob', approvedAt: '2025-06-01T12:10:00Z' },
        retirementOverride: { by: 'carol', at: '2025-06-01T12:00:00Z', reason: 'version 1 still protects 3 objects in etcd' },
      },
    ],
  },
  status: {
    conditions: [
      {
        type: 'Ready',
        status: 'True',
        observedGeneration: 1,
        lastTransitionTime: '2025-06-01T12:00:05Z',
        reason: 'PrimaryEnabled',
        message: 'version 2 is the primary',
      },
    ],
    observedGeneration: 1,
    ringId: 'r-5e0c7a91',
    primaryVersion: 2,
    nextRotationTime: '2025-08-30T12:00:05Z',
    lastRotationRequest: '2025-06-01T12:00:00Z',
    reEncryption: {
      targetVersion: 2,
      phase: 'Complete',
      method: 'Rewrite',
      apiserverSwitchedAt: '2025-06-01T12:01:00Z',
      startedAt: '2025-06-01T12:01:05Z',
      completedAt: '2025-06-01T12:10:00Z',
      rewrittenObjects: 2000,
      failedObjects: 0,
      message: 'etcd holds nothing under older versions',
    },
    versions: [
      {
        number: 1,
        keyId: 'k-1b2f',
        state: 'DestroyScheduled',
        algorithm: 'ECDSA-P384',
        createTime: '2025-03-01T00:00:00Z',
        destroyTime: '2025-07-31T12:00:05Z',
        hsmToken: 'keyward',
        hsmObjectId: '0a1b2c3d',
        etcdObjects: 0,
        etcdObjectsProvenAt: '2025-06-01T12:20:00Z',
        lastDecryptTime: '2025-06-01T12:05:00Z',
        lastUseTime: '2025-06-01T12:04:00Z',
      },
      { number: 2, keyId: 'k-9c4e', state: 'Enabled', algorithm: 'ECDSA-P384', createTime: '2025-06-01T12:00:04Z', hsmToken: 'keyward', hsmObjectId: '0a1b2c3e' },
    ],
  },
};

// Specs the types refuse at compile time; the apiserver must refuse them too (tests below).
const minimalSpec: KeyRingSpec = { purpose: 'encryption', destroyScheduledDuration: '720h', deletionPolicy: 'Retain' };
// @ts-expect-error: 'storage' is not a purpose
const unknownPurposeSpec: KeyRingSpec = { ...minimalSpec, purpose: 'storage' };
// @ts-expect-error: RSA-2048 is not a CNSA 1.0 algorithm
const unknownAlgorithmSpec: KeyRingSpec = { ...minimalSpec, purpose: 'signing', algorithm: 'RSA-2048' };
// @ts-expect-error: the schema has no field rotateNow
const unknownFieldSpec: KeyRingSpec = { ...minimalSpec, rotateNow: true };

/** The property paths a value sets, in the same notation, as far as the schema goes. */
function valuePaths(node: Schema, value: unknown, path = ''): string[] {
  if (node.type === 'array') return (value as unknown[]).flatMap((item) => valuePaths(node.items, item, `${path}[]`));
  if (node.type !== 'object' || !node.properties) return [];
  const properties: Readonly<Record<string, Schema>> = node.properties;
  return Object.entries(value as Record<string, unknown>).flatMap(([key, child]) => {
    const childPath = path ? `${path}.${key}` : key;
    const childSchema = properties[key];
    return childSchema ? [childPath, ...valuePaths(childSchema, child, childPath)] : [`${childPath} (not in the schema)`];
  });
}

/** Every node of a schema with its path, e.g. spec.versions[].state; `[]` stands for list items. */
function schemaNodes(node: Schema, path = '(root)'): { path: string; node: Schema }[] {
  const children =
    node.type === 'array'
      ? schemaNodes(node.items, `${path}[]`)
      : node.type === 'object'
        ? Object.entries(node.properties ?? {}).flatMap(([key, child]) => schemaNodes(child, path === '(root)' ? key : `${path}.${key}`))
        : [];
  return [{ path, node }, ...children];
}

describe('the KeyRing CRD definition', () => {
  it('is what crds/keyward.dev_keyrings.yaml holds (regenerate with npm run crds)', () => {
    const generated = crdFiles().find((file) => file.path === crdPath);
    assert.ok(generated, `generateCrds writes ${crdPath}`);
    assert.equal(readFileSync(join(repoRoot, crdPath), 'utf8'), generated.text, `${crdPath} is stale: run npm run crds`);
  });

  it('reads back from the YAML as the definition', () => {
    // JSON is YAML: both go through the same parser, so only the YAML writer can make them differ.
    const fromYaml = loadYaml<V1CustomResourceDefinition>(readFileSync(join(repoRoot, crdPath), 'utf8'));
    const fromJson = loadYaml<V1CustomResourceDefinition>(JSON.stringify(keyRingCrd));
    assert.deepEqual(fromYaml, fromJson);
    assert.equal(fromYaml.spec.versions[0]?.schema?.openAPIV3Schema?.properties?.spec?.properties?.destroyScheduledDuration?._default, '720h');
  });

  it('describes every node of the schema (what kubectl explain shows)', () => {
    const nodes = schemaNodes(schema);
    const walked = nodes.map(({ path }) => path);
    for (const deep of ['status.versions[].hsmObjectId', 'status.conditions[].reason', 'spec.versions[].state']) {
      assert.ok(walked.includes(deep), `the walk reaches ${deep}`);
    }
    const undescribed = nodes.filter(({ node }) => node.description.trim().length < 10).map(({ path }) => path);
    assert.deepEqual(undescribed, []);
  });

  it('keeps required fields and list-map keys among the declared properties', () => {
    const problems = schemaNodes(schema).flatMap(({ path, node }) => {
      if (node.type === 'object') {
        return (node.required ?? []).filter((name) => !node.properties?.[name]).map((name) => `${path}: required ${name} is not a property`);
      }
      if (node.type === 'array' && node.items.type === 'object') {
        const required: readonly string[] = node.items.required ?? [];
        return (node['x-kubernetes-list-map-keys'] ?? []).filter((key) => !required.includes(key)).map((key) => `${path}: map key ${key} is not required`);
      }
      return [];
    });
    assert.deepEqual(problems, []);
  });

  it('has TypeScript types that cover exactly the schema properties', () => {
    // fullKeyRing compiles against the types; here it must also set every schema property.
    // metadata is the apiserver's own, outside the schema.
    const { apiVersion, kind, spec, status } = fullKeyRing;
    const covered = new Set(valuePaths(schema, { apiVersion, kind, spec, status }));
    const propertyPaths = schemaNodes(schema)
      .map(({ path }) => path)
      .filter((path) => path !== '(root)' && !path.endsWith('[]'));
    assert.deepEqual(
      propertyPaths.filter((path) => !covered.has(path)),
      [],
      'schema properties the sample (hence the types) lacks',
    );
    assert.deepEqual(
      [...covered].filter((path) => path.endsWith('(not in the schema)')),
      [],
    );
  });
});

describe('KeyRing admission by a real kube-apiserver', function () {
  this.timeout(300_000);
  const namespace = 'default';
  let cp: ControlPlane;
  let api: CustomObjectsApi;
  let nameCount = 0;
  const uniqueName = (prefix: string): string => `${prefix}-${++nameCount}`;

  const body = (name: string, spec: object): object => ({ apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyRing', metadata: { name }, spec });
  const create = async (spec: object, options: { dryRun?: string; fieldValidation?: string } = {}): Promise<KeyRing> =>
    (await api.createNamespacedCustomObject({ ...keyRingResource, namespace, body: body(uniqueName('kr'), spec), ...options })) as KeyRing;
  const read = async (name: string): Promise<KeyRing> => (await api.getNamespacedCustomObject({ ...keyRingResource, namespace, name })) as KeyRing;
  const replace = async (object: KeyRing): Promise<KeyRing> =>
    (await api.replaceNamespacedCustomObject({ ...keyRingResource, namespace, name: object.metadata.name ?? '', body: object })) as KeyRing;
  const replaceStatus = async (object: KeyRing): Promise<KeyRing> =>
    (await api.replaceNamespacedCustomObjectStatus({
      ...keyRingResource,
      namespace,
      name: object.metadata.name ?? '',
      body: object,
      fieldValidation: 'Strict',
    })) as KeyRing;

  const invalid = async (spec: object): Promise<string> => {
    const { code, message } = await apiRefusal(create(spec, { dryRun: 'All' }));
    assert.equal(code, 422, message);
    return message;
  };

  before(async () => {
    cp = await startControlPlane();
    api = cp.kubeConfig.makeApiClient(CustomObjectsApi);
    // Installed from the committed file, as an administrator would.
    await installCrds(cp.kubeConfig);
  });
  after(async () => {
    await cp?.stop();
  });

  it('is served as namespaced keyrings, short name kr, in category keyward', async () => {
    const { resources } = await api.getAPIResources(keyRingResource);
    const keyrings = resources.find((r) => r.name === 'keyrings');
    assert.ok(keyrings, 'keyrings is served');
    assert.equal(keyrings.kind, 'KeyRing');
    assert.equal(keyrings.namespaced, true);
    assert.deepEqual(keyrings.shortNames, ['kr']);
    assert.deepEqual(keyrings.categories, ['keyward']);
    assert.ok(resources.some((r) => r.name === 'keyrings/status'), 'the status subresource is served');
  });

  it('accepts a minimal KeyRing and fills in destroyScheduledDuration 720h and deletionPolicy Retain', async () => {
    const created = await create({ purpose: 'encryption' }, { fieldValidation: 'Strict' });
    assert.deepEqual(created.spec, { purpose: 'encryption', destroyScheduledDuration: '720h', deletionPolicy: 'Retain' });
    assert.deepEqual(await read(created.metadata.name ?? ''), created);
  });

  it('accepts each purpose with each algorithm that suits it', async () => {
    for (const [purpose, allowed] of Object.entries(algorithmsByPurpose)) {
      for (const algorithm of allowed) {
        const created = await create({ purpose, algorithm }, { dryRun: 'All', fieldValidation: 'Strict' });
        assert.equal(created.spec.algorithm, algorithm);
      }
    }
  });

  it('refuses an unknown purpose, naming spec.purpose and the supported values', async () => {
    const message = await invalid(unknownPurposeSpec);
    assert.match(message, /spec\.purpose: Unsupported value: "storage": supported values: "encryption", "derivation", "signing"/);
  });

  it('refuses an algorithm outside CNSA 1.0, naming spec.algorithm and the supported values [practice:cnsa]', async () => {
    const message = await invalid(unknownAlgorithmSpec);
    assert.match(message, /spec\.algorithm: Unsupported value: "RSA-2048": supported values: "AES-256-GCM", "HMAC-SHA-384", "ECDSA-P384"/);
  });

  it('refuses RSA signing, which the operator does not generate, at admission instead of in status', async () => {
    for (const algorithm of ['RSA-3072', 'RSA-4096']) {
      const message = await invalid({ purpose: 'signing', algorithm });
      assert.match(message, new RegExp(`spec\\.algorithm: Unsupported value: "${algorithm}": supported values: "AES-256-GCM", "HMAC-SHA-384", "ECDSA-P384"`));
    }
  });

  it('refuses an algorithm that does not suit the purpose, naming both fields', async () => {
    const encryptionWithEcdsa = await invalid({ purpose: 'encryption', algorithm: 'ECDSA-P384' });
    assert.match(encryptionWithEcdsa, /spec\.algorithm: Invalid value: .*spec\.algorithm ECDSA-P384 does not suit spec\.purpose encryption \(encryption: AES-256-GCM; .*signing: ECDSA-P384\)/);
    const signingWithAes = await invalid({ purpose: 'signing', algorithm: 'AES-256-GCM' });
    assert.match(signingWithAes, /spec\.algorithm AES-256-GCM does not suit spec\.purpose signing/);
  });

  it('refuses a rotationPeriod shorter than 24h and accepts 24h', async () => {
    const message = await invalid({ purpose: 'encryption', rotationPeriod: '1h' });
    assert.match(message, /spec\.rotationPeriod: Invalid value: .*must be at least 24h \(one day\), not 1h/);
    assert.match(await invalid({ purpose: 'encryption', rotationPeriod: '1439m' }), /must be at least 24h \(one day\), not 1439m/);
    await create({ purpose: 'encryption', rotationPeriod: '24h' }, { dryRun: 'All' });
  });

  it('refuses a rotationPeriod that is not a duration, naming the field and the expected form', async () => {
    for (const garbage of ['monthly', '30d', '-48h', '48', '1.5h', '', '9999999h']) {
      const message = await invalid({ purpose: 'encryption', rotationPeriod: garbage });
      assert.match(message, /spec\.rotationPeriod: Invalid value: .*must be a duration in hours, minutes and seconds, such as 720h or 36h30m/, garbage);
      assert.doesNotMatch(message, /error|must be at least/, 'only the format is reported, without CEL evaluation errors');
    }
  });

  it('refuses a destroyScheduledDuration under 24h or over 2880h and accepts both limits [practice:soft-delete]', async () => {
    assert.match(
      await invalid({ purpose: 'encryption', destroyScheduledDuration: '23h' }),
      /spec\.destroyScheduledDuration: Invalid value: .*must be between 24h and 2880h \(1 to 120 days\), not 23h/,
    );
    assert.match(
      await invalid({ purpose: 'encryption', destroyScheduledDuration: '2881h' }),
      /spec\.destroyScheduledDuration: Invalid value: .*must be between 24h and 2880h \(1 to 120 days\), not 2881h/,
    );
    assert.match(await invalid({ purpose: 'encryption', destroyScheduledDuration: '30 days' }), /spec\.destroyScheduledDuration: Invalid value: .*must be a duration/);
    for (const limit of ['24h', '2880h', '1439m60s']) {
      const created = await create({ purpose: 'encryption', destroyScheduledDuration: limit }, { dryRun: 'All' });
      assert.equal(created.spec.destroyScheduledDuration, limit);
    }
  });

  it('refuses a change of destroyScheduledDuration, also by removing it, but allows other updates [practice:soft-delete]', async () => {
    const created = await create({ purpose: 'encryption', destroyScheduledDuration: '48h' });
    const changed = { ...created, spec: { ...created.spec, destroyScheduledDuration: '96h' } };
    const { code, message } = await apiRefusal(replace(changed));
    assert.equal(code, 422);
    assert.match(message, /spec\.destroyScheduledDuration: Invalid value: .*spec\.destroyScheduledDuration cannot be changed once set/);
    // Removed, it would default to 720h: still a change.
    const withoutDuration: Partial<KeyRingSpec> = { ...created.spec };
    delete withoutDuration.destroyScheduledDuration;
    assert.match((await apiRefusal(replace({ ...created, spec: withoutDuration as KeyRingSpec }))).message, /spec\.destroyScheduledDuration cannot be changed/);
    const updated = await replace({ ...created, spec: { ...created.spec, rotationPeriod: '720h' } });
    assert.equal(updated.spec.rotationPeriod, '720h');
    assert.equal(updated.spec.destroyScheduledDuration, '48h');
  });

  it('keys spec.versions by number', async () => {
    const twice = [{ number: 2, state: 'Disabled' }, { number: 2, state: 'Enabled' }];
    assert.match(await invalid({ purpose: 'encryption', versions: twice }), /spec\.versions\[1\]: Duplicate value: \{"number":2\}/);
    assert.match(await invalid({ purpose: 'encryption', versions: [{ number: 0, state: 'Disabled' }] }), /spec\.versions\[0\]\.number: Invalid value: 0: .*greater than or equal to 1/);
    assert.match(await invalid({ purpose: 'encryption', versions: [{ number: 3, state: 'Destroyed' }] }), /spec\.versions\[0\]\.state: Unsupported value: "Destroyed"/);
  });

  it('refuses a change of purpose', async () => {
    const created = await create({ purpose: 'signing' });
    const { message } = await apiRefusal(replace({ ...created, spec: { ...created.spec, purpose: 'encryption' } }));
    assert.match(message, /spec\.purpose: Invalid value: .*spec\.purpose cannot be changed once set/);
  });

  it('refuses an unknown field under strict field validation and drops it otherwise', async () => {
    const { code, message } = await apiRefusal(create(unknownFieldSpec, { fieldValidation: 'Strict' }));
    assert.equal(code, 400);
    assert.match(message, /unknown field "spec\.rotateNow"/);
    const pruned = await create(unknownFieldSpec, { fieldValidation: 'Ignore' });
    assert.equal('rotateNow' in pruned.spec, false, 'the apiserver prunes fields the schema does not declare');
  });

  it('takes status only through the status subresource, with every status field', async () => {
    const created = await create(fullKeyRing.spec, { fieldValidation: 'Strict' });
    assert.equal(created.status, undefined);
    // Through /status: the status is stored, a spec change is ignored.
    const afterStatus = await replaceStatus({ ...created, spec: { ...created.spec, deletionPolicy: 'Retain' }, status: fullKeyRing.status });
    assert.deepEqual(afterStatus.status, fullKeyRing.status);
    assert.equal(afterStatus.spec.deletionPolicy, 'Destroy');
    // Through the main resource: a status change is ignored.
    const afterUpdate = await replace({ ...afterStatus, status: { ...fullKeyRing.status, primaryVersion: 9 } });
    assert.equal(afterUpdate.status?.primaryVersion, 2);
  });

  it('refuses a status that breaks the schema', async () => {
    const created = await create({ purpose: 'encryption' });
    const lostVersion = [{ number: 1, state: 'Lost' }] as unknown as KeyRingStatus['versions'];
    const { code, message } = await apiRefusal(replaceStatus({ ...created, status: { versions: lostVersion } }));
    assert.equal(code, 422);
    assert.match(message, /status\.versions(\[0\])?\.state: Unsupported value: "Lost"/);
  });

  it('shows Ready, Purpose, Primary, Next Rotation and Age columns (kubectl get)', async () => {
    const created = await create(fullKeyRing.spec);
    await replaceStatus({ ...created, status: fullKeyRing.status });
    const table = (await api.listNamespacedCustomObject(
      { ...keyRingResource, namespace, fieldSelector: `metadata.name=${created.metadata.name}` },
      setHeaderOptions('Accept', 'application/json;as=Table;v=v1;g=meta.k8s.io'),
    )) as { columnDefinitions: { name: string }[]; rows: { cells: unknown[] }[] };
    assert.deepEqual(
      table.columnDefinitions.map((c) => c.name),
      ['Name', 'Ready', 'Purpose', 'Primary', 'Next Rotation', 'Age'],
    );
    assert.equal(table.rows.length, 1);
    assert.deepEqual(table.rows[0]?.cells.slice(0, 5), [created.metadata.name, 'True', 'signing', 2, '2025-08-30T12:00:05Z']);
  });
});
