#!/usr/bin/env node
// Private instances under load, against the host and util-linux. Prints medians (listing
// commands interleaved, so machine noise hits every command alike) and ratios. Not a test:
// nothing here asserts. Needs root, the loop driver and a build (`npm run build`).
//
//   node bench/instances.mjs [devices] [attaches] [runs]     (default 1000 100 10)
//
//   1. -f throughput: `attaches` sequential `-f --show FILE` inside an instance, on the host
//      (ours, no instance) and with util-linux; everything detached after each series.
//   2. listing: `devices` devices attached into one instance (in-process, through
//      dist/instance/local-instance.js), then `-l` and `-a` timed `runs` times each: ours in
//      the instance, util-linux on the host (the same devices, plus whatever else is bound),
//      ours on the host.
//   3. 256 concurrent `losetup --instance DIRk -f --show FILE` across 4 instances (64 each):
//      failures, duplicates, devices outside their instance, wall time; against 256 concurrent
//      util-linux `-f --show FILE` on the host in the same run (ratio of wall times).
//
// Machine-wide loopfs records go to a private LOOPFS_RUNTIME_DIR (unless one is set). Every
// instance is destroyed and every device bound to one of this run's files is detached in
// `finally`, also after Ctrl-C / SIGTERM. Host devices are detached one by one with util-linux,
// only when their backing file is this run's, never with -D.
// BENCH_ONLY=attach,listing,concurrent runs only the parts named.
// BENCH_PROFILE=DIR additionally writes `node --cpu-prof` profiles of ours -l/-a into DIR.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const DEVICES = Number(process.argv[2] ?? 1000);
const ATTACHES = Number(process.argv[3] ?? 100);
const RUNS = Number(process.argv[4] ?? 10);
const CONC_INSTANCES = 4;
const CONC_PER_INSTANCE = 64;

const UL = '/usr/sbin/losetup';
const OURS = join(root, 'bin/losetup');
const LOOPFS = join(root, 'bin/loopfs');

function preflight() {
  if (process.getuid?.() !== 0) return 'needs root';
  if (!existsSync('/dev/loop-control')) return 'no /dev/loop-control (loop driver not loaded?)';
  if (!existsSync(UL)) return `${UL} not installed`;
  if (!existsSync(join(root, 'dist/bundle/losetup.mjs'))) return 'not built: run `npm run build` first';
  for (const n of [DEVICES, ATTACHES, RUNS]) if (!Number.isInteger(n) || n < 1) return 'usage: node bench/instances.mjs [devices] [attaches] [runs]';
  return undefined;
}
const why = preflight();
if (why) {
  console.error(`bench/instances: ${why}`);
  process.exit(1);
}

const tmp = mkdtempSync(join(tmpdir(), 'loopfs-bench-'));
process.env.LOOPFS_RUNTIME_DIR ||= join(tmp, 'run');
delete process.env.LOOPFS_INSTANCE; // "host" must mean the host
const env = { ...process.env, LANG: 'C.UTF-8' };

// ---------------------------------------------------------------- interruption

class Interrupted extends Error {}
let interrupted = false;
let cleaningUp = false;
const onSignal = (sig) => {
  interrupted = true;
  console.error(cleaningUp ? `\n${sig}: still cleaning up, please wait` : `\n${sig}: stopping, cleaning up`);
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);
const check = () => {
  if (interrupted) throw new Interrupted('interrupted');
};
// Signal handlers run only when the event loop turns, never during spawnSync: give it a turn
// between the (synchronous, timed) commands so that Ctrl-C is noticed within one command.
const checkpoint = async () => {
  await new Promise((r) => setImmediate(r));
  check();
};

// ---------------------------------------------------------------- helpers

const instances = new Set();

function makeFile(name, size = 1 << 20) {
  const f = join(tmp, name);
  const fd = openSync(f, 'w');
  ftruncateSync(fd, size);
  closeSync(fd);
  return f;
}

/** Run to completion; `detached` keeps a terminal Ctrl-C away from cleanup commands. */
function run(argv, { detached = false } = {}) {
  const r = spawnSync(argv[0], argv.slice(1), { env, detached, encoding: 'utf8', maxBuffer: 256 << 20, stdio: ['ignore', 'pipe', 'pipe'] });
  return { rc: r.status, out: r.stdout ?? '', err: r.stderr ?? '' };
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
  // retried: the tree is shared with people who rebuild it (the addon vanishes for a moment)
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

/** Bound devices whose backing file is one of this run's files: [{ name, back }]. */
function ourBoundDevices() {
  const result = [];
  for (const name of readdirSync('/sys/block')) {
    if (!/^loop\d+$/.test(name)) continue;
    let back;
    try {
      back = readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').replace(/\n$/, '');
    } catch {
      continue; // unbound
    }
    if (back.startsWith(`${tmp}/`)) result.push({ name, back });
  }
  return result;
}

/** Detach host devices with util-linux, only those still bound to our files. */
function detachOurs(devs) {
  const mine = new Set(ourBoundDevices().map((d) => `/dev/${d.name}`));
  const todo = [...new Set(devs)].filter((d) => mine.has(d));
  for (let i = 0; i < todo.length; i += 64) {
    const r = run([UL, '-d', ...todo.slice(i, i + 64)], { detached: true });
    if (r.rc !== 0) console.error(`cleanup: ${UL} -d: ${r.err.trim()}`);
  }
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const fmt = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');

function table(title, header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (r) => r.map((v, i) => (i === 0 ? String(v).padEnd(widths[i]) : String(v).padStart(widths[i]))).join('  ');
  console.log(`\n${title}`);
  console.log(line(header));
  for (const r of rows) console.log(line(r));
}

const progress = (msg) => process.stderr.write(`[bench] ${msg}\n`);

// ---------------------------------------------------------------- 1. -f throughput

async function attachSeries(argvFor) {
  const devs = [];
  const failures = [];
  let ns = 0n;
  for (let i = 0; i < ATTACHES; i++) {
    const t0 = process.hrtime.bigint();
    const r = run(argvFor());
    ns += process.hrtime.bigint() - t0;
    if (r.rc === 0 && r.err === '') devs.push(r.out.trim());
    else failures.push(r.err.trim() || `exit ${r.rc}`);
    await checkpoint();
  }
  const s = Number(ns) / 1e9;
  return { perSec: ATTACHES / s, msEach: (s * 1000) / ATTACHES, devs, failures };
}

async function benchAttach() {
  const file = makeFile('img-attach');
  const series = [
    {
      name: 'ours, instance (--instance DIR)',
      run: async () => {
        const dir = createInstance('inst-attach');
        try {
          return await attachSeries(() => [OURS, '--instance', dir, '-f', '--show', file]);
        } finally {
          destroyInstance(dir); // detaches and removes every device of the series
        }
      },
    },
    {
      name: 'ours, host',
      run: async () => {
        const r = await attachSeries(() => [OURS, '-f', '--show', file]);
        detachOurs(r.devs);
        return r;
      },
    },
    {
      name: 'util-linux, host',
      run: async () => {
        const r = await attachSeries(() => [UL, '-f', '--show', file]);
        detachOurs(r.devs);
        return r;
      },
    },
  ];
  progress(`-f throughput: ${series.length} series of ${ATTACHES} sequential attaches`);
  const results = [];
  for (const s of series) results.push({ name: s.name, ...(await s.run()) });
  const base = results.find((r) => r.name === 'util-linux, host').perSec;
  table(
    `-f --show FILE, ${ATTACHES} sequential attaches per series (each a new process)`,
    ['series', 'attaches/s', 'ms each', 'failures', 'x util-linux'],
    results.map((r) => [r.name, fmt(r.perSec), fmt(r.msEach, 2), String(r.failures.length), fmt(r.perSec / base, 2)]),
  );
  for (const r of results) for (const f of r.failures.slice(0, 3)) console.log(`  ${r.name}: ${f}`);
}

// ---------------------------------------------------------------- 2. listing with many devices

async function fillInstance(dir, count) {
  const { LocalInstance } = await import(pathToFileURL(join(root, 'dist/instance/local-instance.js')).href);
  const file = makeFile('img-list');
  const inst = LocalInstance.open(dir, process.env);
  const errors = [];
  const t0 = process.hrtime.bigint();
  try {
    for (let i = 0; i < count; i++) {
      try {
        const a = inst.allocate({ file, flags: 0 });
        a.holder?.close();
        a.device.close();
      } catch (e) {
        // other people's tools share the machine: note it, try again, give up when it keeps failing
        errors.push(String(e?.message ?? e));
        if (errors.length <= 5) progress(`  allocation failed (retrying): ${errors.at(-1)}`);
        if (errors.length > 50) throw new Error(`too many allocation failures: ${errors.slice(0, 3).join('; ')}`);
        i--;
        continue;
      }
      if (i % 25 === 24) await checkpoint();
      if (i % 200 === 199) progress(`  ${i + 1}/${count} attached`);
    }
  } finally {
    inst.close();
  }
  return { msEach: Number(process.hrtime.bigint() - t0) / 1e6 / count, errors: errors.length };
}

function maybeProfile(dir) {
  const out = process.env.BENCH_PROFILE;
  if (!out) return;
  mkdirSync(out, { recursive: true });
  for (const [tag, args] of [
    ['instance-l', ['--instance', dir, '-l']],
    ['instance-a', ['--instance', dir, '-a']],
    ['host-l', ['-l']],
  ]) {
    run([process.execPath, '--cpu-prof', `--cpu-prof-dir=${out}`, `--cpu-prof-name=${tag}.cpuprofile`, '--cpu-prof-interval=100', OURS, ...args]);
  }
  progress(`profiles written to ${out}`);
}

async function benchListing() {
  const dir = createInstance('inst-list');
  progress(`listing: attaching ${DEVICES} devices into ${dir} (in-process)`);
  const { msEach, errors: fillErrors } = await fillInstance(dir, DEVICES);
  const commands = [
    { name: 'util-linux -l, host', argv: [UL, '-l'], base: 'util-linux -l, host' },
    { name: 'ours -l, instance', argv: [OURS, '--instance', dir, '-l'], base: 'util-linux -l, host' },
    { name: 'ours -l, host', argv: [OURS, '-l'], base: 'util-linux -l, host' },
    { name: 'util-linux -a, host', argv: [UL, '-a'], base: 'util-linux -a, host' },
    { name: 'ours -a, instance', argv: [OURS, '--instance', dir, '-a'], base: 'util-linux -a, host' },
    { name: 'ours -a, host', argv: [OURS, '-a'], base: 'util-linux -a, host' },
    { name: 'node -e 0', argv: [process.execPath, '-e', '0'], base: null },
  ];
  const samples = new Map(commands.map((c) => [c.name, []]));
  const lines = new Map();
  progress(`listing: ${commands.length} commands x ${RUNS} runs, interleaved`);
  for (let i = 0; i < RUNS; i++) {
    for (const c of commands) {
      const t0 = process.hrtime.bigint();
      const r = run(c.argv);
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (r.rc !== 0) throw new Error(`${c.name}: exit ${r.rc}: ${r.err.trim()}`);
      samples.get(c.name).push(ms);
      lines.set(c.name, r.out.split('\n').filter((l) => /loop\d+/.test(l)).length);
      await checkpoint();
    }
  }
  maybeProfile(dir);
  const rows = commands.map((c) => {
    const m = median(samples.get(c.name));
    const b = c.base ? median(samples.get(c.base)) : NaN;
    return [c.name, String(c.base ? lines.get(c.name) : '-'), fmt(m), fmt(m / b, 2)];
  });
  table(
    `listing with ${DEVICES} devices in one instance (median of ${RUNS}; attach in-process ${fmt(msEach, 2)} ms/device${fillErrors ? `, ${fillErrors} failed and retried` : ''})`,
    ['command', 'devices', 'median ms', 'x util-linux'],
    rows,
  );
  const listed = lines.get('ours -l, instance');
  if (listed !== DEVICES) console.log(`note: the instance lists ${listed} of its ${DEVICES} devices: another process detached the others during the run`);
  progress(`listing: destroying ${dir}`);
  const t0 = process.hrtime.bigint();
  destroyInstance(dir);
  const destroyMs = Number(process.hrtime.bigint() - t0) / 1e6;
  console.log(`instance destroy with ${DEVICES} devices: ${fmt(destroyMs / 1000, 2)} s (${fmt(destroyMs / DEVICES, 2)} ms/device)`);
}

// ---------------------------------------------------------------- 3. concurrent -f across instances

function backingOf(minor) {
  try {
    return readFileSync(`/sys/block/loop${minor}/loop/backing_file`, 'utf8').replace(/\n$/, '');
  } catch {
    return null; // unbound or gone
  }
}

function stateMinors(dir) {
  try {
    // version 2: one record per device in .loopfs/devices
    return new Set(readdirSync(join(dir, '.loopfs/devices')).filter((n) => /^loop\d+$/.test(n)).map((n) => Number(n.slice(4))));
  } catch {
    return new Set();
  }
}

/** Start every job's argv at once; resolves with each one's exit, output and the wall time. */
async function concurrently(jobs) {
  const t0 = process.hrtime.bigint();
  const results = await Promise.all(
    jobs.map(
      (j) =>
        new Promise((resolve) => {
          const child = spawn(j.argv[0], j.argv.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'] });
          let out = '';
          let err = '';
          child.stdout.on('data', (b) => (out += b));
          child.stderr.on('data', (b) => (err += b));
          child.on('error', (e) => resolve({ ...j, rc: -1, out, err: String(e) }));
          child.on('close', (rc) => resolve({ ...j, rc, out, err }));
        }),
    ),
  );
  return { results, wallMs: Number(process.hrtime.bigint() - t0) / 1e6 };
}

async function benchConcurrent() {
  const dirs = Array.from({ length: CONC_INSTANCES }, (_, k) => createInstance(`inst-conc${k}`));
  const jobs = [];
  for (let i = 0; i < CONC_PER_INSTANCE; i++) {
    for (let k = 0; k < CONC_INSTANCES; k++) jobs.push({ k, file: makeFile(`img-c${k}-${String(i).padStart(2, '0')}`) });
  }
  // util-linux first, the same 256 concurrent attaches on the host (its files of its own)
  const ulJobs = jobs.map((j, i) => ({ ...j, file: makeFile(`img-ul-${String(i).padStart(3, '0')}`) }));
  progress(`concurrent: ${ulJobs.length} x ${UL} -f --show FILE on the host`);
  const ul = await concurrently(ulJobs.map((j) => ({ ...j, argv: [UL, '-f', '--show', j.file] })));
  check();
  const ulDevs = ul.results.filter((r) => r.rc === 0).map((r) => r.out.trim());
  const ulFailures = ul.results.filter((r) => r.rc !== 0 || r.err !== '' || !/^\/dev\/loop\d+\n$/.test(r.out));
  const ulDuplicates = ulDevs.length - new Set(ulDevs).size;
  detachOurs(ulDevs);

  // the floor a node program cannot go below: 256 node start-ups at once on this machine
  progress(`concurrent: ${jobs.length} x node -e 0`);
  const floor = await concurrently(jobs.map((j) => ({ ...j, argv: [process.execPath, '-e', '0'] })));
  check();

  progress(`concurrent: ${jobs.length} x losetup --instance DIRk -f --show FILE across ${CONC_INSTANCES} instances`);
  const { results, wallMs } = await concurrently(jobs.map((j) => ({ ...j, argv: [OURS, '--instance', dirs[j.k], '-f', '--show', j.file] })));
  check();

  const failures = [];
  const byMinor = new Map();
  for (const r of results) {
    const m = new RegExp(`^${dirs[r.k].replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/loop(\\d+)\\n$`).exec(r.out);
    if (r.rc !== 0 || r.err !== '' || !m) {
      failures.push(r);
      continue;
    }
    const minor = Number(m[1]);
    byMinor.set(minor, [...(byMinor.get(minor) ?? []), r]);
  }
  const duplicates = [...byMinor.values()].filter((rs) => rs.length > 1).length;
  const held = dirs.map(stateMinors);
  let outside = 0;
  let wrongFile = 0;
  for (const [minor, rs] of byMinor) {
    for (const r of rs) if (!held[r.k].has(minor)) outside++;
    if (!rs.some((r) => r.file === backingOf(minor))) wrongFile++;
  }
  // a successful attach whose device is no longer bound to its file: detached by someone else
  const lost = [...byMinor].flatMap(([minor, rs]) => rs.filter((r) => r.file !== backingOf(minor))).length;
  const sharedAcross = held.flatMap((h, k) => [...h].filter((m) => held.some((o, l) => l !== k && o.has(m)))).length;
  table(
    `${jobs.length} concurrent losetup --instance DIRk -f --show FILE, ${CONC_INSTANCES} instances x ${CONC_PER_INSTANCE}`,
    ['failures', 'duplicates', 'not in its instance', 'wrong backing file', 'bindings lost', 'minors in 2 instances', 'wall ms', 'ms per attach'],
    [[failures.length, duplicates, outside, wrongFile, lost, sharedAcross, fmt(wallMs), fmt(wallMs / jobs.length, 2)].map(String)],
  );
  table(
    `${jobs.length} concurrent -f --show FILE: ours into ${CONC_INSTANCES} instances against util-linux on the host, same run (target <= 3.00x, 0 failures)`,
    ['series', 'failures', 'duplicates', 'wall ms', 'x util-linux'],
    [
      ['util-linux, host', String(ulFailures.length), String(ulDuplicates), fmt(ul.wallMs), '1.00'],
      [`ours, ${CONC_INSTANCES} instances`, String(failures.length), String(duplicates), fmt(wallMs), fmt(wallMs / ul.wallMs, 2)],
      ['floor: node -e 0 (no attach)', '-', '-', fmt(floor.wallMs), fmt(floor.wallMs / ul.wallMs, 2)],
    ],
  );
  for (const f of ulFailures.slice(0, 3)) console.log(`  util-linux failure: exit ${f.rc}: ${(f.err || f.out).trim()}`);
  if (lost) console.log(`  ${lost} attach(es) lost their binding afterwards: another process detached them (duplicates follow from that)`);
  for (const f of failures.slice(0, 5)) console.log(`  failure: instance ${f.k}: exit ${f.rc}: ${(f.err || f.out).trim()}`);
  for (const dir of dirs) destroyInstance(dir);
}

// ---------------------------------------------------------------- main

async function cleanup() {
  cleaningUp = true;
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
  }
}

console.log(`instances, node ${process.version}, ${readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim()}, ${(await import('node:os')).cpus().length} CPUs`);
try {
  // BENCH_ONLY=attach,listing,concurrent runs only those parts (default: all)
  const only = new Set((process.env.BENCH_ONLY ?? 'attach,listing,concurrent').split(','));
  if (only.has('attach')) await benchAttach();
  await checkpoint();
  if (only.has('listing')) await benchListing();
  await checkpoint();
  if (only.has('concurrent')) await benchConcurrent();
} catch (e) {
  if (e instanceof Interrupted) process.exitCode = 130;
  else {
    console.error(e);
    process.exitCode = 1;
  }
} finally {
  await cleanup();
}
