// `npm run lint` (run by .ci/run before the tests): typescript-eslint's recommended rules, and
// the layer rule (lint/layers.mjs) that keeps the README's "Layers" picture true.
import tseslint from 'typescript-eslint';
import layers from './lint/layers.mjs';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'native/build/**', 'oclif.manifest.json'] },
  ...tseslint.configs.recommended,
  {
    files: ['src/**/*.ts'],
    plugins: { layers },
    rules: { 'layers/imports': 'error' },
  },
  {
    // CommonJS fixtures and entry points (a client run by a test, bin/*.cjs)
    files: ['**/*.cjs'],
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
  {
    // tests walk JSON documents (OCI configs, seccomp profiles) field by field
    files: ['test/**/*.ts'],
    rules: { '@typescript-eslint/no-explicit-any': 'off' },
  },
  {
    rules: {
      // `_name` says "deliberately unused" (a destructured field left out, a callback's argument)
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_' }],
    },
  },
);
