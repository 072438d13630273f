// Writes crds/*.yaml from the CRD definitions in core/api (`npm run crds`). The YAML is
// emitted here rather than by a library: CRDs hold only maps, lists, strings, numbers and
// booleans, and a plain block style reads best for administrators.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { keyPolicyCrd } from './keyPolicy.js';
import { keyRingCrd } from './keyRing.js';

type Json = string | number | boolean | readonly Json[] | { readonly [key: string]: Json };

const header = (source: string): string =>
  `# Generated from ${source} by core/api/generateCrds.ts; do not edit: run npm run crds.\n`;

/** Repository-relative path and text of each generated CRD file. */
export const crdFiles = (): { path: string; text: string }[] => [
  { path: 'crds/keyward.dev_keyrings.yaml', text: header('core/api/keyRing.ts') + toYaml(keyRingCrd) },
  { path: 'crds/keyward.dev_keypolicies.yaml', text: header('core/api/keyPolicy.ts') + toYaml(keyPolicyCrd) },
];

// Plain when it cannot be read as anything but this string, JSON-quoted (valid YAML) otherwise.
const plainScalar = /^[A-Za-z_][\w .,;()/'+-]*$/;
const readAsOtherType = /^(true|false|yes|no|on|off|y|n|null)$/i;

function scalar(value: string | number | boolean): string {
  if (typeof value !== 'string') return String(value);
  return plainScalar.test(value) && !value.endsWith(' ') && !readAsOtherType.test(value) ? value : JSON.stringify(value);
}

const isScalar = (value: Json): value is string | number | boolean => typeof value !== 'object';
const isEmpty = (value: Json): boolean => (Array.isArray(value) ? value.length === 0 : Object.keys(value).length === 0);

function lines(value: Json, indent: string): string[] {
  if (isScalar(value)) throw new Error('a YAML document must be a map or a list');
  if (Array.isArray(value)) {
    return (value as readonly Json[]).flatMap((item) => {
      if (isScalar(item) || isEmpty(item)) return [`${indent}- ${inline(item)}`];
      if (Array.isArray(item)) throw new Error('lists of lists are not supported');
      // The first key of a map item shares the line with the dash.
      const [first = '', ...rest] = lines(item, `${indent}  `);
      return [`${indent}- ${first.trimStart()}`, ...rest];
    });
  }
  return Object.entries(value).flatMap(([key, item]) =>
    isScalar(item) || isEmpty(item) ? [`${indent}${scalar(key)}: ${inline(item)}`] : [`${indent}${scalar(key)}:`, ...lines(item, `${indent}  `)],
  );
}

const inline = (value: Json): string => (isScalar(value) ? scalar(value) : Array.isArray(value) ? '[]' : '{}');

/** Block-style YAML for a map or list of JSON values. */
export const toYaml = (document: Json): string => `${lines(document, '').join('\n')}\n`;

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const root = join(import.meta.dirname, '..', '..', '..');
  for (const { path, text } of crdFiles()) {
    // The Helm chart carries its own copy: a chart cannot reach files outside its folder.
    for (const target of [path, join('charts', 'keyward', path)]) {
      writeFileSync(join(root, target), text);
      console.error(`wrote ${target}`);
    }
  }
}
