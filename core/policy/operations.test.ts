import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { operationNames, operations, roleNames, roles } from './operations.js';

const readme = readFileSync(join(import.meta.dirname, '..', '..', '..', 'README.md'), 'utf8');
/** Rows of the README table whose header starts with `header`, as trimmed cells. */
const tableRows = (header: string): string[][] => {
  const start = readme.indexOf(`| ${header} |`);
  assert.ok(start >= 0, `README has a table headed "${header}"`);
  return readme
    .slice(start)
    .split('\n')
    .slice(2)
    .filter((line, i, all) => line.startsWith('|') && all.slice(0, i).every((l) => l.startsWith('|')))
    .map((line) => line.split('|').slice(1, -1).map((cell) => cell.trim()));
};

describe('the operations and roles tables', () => {
  it('document every role in README.md with exactly its operations', () => {
    const documented = new Map(tableRows('role').map(([role = '', ops = '']) => [role, ops]));
    assert.deepEqual([...documented.keys()], roleNames);
    for (const role of roleNames) {
      const listed = documented.get(role) === 'the Administrator set' ? roles.Administrator.operations : documented.get(role)?.split(', ');
      assert.deepEqual(listed, roles[role].operations, role);
    }
  });

  it('document every operation in README.md under its kind', () => {
    const documented = tableRows('kind').flatMap(([kind = '', ops = '']) => ops.split(', ').map((op) => [op, kind]));
    assert.deepEqual(documented.map(([op]) => op).sort(), [...operationNames].sort());
    for (const [op = '', kind] of documented) assert.equal(kind, operations[op as keyof typeof operations].kind, op);
  });
});
