#!/usr/bin/env node
// Bundles the losetup hot path (dist/compat/losetup/main.js and everything it imports)
// into one ES module, dist/bundle/losetup.mjs. Scripts call losetup in loops; loading
// one file instead of ~20 modules takes start-up from ~1.2x to ~1.0x `node -e 0`
// (bench/startup.mjs). The bundle sits two levels below the package root, like every
// dist/<dir>/<file>.js, so relative paths to native/ stay valid.
import { build } from 'esbuild';

await build({
  entryPoints: { losetup: 'dist/compat/losetup/main.js' },
  outdir: 'dist/bundle',
  outExtension: { '.js': '.mjs' },
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  logLevel: 'warning',
});
