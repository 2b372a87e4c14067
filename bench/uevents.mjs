#!/usr/bin/env node
// Live sync (issue 13): how fast a watcher follows the kernel, and what it costs while
// nothing happens. Prints medians, p99 and ratios; not a test: nothing here asserts. Needs
// root, the loop driver, partx and a build (`npm run build`).
//
//   node bench/uevents.mjs [events] [idle-seconds]     (default 200 10)
//
//   1. latency from the kernel's event to the node: `events` partition events (half `partx
//      -a --nr 1`, half `partx -d --nr 1`, alternating) on a device of an instance, for
//        instance watch:   `loopfs instance watch DIR`          → DIR/loopNp1
//        activate --watch: `loopfs activate DIR --dev D --watch` → D/loopNp1 (a /dev view)
//      This process listens to the kernel's uevents itself (the same netlink listener,
//      dist/kernel/uevents.js) and watches the directory with inotify (fs.watch): latency =
//      when the node appeared (or vanished) − when this process received the kernel's event.
//      partx runs asynchronously, so this process's loop is free for both. Target: p99 ≤ 50 ms.
//      Baseline: `loopfs instance gc` run by hand (what publishing took before live sync).
//   2. idle cost of `loopfs instance watch` over `idle-seconds` without events of its own:
//      CPU (utime+stime from /proc/PID/stat, all threads) and wake-ups (voluntary and
//      involuntary context switches, /proc/PID/task/*/status). The watcher hears every loop
//      uevent of the machine (other people's devices too), so the loop events this process
//      heard in the same window are printed next to them.
//
// Everything lives in a private temp dir with a private LOOPFS_RUNTIME_DIR. In `finally`
// (also after Ctrl-C): the watchers are killed, the instance destroyed (--force), and any
// device still bound to one of this run's files detached with util-linux, one by one.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, watch, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const EVENTS = Number(process.argv[2] ?? 200);
const IDLE_SECONDS = Number(process.argv[3] ?? 10);
const TARGET_P99_MS = 50;
const LOOPFS = join(root, 'bin/loopfs');
const OURS = join(root, 'bin/losetup');
const UL = '/usr/sbin/losetup';
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

function preflight() {
  if (process.getuid?.() !== 0) return 'needs root';
  if (!existsSync('/dev/loop-control')) return 'no /dev/loop-control (loop driver not loaded?)';
  if (spawnSync('partx', ['--version']).status !== 0) return 'partx not installed (util-linux)';
  if (!existsSync(join(root, 'dist/kernel/uevents.js'))) return 'not built: run `npm run build` first';
  if (!Number.isInteger(EVENTS) || EVENTS < 2 || EVENTS % 2 !== 0) return 'usage: node bench/uevents.mjs [events (even)] [idle-seconds]';
  if (!(IDLE_SECONDS > 0)) return 'usage: node bench/uevents.mjs [events (even)] [idle-seconds]';
  return undefined;
}
const why = preflight();
if (why) {
  console.error(`bench/uevents: ${why}`);
  process.exit(1);
}

const tmp = mkdtempSync(join(tmpdir(), 'loopfs-bench-uevents-'));
process.env.LOOPFS_RUNTIME_DIR ||= join(tmp, 'run');
process.env.LOOPFS_LIMITS ||= join(tmp, 'limits');
delete process.env.LOOPFS_INSTANCE;
const env = { ...process.env, LANG: 'C.UTF-8' };

let interrupted = false;
const onSignal = (sig) => {
  interrupted = true;
  console.error(`\n${sig}: stopping, cleaning up`);
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

const progress = (msg) => process.stderr.write(`[bench] ${msg}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};
const fmt = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');

function table(title, header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (r) => r.map((v, i) => (i === 0 ? String(v).padEnd(widths[i]) : String(v).padStart(widths[i]))).join('  ');
  console.log(`\n${title}`);
  console.log(line(header));
  for (const r of rows) console.log(line(r));
}

function run(argv) {
  const r = spawnSync(argv[0], argv.slice(1), { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  return { rc: r.status, out: r.stdout ?? '', err: r.stderr ?? '' };
}
function must(argv) {
  const r = run(argv);
  if (r.rc !== 0) throw new Error(`${argv.join(' ')}: exit ${r.rc}: ${r.err.trim()}`);
  return r.out;
}
/** A command run asynchronously (this process's loop keeps turning meanwhile). */
function runAsync(argv) {
  return new Promise((resolve) => {
    const c = spawn(argv[0], argv.slice(1), { env, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    c.stderr.on('data', (b) => (err += b));
    c.on('exit', (code) => resolve({ rc: code, err }));
  });
}

/** An MBR image with one 1 MiB Linux partition at LBA 2048. */
function mbrImage(file) {
  const b = Buffer.alloc(4 << 20);
  b[446 + 4] = 0x83;
  b.writeUInt32LE(2048, 446 + 8);
  b.writeUInt32LE(2048, 446 + 12);
  b[510] = 0x55;
  b[511] = 0xaa;
  writeFileSync(file, b);
  return file;
}

/** A `loopfs` daemon; resolves once stdout matched `ready`. */
async function daemon(args, ready) {
  const child = spawn(LOOPFS, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (b) => (out += b));
  child.stderr.on('data', (b) => (err += b));
  const exited = new Promise((r) => child.once('exit', r));
  const end = Date.now() + 20_000;
  while (!ready.test(out)) {
    if (child.exitCode !== null || Date.now() > end) throw new Error(`loopfs ${args.join(' ')} did not start: ${out}${err}`);
    await sleep(10);
  }
  return {
    child,
    pid: child.pid,
    output: () => out + err,
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

// ---------------------------------------------------------------- state

const daemons = [];
let inst = null;

/** Bound devices whose backing file is one of this run's files. */
function ourBoundDevices() {
  const result = [];
  for (const name of readdirSync('/sys/block')) {
    if (!/^loop\d+$/.test(name)) continue;
    try {
      const back = readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').replace(/\n$/, '');
      if (back.startsWith(`${tmp}/`)) result.push(name);
    } catch {
      /* unbound */
    }
  }
  return result;
}

async function cleanup() {
  for (const d of daemons) await d.kill();
  if (inst && existsSync(join(inst, '.loopfs'))) {
    const r = run([LOOPFS, 'instance', 'destroy', '--force', inst]);
    if (r.rc !== 0) console.error(`cleanup: instance destroy: ${r.err.trim()}`);
  }
  for (const name of ourBoundDevices()) {
    const r = run([UL, '-d', `/dev/${name}`]);
    if (r.rc !== 0) console.error(`cleanup: ${UL} -d /dev/${name}: ${r.err.trim()}`);
  }
  const left = ourBoundDevices();
  if (left.length) console.error(`cleanup incomplete: ${left.join(' ')} still bound; keeping ${tmp}`);
  else rmSync(tmp, { recursive: true, force: true });
}

// ---------------------------------------------------------------- 1. latency

/**
 * `EVENTS` partition events on `disk`; for each, the time from this process's receipt of the
 * kernel's uevent to the node's appearance (add) or disappearance (remove) in `dir`.
 */
async function latencies(uevents, disk, dir) {
  const part = `${disk}p1`;
  const node = join(dir, part);
  const add = [];
  const remove = [];
  let pending = null; // { action, t0 (uevent receipt), resolve }
  let sawEvent = null;
  const listener = uevents.LoopUevents.open({
    event: (e) => {
      if (e.devname !== part || (e.action !== 'add' && e.action !== 'remove')) return;
      if (pending && pending.action === e.action && pending.t0 === null) {
        pending.t0 = process.hrtime.bigint();
        pending.check();
      }
      sawEvent = e.action;
    },
    overflow: () => progress('uevent queue overflow (events lost)'),
  });
  const w = watch(dir, { persistent: false }, () => pending?.check());
  try {
    for (let i = 0; i < EVENTS && !interrupted; i++) {
      const action = i % 2 === 0 ? 'add' : 'remove';
      const done = new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${action} ${part}: no change in ${dir} within 5 s`)), 5000);
        pending = {
          action,
          t0: null,
          check() {
            if (this.t0 === null) return; // the node changes only after the event (checked below)
            if (existsSync(node) !== (action === 'add')) return;
            clearTimeout(timer);
            resolve(Number(process.hrtime.bigint() - this.t0) / 1e6);
          },
        };
      });
      sawEvent = null;
      const px = await runAsync(['partx', action === 'add' ? '-a' : '-d', '--nr', '1', `/dev/${disk}`]);
      if (px.rc !== 0) throw new Error(`partx ${action}: ${px.err.trim()}`);
      const ms = await done;
      (action === 'add' ? add : remove).push(ms);
      pending = null;
    }
  } finally {
    w.close();
    listener.close();
  }
  void sawEvent;
  return { add, remove };
}

/** `loopfs instance gc` by hand, after a `partx -a`: what publishing took before live sync. */
function gcBaseline(disk, runs = 10) {
  const ms = [];
  for (let i = 0; i < runs && !interrupted; i++) {
    must(['partx', '-a', '--nr', '1', `/dev/${disk}`]);
    const t0 = process.hrtime.bigint();
    must([LOOPFS, 'instance', 'gc']);
    ms.push(Number(process.hrtime.bigint() - t0) / 1e6);
    must(['partx', '-d', '--nr', '1', `/dev/${disk}`]);
    must([LOOPFS, 'instance', 'gc']);
  }
  return ms;
}

// ---------------------------------------------------------------- 2. idle cost

function procTimes(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(f[11]) + Number(f[12]); // utime, stime (fields 14, 15)
  let vol = 0;
  let invol = 0;
  let mainVol = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let s = '';
    try {
      s = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
    } catch {
      continue; // a thread that ended
    }
    const v = Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(s)?.[1] ?? 0);
    vol += v;
    invol += Number(/^nonvoluntary_ctxt_switches:\s+(\d+)/m.exec(s)?.[1] ?? 0);
    if (tid === String(pid)) mainVol = v;
  }
  return { ticks, vol, invol, mainVol };
}

async function idleCost(uevents, pid) {
  let heard = 0;
  const listener = uevents.LoopUevents.open({ event: () => heard++, overflow: () => {} });
  try {
    await sleep(1000); // let start-up work and GC settle
    const a = procTimes(pid);
    heard = 0;
    await sleep(IDLE_SECONDS * 1000);
    const b = procTimes(pid);
    return {
      cpuMs: ((b.ticks - a.ticks) * 1000) / CLK_TCK,
      vol: b.vol - a.vol,
      invol: b.invol - a.invol,
      mainVol: b.mainVol - a.mainVol,
      heard,
    };
  } finally {
    listener.close();
  }
}

// ---------------------------------------------------------------- main

try {
  const uevents = await import(pathToFileURL(join(root, 'dist/kernel/uevents.js')).href);
  inst = join(tmp, 'inst');
  must([LOOPFS, 'instance', 'create', inst]);
  const img = mbrImage(join(tmp, 'disk.img'));
  const node = must([OURS, '--instance', inst, '-f', '--show', '-P', img]).trim();
  const disk = node.slice(node.lastIndexOf('/') + 1);
  progress(`instance ${inst}, device ${disk}`);

  const results = [];
  {
    progress(`instance watch: ${EVENTS} partition events`);
    const w = await daemon(['instance', 'watch', '-q', inst], /^/);
    daemons.push(w);
    await sleep(1500); // -q prints nothing: give it its first sync
    const r = await latencies(uevents, disk, inst);
    results.push({ name: 'instance watch → DIR', ...r });
    if (!interrupted) {
      progress(`idle: ${IDLE_SECONDS} s without events of its own`);
      results.idle = await idleCost(uevents, w.pid);
    }
    await w.kill();
  }
  if (!interrupted) {
    progress(`activate --watch: ${EVENTS} partition events`);
    const dev = join(tmp, 'dev');
    mkdirSync(dev);
    const a = await daemon(['activate', inst, '--dev', dev, '--pool', '0', '--watch'], /node\(s\)/);
    daemons.push(a);
    const r = await latencies(uevents, disk, dev);
    results.push({ name: 'activate --watch → D (/dev view)', ...r });
    await a.kill();
  }
  let gc = [];
  if (!interrupted) {
    progress('baseline: loopfs instance gc by hand, 10 runs');
    gc = gcBaseline(disk);
  }

  const gcMedian = median(gc);
  const rows = [];
  for (const r of results) {
    for (const [what, xs] of [['add', r.add], ['remove', r.remove], ['all', [...r.add, ...r.remove]]]) {
      if (xs.length === 0) continue;
      const p99 = pct(xs, 99);
      rows.push([
        `${r.name}, ${what}`,
        String(xs.length),
        fmt(median(xs), 2),
        fmt(p99, 2),
        fmt(Math.max(...xs), 2),
        p99 <= TARGET_P99_MS ? 'yes' : 'NO',
        fmt(gcMedian / median(xs), 0),
      ]);
    }
  }
  if (gc.length) rows.push(['loopfs instance gc by hand (before live sync)', String(gc.length), fmt(gcMedian, 2), fmt(pct(gc, 99), 2), fmt(Math.max(...gc), 2), '-', '1']);
  table(
    `latency from the kernel's uevent (as received by this process) to the node, ms; target p99 ≤ ${TARGET_P99_MS} ms`,
    ['series', 'events', 'median', 'p99', 'max', 'p99 ok', 'x faster than gc'],
    rows,
  );
  if (results.idle) {
    const i = results.idle;
    table(
      `loopfs instance watch, idle for ${IDLE_SECONDS} s (no events of its own)`,
      ['measure', 'total', 'per second'],
      [
        ['CPU ms (utime+stime, all threads)', fmt(i.cpuMs, 0), fmt(i.cpuMs / IDLE_SECONDS, 2)],
        ['voluntary context switches, main thread', String(i.mainVol), fmt(i.mainVol / IDLE_SECONDS, 2)],
        ['voluntary context switches, all threads', String(i.vol), fmt(i.vol / IDLE_SECONDS, 2)],
        ['involuntary context switches, all threads', String(i.invol), fmt(i.invol / IDLE_SECONDS, 2)],
        ['loop uevents on the machine meanwhile (others)', String(i.heard), fmt(i.heard / IDLE_SECONDS, 2)],
      ],
    );
  }
} catch (e) {
  console.error(`bench/uevents: ${e instanceof Error ? e.message : e}`);
  process.exitCode = 1;
} finally {
  await cleanup();
}
