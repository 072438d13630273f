import assert from 'node:assert/strict';
import { ScalarType, type DescMessage } from '@bufbuild/protobuf';
import {
  CSIDriverProvider,
  ErrorSchema,
  FileSchema,
  MountRequestSchema,
  MountResponseSchema,
  ObjectVersionSchema,
  VersionRequestSchema,
  VersionResponseSchema,
} from '../../proto/gen/csi/v1alpha1/service_pb.js';

/** The wire table of shared/reference/csi-provider.md, copied as written there. */
const wireTable: Record<string, string> = {
  VersionRequest: 'version = 1 : string',
  VersionResponse: 'version = 1 : string; runtime_name = 2 : string; runtime_version = 3 : string',
  MountRequest: 'attributes = 1 : string; secrets = 2 : string; target_path = 3 : string; permission = 4 : string; current_object_version = 5 : repeated ObjectVersion',
  MountResponse: 'object_version = 1 : repeated ObjectVersion; error = 2 : Error; files = 3 : repeated File',
  File: 'path = 1 : string; mode = 2 : int32; contents = 3 : bytes',
  ObjectVersion: 'id = 1 : string; version = 2 : string',
  Error: 'code = 1 : string',
};

const describeFields = (schema: DescMessage): string =>
  schema.fields
    .map((field) => {
      const type =
        field.fieldKind === 'scalar'
          ? ScalarType[field.scalar].toLowerCase()
          : field.fieldKind === 'message'
            ? field.message.name
            : field.fieldKind === 'list' && field.listKind === 'message'
              ? `repeated ${field.message.name}`
              : `unexpected ${field.fieldKind}`;
      return `${field.name} = ${field.number} : ${type}`;
    })
    .join('; ');

describe('the CSI provider proto', () => {
  it('has the messages, field names, numbers and types of the driver contract', () => {
    const schemas = [VersionRequestSchema, VersionResponseSchema, MountRequestSchema, MountResponseSchema, FileSchema, ObjectVersionSchema, ErrorSchema];
    for (const schema of schemas) {
      assert.equal(schema.typeName, `v1alpha1.${schema.name}`);
      assert.equal(describeFields(schema), wireTable[schema.name], schema.name);
    }
    assert.deepEqual(Object.keys(wireTable).sort(), schemas.map((s) => s.name).sort());
  });

  it('serves /v1alpha1.CSIDriverProvider/Version and /Mount', () => {
    assert.equal(CSIDriverProvider.typeName, 'v1alpha1.CSIDriverProvider');
    assert.deepEqual(
      CSIDriverProvider.methods.map((m) => `/${CSIDriverProvider.typeName}/${m.name} ${m.input.name} -> ${m.output.name} ${m.methodKind}`),
      ['/v1alpha1.CSIDriverProvider/Version VersionRequest -> VersionResponse unary', '/v1alpha1.CSIDriverProvider/Mount MountRequest -> MountResponse unary'],
    );
  });
});
