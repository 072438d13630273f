import assert from 'node:assert/strict';
import type { Practice } from '../../core/compliance/practices.js';
import { complianceTable, exemptions } from './complianceTable.js';
import type { TestResult } from './practiceRecorder.js';

// Tags are built here so that these tests' own titles name no practice.
const tag = (id: string): string => `[practice:${id}]`;

const practices: Practice[] = [
  { id: 'rotation', title: 'Scheduled and on-demand rotation', sources: 'CSA 5.1' },
  { id: 'audit', title: 'Every use audited', sources: 'NSA' },
  { id: 'backup-escrow', title: 'Backup under escrow', sources: 'CSA 5.2' },
];
const notBuilt = { 'backup-escrow': 'not built: issue 18' };

const test = (title: string, state: TestResult['state'], file = 'core/a.test.ts'): TestResult => ({ title, state, file });
const table = (tests: TestResult[], exempt: Record<string, string> = notBuilt) =>
  complianceTable({ finishedAt: '2026-01-02T03:04:05.000Z', tests }, practices, exempt);
const row = (t: ReturnType<typeof table>, id: string) => t.rows.find((r) => r.practice.id === id);

describe('compliance table (docs/compliance.md)', () => {
  it('counts a practice proven by one passing test, and lists its tests with file, title and result', () => {
    const t = table([
      test(`ring rotates on request ${tag('rotation')}`, 'passed', 'core/hsm/ringStore.test.ts'),
      test(`ring rotates on schedule ${tag('rotation')}`, 'pending'),
      test(`kms audits every call ${tag('audit')}`, 'passed'),
      test('an untagged test', 'failed'),
    ]);
    assert.deepEqual(t.problems, []);
    assert.equal(row(t, 'rotation')?.verdict, 'proven');
    assert.equal(row(t, 'rotation')?.tests.length, 2);
    assert.match(t.markdown, /run of 2026-01-02: 4 tests, 2 passed, 1 failed, 1 pending, 0 not run/);
    assert.match(t.markdown, /\| \*\*rotation\*\*: Scheduled and on-demand rotation \(CSA 5\.1\) \| proven \| `core\/hsm\/ringStore\.test\.ts`: ring rotates on request \| passed \|/);
    assert.match(t.markdown, /\| {2}\| {2}\| `core\/a\.test\.ts`: ring rotates on schedule \| pending \|/);
  });

  it('takes a tag from a describe title above the test, as mocha joins them into the full title', () => {
    const t = table([test(`KMS plugin ${tag('audit')} writes an audit line per call`, 'passed'), test(`x ${tag('rotation')}`, 'passed')]);
    assert.equal(row(t, 'audit')?.verdict, 'proven');
  });

  it('fails a practice whose tests all failed, were skipped or did not run, and one no test names', () => {
    const t = table([
      test(`rotates ${tag('rotation')}`, 'failed'),
      test(`rotates again ${tag('rotation')}`, 'pending'),
      test(`rotates once more ${tag('rotation')}`, 'not run'),
    ]);
    assert.deepEqual(t.problems, ['rotation: no passing test (failed, pending, not run)', 'audit: no passing test (no test names it)']);
    assert.equal(row(t, 'rotation')?.verdict, 'no passing test');
    assert.match(t.markdown, /\| \*\*audit\*\*: Every use audited \(NSA\) \| no passing test \| \| \|/);
  });

  it('shows a passing and a failing test of one practice as failing (mocha fails the run for it)', () => {
    const t = table([test(`a ${tag('rotation')}`, 'passed'), test(`b ${tag('rotation')}`, 'failed'), test(`c ${tag('audit')}`, 'passed')]);
    assert.equal(row(t, 'rotation')?.verdict, 'failing');
    assert.deepEqual(t.problems, []);
  });

  it('shows an exempt practice as not built, with its issue, without failing the run', () => {
    const t = table([test(`a ${tag('rotation')}`, 'passed'), test(`b ${tag('audit')}`, 'passed')]);
    assert.deepEqual(t.problems, []);
    assert.match(t.markdown, /\| \*\*backup-escrow\*\*: Backup under escrow \(CSA 5\.2\) \| not built: issue 18 \| \| \|/);
  });

  it('fails the run once an exempt practice has a passing test, so its exemption is removed', () => {
    const t = table([test(`a ${tag('rotation')}`, 'passed'), test(`b ${tag('audit')}`, 'passed'), test(`c ${tag('backup-escrow')}`, 'passed')]);
    assert.equal(t.problems.length, 1);
    assert.match(t.problems[0] ?? '', /^backup-escrow: a passing test proves it now; remove its exemption/);
  });

  it('refuses a tag naming an unknown practice, or misspelt, and counts that test for nothing', () => {
    const t = table([
      test(`rotates ${tag('rotaton')}`, 'passed', 'core/x.test.ts'),
      test('audits [Practice:audit]', 'passed'),
      test('audits [practise:audit]', 'passed'),
    ]);
    assert.deepEqual(t.problems, [
      'core/x.test.ts: "rotates [practice:rotaton]" carries [practice:rotaton], which names no practice of core/compliance/practices.ts',
      'core/a.test.ts: "audits [Practice:audit]" carries [Practice:audit], which names no practice of core/compliance/practices.ts',
      'core/a.test.ts: "audits [practise:audit]" carries [practise:audit], which names no practice of core/compliance/practices.ts',
      'rotation: no passing test (no test names it)',
      'audit: no passing test (no test names it)',
    ]);
  });

  it('refuses an exemption that names no practice', () => {
    const t = table([test(`a ${tag('rotation')}`, 'passed'), test(`b ${tag('audit')}`, 'passed')], { ...notBuilt, 'backup-escrrow': 'not built' });
    assert.deepEqual(t.problems, ['the exemption for "backup-escrrow" names no practice']);
  });

  it('keeps a title plain text in its cell: pipes, angle brackets and emphasis escaped', () => {
    const t = table([test(`listens on <dir>/a.sock | b *c* d_e ${tag('rotation')}`, 'passed'), test(`x ${tag('audit')}`, 'passed')]);
    assert.ok(t.markdown.includes('listens on &lt;dir>/a.sock \\| b \\*c\\* d\\_e | passed |'));
  });

  it('exempts only real practices (the reviewed list)', () => {
    assert.deepEqual(complianceTable({ finishedAt: '2026-01-02T00:00:00Z', tests: [] }).problems.filter((p) => p.startsWith('the exemption')), []);
    assert.deepEqual(Object.keys(exemptions).sort(), ['backup-escrow', 'bring-your-own-key']);
  });
});
