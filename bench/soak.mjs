#!/usr/bin/env node
// The long profile of the chaos soak (issue 16): runs test/chaos/soak.test.ts (the driver in
// test/chaos/driver.ts) for --minutes, then prints the figures the issue asks for: operations
// per second held, p50/p99 latency of attach through each path (with ratios against
// `node -e 0` and against util-linux `losetup -f --show` on the host), kills survived,
// faults injected and leaks found.
//
//   node bench/soak.mjs [--minutes 30] [--seed N] [--no-podman] [--restart-ms 2000] [--kill-every-ms 400] [--rss-warmup-s 300] [--view-workers 3]
//
// Root, a real loop driver, and minutes of the whole machine. The driver only touches what it
// created (its sandbox under /tmp, its own users loopfstest and loopfstest2, its own podman
// storage); the baselines attach and detach one device of their own.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}
const minutes = Number(arg('minutes', '30'));
const seed = Number(arg('seed', String(Date.now() % 1_000_000)));
const podman = !process.argv.includes('--no-podman');
// the units say RestartSec=2 (contrib/*.service)
const restartMs = Number(arg('restart-ms', '2000'));
const killEveryMs = Number(arg('kill-every-ms', '400'));
// RSS growth is judged from this point of the run on (test/chaos/driver.ts growth())
const rssWarmup = Number(arg('rss-warmup-s', '300'));
// util-linux workers per activated view: cheap operations, so a 30-minute run on a 2-core
// machine reaches the 20,000 (each of our CLIs costs a node start-up)
const viewWorkers = Number(arg('view-workers', '3'));
if (!(minutes > 0)) {
  console.error('soak: --minutes must be a positive number');
  process.exit(1);
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Median wall time of a command, in ms. */
function timeIt(file, args, runs = 15) {
  const t = [];
  for (let i = 0; i < runs; i++) {
    const s = performance.now();
    const r = spawnSync(file, args, { stdio: 'ignore' });
    if (r.status !== 0) throw new Error(`${file} ${args.join(' ')}: exit ${r.status}`);
    t.push(performance.now() - s);
  }
  return median(t);
}

// --- baselines: node start-up, util-linux attach on the host, reading the raw backing file
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-soak-base-'));
const file = path.join(tmp, 'base.img');
fs.writeFileSync(file, Buffer.alloc(1 << 20));
const nodeMs = timeIt(process.execPath, ['-e', '0']);
const rawMs = timeIt('cat', [file]);
const ulAttach = [];
try {
  for (let i = 0; i < 15; i++) {
    const s = performance.now();
    const r = spawnSync('/usr/sbin/losetup', ['-f', '--show', file], { encoding: 'utf8' });
    ulAttach.push(performance.now() - s);
    if (r.status === 0) spawnSync('/usr/sbin/losetup', ['-d', r.stdout.trim()]);
  }
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}
const ulMs = median(ulAttach);

// --- the soak itself
const reportFile = path.join(os.tmpdir(), `loopfs-soak-${process.pid}.json`);
console.log(`soak: ${minutes} min, seed ${seed}, podman ${podman ? 'on' : 'off'}, restart ${restartMs} ms, a kill every ~${killEveryMs} ms, ${viewWorkers} util-linux worker(s) per view`);
const run = spawnSync(path.join(ROOT, 'node_modules', '.bin', 'vitest'), ['run', 'test/chaos/soak.test.ts'], {
  cwd: ROOT,
  stdio: 'inherit',
  env: {
    ...process.env,
    LOOPFS_CHAOS: '1',
    LOOPFS_CHAOS_SECONDS: String(Math.round(minutes * 60)),
    LOOPFS_CHAOS_SEED: String(seed),
    LOOPFS_CHAOS_PODMAN: podman ? '1' : '0',
    LOOPFS_CHAOS_RESTART_MS: String(restartMs),
    LOOPFS_CHAOS_KILL_EVERY_MS: String(killEveryMs),
    LOOPFS_CHAOS_RSS_WARMUP_SECONDS: String(rssWarmup),
    LOOPFS_CHAOS_VIEW_WORKERS: String(viewWorkers),
    LOOPFS_CHAOS_REPORT: reportFile,
  },
});
if (!fs.existsSync(reportFile)) {
  console.error(`soak: the run wrote no report (vitest exit ${run.status})`);
  process.exit(run.status || 1);
}
const rep = JSON.parse(fs.readFileSync(reportFile, 'utf8'));
fs.rmSync(reportFile);

function table(head, rows) {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  // figures right-aligned, words left-aligned
  const numeric = (c) => /^-?[\d.]+$/.test(String(c)) || String(c) === '-';
  const line = (cells) => cells.map((c, i) => (numeric(c) ? String(c).padStart(w[i]) : String(c).padEnd(w[i]))).join('  ').trimEnd();
  console.log(line(head));
  for (const r of rows) console.log(line(r));
  console.log('');
}
const f1 = (x) => (Number.isFinite(x) ? x.toFixed(1) : '-');
const f2 = (x) => (Number.isFinite(x) ? x.toFixed(2) : '-');

console.log('');
console.log(`baselines (median): node -e 0 ${f1(nodeMs)} ms; util-linux losetup -f --show ${f1(ulMs)} ms; cat of the raw 1 MiB backing file ${f1(rawMs)} ms`);
console.log('');
const totalKills = Object.values(rep.kills).reduce((a, b) => a + b, 0);
const leaks = Object.entries(rep.leaks).reduce((a, [, v]) => a + v.length, 0);
table(
  ['figure', 'value'],
  [
    ['duration (s)', f1(rep.seconds)],
    ['operations (successful)', rep.ops],
    ['operations per second held', f2(rep.opsPerSecond)],
    ['SIGKILLs survived', totalKills],
    ['daemon restarts', Object.values(rep.restarts).reduce((a, b) => a + b, 0)],
    ['faults injected', rep.faults.reduce((a, f) => a + f.injected, 0)],
    ['faults with a problem', rep.faults.filter((f) => f.problems.length).length],
    ['failures not one clear line / hangs', rep.badFailures.length],
    ['leaks found', leaks],
  ],
);
table(
  ['path', 'ops', 'p50 ms', 'p99 ms', 'p50/node -e 0', 'p50/util-linux', 'p50/raw file'],
  Object.entries(rep.latency).map(([p, l]) => [p, l.ops, f1(l.p50), f1(l.p99), f2(l.p50 / nodeMs), f2(l.p50 / ulMs), f2(l.p50 / rawMs)]),
);
table(['killed', 'count'], Object.entries(rep.kills).map(([k, v]) => [k, v]));
table(['fault', 'injected', 'problems'], rep.faults.map((f) => [f.name, f.injected, f.problems.length ? f.problems.join('; ') : 'none']));
for (const f of rep.faults) for (const n of f.notes) console.log(`  ${f.name}: ${n}`);
console.log('');
table(
  ['daemon', 'fds first', 'fds last', 'RSS first KiB', 'RSS last KiB', 'RSS judged'],
  Object.entries(rep.growth).map(([d, g]) => [d, g.fdsFirst, g.fdsLast, g.rssFirstKiB, g.rssLastKiB, g.rssJudged ? `yes (after ${rssWarmup} s)` : 'no: run shorter than the warm-up']),
);
for (const [d, g] of Object.entries(rep.growth)) console.log(`RSS of ${d}, lowest of each tenth of the run (MiB): ${g.rssCurveKiB.map((x) => (x / 1024).toFixed(0)).join(' ')}`);
console.log('');
table(['leak', 'count'], Object.entries(rep.leaks).map(([k, v]) => [k, v.length]));
if (Object.keys(rep.failures).length) {
  table(['failure (not killed)', 'count'], Object.entries(rep.failures).sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, v]));
}
for (const b of rep.badFailures.slice(0, 20)) console.log(`bad failure: ${b}`);
process.exit(run.status ?? 1);
