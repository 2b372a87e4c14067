// node scripts/code-cache.cjs NAME: writes dist/bundle/NAME.cjs.cache, V8's code cache of the
// bundle as bin/load-bundle.cjs compiles it, headed by the bundle's first line (its hash).
// Run by scripts/bundle.mjs in a plain `node` (no flags: V8 rejects a cache made under other
// flags). The module is evaluated and `--version` and `--help` are run first (output thrown
// away), so the functions of start-up and option parsing are in the cache; nothing touches a
// device (both return before an instance is resolved).
'use strict';
const { readFileSync, writeFileSync, renameSync } = require('node:fs');
const { bundlePath, compileBundle, runBundle } = require('../bin/load-bundle.cjs');

const name = process.argv[2];
const file = bundlePath(name);
const source = readFileSync(file, 'utf8');
const id = source.slice(0, source.indexOf('\n'));
const script = compileBundle(file, source);
const bundle = runBundle(file, script);

async function warmUp() {
  for (const args of [['--version'], ['--help']]) {
    if (name === 'losetup') bundle.losetup({ argv0: 'losetup', args, env: {} });
    if (name === 'mount.loop') await bundle.mountLoop({ argv0: 'mount.loop', args, env: {} });
    if (name === 'instance-destroy') bundle.destroyFastPath(args); // null: left to oclif
  }
}

warmUp().then(() => {
  const tmp = `${file}.cache.tmp`;
  writeFileSync(tmp, Buffer.concat([Buffer.from(`${id}\n`, 'latin1'), script.createCachedData()]));
  renameSync(tmp, `${file}.cache`);
});
