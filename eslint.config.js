// Lint runs in the test command; type-aware rules catch floating promises, which in a
// controller or gRPC server would otherwise surface as silent failures.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

function layer(dir, forbidden) {
  return [
    {
      files: [`${dir}/**/*.ts`],
      ignores: ['**/*.test.ts'],
      rules: {
        'no-restricted-imports': ['error', { patterns: forbidden.map((d) => ({ group: [`**/${d}/**`], message: `${dir}/ must not import ${d}/` })) }],
      },
    },
  ];
}

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'proto/gen/', '**/*.js', '!eslint.config.js'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      'no-console': ['error', { allow: ['error'] }],
    },
  },
  // The layers: core/ is shared by everything above it and imports none of it; the operator and the
  // node side (provider/) import core/ and never each other. Tests may reach the test bed.
  // volume/ (the in-pod `keyward volume` commands) and report/ (the compliance report) likewise
  // import core/ only, as does scanner/ (the read-only etcd scanner).
  ...layer('core', ['operator', 'provider', 'volume', 'report', 'scanner', 'cli', 'e2e', 'testbed', 'bench']),
  ...layer('operator', ['provider', 'volume', 'cli', 'e2e', 'testbed', 'bench']),
  ...layer('provider', ['operator', 'volume', 'cli', 'e2e', 'testbed', 'bench']),
  ...layer('volume', ['operator', 'provider', 'cli', 'e2e', 'testbed', 'bench']),
  ...layer('report', ['operator', 'provider', 'volume', 'cli', 'e2e', 'testbed', 'bench']),
  ...layer('scanner', ['operator', 'provider', 'volume', 'report', 'cli', 'e2e', 'testbed', 'bench']),
  {
    files: ['eslint.config.js'],
    extends: [tseslint.configs.disableTypeChecked],
  },
);
