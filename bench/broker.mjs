#!/usr/bin/env node
// The broker's cost, against doing the same work locally. Prints medians and ratios; not a
// test: nothing here asserts. Needs root, the loop driver and a build (`npm run build`).
//
//   node bench/broker.mjs [attaches] [connect-seconds] [cli-runs]     (default 200 3 10)
//   BENCH_ONLY=mount node bench/broker.mjs 1 1 30                      (section 4 alone, 30 runs)
//   chrt -f 10 node bench/broker.mjs ...     on a busy shared machine: this run's processes
//                                            (broker, drivers) ahead of everyone else's
//
//   1. attach latency, in-process (no node start-up in the numbers): `attaches` times, local
//      and brokered interleaved so that machine noise hits both alike —
//        local:   LocalInstance.allocate() on an instance (what root's `losetup -f FILE` does)
//        broker:  BrokeredInstance.allocate() over one open connection (the client opens the file,
//                 the broker binds a device of its instance to that fd)
//        broker, new connection: connect + hello + attach per attach (what a CLI run does)
//      each followed by an untimed detach; target: broker ≤ 2× local.
//   2. connections per second: connect + hello + close, one client, for `connect-seconds`;
//      and the same with 8 client processes at once.
//   3. CLI end to end: `bin/losetup -f --show` as root on the instance (local) vs as the
//      unprivileged user `loopfstest` in a user namespace (brokered), `cli-runs` each.
//   4. mount round trip, in-process over one connection: the broker's `mount` of a bound
//      device until the mount fd is here, then the first read of a file through it — the
//      kernel's ext4 and squashfs against FUSE (fuse2fs, squashfuse: driver start included),
//      `cli-runs` each, interleaved; each FUSE row's ratio is against the kernel's mount of
//      the same image (target: FUSE ≤ 3×); skipped without mkfs.ext4/mksquashfs or the drivers.
//
// Everything lives in a private temp dir with a private LOOPFS_RUNTIME_DIR; the broker is a
// real `loopfs serve` process. In `finally` (also after Ctrl-C): the broker is stopped, every
// instance destroyed, every device still bound to one of this run's files detached.
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const ATTACHES = Number(process.argv[2] ?? 200);
const CONNECT_SECONDS = Number(process.argv[3] ?? 3);
const CLI_RUNS = Number(process.argv[4] ?? 10);
const LOOPFS = join(root, 'bin/loopfs');
const OURS = join(root, 'bin/losetup');
const UL = '/usr/sbin/losetup';
const USER = 'loopfstest';

function preflight() {
  if (process.getuid?.() !== 0) return 'needs root';
  if (!existsSync('/dev/loop-control')) return 'no /dev/loop-control (loop driver not loaded?)';
  if (!existsSync(join(root, 'dist/commands/serve.js'))) return 'not built: run `npm run build` first';
  for (const n of [ATTACHES, CONNECT_SECONDS, CLI_RUNS]) if (!Number.isInteger(n) || n < 1) return 'usage: node bench/broker.mjs [attaches] [connect-seconds] [cli-runs]';
  return undefined;
}
const why = preflight();
if (why) {
  console.error(`bench/broker: ${why}`);
  process.exit(1);
}

const tmp = mkdtempSync(join(tmpdir(), 'loopfs-bench-broker-'));
chmodSync(tmp, 0o755);
process.env.LOOPFS_RUNTIME_DIR = join(tmp, 'run');
process.env.LOOPFS_LIMITS = join(tmp, 'limits');
delete process.env.LOOPFS_INSTANCE;
const env = { ...process.env, LANG: 'C.UTF-8' };

const dist = (p) => import(pathToFileURL(join(root, 'dist', p)).href);
const { LocalInstance } = await dist('instance/local-instance.js');
const { BrokeredInstance } = await dist('instance/brokered-instance.js');
const { LoopDevice } = await dist('kernel/loop-device.js');
const { native } = await dist('kernel/native.js');

let interrupted = false;
process.on('SIGINT', () => (interrupted = true));
process.on('SIGTERM', () => (interrupted = true));
const check = () => {
  if (interrupted) throw new Error('interrupted');
};

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))];
const fmt = (x, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '-');
function table(title, header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (r) => r.map((v, i) => (i === 0 ? String(v).padEnd(widths[i]) : String(v).padStart(widths[i]))).join('  ');
  console.log(`\n${title}`);
  console.log(line(header));
  for (const r of rows) console.log(line(r));
}
const progress = (msg) => process.stderr.write(`[bench] ${msg}\n`);
const ms = (t0) => Number(process.hrtime.bigint() - t0) / 1e6;

function makeFile(name, size = 1 << 20) {
  const f = join(tmp, name);
  const fd = openSync(f, 'w');
  ftruncateSync(fd, size);
  closeSync(fd);
  return f;
}

function userIds() {
  const u = spawnSync('id', ['-u', USER], { encoding: 'utf8' });
  const g = spawnSync('id', ['-g', USER], { encoding: 'utf8' });
  return u.status === 0 ? { uid: Number(u.stdout), gid: Number(g.stdout) } : null;
}

const instances = [];
let server = null;

function createInstance(name, owner) {
  const dir = join(tmp, name);
  const args = [LOOPFS, 'instance', 'create', dir, ...(owner ? ['--owner', `${owner.uid}:${owner.gid}`] : [])];
  const r = spawnSync(args[0], args.slice(1), { env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`instance create: ${r.stderr}`);
  instances.push(dir);
  return dir;
}

async function startServer(dirs) {
  const child = spawn(LOOPFS, ['serve', ...dirs], { env, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (s) => (out += s));
  const end = Date.now() + 20_000;
  while (!out.includes('ready\n')) {
    if (child.exitCode !== null || Date.now() > end) throw new Error(`loopfs serve did not start: ${out}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return child;
}

// ---------------------------------------------------------------- 1. attach latency

function benchAttach(localDir, brokerDir) {
  const file = makeFile('img-attach');
  const local = LocalInstance.open(localDir, env);
  const broker = BrokeredInstance.connect(brokerDir, 'bench');
  const times = { local: [], broker: [], fresh: [] };
  const req = { file, flags: 0 };
  try {
    for (let i = 0; i < ATTACHES; i++) {
      check();
      // local
      let t0 = process.hrtime.bigint();
      const a = local.allocate(req);
      times.local.push(ms(t0));
      a.holder?.close();
      a.device.close();
      local.detach(new LoopDevice(`/dev/${a.device.path.slice(a.device.path.lastIndexOf('/') + 1)}`));
      // broker, open connection
      t0 = process.hrtime.bigint();
      const b = broker.allocate(req);
      times.broker.push(ms(t0));
      broker.detach(new LoopDevice(b.device.path));
      // broker, a new connection per attach
      t0 = process.hrtime.bigint();
      const s = BrokeredInstance.connect(brokerDir, 'bench');
      const c = s.allocate(req);
      times.fresh.push(ms(t0));
      s.detach(new LoopDevice(c.device.path));
      s.close();
      if (i % 50 === 49) progress(`attach ${i + 1}/${ATTACHES}`);
    }
  } finally {
    broker.close();
    local.close();
  }
  return times;
}

// ---------------------------------------------------------------- 2. connections per second

function connectLoop(socket, seconds) {
  const n = native();
  const hello = Buffer.from(JSON.stringify({ v: 1, id: 1, op: 'hello' }));
  const end = Date.now() + seconds * 1000;
  let count = 0;
  while (Date.now() < end) {
    const fd = n.seqpacketConnect(socket);
    n.sendMsg(fd, hello, []);
    const m = n.recvMsg(fd, 65536, 1);
    if (!m || m.eof || !JSON.parse(m.data.toString()).ok) throw new Error('hello failed');
    n.close(fd);
    count++;
  }
  return count / seconds;
}

async function connectParallel(socket, seconds, procs) {
  const code = `
    const a = require(${JSON.stringify(join(root, 'native/build/Release/loopfs.node'))});
    const hello = Buffer.from(JSON.stringify({ v: 1, id: 1, op: 'hello' }));
    const end = Date.now() + ${seconds * 1000};
    let count = 0;
    while (Date.now() < end) {
      const fd = a.seqpacketConnect(${JSON.stringify(socket)});
      a.sendMsg(fd, hello, []);
      const m = a.recvMsg(fd, 65536, 1);
      if (!m || m.eof) process.exit(1);
      a.close(fd);
      count++;
    }
    process.stdout.write(String(count));`;
  const runs = Array.from({ length: procs }, () =>
    new Promise((resolve) => {
      const c = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      c.stdout.setEncoding('utf8').on('data', (s) => (out += s));
      c.on('exit', () => resolve(Number(out) || 0));
    }),
  );
  const counts = await Promise.all(runs);
  return counts.reduce((a, b) => a + b, 0) / seconds;
}

// ---------------------------------------------------------------- 4. mount round trip

function benchMounts(brokerDir, user) {
  const has = (c) => spawnSync('sh', ['-c', `command -v ${c}`], { stdio: 'ignore' }).status === 0;
  if (!['mkfs.ext4', 'mksquashfs', 'fuse2fs', 'squashfuse'].every(has)) return [];
  const src = join(tmp, 'mount-src');
  spawnSync('mkdir', ['-p', src]);
  spawnSync('sh', ['-c', `echo hello > ${src}/hello.txt`]);
  const ext4 = join(tmp, 'img.ext4');
  const sqfs = join(tmp, 'img.sqfs');
  spawnSync('mkfs.ext4', ['-q', '-F', '-d', src, ext4, '8M']);
  spawnSync('mksquashfs', [src, sqfs, '-quiet', '-noappend', '-no-progress']);
  for (const f of [ext4, sqfs]) if (user) chownSync(f, user.uid, user.gid);
  const scope = BrokeredInstance.connect(brokerDir, 'bench');
  const devs = [];
  try {
    const cases = [];
    for (const [img, fstype] of [
      [ext4, 'ext4'],
      [sqfs, 'squashfs'],
    ]) {
      const c = native().constants;
      const dev = scope.allocate({ file: img, offset: 0n, sizelimit: 0n, flags: c.LO_FLAGS_READ_ONLY }).device;
      devs.push(dev);
      cases.push([`${fstype}, kernel`, dev, false], [`${fstype}, FUSE (${fstype === 'ext4' ? 'fuse2fs' : 'squashfuse'})`, dev, true]);
    }
    const times = cases.map(() => []);
    for (let i = 0; i < CLI_RUNS; i++) {
      check();
      cases.forEach(([, dev, fuse], k) => {
        const t0 = process.hrtime.bigint();
        const m = scope.mount(dev, { readOnly: true, fuse });
        try {
          readFileSync(`/proc/self/fd/${m.fd}/hello.txt`);
          times[k].push(ms(t0));
        } finally {
          native().close(m.fd); // the FUSE driver exits with its last mount
        }
        // untimed: until the driver has let the device go (fuse2fs opens it O_EXCL; the
        // kernel's next mount of it would fail with EBUSY)
        if (fuse) waitDeviceFree(dev.path);
      });
    }
    // each FUSE row against the kernel's mount of the same image (the row before it)
    return cases.map(([name, , fuse], k) => {
      const kernel = times[fuse ? k - 1 : k];
      return [name, median(times[k]), pct(times[k], 0.9), median(kernel), Math.min(...times[k]), Math.min(...kernel)];
    });
  } finally {
    for (const d of devs) {
      try {
        scope.detach(d);
      } catch {
        /* cleanup below */
      }
    }
    scope.close();
  }
}

/** Until the device can be opened exclusively (no FUSE driver holds it), at most 10 s. */
function waitDeviceFree(path) {
  const n = native();
  const end = Date.now() + 10_000;
  for (;;) {
    try {
      n.close(n.open(path, n.constants.O_RDONLY | n.constants.O_EXCL));
      return;
    } catch (e) {
      if (e.code !== 'EBUSY' || Date.now() > end) throw e;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2);
    }
  }
}

// ---------------------------------------------------------------- main

try {
  const user = userIds();
  const localDir = createInstance('inst-local');
  const brokerDir = createInstance('inst-broker', user ?? undefined);
  server = await startServer([brokerDir]);
  progress(`broker pid ${server.pid}; ${ATTACHES} attaches each way`);

  // BENCH_ONLY=mount: only the mount round trip (section 4)
  if (process.env.BENCH_ONLY !== 'mount') {
    const t = benchAttach(localDir, brokerDir);
    const base = median(t.local);
    table(
      `attach latency, in-process (${ATTACHES} each, interleaved; ms)`,
      ['path', 'median', 'p90', 'ratio'],
      [
        ['local (LocalInstance.allocate)', fmt(base), fmt(pct(t.local, 0.9)), '1.00'],
        ['broker, open connection', fmt(median(t.broker)), fmt(pct(t.broker, 0.9)), fmt(median(t.broker) / base)],
        ['broker, new connection each', fmt(median(t.fresh)), fmt(pct(t.fresh, 0.9)), fmt(median(t.fresh) / base)],
      ],
    );

    const socket = join(brokerDir, 'loop-control');
    progress('connections');
    const one = connectLoop(socket, CONNECT_SECONDS);
    const eight = await connectParallel(socket, CONNECT_SECONDS, 8);
    table('connections per second (connect + hello + close)', ['clients', 'conn/s'], [
      ['1 (in-process, sequential)', fmt(one, 0)],
      ['8 processes', fmt(eight, 0)],
    ]);

    progress('CLI');
    const file = makeFile('img-cli');
    const rows = [];
    const run = (argv, envv = env) => {
      const t0 = process.hrtime.bigint();
      const r = spawnSync(argv[0], argv.slice(1), { env: envv, encoding: 'utf8' });
      const t = ms(t0);
      if (r.status !== 0) throw new Error(`${argv.join(' ')}: ${r.stderr}`);
      return { t, out: r.stdout.trim() };
    };
    const asUser = user
      ? (args) => ['setpriv', '--reuid', String(user.uid), '--regid', String(user.gid), '--clear-groups', 'unshare', '-r', '-m', OURS, ...args]
      : null;
    // the same small environment for both: on these machines NODE_EXTRA_CA_CERTS alone adds
    // ~50 ms to every node start-up, which would swamp what is measured here
    const small = { PATH: process.env.PATH, LANG: 'C.UTF-8' };
    const rootEnv = { ...small, LOOPFS_RUNTIME_DIR: process.env.LOOPFS_RUNTIME_DIR, LOOPFS_LIMITS: process.env.LOOPFS_LIMITS };
    const userEnv = { ...small, LOOPFS_INSTANCE: brokerDir };
    if (user) chownSync(file, user.uid, user.gid);
    const localCli = [];
    const brokerCli = [];
    // interleaved, so that load changes on this shared machine hit both alike
    for (let i = 0; i < CLI_RUNS; i++) {
      check();
      const l = run([OURS, '--instance', localDir, '-f', '--show', file], rootEnv);
      localCli.push(l.t);
      run([OURS, '--instance', localDir, '-d', l.out], rootEnv);
      if (asUser) {
        const b = run(asUser(['-f', '--show', file]), userEnv);
        brokerCli.push(b.t);
        run(asUser(['-d', b.out]), userEnv);
      }
    }
    rows.push(['root, local instance', fmt(median(localCli), 1), '1.00']);
    if (asUser) rows.push([`${USER} in a user namespace, brokered`, fmt(median(brokerCli), 1), fmt(median(brokerCli) / median(localCli))]);
    else rows.push([`(no user ${USER}: brokered CLI run skipped)`, '-', '-']);
    table(`losetup -f --show, end to end (${CLI_RUNS} runs each, interleaved; ms, node start-up included)`, ['who', 'median', 'ratio'], rows);
  }

  progress('mounts');
  const mountRows = benchMounts(brokerDir, user);
  if (mountRows.length) {
    table(
      `mount round trip: request → mount fd → first read of a file (${CLI_RUNS} each, interleaved; ms; ratio: against the kernel's mount of the same image)`,
      // min: the run least disturbed by the rest of a shared machine (its ratio: of the minima)
      ['filesystem', 'median', 'p90', 'ratio', 'min', 'min ratio', 'target'],
      mountRows.map(([name, med, p90, kernel, min, kernelMin]) => [name, fmt(med), fmt(p90), fmt(med / kernel), fmt(min), fmt(min / kernelMin), name.includes('FUSE') ? '≤ 3.00' : '1.00']),
    );
  } else {
    console.log('\nmount round trip: skipped (needs mkfs.ext4, mksquashfs, fuse2fs, squashfuse)');
  }
} catch (e) {
  console.error(`bench/broker: ${e.message}`);
  process.exitCode = 1;
} finally {
  if (server && server.exitCode === null) {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
  }
  for (const dir of instances) {
    const r = spawnSync(LOOPFS, ['instance', 'destroy', '--force', dir], { env, encoding: 'utf8' });
    if (r.status !== 0 && existsSync(join(dir, '.loopfs'))) console.error(`cleanup: destroy ${dir}: ${r.stderr.trim()}`);
  }
  spawnSync(LOOPFS, ['instance', 'gc'], { env });
  for (const name of readdirSync('/sys/block')) {
    try {
      const back = readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').trim();
      if (back.startsWith(`${tmp}/`)) spawnSync(UL, ['-d', `/dev/${name}`]);
    } catch {
      /* unbound */
    }
  }
  rmSync(tmp, { recursive: true, force: true });
}
