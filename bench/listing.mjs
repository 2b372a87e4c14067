#!/usr/bin/env node
// `losetup -l` and `-a` with many devices, against util-linux and against the floor any node
// program pays for the same listing. Prints medians of wall time, interleaved so that noise
// hits every command alike, and ratios to util-linux. Not a test: nothing here asserts. Needs root,
// the loop driver and a build (`npm run build`).
//
//   node bench/listing.mjs [devices] [runs]     (default 1000 15)
//
// The devices are attached into one private instance (in-process, as bench/instances.mjs
// does), so the same run times the host listing (util-linux and ours see every bound device)
// and the instance's. The floor rows are node programs that do only what the listing cannot
// avoid: start node, dlopen the addon, readdir /sys/block, one readFiles batch of the
// attributes util-linux prints (7 for -l, 3 for -a) and one stat per /dev node; -a also opens
// each device for LOOP_GET_STATUS64 (the backing file's dev/ino), as util-linux does.
// Besides wall time (median), each command's CPU time (user + system, mean over the runs,
// from this process's children's times): on a machine busy with other work, wall time is
// mostly the wait for a core and CPU time is the steadier figure.
// BENCH_STRACE=1 adds syscall counts (strace -c -f) of util-linux and ours on the host.
// BENCH_BASE=DIR adds rows for another build's bin/losetup (e.g. an unpacked `git archive` of
// the commit before a change, built), timed in the same interleaved runs: before and after
// side by side. BENCH_PROFILE=DIR writes a V8 CPU profile (--cpu-prof) of one run of each of
// ours into DIR and prints where its time goes: garbage collection, start-up and the top
// functions by self time.
// Every device is released with `loopfs instance destroy` in `finally`, also after Ctrl-C.
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const DEVICES = Number(process.argv[2] ?? 1000);
const RUNS = Number(process.argv[3] ?? 15);
const UL = '/usr/sbin/losetup';
const OURS = join(root, 'bin/losetup');
const BASE = process.env.BENCH_BASE ? join(process.env.BENCH_BASE, 'bin/losetup') : null;
const LOOPFS = join(root, 'bin/loopfs');

function preflight() {
  if (process.getuid?.() !== 0) return 'needs root';
  if (!existsSync('/dev/loop-control')) return 'no /dev/loop-control (loop driver not loaded?)';
  if (!existsSync(UL)) return `${UL} not installed`;
  if (!existsSync(join(root, 'dist/bundle/losetup.cjs'))) return 'not built: run `npm run build` first';
  if (BASE && !existsSync(BASE)) return `BENCH_BASE: no ${BASE}`;
  for (const n of [DEVICES, RUNS]) if (!Number.isInteger(n) || n < 1) return 'usage: node bench/listing.mjs [devices] [runs]';
  return undefined;
}
const why = preflight();
if (why) {
  console.error(`bench/listing: ${why}`);
  process.exit(1);
}

const tmp = mkdtempSync(join(tmpdir(), 'loopfs-listing-'));
process.env.LOOPFS_RUNTIME_DIR ||= join(tmp, 'run');
delete process.env.LOOPFS_INSTANCE; // "host" must mean the host
const env = { ...process.env, LANG: 'C.UTF-8' };
// NODE_EXTRA_CA_CERTS makes every node process read and parse that CA bundle at start-up
// (on the machine this was written on: a 220 KB bundle, ~60 ms of CPU on top of ~100 for
// `node -e 0`); losetup never opens a TLS connection. BENCH_NO_EXTRA_CA=1 times without it.
if (process.env.BENCH_NO_EXTRA_CA) delete env.NODE_EXTRA_CA_CERTS;
const dir = join(tmp, 'inst');
const progress = (msg) => process.stderr.write(`[bench] ${msg}\n`);
let interrupted = false;
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => (interrupted = true));

// ---------------------------------------------------------------- the floor programs

const ADDON = join(root, 'native/build/Release/loopfs.node');
const floor = (attrs, status) => `'use strict';
const a = require(${JSON.stringify(ADDON)});
const fs = require('fs');
const names = [];
const d = fs.opendirSync('/sys/block', { bufferSize: 1024 });
for (let e = d.readSync(); e; e = d.readSync()) if (e.name.startsWith('loop')) names.push(e.name);
d.closeSync();
const attrs = ${JSON.stringify(attrs)};
const v = a.readFiles(names.map((n) => '/sys/block/' + n), attrs, 4160, a.constants.READ_FILES_FIRST_GATES);
for (let i = 0; i < names.length; i++) {
  if (v[i * attrs.length] === null) continue;
  fs.statSync('/dev/' + names[i], { throwIfNoEntry: false });
  ${status ? "try { const fd = a.open('/dev/' + names[i], 0); a.loopGetStatus64(fd); a.close(fd); } catch {}" : ''}
}
`;
const FLOOR_L = join(tmp, 'floor-l.cjs');
const FLOOR_A = join(tmp, 'floor-a.cjs');
writeFileSync(FLOOR_L, floor(['loop/offset', 'loop/backing_file', 'loop/sizelimit', 'loop/autoclear', 'ro', 'loop/dio', 'queue/logical_block_size'], false));
writeFileSync(FLOOR_A, floor(['loop/offset', 'loop/backing_file', 'loop/sizelimit'], true));

// ---------------------------------------------------------------- timing

/**
 * CPU time (user + system, ms) of this process's waited-for children so far: fields 16 and 17
 * of /proc/self/stat, in clock ticks (100 Hz). On a loaded machine wall time mostly measures
 * the wait for a core; the children's CPU time is what each command costs. One run's share
 * is a tick or so coarse, so the table shows the mean over all runs.
 */
function childCpuMs() {
  const stat = readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[13]) + Number(f[14])) * 10;
}

function run(argv) {
  const c0 = childCpuMs();
  const t0 = process.hrtime.bigint();
  const r = spawnSync(argv[0], argv.slice(1), { env, encoding: 'utf8', maxBuffer: 256 << 20, stdio: ['ignore', 'pipe', 'pipe'] });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  return { ms, cpu: childCpuMs() - c0, rc: r.status, out: r.stdout ?? '', err: r.stderr ?? '' };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const fmt = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');

async function fill() {
  const r = run([LOOPFS, 'instance', 'create', dir]);
  if (r.rc !== 0) throw new Error(`instance create: ${r.err.trim()}`);
  const { LocalInstance } = await import(pathToFileURL(join(root, 'dist/instance/local-instance.js')).href);
  const file = join(tmp, 'img');
  const fd = openSync(file, 'w');
  ftruncateSync(fd, 1 << 20);
  closeSync(fd);
  const inst = LocalInstance.open(dir, process.env);
  try {
    for (let i = 0; i < DEVICES && !interrupted; i++) {
      const a = inst.allocate({ file, flags: 0 });
      a.holder?.close();
      a.device.close();
      if (i % 250 === 249) progress(`${i + 1}/${DEVICES} attached`);
      if (i % 25 === 24) await new Promise((res) => setImmediate(res));
    }
  } finally {
    inst.close();
  }
}

function strace(argv) {
  const out = join(tmp, 'strace.txt');
  const r = spawnSync('strace', ['-c', '-f', '-o', out, ...argv], { env, stdio: 'ignore' });
  if (r.status !== 0 || !existsSync(out)) return null;
  const text = readFileSync(out, 'utf8');
  const total = /\n\S+\s+\S+\s+\S+\s+(\d+)\s+(?:\d+\s+)?total/.exec(text);
  const counts = {};
  for (const m of text.matchAll(/^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$/gm)) counts[m[2]] = Number(m[1]);
  return { total: total ? Number(total[1]) : NaN, counts };
}

/** Self time per function of a .cpuprofile, in ms, and the total sampled. */
function profileSummary(file) {
  const p = JSON.parse(readFileSync(file, 'utf8'));
  const frame = new Map(p.nodes.map((n) => [n.id, n.callFrame]));
  const self = new Map();
  let total = 0;
  p.samples.forEach((id, i) => {
    const us = p.timeDeltas[i] ?? 0;
    const f = frame.get(id);
    const key = f.url ? `${f.functionName || '(anonymous)'} (${f.url.slice(f.url.lastIndexOf('/') + 1)})` : f.functionName;
    self.set(key, (self.get(key) ?? 0) + us / 1000);
    total += us / 1000;
  });
  return { total, self: [...self].sort((a, b) => b[1] - a[1]) };
}

function profiles(outDir) {
  console.log(`\nV8 CPU profiles of one run each (${outDir}): ms of self time`);
  for (const [name, args] of [['ours -l, host', ['-l']], ['ours -l, instance', ['--instance', dir, '-l']], ['ours -a, host', ['-a']], ['ours -a, instance', ['--instance', dir, '-a']]]) {
    const sub = join(outDir, name.replace(/[^a-z]+/g, '-'));
    rmSync(sub, { recursive: true, force: true });
    const r = spawnSync(process.execPath, ['--cpu-prof', '--cpu-prof-dir', sub, OURS, ...args], { env, stdio: 'ignore' });
    const file = r.status === 0 ? readdirSync(sub).find((f) => f.endsWith('.cpuprofile')) : undefined;
    if (!file) {
      console.log(`${name}: no profile (exit ${r.status})`);
      continue;
    }
    const { total, self } = profileSummary(join(sub, file));
    const top = self.slice(0, 8).map(([k, ms]) => `${ms.toFixed(1)} ${k}`);
    console.log(`${name}: ${total.toFixed(1)} ms sampled; ${top.join('; ')}`);
  }
}

async function main() {
  progress(`attaching ${DEVICES} devices into ${dir} (in-process)`);
  await fill();
  if (interrupted) return;
  const commands = [
    { name: 'node -e 0', argv: [process.execPath, '-e', '0'] },
    { name: 'util-linux -l, host', argv: [UL, '-l'], base: 'util-linux -l, host' },
    { name: 'floor -l (node + its syscalls)', argv: [process.execPath, FLOOR_L], base: 'util-linux -l, host' },
    { name: 'ours -l, host', argv: [OURS, '-l'], base: 'util-linux -l, host', lines: true },
    { name: 'ours -l, instance', argv: [OURS, '--instance', dir, '-l'], base: 'util-linux -l, host', lines: true },
    ...(BASE
      ? [
          { name: 'base -l, host', argv: [BASE, '-l'], base: 'util-linux -l, host', lines: true },
          { name: 'base -l, instance', argv: [BASE, '--instance', dir, '-l'], base: 'util-linux -l, host', lines: true },
        ]
      : []),
    { name: 'util-linux -a, host', argv: [UL, '-a'], base: 'util-linux -a, host' },
    { name: 'floor -a (node + its syscalls)', argv: [process.execPath, FLOOR_A], base: 'util-linux -a, host' },
    { name: 'ours -a, host', argv: [OURS, '-a'], base: 'util-linux -a, host', lines: true },
    { name: 'ours -a, instance', argv: [OURS, '--instance', dir, '-a'], base: 'util-linux -a, host', lines: true },
    ...(BASE
      ? [
          { name: 'base -a, host', argv: [BASE, '-a'], base: 'util-linux -a, host', lines: true },
          { name: 'base -a, instance', argv: [BASE, '--instance', dir, '-a'], base: 'util-linux -a, host', lines: true },
        ]
      : []),
  ];
  const samples = new Map(commands.map((c) => [c.name, []]));
  const cpu = new Map(commands.map((c) => [c.name, 0]));
  const lines = new Map();
  progress(`${commands.length} commands x ${RUNS} runs, interleaved`);
  for (let i = 0; i < RUNS && !interrupted; i++) {
    for (const c of commands) {
      let r = run(c.argv);
      // the checkout is shared: a rebuild of the addon by someone else removes it for a
      // few seconds; such a run is retried once, and not counted
      if (r.rc !== 0) {
        await new Promise((res) => setTimeout(res, 10_000));
        r = run(c.argv);
      }
      if (r.rc !== 0) throw new Error(`${c.name}: exit ${r.rc}: ${r.err.trim()}`);
      samples.get(c.name).push(r.ms);
      cpu.set(c.name, cpu.get(c.name) + r.cpu);
      if (c.lines) lines.set(c.name, r.out.split('\n').filter((l) => /loop\d+/.test(l)).length);
    }
    await new Promise((res) => setImmediate(res));
  }
  const node = median(samples.get('node -e 0'));
  const meanCpu = (name) => cpu.get(name) / samples.get(name).length;
  const rows = commands.map((c) => {
    const m = median(samples.get(c.name));
    const u = meanCpu(c.name);
    return [
      c.name,
      lines.has(c.name) ? String(lines.get(c.name)) : '-',
      fmt(m),
      c.base ? fmt(m / median(samples.get(c.base)), 2) : '-',
      fmt(m / node, 2),
      fmt(u),
      c.base ? fmt(u / meanCpu(c.base), 2) : '-',
      fmt(u / meanCpu('node -e 0'), 2),
    ];
  });
  const header = ['command', 'devices', 'median ms', 'x util-linux', 'x node -e 0', 'cpu ms (mean)', 'cpu x util-linux', 'cpu x node -e 0'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r) => r.map((v, i) => (i === 0 ? v.padEnd(widths[i]) : v.padStart(widths[i]))).join('  ');
  const ca = env.NODE_EXTRA_CA_CERTS ? `, NODE_EXTRA_CA_CERTS=${env.NODE_EXTRA_CA_CERTS}` : '';
  console.log(`\nlisting with ${DEVICES} devices in one instance (median of ${RUNS}, node ${process.version}${ca})`);
  console.log(line(header));
  for (const r of rows) console.log(line(r));
  if (process.env.BENCH_PROFILE) profiles(process.env.BENCH_PROFILE);
  if (process.env.BENCH_STRACE) {
    console.log('\nsyscalls (strace -c -f), host listing');
    for (const [name, argv] of [['util-linux -l', [UL, '-l']], ['ours -l', [OURS, '-l']], ['util-linux -a', [UL, '-a']], ['ours -a', [OURS, '-a']]]) {
      const s = strace(argv);
      if (!s) {
        console.log(`${name}: strace failed`);
        continue;
      }
      const top = ['openat', 'read', 'close', 'newfstatat', 'statx', 'fcntl', 'ioctl'].filter((k) => s.counts[k]).map((k) => `${k} ${s.counts[k]}`);
      console.log(`${name.padEnd(14)} total ${s.total}: ${top.join(', ')}`);
    }
  }
}

try {
  await main();
} finally {
  progress(`destroying ${dir}`);
  let r = run([LOOPFS, 'instance', 'destroy', dir]);
  // as above: retried while the addon may be in the middle of a rebuild (devices must go)
  for (let i = 0; r.rc !== 0 && i < 10; i++) {
    await new Promise((res) => setTimeout(res, 3000));
    r = run([LOOPFS, 'instance', 'destroy', dir]);
  }
  if (r.rc !== 0) {
    console.error(`cleanup: instance destroy ${dir}: ${r.err.trim()}; keeping ${tmp}`);
    process.exitCode = 1;
  } else rmSync(tmp, { recursive: true, force: true });
}
