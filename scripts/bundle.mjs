#!/usr/bin/env node
// Bundles the hot paths (losetup, mount.loop; and the OCI hook and the node half of
// bin/loopfs-runtime, which run on every opted-in container's start-up path: each entry
// with everything it imports) into one ES module each, dist/bundle/*.mjs. Scripts call losetup in loops; loading
// one file instead of ~20 modules takes start-up from ~1.2x to ~1.0x `node -e 0`
// (bench/startup.mjs). The bundle sits two levels below the package root, like every
// dist/<dir>/<file>.js, so relative paths to native/ stay valid.
//
// bin/losetup and bin/mount.loop load CommonJS copies, dist/bundle/losetup.cjs and
// mount.loop.cjs: node 20 pays for its ES module loader on every start (an empty .mjs costs
// ~10% more than an empty .cjs), and an ES `import ... from 'node:fs'` builds a facade that
// reads every export of fs, loading node's streams on the way (~5 ms). bin/package.json makes
// the files of bin/ CommonJS. bin/load-bundle.cjs loads them with V8's code cache, made here
// (scripts/code-cache.cjs). The ES bundles stay for the other entry points (bin/mount-loop.mjs,
// the OCI hook and runtime).
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { build } from 'esbuild';

const common = {
  bundle: true,
  // our own modules only: npm packages (execa) load from node_modules as they are
  packages: 'external',
  platform: 'node',
  target: 'node20',
  // whitespace and syntax only (names kept for stack traces): less for V8 to parse at start-up
  minifyWhitespace: true,
  minifySyntax: true,
  logLevel: 'warning',
};

await build({
  ...common,
  entryPoints: {
    losetup: 'dist/compat/losetup/main.js',
    'mount.loop': 'dist/mount/mount-loop.js',
    'oci-hook': 'dist/oci/hook-main.js',
    'runtime-main': 'dist/oci/runtime-main.js',
  },
  outdir: 'dist/bundle',
  outExtension: { '.js': '.mjs' },
  format: 'esm',
});

// CommonJS for bin/losetup, bin/mount.loop and bin/loopfs's destroy; first line: a hash of the
// rest, which names the bundle for its code cache (bin/load-bundle.cjs)
const CJS_ENTRIES = {
  losetup: 'dist/compat/losetup/main.js',
  'mount.loop': 'dist/mount/mount-loop.js',
  // bin/loopfs's `instance destroy DIR...` without oclif (src/cli/destroy-main.ts)
  'instance-destroy': 'dist/cli/destroy-main.js',
};
const cjs = await build({
  ...common,
  entryPoints: CJS_ENTRIES,
  outdir: 'dist/bundle',
  outExtension: { '.js': '.cjs' },
  format: 'cjs',
  write: false,
  // the modules find native/ (and the package root) from import.meta.url; the banner keeps
  // "use strict" the first statement
  define: { 'import.meta.url': '__loopfsModuleUrl' },
  banner: { js: '"use strict";var __loopfsModuleUrl=require("node:url").pathToFileURL(__filename).href;' },
});
for (const f of cjs.outputFiles) {
  const hash = createHash('sha256').update(f.contents).digest('hex').slice(0, 32);
  writeFileSync(f.path, `// loopfs bundle ${hash}\n${f.text}`);
}
// V8's code cache of each, made by a plain node (the flags must be those of the bin/ scripts' node)
for (const name of Object.keys(CJS_ENTRIES)) {
  rmSync(`dist/bundle/${name}.cjs.cache`, { force: true });
  const made = spawnSync(process.execPath, ['scripts/code-cache.cjs', name], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (made.status !== 0) console.warn(`scripts/bundle.mjs: no code cache for ${name}.cjs (it still runs, from source)`);
}
