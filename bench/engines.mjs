#!/usr/bin/env node
// bin/loopfs-runtime measured in real engines (issue 12):
//
//   start-to-exit   a container running `true`, from the engine's CLI call to its exit, per
//                   engine (docker, containerd via ctr, podman), three ways: plain runc, the
//                   wrapper for a container that does not opt in (targets <= 1.02x), and the
//                   wrapper for one that opts in (instance, hooks, seccomp agent; <= 1.3x)
//   mount round trip  unmodified `mount -o loop IMG DIR` + `umount DIR` inside a container
//                   with a user namespace (rootful podman --uidmap through the wrapper: the
//                   agent in `loopfs oci-broker` performs the mount), as a ratio to root on the
//                   host in a private mount namespace (target <= 1.3x). The container's root
//                   has no CAP_SYS_ADMIN: both mount(2) and umount2(2) go through the agent.
//
// Start-to-exit runs are interleaved (machine noise hits every mode alike); medians are
// reported with the ratio to plain runc of the same engine. Not a test: nothing here asserts.
// Daemons, storage, instances and images live in a temp dir; every daemon is ours, started
// with private roots and sockets and stopped by pid at the end (the fixtures of test/engines
// import vitest, so this script has its own small launchers).
//
//   node bench/engines.mjs [runs] [round-trips]      (default 15 and 30)
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const LOOPFS = path.join(root, 'bin', 'loopfs');
const WRAPPER = path.join(root, 'bin', 'loopfs-runtime');
const RUNC = '/usr/sbin/runc';
const DOCKER = fs.existsSync('/usr/bin/docker') ? '/usr/bin/docker' : 'docker';
const RUNS = Number(process.argv[2] ?? 15);
const N = Number(process.argv[3] ?? 30);
const PATH_ENV = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

if (process.getuid?.() !== 0) {
  console.error('bench/engines: needs root');
  process.exit(1);
}
for (const [file, what] of [[WRAPPER, 'bin/loopfs-runtime'], [path.join(root, 'dist', 'oci', 'runtime-main.js'), 'dist (npm run build)']]) {
  if (!fs.existsSync(file)) {
    console.error(`bench/engines: ${what} missing`);
    process.exit(1);
  }
}
const has = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-bench-engines-'));
fs.chmodSync(tmp, 0o755);
const runtime = path.join(tmp, 'run');
const env = { PATH: PATH_ENV, LANG: 'C.UTF-8', HOME: tmp, LOOPFS_RUNTIME_DIR: runtime, LOOPFS_LIMITS: path.join(tmp, 'limits') };
const daemons = [];

/**
 * A daemon of ours, its output in a log file: a pipe would fill while the timed runs block
 * this process's event loop (spawnSync), and dockerd stops at its next log line. `ready()`
 * polls until it answers.
 */
async function daemon(name, cmd, args, ready) {
  const log = path.join(tmp, `${name.replace(/\W+/g, '-')}.log`);
  const fd = fs.openSync(log, 'a');
  const child = spawn(cmd, args, { env, stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  const d = { name, child, pids: [] };
  daemons.push(d);
  const out = () => fs.readFileSync(log, 'utf8');
  for (let i = 0; i < 600; i++) {
    if (child.exitCode !== null) break;
    if (await ready(out())) return d;
    await sleep(100);
  }
  throw new Error(`${name} did not start: ${out().slice(-2000)}`);
}

function alive(pid) {
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

async function stopPid(pid) {
  if (!(pid > 1) || !alive(pid)) return;
  process.kill(pid, 'SIGTERM');
  for (let i = 0; i < 200 && alive(pid); i++) await sleep(100);
  if (alive(pid)) process.kill(pid, 'SIGKILL');
}

function ok(cmd, args, what = `${cmd} ${args.join(' ')}`) {
  const r = spawnSync(cmd, args, { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.status !== 0) throw new Error(`${what}: rc ${r.status}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

const HANG_MS = 60_000;

/**
 * Wall time of one command, in ms (it must succeed), or null when it hung: such a run is
 * killed after HANG_MS, counted (the table's "hung"), and `unstick` removes what it left.
 */
function timedRun(argv, unstick) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(argv[0], argv.slice(1), { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: HANG_MS, killSignal: 'SIGKILL' });
  if (r.error?.code === 'ETIMEDOUT') {
    unstick?.();
    return null;
  }
  if (r.status !== 0) throw new Error(`${argv.join(' ')}: rc ${r.status}: ${r.stdout}${r.stderr}`);
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

// ------------------------------------------------------------------ fixtures

function buildRootfs(dir) {
  for (const d of ['bin', 'dev', 'proc', 'sys', 'tmp', 'etc', 'usr', 'mnt', 'run']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(dir, 'bin', 'busybox'));
  fs.chmodSync(path.join(dir, 'bin', 'busybox'), 0o755);
  for (const a of execFileSync('/bin/busybox', ['--list'], { encoding: 'utf8' }).split('\n')) {
    if (a && a !== 'busybox') fs.symlinkSync('busybox', path.join(dir, 'bin', a));
  }
  for (const [l, t] of [['lib', 'usr/lib'], ['lib64', 'usr/lib64'], ['sbin', 'usr/sbin'], ['etc/mtab', '../proc/self/mounts']]) fs.symlinkSync(t, path.join(dir, l));
  for (const f of ['img', 'etc/hosts', 'etc/hostname', 'etc/resolv.conf', 'run/.containerenv']) fs.writeFileSync(path.join(dir, f), '');
}

const rootfs = path.join(tmp, 'rootfs');
const img = path.join(tmp, 'fs.img');
const mnt = path.join(tmp, 'mnt');
const shim = path.join(tmp, 'loopfs-runtime');
const shimConfig = path.join(tmp, 'runtime.json');
const MAP = 400000;

const results = new Map();
const hung = new Map();
const record = (name, ms) => {
  if (ms === null) hung.set(name, (hung.get(name) ?? 0) + 1);
  else (results.get(name) ?? results.set(name, []).get(name)).push(ms);
};

try {
  buildRootfs(rootfs);
  fs.mkdirSync(mnt);
  execFileSync('mkfs.ext4', ['-q', '-F', img, '8M'], { stdio: 'pipe' });
  fs.chownSync(img, MAP, MAP);
  fs.writeFileSync(shimConfig, JSON.stringify({ runtime: RUNC, env: { LOOPFS_RUNTIME_DIR: runtime, LOOPFS_LIMITS: env.LOOPFS_LIMITS } }));
  fs.writeFileSync(shim, `#!/bin/sh\nLOOPFS_RUNTIME_CONFIG=${shimConfig} exec ${WRAPPER} "$@"\n`, { mode: 0o755 });
  await daemon('loopfs oci-broker', LOOPFS, ['oci-broker'], (out) => out.includes('ready\n'));

  const engines = [];

  if (has('dockerd')) {
    const base = path.join(tmp, 'docker');
    for (const d of ['data', 'exec', 'client']) fs.mkdirSync(path.join(base, d), { recursive: true });
    const sock = path.join(base, 'docker.sock');
    fs.writeFileSync(path.join(base, 'daemon.json'), JSON.stringify({ iptables: false, ip6tables: false, bridge: 'none', runtimes: { loopfs: { path: shim } } }));
    const docker = [DOCKER, '--config', path.join(base, 'client'), '-H', `unix://${sock}`];
    const d = await daemon('dockerd', 'dockerd', [
      '--data-root', path.join(base, 'data'), '--exec-root', path.join(base, 'exec'), '--pidfile', path.join(base, 'docker.pid'),
      '-H', `unix://${sock}`, '--config-file', path.join(base, 'daemon.json'),
    ], () => fs.existsSync(sock) && spawnSync(docker[0], [...docker.slice(1), 'version'], { stdio: 'ignore', env }).status === 0);
    d.pids.push(() => Number(fs.readFileSync(path.join(base, 'exec', 'containerd', 'containerd.pid'), 'utf8')));
    const tar = path.join(tmp, 'rootfs.tar');
    execFileSync('tar', ['-C', rootfs, '-cf', tar, '.']);
    ok(docker[0], [...docker.slice(1), 'import', tar, 'loopfs-bench/busybox']);
    const run = (extra) => [...docker, 'run', '--rm', '--network', 'none', ...extra, 'loopfs-bench/busybox', 'true'];
    engines.push({
      name: 'docker',
      unstick: () => {
        const ids = ok(docker[0], [...docker.slice(1), 'ps', '-aq']).split('\n').filter(Boolean);
        if (ids.length) ok(docker[0], [...docker.slice(1), 'rm', '-f', ...ids]);
      },
      modes: [
        ['runc', run([])],
        ['wrapper, not opted in', run(['--runtime', 'loopfs'])],
        ['wrapper, opted in', run(['--runtime', 'loopfs', '-e', 'LOOPFS_OCI=1'])],
      ],
    });
  }

  if (has('containerd') && has('ctr')) {
    const base = path.join(tmp, 'containerd');
    for (const d of ['root', 'state', 'fifo', 'runc']) fs.mkdirSync(path.join(base, d), { recursive: true });
    const sock = path.join(base, 'containerd.sock');
    fs.writeFileSync(path.join(base, 'config.toml'), `version = 2
root = "${base}/root"
state = "${base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "${sock}"
[ttrpc]
  address = "${sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
`);
    await daemon('containerd', 'containerd', ['--config', path.join(base, 'config.toml')], () => fs.existsSync(sock) && spawnSync('ctr', ['-a', sock, 'version'], { stdio: 'ignore' }).status === 0);
    let n = 0;
    const run = (binary, extra) => () => [
      'ctr', '-a', sock, 'run', '--rm', '--fifo-dir', path.join(base, 'fifo'), '--runc-root', path.join(base, 'runc'), '--runc-binary', binary,
      ...extra, '--rootfs', rootfs, `bench-${++n}`, '/bin/true',
    ];
    const ctr = ['ctr', '-a', sock];
    engines.push({
      name: 'containerd',
      unstick: () => {
        for (const id of ok(ctr[0], [...ctr.slice(1), 'containers', 'ls', '-q']).split('\n').filter(Boolean)) {
          spawnSync(ctr[0], [...ctr.slice(1), 'task', 'delete', '-f', id], { env, stdio: 'ignore' });
          spawnSync(ctr[0], [...ctr.slice(1), 'containers', 'rm', id], { env, stdio: 'ignore' });
        }
      },
      modes: [
        ['runc', run(RUNC, [])],
        ['wrapper, not opted in', run(shim, [])],
        ['wrapper, opted in', run(shim, ['--annotation', 'io.loopfs.instance=true'])],
      ],
    });
  }

  let podman = null;
  if (has('podman')) {
    const base = path.join(tmp, 'podman');
    for (const d of ['root', 'runroot', 'tmp']) fs.mkdirSync(path.join(base, d), { recursive: true });
    fs.writeFileSync(path.join(base, 'containers.conf'), '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n[engine]\nruntime = "runc"\n');
    fs.mkdirSync(path.join(base, 'hooks'));
    env.CONTAINERS_CONF = path.join(base, 'containers.conf');
    env.TMPDIR = path.join(base, 'tmp');
    podman = ['podman', '--root', path.join(base, 'root'), '--runroot', path.join(base, 'runroot'), '--hooks-dir', path.join(base, 'hooks')];
    const run = (extra) => [...podman, 'run', '--rm', '--network', 'none', ...extra, '--rootfs', rootfs, 'true'];
    engines.push({
      name: 'podman',
      unstick: () => spawnSync(podman[0], [...podman.slice(1), 'rm', '-a', '-f', '-t', '0'], { env, stdio: 'ignore' }),
      modes: [
        ['runc', run(['--runtime', RUNC])],
        ['wrapper, not opted in', run(['--runtime', shim])],
        ['wrapper, opted in', run(['--runtime', shim, '--annotation', 'io.loopfs.instance=true'])],
      ],
    });
  }

  // one warm-up run each (first-use costs: image layers, page cache), then interleaved runs
  const argvOf = (m) => (typeof m[1] === 'function' ? m[1]() : m[1]);
  for (const e of engines) for (const m of e.modes) timedRun(argvOf(m), e.unstick);
  for (let r = 0; r < RUNS; r++) for (const e of engines) for (const m of e.modes) record(`${e.name}|${m[0]}`, timedRun(argvOf(m), e.unstick));

  console.log(`container start-to-exit of \`true\` (median of ${RUNS} runs, ms; ratio to plain runc of the same engine)`);
  const rows = [];
  for (const e of engines) {
    const base = median(results.get(`${e.name}|runc`));
    for (const [mode] of e.modes) {
      const ms = median(results.get(`${e.name}|${mode}`));
      rows.push([e.name, mode, String(hung.get(`${e.name}|${mode}`) ?? 0), ms.toFixed(0), `${(ms / base).toFixed(2)}x`]);
    }
  }
  table(['engine', 'mode', 'hung', 'ms', 'ratio'], rows, 2);

  // ---------------------------------------------------------------- mount round trips
  if (podman) {
    const LOOP = `t0=$(date +%s%N); i=0; while [ $i -lt ${N} ]; do /usr/bin/mount -o loop "$IMG" "$MNT" || exit 1; /usr/bin/umount "$MNT" || exit 1; i=$((i+1)); done; echo $(( $(date +%s%N) - t0 ))`;
    const perTrip = (argv) => {
      const out = ok(argv[0], argv.slice(1)).trim().split('\n').pop();
      const ns = Number(out);
      if (!Number.isFinite(ns)) throw new Error(`${argv.join(' ')}: ${out}`);
      return ns / 1e6 / N;
    };
    const host = () => perTrip(['env', `IMG=${img}`, `MNT=${mnt}`, 'unshare', '-m', '--propagation', 'private', 'sh', '-c', LOOP]);
    const container = () =>
      perTrip([
        ...podman, 'run', '--rm', '--network', 'none', '--runtime', shim, '--annotation', 'io.loopfs.instance=true', '--annotation', 'io.loopfs.pool=2',
        '--uidmap', `0:${MAP}:65536`, '--gidmap', `0:${MAP}:65536`, '-v', '/usr:/usr:ro', '-v', `${img}:/img`,
        '-e', 'IMG=/img', '-e', 'MNT=/mnt', '--rootfs', rootfs, '/usr/bin/sh', '-c', LOOP,
      ]);
    const trips = { host: [], container: [] };
    for (let r = 0; r < 3; r++) {
      trips.host.push(host());
      trips.container.push(container());
    }
    const h = median(trips.host);
    const c = median(trips.container);
    console.log(`\nmount -o loop + umount round trips (${N} per run, median of 3 runs, ms per round trip)`);
    table(['where', 'ms', 'ratio'], [
      ['host root', h.toFixed(2), '1.00x'],
      ['podman --uidmap, agent', c.toFixed(2), `${(c / h).toFixed(2)}x`],
    ], 1);
  }
} finally {
  for (const d of daemons.reverse()) {
    await stopPid(d.child.pid);
    for (const f of d.pids) {
      try {
        await stopPid(f());
      } catch {
        /* no pidfile */
      }
    }
  }
  spawnSync(LOOPFS, ['instance', 'gc'], { env, stdio: 'ignore' });
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').reverse()) {
    const mp = line.split(' ')[4];
    if (mp && mp.startsWith(`${tmp}/`)) spawnSync('umount', ['-l', mp], { stdio: 'ignore' });
  }
  fs.rmSync(tmp, { recursive: true, force: true });
}

/** Columns before `left` are text (left-aligned), the rest numbers. */
function table(head, rows, left) {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const fmt = (r) => r.map((c, i) => (i < left ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  console.log(fmt(head));
  for (const r of rows) console.log(fmt(r));
}
