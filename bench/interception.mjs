#!/usr/bin/env node
// `loopfs run` measured: round trips of unmodified `mount -o loop IMG DIR` + `umount DIR`
//
//   host root     root in a private mount namespace on the host: no filter, the kernel mounts
//   run, root     the same under `loopfs run` (root is privileged: every trapped mount(2) is
//                 continued to the kernel): the cost of the trap and the supervisor's check
//   run, userns   an unprivileged user's user-namespace root with an activated instance /dev
//                 under `loopfs run`: the supervisor resolves the source in the caller's
//                 namespaces, checks the device, builds the mount and moves it in
//
// Each mode runs one shell loop of N round trips (the loop's own start is outside the timed
// part); R repetitions, the median per round trip is reported with the ratio to host root.
// Not a test: nothing here asserts. Everything lives in private mount namespaces and a temp
// dir; the instance is destroyed at the end.
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

const userns = ['setpriv', '--reuid', String(u.uid), '--regid', String(u.gid), '--clear-groups', 'unshare', '-r', '-m', 'sh', '-c', LOOP];
const modes = [
  ['host root', () => timed('unshare', ['-m', '--propagation', 'private', 'sh', '-c', LOOP])],
  ['run, root', () => timed(LOOPFS, ['run', '--instance', inst, '--', 'unshare', '-m', '--propagation', 'private', 'sh', '-c', LOOP])],
  [
    'run, userns',
    () =>
      timed(LOOPFS, [
        'run', '--instance', inst, '--', 'unshare', '-m', '--propagation', 'private', 'sh', '-c',
        `mount --bind "$D" /dev && exec ${userns.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ')}`,
      ]),
  ],
];

try {
  fs.mkdirSync(mnt);
  fs.mkdirSync(dev);
  execFileSync('mkfs.ext4', ['-q', '-F', img, '8M'], { stdio: 'pipe' });
  for (const p of [img, mnt]) fs.chownSync(p, u.uid, u.gid);
  execFileSync(LOOPFS, ['instance', 'create', inst, '--owner', `${u.uid}:${u.gid}`], { env, stdio: 'pipe' });
  execFileSync(LOOPFS, ['activate', inst, '--dev', dev, '--pool', '2'], { env, stdio: 'pipe' });

  const results = new Map(modes.map(([name]) => [name, []]));
  for (let r = 0; r < R; r++) for (const [name, fn] of modes) results.get(name).push(fn());
  const base = median(results.get('host root'));
  console.log(`mount -o loop + umount round trips (${N} per run, median of ${R} runs, ms per round trip)`);
  const rows = modes.map(([name]) => [name, median(results.get(name)).toFixed(2), (median(results.get(name)) / base).toFixed(2) + 'x']);
  const w = [Math.max(...rows.map((r) => r[0].length), 4), 8, 6];
  console.log(['mode'.padEnd(w[0]), 'ms'.padStart(w[1]), 'ratio'.padStart(w[2])].join('  '));
  for (const r of rows) console.log([r[0].padEnd(w[0]), r[1].padStart(w[1]), r[2].padStart(w[2])].join('  '));
} finally {
  spawnSync(LOOPFS, ['instance', 'destroy', '--force', inst], { env, stdio: 'ignore' });
  spawnSync(LOOPFS, ['instance', 'gc'], { env, stdio: 'ignore' });
  fs.rmSync(tmp, { recursive: true, force: true });
}
