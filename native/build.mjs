#!/usr/bin/env node
// Builds native/build/Release/loopfs.node with node-gyp, offline.
//
// Run by `npm install` (the package's "install" script) or directly: `node native/build.mjs`.
// node-gyp downloads node's headers unless told where they are; these machines have no
// internet, so point it at the running node's own headers when its prefix ships them
// (Debian's node: /usr/include/node). This must not depend on anyone's ~/.npmrc.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const nativeDir = dirname(fileURLToPath(import.meta.url));
const nodeBinDir = dirname(process.execPath);
const prefix = dirname(nodeBinDir);

/** node-gyp to run, as [command, ...leading args]. */
function findNodeGyp() {
  // npm sets this for lifecycle scripts: the node-gyp bundled with the npm running us.
  const fromNpm = process.env.npm_config_node_gyp;
  if (fromNpm && existsSync(fromNpm)) return viaNode(fromNpm);
  // npm's bundled copy next to this node (run by hand, outside npm).
  const bundled = join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  if (existsSync(bundled)) return viaNode(bundled);
  // Last resort: whatever `node-gyp` the PATH offers.
  return ['node-gyp'];
}

// A .js entry point runs under this very node, whatever `node` the PATH would pick.
function viaNode(file) {
  return file.endsWith('.js') ? [process.execPath, file] : [file];
}

const [command, ...args] = findNodeGyp();
args.push('rebuild');
// An explicit nodedir (npm_config_nodedir, e.g. from an .npmrc) is the user's choice and
// node-gyp reads it itself; otherwise use the running node's headers when present.
if (!process.env.npm_config_nodedir && existsSync(join(prefix, 'include', 'node', 'node.h'))) {
  args.push(`--nodedir=${prefix}`);
}

console.log(`loopfs: ${[command, ...args].join(' ')} (in ${nativeDir})`);
const result = spawnSync(command, args, {
  cwd: nativeDir,
  stdio: 'inherit',
  // binding.gyp runs `node -p` to find node-addon-api: make it the same node.
  env: { ...process.env, PATH: `${nodeBinDir}${delimiter}${process.env.PATH ?? ''}` },
});

if (result.error) {
  console.error(`loopfs: cannot run node-gyp: ${result.error.message}`);
  process.exit(1);
}
if (result.status !== 0) {
  console.error(`loopfs: native build failed (node-gyp exit ${result.status ?? `signal ${result.signal}`})`);
  process.exit(result.status || 1);
}
