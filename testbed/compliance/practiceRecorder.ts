// A mocha root-hook plugin (`mocha --require dist/testbed/compliance/practiceRecorder.js`): once
// every test has run, it writes each test's full title, state and source file to
// dist/compliance-results.json, which complianceTable.ts turns into docs/compliance.md.
import { writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Context, Suite, Test } from 'mocha';

export type TestState = 'passed' | 'failed' | 'pending' | 'not run';

export interface TestResult {
  /** The titles of the describe blocks and of the test, joined by spaces, as mocha prints it. */
  title: string;
  state: TestState;
  /** The source file, relative to the repository: core/hsm/aesGcm.test.ts. */
  file: string;
}

export interface TestResults {
  finishedAt: string;
  tests: TestResult[];
}

const dist = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const resultsPath = join(dist, 'compliance-results.json');

/** dist/core/hsm/aesGcm.test.js → core/hsm/aesGcm.test.ts */
export function sourceFile(compiled: string): string {
  return relative(dist, compiled).replace(/\.js$/, '.ts');
}

function stateOf(test: Test): TestState {
  if (test.isPending()) return 'pending';
  // A test its suite's failing before-hook kept from running has no state.
  return test.state ?? 'not run';
}

function collect(suite: Suite, into: TestResult[]): TestResult[] {
  for (const test of suite.tests) into.push({ title: test.fullTitle(), state: stateOf(test), file: test.file ? sourceFile(test.file) : '' });
  for (const child of suite.suites) collect(child, into);
  return into;
}

export const mochaHooks = {
  // The root suite's after-all hook runs last, failures or not.
  afterAll(this: Context) {
    let root = this.test?.parent;
    while (root?.parent) root = root.parent;
    if (!root) throw new Error('practiceRecorder: no root suite to read the results from');
    const results: TestResults = { finishedAt: new Date().toISOString(), tests: collect(root, []) };
    writeFileSync(resultsPath, `${JSON.stringify(results, null, 1)}\n`);
  },
};
