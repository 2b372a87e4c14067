#!/usr/bin/env node
// Bundles the hot paths (losetup, mount.loop; and the OCI hook and the node half of
// bin/loopfs-runtime, which run on every opted-in container's start-up path: each entry
// with everything it imports) into one ES module each, dist/bundle/*.mjs. Scripts call losetup in loops; loading
// one file instead of ~20 modules takes start-up from ~1.2x to ~1.0x `node -e 0`
// (bench/startup.mjs). The bundle sits two levels below the package root, like every
// dist/<dir>/<file>.js, so relative paths to native/ stay valid.
import { build } from 'esbuild';

await build({
  entryPoints: {
    losetup: 'dist/compat/losetup/main.js',
    'mount.loop': 'dist/mount/mount-loop.js',
    'oci-hook': 'dist/oci/hook-main.js',
    'runtime-main': 'dist/oci/runtime-main.js',
  },
  outdir: 'dist/bundle',
  outExtension: { '.js': '.mjs' },
  bundle: true,
  // our own modules only: npm packages (execa) load from node_modules as they are
  packages: 'external',
  platform: 'node',
  format: 'esm',
  target: 'node20',
  // whitespace and syntax only (names kept for stack traces): less for V8 to parse at start-up
  minifyWhitespace: true,
  minifySyntax: true,
  logLevel: 'warning',
});
