#!/usr/bin/env node
// What `loopfs gc` costs to give back devices freed behind an instance's back (a stock
// `losetup -d` in an activated view, autoclear at the umount of a `mount -o loop`): the pool
// rule releases every idle device above the pool size. Prints medians and ratios; not a
// test: nothing here asserts. Needs root, the loop driver and a build (`npm run build`).
//
//   node bench/gc.mjs [devices] [runs]        (default 200 3)
//
// Each run: an instance (pool 0) gets `devices` devices attached in-process
// (dist/instance/local-instance.js), util-linux detaches them on the host (`losetup -d`, 64
// per process, as a script would), then `loopfs gc` is timed, node's start-up included.
// Beside it, in the same run: `loopfs gc` with nothing to do (start-up and the look at every
// device), and LOOP_CTL_REMOVE alone of as many fresh indexes (LoopControl.removeMany, what
// the release waits for in the kernel).
//
// Machine-wide loopfs records go to a private LOOPFS_RUNTIME_DIR. In `finally` (also after
// Ctrl-C): the instance is destroyed (--force) and any device still bound to this run's file
// is detached with util-linux, one by one by name, never with -D.
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { kernelRemoveMs } from './lib/kernel-remove.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const DEVICES = Number(process.argv[2] ?? 200);
const RUNS = Number(process.argv[3] ?? 3);
const UL = '/usr/sbin/losetup';
const LOOPFS = join(root, 'bin/loopfs');

if (process.getuid?.() !== 0 || !existsSync('/dev/loop-control')) {
  console.error('bench/gc: needs root and /dev/loop-control');
  process.exit(1);
}
if (!existsSync(join(root, 'dist/instance/local-instance.js'))) {
  console.error('bench/gc: no build: run `npm run build`');
  process.exit(1);
}

const tmp = mkdtempSync(join(tmpdir(), 'loopfs-bench-gc-'));
process.env.LOOPFS_RUNTIME_DIR = join(tmp, 'run');
delete process.env.LOOPFS_INSTANCE;
const { LocalInstance } = await import(pathToFileURL(join(root, 'dist/instance/local-instance.js')).href);
const { LoopControl } = await import(pathToFileURL(join(root, 'dist/kernel/loop-control.js')).href);

const file = join(tmp, 'back.img');
const fd = openSync(file, 'w');
ftruncateSync(fd, 1 << 20);
closeSync(fd);
const dir = join(tmp, 'inst');

function run(argv) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  return { rc: r.status, out: r.stdout ?? '', err: r.stderr ?? '', ms: Number(process.hrtime.bigint() - t0) / 1e6 };
}

function must(argv) {
  const r = run(argv);
  if (r.rc !== 0) throw new Error(`${argv.join(' ')}: ${r.err.trim()}`);
  return r;
}

/** Host devices bound to this run's file, by name. */
function boundToOurs() {
  const names = [];
  for (const n of readdirSync('/sys/block')) {
    if (!/^loop\d+$/.test(n)) continue;
    try {
      if (readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').trim() === file) names.push(`/dev/${n}`);
    } catch {
      /* unbound */
    }
  }
  return names;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const gcMs = [];
const idleMs = [];
const kernelMs = [];
let released = 0;
try {
  for (let r = 0; r < RUNS; r++) {
    must([LOOPFS, 'instance', 'create', dir]);
    const inst = LocalInstance.open(dir, process.env);
    try {
      for (let i = 0; i < DEVICES; i++) {
        const a = inst.allocate({ file, flags: 0 });
        a.holder?.close();
        a.device.close();
      }
    } finally {
      inst.close();
    }
    const devs = boundToOurs();
    for (let i = 0; i < devs.length; i += 64) must([UL, '-d', ...devs.slice(i, i + 64)]);
    const g = must([LOOPFS, 'gc']);
    gcMs.push(g.ms);
    released = (g.out.match(/released idle device above the pool size/g) ?? []).length;
    idleMs.push(must([LOOPFS, 'gc']).ms);
    must([LOOPFS, 'instance', 'destroy', dir]);
    kernelMs.push(kernelRemoveMs(LoopControl, DEVICES));
    process.stderr.write(`[gc] run ${r + 1}/${RUNS}: gc ${g.ms.toFixed(0)} ms for ${released} devices\n`);
  }
  const gc = median(gcMs);
  const idle = median(idleMs);
  const kernel = median(kernelMs);
  console.log(`\nloopfs gc releasing ${DEVICES} devices freed by util-linux -d (pool 0), median of ${RUNS} (node ${process.version})`);
  const rows = [
    ['loopfs gc, releasing', gc, gc / DEVICES],
    ['loopfs gc, nothing to do', idle, idle / DEVICES],
    ['gc release alone (difference)', gc - idle, (gc - idle) / DEVICES],
    ['kernel: LOOP_CTL_REMOVE (removeMany)', kernel * DEVICES, kernel],
  ];
  console.log(`${'figure'.padEnd(38)}${'ms'.padStart(10)}${'ms/device'.padStart(12)}${'x kernel'.padStart(10)}`);
  for (const [name, ms, per] of rows) console.log(`${name.padEnd(38)}${ms.toFixed(1).padStart(10)}${per.toFixed(3).padStart(12)}${(per / kernel).toFixed(2).padStart(10)}`);
  console.log(`(last run: gc reported ${released} device(s) released)`);
} finally {
  if (existsSync(join(dir, '.loopfs'))) run([LOOPFS, 'instance', 'destroy', dir, '--force']);
  for (const d of boundToOurs()) run([UL, '-d', d]);
  run([LOOPFS, 'gc']);
  rmSync(tmp, { recursive: true, force: true });
}
