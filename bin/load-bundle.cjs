// Loads a CommonJS bundle of dist/bundle/ as require() would, plus V8's code cache when the
// build made one for that very bundle (dist/bundle/NAME.cjs.cache, scripts/code-cache.cjs).
// With the cache V8 skips parsing the ~100 KB bundle at every start: bin/losetup starts about
// 4% of `node -e 0` sooner (bench/startup.mjs). Node 20 has no compile cache of its own
// (module.enableCompileCache() is node 22), and a V8 startup snapshot would need a
// --snapshot-blob flag that a #! line cannot pass.
//
// V8 accepts a cache for any source of the same length, so the cache carries the bundle's
// first line (a hash of its contents, written by scripts/bundle.mjs) and is used only when
// that line matches. V8 rejects a cache made by another node version or with other V8 flags
// (--cpu-prof, ...); the bundle is then compiled from source, as without a cache.
'use strict';
const { accessSync, constants, readFileSync } = require('node:fs');
const { basename, dirname, join, resolve } = require('node:path');
const { createRequire } = require('node:module');
const { Script } = require('node:vm');

/** The path of dist/bundle/NAME.cjs. */
function bundlePath(name) {
  return join(__dirname, '..', 'dist', 'bundle', `${name}.cjs`);
}

/** The bundle's source as a CommonJS module function (the wrapper on line 1: line numbers stay the file's). */
function compileBundle(file, source, cachedData) {
  const wrapped = `(function (exports, require, module, __filename, __dirname) { ${source}\n})`;
  return new Script(wrapped, { filename: file, cachedData });
}

/** The cache made for a bundle whose first line is `id`; undefined when absent or made for another. */
function readCache(file, id) {
  let cache;
  try {
    cache = readFileSync(`${file}.cache`);
  } catch {
    return undefined;
  }
  const nl = cache.indexOf(10);
  return nl > 0 && cache.toString('latin1', 0, nl) === id ? cache.subarray(nl + 1) : undefined;
}

/** Runs the compiled module function; returns its exports. */
function runBundle(file, script) {
  const mod = { exports: {}, filename: file, id: file, loaded: false };
  script.runInThisContext().call(mod.exports, mod.exports, createRequire(file), mod, file, dirname(file));
  mod.loaded = true;
  return mod.exports;
}

/** require('../dist/bundle/NAME.cjs'), with its code cache when that cache is the bundle's. */
function loadBundle(name) {
  const file = bundlePath(name);
  const source = readFileSync(file, 'utf8');
  const id = source.slice(0, source.indexOf('\n'));
  return runBundle(file, compileBundle(file, source, readCache(file, id)));
}

/**
 * The script's path exactly as it was passed to execve(2) (what a shell's $0 holds, what glibc
 * prints as argv[0] in getopt messages): node replaces process.argv[1] by its absolute form,
 * so `bin/mount.loop -x` would say "/abs/bin/mount.loop: invalid option". The kernel hands the
 * interpreter the path as given; /proc/self/cmdline still has it. process.argv[1] when that
 * entry is not the script (node run with options before it, no /proc).
 */
function scriptAsInvoked() {
  const resolved = process.argv[1];
  try {
    const raw = readFileSync('/proc/self/cmdline', 'utf8').split('\0')[1 + process.execArgv.length];
    return raw !== undefined && resolve(raw) === resolved ? raw : resolved;
  } catch {
    return resolved;
  }
}

/**
 * The argv[0] a C program in our place would most likely have had, for getopt's messages
 * ("losetup: invalid option -- 'x'"). A shell or execvp(3) that found the command in PATH
 * passes the bare name as argv[0] and the full path to execve(2); for a #! script the kernel
 * hands the interpreter only the path, and argv[0] is lost. So an absolute path that is
 * exactly what a PATH search for its own name finds is taken as typed by name, as scripts
 * call losetup; a path typed out in full that PATH would also find prints the bare name
 * where util-linux prints the path (the rarer case). Any other path: as invoked.
 */
function commandAsInvoked() {
  const raw = scriptAsInvoked();
  if (!raw.startsWith('/')) return raw;
  const name = basename(raw);
  for (const dir of (process.env.PATH || '').split(':')) {
    if (!dir.startsWith('/')) continue; // a relative entry is not where the shell found an absolute path
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
    } catch {
      continue;
    }
    return candidate === raw ? name : raw;
  }
  return raw;
}

module.exports = { bundlePath, compileBundle, readCache, runBundle, loadBundle, scriptAsInvoked, commandAsInvoked };
