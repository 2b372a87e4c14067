// `npm run lint` (run by .ci/run before the tests): typescript-eslint's recommended rules, and
// the layer rule (lint/layers.mjs) that keeps the README's "Layers" picture true.
import tseslint from 'typescript-eslint';
import catches from './lint/catches.mjs';
import layers from './lint/layers.mjs';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'native/build/**', 'oclif.manifest.json'] },
  ...tseslint.configs.recommended,
  {
    files: ['src/**/*.ts'],
    plugins: { layers, catches },
    rules: { 'layers/imports': 'error', 'catches/says-why': 'error' },
  },
  {
    // execa costs ~90 ms of start-up (more than node itself here): the hot paths (losetup,
    // mount.loop, the OCI hook and runtime, the daemons' per-request work) spawn with
    // node:child_process or native spawnVm; execa is for doctor and install
    files: ['src/{kernel,protocol,instance,compat,mount,mounting,broker,intercept,oci}/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { paths: [{ name: 'execa', message: 'execa is kept off the hot paths (its start-up cost): use it in src/doctor, src/install or src/commands' }] }],
    },
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
