#!/usr/bin/env node
// `loopfs run` measured: round trips of unmodified `mount -o loop IMG DIR` + `umount DIR`
//
//   host root       root in a private mount namespace on the host: no filter, the kernel mounts
//   host root, DEV  the same with the container's /dev (the activated instance /dev) bound over
//                   /dev: util-linux then scans the same few nodes as in the container. With the
//                   host's /dev, mount -o loop looks at every bound loop device of the machine
//                   (LOOP_GET_STATUS64 on each, to find an overlapping one), so "host root"
//                   grows with whatever else is attached; this row does not
//   run, root       the same under `loopfs run` (root is privileged: every trapped mount(2) is
//                   continued to the kernel): the cost of the trap and the supervisor's check
//   run, userns     an unprivileged user's user-namespace root with an activated instance /dev
//                   under `loopfs run`: the supervisor resolves the source in the caller's
//                   namespaces, checks the device, builds the mount and moves it in
//
// A second table times the syscalls alone: mount(2) + umount2(2) of a device attached once,
// in a loop of a small C program (built with gcc into the temp dir), as host root (with the
// instance /dev) and as the user-namespace root under `loopfs run`: the interception's own
// cost, without util-linux's device scan and process start-ups.
//
// Each mode runs one loop of N round trips (the loop's own start is outside the timed part);
// R repetitions, interleaved, the median per round trip is reported with the ratio to the
// first row. BENCH_COMPARE=/other/checkout/bin/loopfs adds the `loopfs run` rows run with
// that build too, in the same run (before/after). Not a test: nothing here asserts.
// Everything lives in private mount namespaces and a temp dir; the instance is destroyed at
// the end.
//
//   node bench/interception.mjs [round-trips] [repetitions]      (default 40 and 3)
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const LOOPFS = path.join(root, 'bin', 'loopfs');
const N = Number(process.argv[2] ?? 40);
const R = Number(process.argv[3] ?? 3);

if (process.getuid?.() !== 0) {
  console.error('bench/interception: needs root');
  process.exit(1);
}
if (!fs.existsSync(path.join(root, 'dist', 'commands', 'run.js'))) {
  console.error('bench/interception: dist/commands/run.js missing: run `npm run build`');
  process.exit(1);
}

function user() {
  for (const name of ['loopfstest', 'nobody']) {
    const r = spawnSync('id', ['-u', name], { encoding: 'utf8' });
    if (r.status === 0) return { uid: Number(r.stdout), gid: Number(spawnSync('id', ['-g', name], { encoding: 'utf8' }).stdout) };
  }
  throw new Error('no unprivileged user (loopfstest or nobody)');
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-bench-run-'));
fs.chmodSync(tmp, 0o755);
const env = { ...process.env, LOOPFS_RUNTIME_DIR: path.join(tmp, 'run'), LOOPFS_LIMITS: path.join(tmp, 'limits'), LANG: 'C.UTF-8' };
delete env.LOOPFS_INSTANCE;
const u = user();
const inst = path.join(tmp, 'inst');
const dev = path.join(tmp, 'dev');
const img = path.join(tmp, 'fs.img');
const mnt = path.join(tmp, 'mnt');

// The timed loop: prints the nanoseconds N round trips took.
const LOOP = `t0=$(date +%s%N); i=0; while [ $i -lt ${N} ]; do /usr/bin/mount -o loop "$IMG" "$MNT" || exit 1; /usr/bin/umount "$MNT" || exit 1; i=$((i+1)); done; echo $(( $(date +%s%N) - t0 ))`;

function timed(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...env, IMG: img, MNT: mnt, D: dev }, stdio: ['ignore', 'pipe', 'pipe'] });
  const ns = Number(r.stdout.trim().split('\n').pop());
  if (r.status !== 0 || !Number.isFinite(ns)) throw new Error(`${cmd} ${args.join(' ')}: rc ${r.status}: ${r.stdout}${r.stderr}`);
  return ns / 1e6 / N;
}

const userns = (script) => ['setpriv', '--reuid', String(u.uid), '--regid', String(u.gid), '--clear-groups', 'unshare', '-r', '-m', 'sh', '-c', script];
const quoted = (argv) => argv.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
/** argv of `loopfs run` (binary `bin`) running SCRIPT as the user's user-namespace root with DEV as /dev. */
const underRun = (bin, script) => [bin, ['run', '--instance', inst, '--', 'unshare', '-m', '--propagation', 'private', 'sh', '-c', `mount --bind "$D" /dev && exec ${quoted(userns(script))}`]];
const hostWithDev = (script) => ['unshare', ['-m', '--propagation', 'private', 'sh', '-c', `mount --bind "$D" /dev && ${script}`]];
const loopfsBuilds = [['', LOOPFS], ...(process.env.BENCH_COMPARE ? [[' (compare)', process.env.BENCH_COMPARE]] : [])];

const modes = [
  ['host root', () => timed('unshare', ['-m', '--propagation', 'private', 'sh', '-c', LOOP])],
  ['host root, DEV', () => timed(...hostWithDev(LOOP))],
  ...loopfsBuilds.flatMap(([tag, bin]) => [
    [`run, root${tag}`, () => timed(bin, ['run', '--instance', inst, '--', 'unshare', '-m', '--propagation', 'private', 'sh', '-c', LOOP])],
    [`run, userns${tag}`, () => timed(...underRun(bin, LOOP))],
  ]),
];

// The syscall loop: attach once (util-linux, so the device is the instance's in the
// container), then N x mount(2) + umount2(2); prints nanoseconds per mount and per umount.
const SYSCALLS_C = `#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include <sys/mount.h>
static long long now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000LL + t.tv_nsec; }
int main(int argc, char** argv) {
  int n = atoi(argv[1]);
  long long m = 0, u = 0;
  for (int i = 0; i < n; i++) {
    long long a = now();
    if (mount(argv[2], argv[3], "ext4", 0, NULL) < 0) { fprintf(stderr, "mount: %s\\n", strerror(errno)); return 1; }
    long long b = now();
    if (umount2(argv[3], 0) < 0) { fprintf(stderr, "umount2: %s\\n", strerror(errno)); return 1; }
    m += b - a;
    u += now() - b;
  }
  printf("%lld %lld\\n", m / n, u / n);
  return 0;
}
`;
const syscallsBin = path.join(tmp, 'mount-loop');
const SYSCALLS = `DEV=$(/usr/sbin/losetup -f --show "$IMG") || exit 1; "$BIN" ${N} "$DEV" "$MNT"; rc=$?; /usr/sbin/losetup -d "$DEV"; exit $rc`;

/** [mount ms, umount ms] per call of the syscall loop. */
function syscalls(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...env, IMG: img, MNT: mnt, D: dev, BIN: syscallsBin }, stdio: ['ignore', 'pipe', 'pipe'] });
  const [m, u] = r.stdout.trim().split('\n').pop().split(' ').map(Number);
  if (r.status !== 0 || !Number.isFinite(m) || !Number.isFinite(u)) throw new Error(`${cmd} ${args.join(' ')}: rc ${r.status}: ${r.stdout}${r.stderr}`);
  return [m / 1e6, u / 1e6];
}

const syscallModes = [
  ['host root, DEV', () => syscalls(...hostWithDev(SYSCALLS))],
  ...loopfsBuilds.map(([tag, bin]) => [`run, userns${tag}`, () => syscalls(...underRun(bin, SYSCALLS))]),
];

/** Print rows [name, ...numbers] with the ratio of column `col` to the first row's. */
function table(title, columns, rows, col) {
  console.log(title);
  const base = rows[0][col + 1];
  const cells = rows.map(([name, ...v]) => [name, ...v.map((x) => x.toFixed(2)), (v[col] / base).toFixed(2) + 'x']);
  const head = ['mode', ...columns, 'ratio'];
  const w = head.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
  console.log(head.map((h, i) => (i ? h.padStart(w[i]) : h.padEnd(w[i]))).join('  '));
  for (const c of cells) console.log(c.map((x, i) => (i ? x.padStart(w[i]) : x.padEnd(w[i]))).join('  '));
}

try {
  fs.mkdirSync(mnt);
  fs.mkdirSync(dev);
  execFileSync('mkfs.ext4', ['-q', '-F', img, '8M'], { stdio: 'pipe' });
  for (const p of [img, mnt]) fs.chownSync(p, u.uid, u.gid);
  execFileSync(LOOPFS, ['instance', 'create', inst, '--owner', `${u.uid}:${u.gid}`], { env, stdio: 'pipe' });
  execFileSync(LOOPFS, ['activate', inst, '--dev', dev, '--pool', '2'], { env, stdio: 'pipe' });

  execFileSync('gcc', ['-O2', '-x', 'c', '-o', syscallsBin, '-'], { input: SYSCALLS_C, stdio: ['pipe', 'pipe', 'pipe'] });
  fs.chmodSync(syscallsBin, 0o755);

  const results = new Map(modes.map(([name]) => [name, []]));
  const sysResults = new Map(syscallModes.map(([name]) => [name, []]));
  for (let r = 0; r < R; r++) {
    for (const [name, fn] of modes) results.get(name).push(fn());
    for (const [name, fn] of syscallModes) sysResults.get(name).push(fn());
  }
  table(
    `mount -o loop + umount round trips (${N} per run, median of ${R} runs, ms per round trip; ratio to host root)`,
    ['ms'],
    modes.map(([name]) => [name, median(results.get(name))]),
    0,
  );
  const withDev = median(results.get('host root, DEV'));
  console.log(`ratio to "host root, DEV": ${modes.slice(2).map(([name]) => `${name} ${(median(results.get(name)) / withDev).toFixed(2)}x`).join(', ')}`);
  console.log('');
  table(
    `mount(2) + umount2(2) of an attached device (${N} per run, median of ${R} runs, ms per call; ratio of the sum)`,
    ['mount', 'umount', 'sum'],
    syscallModes.map(([name]) => {
      const m = median(sysResults.get(name).map((x) => x[0]));
      const u = median(sysResults.get(name).map((x) => x[1]));
      return [name, m, u, m + u];
    }),
    2,
  );
} finally {
  spawnSync(LOOPFS, ['instance', 'destroy', '--force', inst], { env, stdio: 'ignore' });
  spawnSync(LOOPFS, ['instance', 'gc'], { env, stdio: 'ignore' });
  fs.rmSync(tmp, { recursive: true, force: true });
}
