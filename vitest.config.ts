import { defineConfig } from 'vitest/config';

// Loop devices are one global pool on the host instance: a test that prints
// `losetup -f` output must not race another test file for the lowest free device,
// so test files run one after another (tests inside a file may still be concurrent).
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
