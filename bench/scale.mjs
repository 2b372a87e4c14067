#!/usr/bin/env node
// How loopfs's costs grow with the number of devices (issue 14, "flat cost"), side by side
// with util-linux on the host in the same run. Prints tables of medians and ratios. Not a
// test: nothing here asserts. Needs root, the loop driver and a build (`npm run build`).
//
//   node bench/scale.mjs [levels] [runs]        (default 10,100,1000,10000 5)
//
// For each level N (devices on the machine held by instances: one instance up to 1000,
// 100 instances of N/100 above that):
//   attach   N devices attached in-process (dist/instance/local-instance.js), ms/device of
//            the first and the last tenth, beside ~100 kernel-only attaches spread over the
//            fill (LOOP_CTL_ADD + LOOP_CONFIGURE of a fresh index): the kernel's share of any
//            growth; then `runs` x `bin/losetup --instance DIR -f --show
//            FILE` into an instance holding N (or N/100) devices, against util-linux's
//            `-f --show` on the host with the same N devices present (each a new process).
//   list     `-l` and `-a`: ours in the (first) instance and on the host, util-linux on the
//            host (which lists every bound device, N of them), medians of `runs`, interleaved.
//   destroy  `loopfs instance destroy` of every instance, per device: one process each (of
//            half the instances when there are several) and the other half in one call
//            (`destroy DIR...`), against util-linux `losetup -d` of min(N, 500) host devices
//            (64 per process, as a script would), per device.
//   -D       `losetup --instance DIR -D` of a further instance holding min(N, 500) bound
//            devices (one process: detach, then the pool's settling in one batch), per device,
//            against the same util-linux figure.
//   kernel   LOOP_CTL_REMOVE alone (removeMany, as destroy and -D call it) of min(N, 500)
//            fresh unbound indexes this bench makes: the kernel's share of giving devices back,
//            which util-linux -d never pays (it leaves the device in place).
//   bound    with BENCH_STRACE=1, that -D and the destroy of the first instance run again
//            under `strace -f -c` (one more fill each): the syscalls that take the time, so a
//            missed target says what bounds it (LOOP_CTL_REMOVE's wait in the kernel, fsync).
//
// Limits: the loop driver takes minors up to 2^20 (part_shift 0), devtmpfs has no limit of
// its own; a level whose devices cannot be created stops with the kernel's error and says so.
// Machine-wide loopfs records go to a private LOOPFS_RUNTIME_DIR. Every instance is destroyed
// and every device bound to one of this run's files is detached in `finally` (also after
// Ctrl-C / SIGTERM), with util-linux, one by one by name, never with -D.
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { kernelRemoveMs } from './lib/kernel-remove.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const LEVELS = (process.argv[2] ?? '10,100,1000,10000').split(',').map(Number);
const RUNS = Number(process.argv[3] ?? 5);
const SPLIT_ABOVE = 1000; // above this, N devices are spread over 100 instances
const UL_DETACH_SAMPLE = 500;

const UL = '/usr/sbin/losetup';
const OURS = join(root, 'bin/losetup');
const LOOPFS = join(root, 'bin/loopfs');

function preflight() {
  if (process.getuid?.() !== 0) return 'needs root';
  if (!existsSync('/dev/loop-control')) return 'no /dev/loop-control (loop driver not loaded?)';
  if (!existsSync(UL)) return `${UL} not installed`;
  if (!existsSync(join(root, 'dist/bundle/losetup.mjs'))) return 'not built: run `npm run build` first';
  if (!LEVELS.every((n) => Number.isInteger(n) && n >= 1) || !Number.isInteger(RUNS) || RUNS < 1) return 'usage: node bench/scale.mjs [10,100,1000,10000] [runs]';
  if (LEVELS.some((n) => n > SPLIT_ABOVE && n % 100 !== 0)) return 'levels above 1000 must be multiples of 100 (100 instances)';
  return undefined;
}
const why = preflight();
if (why) {
  console.error(`bench/scale: ${why}`);
  process.exit(1);
}

const tmp = mkdtempSync(join(tmpdir(), 'loopfs-scale-'));
// the machine-wide records live in /run, a tmpfs, in production: a private directory on a
// tmpfs too when there is one (/dev/shm), else beside the instances
const shm = (() => {
  try {
    return readFileSync('/proc/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === '/dev/shm' && l.split(' ')[2] === 'tmpfs');
  } catch {
    return false;
  }
})();
const runtimeDir = process.env.LOOPFS_RUNTIME_DIR || (shm ? mkdtempSync('/dev/shm/loopfs-scale-run-') : join(tmp, 'run'));
process.env.LOOPFS_RUNTIME_DIR = runtimeDir;
delete process.env.LOOPFS_INSTANCE;
const env = { ...process.env, LANG: 'C.UTF-8' };
const { LocalInstance } = await import(pathToFileURL(join(root, 'dist/instance/local-instance.js')).href);
const { LoopControl } = await import(pathToFileURL(join(root, 'dist/kernel/loop-control.js')).href);
const { LoopDevice } = await import(pathToFileURL(join(root, 'dist/kernel/loop-device.js')).href);

// ---------------------------------------------------------------- interruption

class Interrupted extends Error {}
let interrupted = false;
const onSignal = (sig) => {
  interrupted = true;
  console.error(`\n${sig}: stopping, cleaning up`);
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);
const checkpoint = async () => {
  await new Promise((r) => setImmediate(r));
  if (interrupted) throw new Interrupted('interrupted');
};

// ---------------------------------------------------------------- helpers

const instances = new Set();
const progress = (msg) => process.stderr.write(`[scale] ${msg}\n`);

function makeFile(name, size = 1 << 20) {
  const f = join(tmp, name);
  const fd = openSync(f, 'w');
  ftruncateSync(fd, size);
  closeSync(fd);
  return f;
}

function run(argv, { detached = false } = {}) {
  const r = spawnSync(argv[0], argv.slice(1), { env, detached, encoding: 'utf8', maxBuffer: 256 << 20, stdio: ['ignore', 'pipe', 'pipe'] });
  return { rc: r.status, out: r.stdout ?? '', err: r.stderr ?? '' };
}

function timed(argv) {
  const t0 = process.hrtime.bigint();
  const r = run(argv);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.rc !== 0) throw new Error(`${argv.join(' ')}: exit ${r.rc}: ${r.err.trim()}`);
  return { ms, out: r.out };
}

function must(argv) {
  const r = run(argv);
  if (r.rc !== 0) throw new Error(`${argv.join(' ')}: exit ${r.rc}: ${r.err.trim()}`);
  return r.out;
}

function createInstance(name) {
  const dir = join(tmp, name);
  instances.add(dir);
  must([LOOPFS, 'instance', 'create', dir]);
  return dir;
}

function destroyInstance(dir) {
  for (let attempt = 1; attempt <= 5; attempt++) {
    if (!existsSync(join(dir, '.loopfs'))) return instances.delete(dir);
    let r = run([LOOPFS, 'instance', 'destroy', dir], { detached: true });
    if (r.rc !== 0) r = run([LOOPFS, 'instance', 'destroy', dir, '--force'], { detached: true });
    if (r.rc === 0) return instances.delete(dir);
    console.error(`cleanup: instance destroy ${dir} (attempt ${attempt}): ${r.err.trim().split('\n')[0]}`);
    spawnSync('sleep', ['3']);
  }
  return false;
}

/** Bound devices whose backing file is one of this run's: [{ name, back }]. */
function ourBoundDevices() {
  const result = [];
  for (const name of readdirSync('/sys/block')) {
    if (!/^loop\d+$/.test(name)) continue;
    let back;
    try {
      back = readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').replace(/\n$/, '');
    } catch {
      continue;
    }
    if (back.startsWith(`${tmp}/`)) result.push({ name, back });
  }
  return result;
}

/** util-linux -d of host devices still bound to our files, 64 per process; returns ms. */
function detachOurs(devs) {
  const mine = new Set(ourBoundDevices().map((d) => `/dev/${d.name}`));
  const todo = [...new Set(devs)].filter((d) => mine.has(d));
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < todo.length; i += 64) {
    const r = run([UL, '-d', ...todo.slice(i, i + 64)], { detached: true });
    if (r.rc !== 0) console.error(`cleanup: ${UL} -d: ${r.err.trim()}`);
  }
  return { ms: Number(process.hrtime.bigint() - t0) / 1e6, count: todo.length };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const fmt = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');

function table(title, header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (r) => r.map((v, i) => (i === 0 ? String(v).padEnd(widths[i]) : String(v).padStart(widths[i]))).join('  ');
  console.log(`\n${title}`);
  console.log(line(header));
  for (const r of rows) console.log(line(r));
}

// ---------------------------------------------------------------- one level

/**
 * The kernel's own share of one attach at this moment: LOOP_CTL_ADD of a fresh index above
 * every device, open, LOOP_CONFIGURE, close (what an attach into an instance asks of the
 * kernel, and nothing of ours); the index is cleared and removed again, untimed. ms.
 */
function kernelAttachMs(file) {
  const ctl = LoopControl.open();
  const fd = openSync(file, 'r+');
  let index = Math.max(-1, ...readdirSync('/sys/block').filter((x) => /^loop\d+$/.test(x)).map((x) => Number(x.slice(4)))) + 1;
  let dev = null;
  let made = false;
  try {
    const t0 = process.hrtime.bigint();
    for (;;) {
      try {
        ctl.add(index);
        made = true;
        break;
      } catch (e) {
        if (e?.code !== 'EEXIST') throw e; // taken meanwhile: the next one
        index++;
      }
    }
    dev = new LoopDevice(`/dev/loop${index}`);
    dev.configure({ backingFd: fd });
    dev.close();
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    dev.clear();
    return ms;
  } finally {
    dev?.close();
    closeSync(fd);
    // only an index this probe made: a failed LOOP_CTL_ADD made none
    if (made) LoopControl.removeIndex(index);
    ctl.close();
  }
}

/**
 * Attach `count` devices into `dir` in-process; returns the ms of each attach. `probeEvery`:
 * every that many attaches, one kernelAttachMs() too (returned as `kernel`, in order).
 */
async function fill(dir, count, file, probeEvery = 0) {
  const inst = LocalInstance.open(dir, process.env);
  const each = [];
  const kernel = [];
  let failures = 0;
  try {
    for (let i = 0; i < count; i++) {
      if (probeEvery > 0 && i % probeEvery === 0) kernel.push(kernelAttachMs(file));
      const t0 = process.hrtime.bigint();
      try {
        const a = inst.allocate({ file, flags: 0 });
        a.holder?.close();
        a.device.close();
      } catch (e) {
        // the machine is shared: another tool may win a device; give up when it keeps failing
        if (++failures > 50) throw new Error(`too many allocation failures; last: ${e?.message ?? e}`);
        i--;
        continue;
      }
      each.push(Number(process.hrtime.bigint() - t0) / 1e6);
      if (i % 25 === 24) await checkpoint();
    }
  } finally {
    inst.close();
  }
  return { each, failures, kernel };
}

/** Minors DIR's instance records (.loopfs/devices/loopN). */
function stateMinorsOf(dir) {
  try {
    return readdirSync(join(dir, '.loopfs/devices')).filter((x) => /^loop\d+$/.test(x));
  } catch {
    return [];
  }
}

/**
 * `strace -f -c` of -D and of destroy, each on a fresh instance of `count` bound devices:
 * the syscalls by time (wall time of the calls; parallel removals overlap, so the sum can
 * exceed the elapsed time). Returns rows [what, syscall, calls, seconds, us/call].
 */
async function straceFigures(n, count, file) {
  const rows = [];
  for (const what of ['-D', 'destroy']) {
    const dir = createInstance(`i${n}-strace-${what === '-D' ? 'D' : 'destroy'}`);
    await fill(dir, count, file);
    const out = join(tmp, `strace-${n}-${what}.txt`);
    const argv = what === '-D' ? [OURS, '--instance', dir, '-D'] : [LOOPFS, 'instance', 'destroy', dir];
    const t0 = process.hrtime.bigint();
    const r = run(['strace', '-f', '-c', '-w', '-o', out, ...argv]);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    if (r.rc !== 0) throw new Error(`strace ${argv.join(' ')}: exit ${r.rc}: ${r.err.trim()}`);
    if (what === '-D') destroyInstance(dir);
    else instances.delete(dir);
    // "% time seconds usecs/call calls errors syscall", sorted by time
    const lines = readFileSync(out, 'utf8').split('\n').filter((l) => /^\s*\d/.test(l));
    for (const l of lines.slice(0, 5)) {
      const f = l.trim().split(/\s+/);
      rows.push([`${what} (${count} devices, ${fmt(ms / count, 2)} ms/device under strace)`, f[f.length - 1], f[3], f[1], f[2]]);
    }
  }
  return rows;
}

async function level(n) {
  const split = n > SPLIT_ABOVE;
  const count = split ? 100 : 1;
  const per = n / count;
  const file = makeFile(`img-${n}`);
  const dirs = [];
  for (let k = 0; k < count; k++) dirs.push(createInstance(`i${n}-${k}`));
  progress(`level ${n}: attaching ${n} devices into ${count} instance(s) of ${per} (in-process)`);
  const each = [];
  const kernel = [];
  let fillFailures = 0;
  // ~100 kernel-only attaches spread over the fill: how much of the growth is the kernel's
  const probeEvery = Math.max(1, Math.floor(n / 100));
  const t0 = process.hrtime.bigint();
  for (const [k, dir] of dirs.entries()) {
    const r = await fill(dir, per, file, probeEvery);
    each.push(...r.each);
    kernel.push(...r.kernel);
    fillFailures += r.failures;
    if (split && k % 10 === 9) progress(`  ${(k + 1) * per}/${n} attached`);
  }
  const fillS = Number(process.hrtime.bigint() - t0) / 1e9;
  const tenth = Math.max(1, Math.floor(each.length / 10));
  // attach cost at the start and at the end of the fill (split: per instance, so the
  // instance's size runs 0..per each time, while the machine's count keeps growing)
  const first = median(each.slice(0, tenth));
  const last = median(each.slice(-tenth));
  const kTenth = Math.max(1, Math.floor(kernel.length / 10));
  const kernelFirst = median(kernel.slice(0, kTenth));
  const kernelLast = median(kernel.slice(-kTenth));

  // CLI attaches at this size, interleaved with util-linux's
  progress(`level ${n}: ${RUNS} x -f --show, ours (instance) and util-linux (host)`);
  const ours = [];
  const ul = [];
  const ulDevs = [];
  for (let i = 0; i < RUNS; i++) {
    ours.push(timed([OURS, '--instance', dirs[0], '-f', '--show', file]).ms);
    const u = timed([UL, '-f', '--show', file]);
    ul.push(u.ms);
    ulDevs.push(u.out.trim());
    await checkpoint();
  }
  // host devices for util-linux's detach (those above plus more, up to the sample size)
  const sample = Math.min(n, UL_DETACH_SAMPLE);
  progress(`level ${n}: ${sample} host devices for util-linux -d`);
  while (ulDevs.length < sample) {
    ulDevs.push(must([UL, '-f', '--show', file]).trim());
    if (ulDevs.length % 50 === 0) await checkpoint();
  }

  progress(`level ${n}: listing, ${RUNS} runs of each command, interleaved`);
  const commands = [
    ['util-linux -l, host', [UL, '-l']],
    ['ours -l, instance', [OURS, '--instance', dirs[0], '-l']],
    ['ours -l, host', [OURS, '-l']],
    ['util-linux -a, host', [UL, '-a']],
    ['ours -a, instance', [OURS, '--instance', dirs[0], '-a']],
    ['ours -a, host', [OURS, '-a']],
  ];
  const samples = new Map(commands.map(([name]) => [name, []]));
  const listed = new Map();
  for (let i = 0; i < RUNS; i++) {
    for (const [name, argv] of commands) {
      const r = timed(argv);
      samples.get(name).push(r.ms);
      listed.set(name, r.out.split('\n').filter((l) => /loop\d+/.test(l)).length);
      await checkpoint();
    }
  }
  const list = Object.fromEntries([...samples].map(([k, v]) => [k, median(v)]));

  progress(`level ${n}: util-linux -d of ${ulDevs.length} host devices`);
  const uld = detachOurs(ulDevs);

  // -D: one process detaching every device of an instance
  progress(`level ${n}: losetup --instance DIR -D of ${sample} devices`);
  const dDir = createInstance(`i${n}-D`);
  const dFill = await fill(dDir, sample, file);
  fillFailures += dFill.failures;
  const dAll = timed([OURS, '--instance', dDir, '-D']);
  const dLeft = stateMinorsOf(dDir).length;
  destroyInstance(dDir);
  progress(`level ${n}: kernel bound, LOOP_CTL_REMOVE of ${sample} fresh indexes (removeMany)`);
  const removeBound = kernelRemoveMs(LoopControl, sample);
  let straced = null;
  if (process.env.BENCH_STRACE === '1') straced = await straceFigures(n, sample, file);
  // one process per instance (the first half, or the only one), then the rest in one call
  const single = dirs.length > 1 ? dirs.slice(0, Math.ceil(dirs.length / 2)) : dirs;
  const batch = dirs.slice(single.length);
  progress(`level ${n}: destroying ${single.length} instance(s), one process each`);
  const t1 = process.hrtime.bigint();
  for (const dir of single) destroyInstance(dir);
  const destroyMs = Number(process.hrtime.bigint() - t1) / 1e6;
  const destroyed = single.length * per + RUNS; // the CLI attaches went into the first instance
  let batchMs = NaN;
  if (batch.length > 0) {
    progress(`level ${n}: destroying ${batch.length} instances in one call`);
    const t2 = process.hrtime.bigint();
    const r = run([LOOPFS, 'instance', 'destroy', ...batch], { detached: true });
    batchMs = Number(process.hrtime.bigint() - t2) / 1e6;
    if (r.rc !== 0) {
      console.error(`instance destroy of ${batch.length} DIRs: ${r.err.trim().split('\n')[0]}`);
      batchMs = NaN;
    }
    for (const dir of batch) destroyInstance(dir); // only those the call left
  }
  return {
    n,
    count,
    per,
    fillS,
    fillFailures,
    first,
    last,
    kernelFirst,
    kernelLast,
    ours: median(ours),
    ul: median(ul),
    list,
    listed,
    ulDetachMs: uld.ms / Math.max(1, uld.count),
    ulDetached: uld.count,
    detachAllPerDevice: dAll.ms / sample,
    removeBound,
    detachAllCount: sample,
    detachAllLeft: dLeft,
    straced,
    destroyMs,
    destroyPerDevice: destroyMs / destroyed,
    batchInstances: batch.length,
    batchPerDevice: batchMs / (batch.length * per),
  };
}

// ---------------------------------------------------------------- main

async function cleanup() {
  for (const dir of [...instances]) destroyInstance(dir);
  const left = ourBoundDevices();
  if (left.length) {
    progress(`cleanup: detaching ${left.length} leftover device(s)`);
    detachOurs(left.map((d) => `/dev/${d.name}`));
  }
  const still = ourBoundDevices();
  if (still.length || instances.size) {
    console.error(`cleanup incomplete: ${still.map((d) => d.name).join(' ')} ${[...instances].join(' ')}; keeping ${tmp}`);
    process.exitCode = 1;
  } else {
    rmSync(tmp, { recursive: true, force: true });
    if (runtimeDir.startsWith('/dev/shm/loopfs-scale-run-')) rmSync(runtimeDir, { recursive: true, force: true });
  }
}

const nodeStart = median(Array.from({ length: 5 }, () => timed([process.execPath, '-e', '0']).ms));
console.log(`scale, node ${process.version}, ${readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim()}, ${(await import('node:os')).cpus().length} CPUs; node -e 0: ${fmt(nodeStart)} ms; instances in ${tmp}, claims in ${runtimeDir}`);
const results = [];
let stopped = null;
try {
  for (const n of LEVELS) {
    try {
      results.push(await level(n));
    } catch (e) {
      if (e instanceof Interrupted) throw e;
      // a limit of the kernel or /dev (ENOSPC, ENOMEM from LOOP_CTL_ADD, ...): say which
      stopped = `level ${n} stopped: ${e?.message ?? e}`;
      console.log(`\n${stopped}`);
      break;
    }
    // free this level's devices before the next one (cleanup does it again at the end)
    for (const dir of [...instances]) destroyInstance(dir);
  }
} catch (e) {
  if (e instanceof Interrupted) process.exitCode = 130;
  else throw e;
} finally {
  try {
    if (results.length) {
      const base = results[0];
      const shape = (r) => (r.count === 1 ? `1 x ${r.n}` : `${r.count} x ${r.n / r.count}`);
      table(
        'attach (ms per device; in-process: first and last tenth of the fill, target last/first <= 1.20 and <= 2x util-linux; CLI: median of -f --show, a new process each, node start-up included)',
        ['devices', 'instances', 'in-proc first', 'in-proc last', 'last/first', 'last x UL', 'ours CLI', 'util-linux', 'x util-linux', 'CLI vs level 1'],
        results.map((r) => [
          String(r.n),
          shape(r),
          fmt(r.first, 2),
          fmt(r.last, 2),
          fmt(r.last / r.first, 2),
          fmt(r.last / r.ul, 2),
          fmt(r.ours, 1),
          fmt(r.ul, 1),
          fmt(r.ours / r.ul, 2),
          fmt(r.ours / base.ours, 2),
        ]),
      );
      table(
        'attach growth split (in-process, median ms of the first and last tenth): the kernel alone (LOOP_CTL_ADD of a fresh index + LOOP_CONFIGURE, ~100 probes spread over the fill) against the whole attach; ours = whole - kernel',
        ['devices', 'whole first', 'whole last', 'x', 'kernel first', 'kernel last', 'x', 'ours first', 'ours last', 'x'],
        results.map((r) => [
          String(r.n),
          fmt(r.first, 3),
          fmt(r.last, 3),
          fmt(r.last / r.first, 2),
          fmt(r.kernelFirst, 3),
          fmt(r.kernelLast, 3),
          fmt(r.kernelLast / r.kernelFirst, 2),
          fmt(r.first - r.kernelFirst, 3),
          fmt(r.last - r.kernelLast, 3),
          fmt((r.last - r.kernelLast) / (r.first - r.kernelFirst), 2),
        ]),
      );
      table(
        `listing (median ms of ${RUNS}; util-linux lists every bound device on the host, ours -l/-a in the instance lists its own)`,
        ['devices', 'UL -l', 'ours -l inst', 'x', 'ours -l host', 'x', 'UL -a', 'ours -a inst', 'x', 'ours -a host', 'x'],
        results.map((r) => {
          const l = r.list;
          return [
            String(r.n),
            fmt(l['util-linux -l, host']),
            fmt(l['ours -l, instance']),
            fmt(l['ours -l, instance'] / l['util-linux -l, host'], 2),
            fmt(l['ours -l, host']),
            fmt(l['ours -l, host'] / l['util-linux -l, host'], 2),
            fmt(l['util-linux -a, host']),
            fmt(l['ours -a, instance']),
            fmt(l['ours -a, instance'] / l['util-linux -a, host'], 2),
            fmt(l['ours -a, host']),
            fmt(l['ours -a, host'] / l['util-linux -a, host'], 2),
          ];
        }),
      );
      table(
        `destroy (loopfs instance destroy, node start-up included: one process per instance, and with several instances half of them in one call) and -D (one process, min(N, ${UL_DETACH_SAMPLE}) devices) vs util-linux -d (up to ${UL_DETACH_SAMPLE} host devices, 64 per process); target: <= 1.00x`,
        ['devices', 'instances', 'destroy s', 'ms/device', 'UL -d ms/device', 'x util-linux', 'one call: DIRs', 'ms/device', 'x util-linux', '-D devices', '-D ms/device', 'x util-linux', '-D left', 'kernel remove ms/dev', 'destroy x kernel'],
        results.map((r) => [
          String(r.n),
          shape(r),
          fmt(r.destroyMs / 1000, 2),
          fmt(r.destroyPerDevice, 2),
          fmt(r.ulDetachMs, 2),
          fmt(r.destroyPerDevice / r.ulDetachMs, 2),
          r.batchInstances ? String(r.batchInstances) : '-',
          fmt(r.batchPerDevice, 2),
          fmt(r.batchPerDevice / r.ulDetachMs, 2),
          String(r.detachAllCount),
          fmt(r.detachAllPerDevice, 2),
          fmt(r.detachAllPerDevice / r.ulDetachMs, 2),
          String(r.detachAllLeft),
          fmt(r.removeBound, 2),
          fmt(r.destroyPerDevice / r.removeBound, 2),
        ]),
      );
      const straced = results.flatMap((r) => r.straced ?? []);
      if (straced.length) table('what bounds -D and destroy: strace -f -c -w, top 5 syscalls by wall time', ['run', 'syscall', 'calls', 'seconds', 'us/call'], straced);
      for (const r of results) if (r.fillFailures) console.log(`note: level ${r.n}: ${r.fillFailures} in-process attaches lost a race to another tool and were retried`);
      for (const r of results) {
        const got = r.listed.get('ours -l, instance');
        const want = r.n / r.count + RUNS;
        if (got !== want) console.log(`note: level ${r.n}: the instance listed ${got} of its ${want} devices (another process detached some)`);
      }
    }
    if (stopped) console.log(`\n${stopped}`);
  } finally {
    await cleanup();
  }
}
