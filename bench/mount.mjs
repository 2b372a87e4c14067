#!/usr/bin/env node
// mount.loop measured, as root, inside a private mount namespace (the bench re-executes itself
// under `unshare -m --propagation private`; mount.loop is put into /usr/sbin there with an overlay
// mount, so the host's /sbin is never touched and every mount vanishes with the namespace).
//
//  1. round trips: `mount -t loop IMG DIR` + `umount DIR` through our helper, against
//     util-linux's built-in `mount -o loop` (and `-t loop -o loop`, where libmount attaches and the
//     helper only mounts, and the helper called directly). Medians over N interleaved runs. With
//     them, in the same loop, what bounds the helper: `node -e 0` (any node program's start-up)
//     and `mount.loop --version` (the helper's own start-up: node, its bundle, no device), and
//     the floor a node helper cannot go below, node's start-up plus util-linux's round trip.
//  2. sequential read of a 512 MiB file inside an ext4 image (page cache dropped before every
//     read), through the loop device with direct I/O off and on and with several read-ahead
//     settings, against reading the same number of bytes of the backing file itself.
//
// Not a test: nothing here asserts. Devices are only the bench's own (autoclear, released at
// umount); a read-ahead it changes is put back before the umount.
//
//   node bench/mount.mjs [round-trips] [read-reps]      (default 30 and 5; 0 read-reps: no reads)
//
// MOUNT_LOOP=PATH measures another helper in place of bin/mount.loop (another checkout's, for
// a before/after in the same conditions).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const self = fileURLToPath(import.meta.url);
const runs = Number(process.argv[2] ?? 30);
const reps = Number(process.argv[3] ?? 5);
const MiB = 1024 * 1024;
const FILE_MIB = 512;
const helper = path.resolve(process.env.MOUNT_LOOP ?? path.join(root, 'bin/mount.loop'));

// ------------------------------------------------------------------ preconditions, namespace
if (process.getuid?.() !== 0) {
  console.error('bench/mount: needs root (mount, loop devices, drop_caches)');
  process.exit(1);
}
if (!fs.existsSync('/dev/loop-control')) {
  console.error('bench/mount: no /dev/loop-control (loop driver not loaded?)');
  process.exit(1);
}
if (!fs.existsSync(path.join(root, 'dist/bundle/mount.loop.cjs'))) {
  console.error('bench/mount: dist/bundle/mount.loop.cjs missing: run `npm run build`');
  process.exit(1);
}
if (process.env.LOOPFS_BENCH_MOUNT_NS !== String(process.pid)) {
  // run again inside a new private mount namespace; the marker is the pid the re-executed
  // bench will have (`exec` keeps bash's pid), so an inherited variable cannot fool it
  const r = spawnSync(
    'unshare',
    ['-m', '--propagation', 'private', 'bash', '-c', 'LOOPFS_BENCH_MOUNT_NS=$$ exec "$@"', 'bench', process.execPath, self, ...process.argv.slice(2)],
    { stdio: 'inherit' },
  );
  process.exit(r.status ?? 1);
}

// ------------------------------------------------------------------ helpers
function run(cmd, args, { check = true } = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (check && r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: rc ${r.status}: ${r.stderr}`);
  return r;
}
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const now = () => process.hrtime.bigint();
const ms = (t0) => Number(process.hrtime.bigint() - t0) / 1e6;
function table(header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (r) => r.map((v, i) => (i === 0 ? String(v).padEnd(widths[i]) : String(v).padStart(widths[i]))).join('  ');
  console.log(line(header));
  for (const r of rows) console.log(line(r));
}
/** The loop device (e.g. "loop7") mounted on `dir`, from mountinfo's st_dev. */
function loopOf(dir) {
  for (const l of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = l.split(' ');
    if (f[4] === dir) {
      const [maj, min] = f[2].split(':').map(Number);
      if (maj !== 7) throw new Error(`${dir} is not on a loop device`);
      return `loop${min}`;
    }
  }
  throw new Error(`${dir} is not mounted`);
}
const sys = (name, attr) => fs.readFileSync(`/sys/block/${name}/${attr}`, 'utf8').trim();
function mounted(dir) {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === dir);
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'loopfs-bench-mount-'));
const mnt = path.join(work, 'mnt');
try {
  fs.mkdirSync(mnt);
  fs.mkdirSync(path.join(work, 'upper'));
  fs.mkdirSync(path.join(work, 'wd'));
  fs.symlinkSync(helper, path.join(work, 'upper/mount.loop'));
  run('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=/usr/sbin,upperdir=${work}/upper,workdir=${work}/wd`, '/usr/sbin']);

  // ---------------------------------------------------------------- 1. round trips
  const small = path.join(work, 'small.ext4');
  fs.mkdirSync(path.join(work, 'src'));
  fs.writeFileSync(path.join(work, 'src/hello.txt'), 'hello\n');
  fs.closeSync(fs.openSync(small, 'w'));
  fs.truncateSync(small, 16 * MiB);
  run('mkfs.ext4', ['-q', '-F', '-d', path.join(work, 'src'), small]);

  const trips = [
    { name: 'mount -o loop (util-linux)', argv: ['mount', '-o', 'loop', small, mnt] },
    { name: 'mount -t loop (mount.loop)', argv: ['mount', '-t', 'loop', small, mnt] },
    { name: 'mount -t loop -o loop', argv: ['mount', '-t', 'loop', '-o', 'loop', small, mnt] },
    { name: 'mount.loop IMG DIR', argv: [helper, small, mnt] },
  ];
  const starts = [
    { name: 'node -e 0', argv: [process.execPath, '-e', '0'] },
    { name: 'mount.loop --version', argv: [helper, '--version'] },
  ];
  const samples = new Map(trips.map((t) => [t.name, { mount: [], umount: [], total: [] }]));
  const startSamples = new Map(starts.map((t) => [t.name, []]));
  for (const t of trips) {
    // warm-up (page cache for node, the bundle, libmount)
    run(t.argv[0], t.argv.slice(1));
    run('umount', [mnt]);
  }
  for (let i = 0; i < runs; i++) {
    for (const t of trips) {
      const s = samples.get(t.name);
      const t0 = now();
      run(t.argv[0], t.argv.slice(1));
      const t1 = now();
      run('umount', [mnt]);
      s.mount.push(Number(t1 - t0) / 1e6);
      s.umount.push(ms(t1));
      s.total.push(ms(t0));
    }
    for (const t of starts) {
      const t0 = now();
      run(t.argv[0], t.argv.slice(1));
      startSamples.get(t.name).push(ms(t0));
    }
  }
  const ref = median(samples.get(trips[0].name).total);
  console.log(`mount + umount round trips, ${runs} interleaved runs each, median (node ${process.version}, kernel ${os.release()}, helper ${helper})`);
  table(
    ['command', 'mount ms', 'umount ms', 'round trip ms', 'trips/s', 'x util-linux'],
    trips.map((t) => {
      const s = samples.get(t.name);
      const tot = median(s.total);
      return [t.name, median(s.mount).toFixed(1), median(s.umount).toFixed(1), tot.toFixed(1), (1000 / tot).toFixed(1), (tot / ref).toFixed(2)];
    }),
  );
  console.log('');
  const nodeStart = median(startSamples.get('node -e 0'));
  console.log('what bounds a node helper (same runs)');
  table(
    ['figure', 'ms', 'x util-linux round trip'],
    [
      ...starts.map((t) => [t.name, median(startSamples.get(t.name)), median(startSamples.get(t.name)) / ref]),
      ['floor: node -e 0 + util-linux round trip', nodeStart + ref, (nodeStart + ref) / ref],
    ].map(([n, v, x]) => [n, v.toFixed(1), x.toFixed(2)]),
  );
  console.log('');

  // ---------------------------------------------------------------- 2. sequential reads
  if (reps > 0) {
    const big = path.join(work, 'big.ext4');
    const bigSrc = path.join(work, 'bigsrc');
    fs.mkdirSync(bigSrc);
    {
      // pseudo-random content (nothing compressible, no zero pages)
      const fd = fs.openSync(path.join(bigSrc, 'data.bin'), 'w');
      const chunk = Buffer.alloc(4 * MiB);
      let x = 0x12345678;
      for (let i = 0; i < chunk.length; i += 4) {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        chunk.writeUInt32LE(x >>> 0, i);
      }
      for (let i = 0; i < FILE_MIB / 4; i++) {
        chunk.writeUInt32LE(i, 0); // no two chunks alike
        fs.writeSync(fd, chunk);
      }
      fs.closeSync(fd);
    }
    fs.closeSync(fs.openSync(big, 'w'));
    fs.truncateSync(big, (FILE_MIB + 64) * MiB);
    run('mkfs.ext4', ['-q', '-F', '-d', bigSrc, big]);
    fs.rmSync(bigSrc, { recursive: true });

    const BYTES = FILE_MIB * MiB;
    const buf = Buffer.allocUnsafe(MiB);
    function readAll(file, limit = BYTES) {
      const fd = fs.openSync(file, 'r');
      let total = 0;
      try {
        for (;;) {
          const n = fs.readSync(fd, buf, 0, Math.min(buf.length, limit - total), null);
          if (n <= 0) break;
          total += n;
          if (total >= limit) break;
        }
      } finally {
        fs.closeSync(fd);
      }
      return total;
    }
    function timedRead(file) {
      fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
      const t0 = now();
      const n = readAll(file);
      const t = ms(t0);
      if (n !== BYTES) throw new Error(`${file}: read ${n} bytes, expected ${BYTES}`);
      return BYTES / MiB / (t / 1000);
    }

    // read-ahead in 512-byte sectors (BLKRASET via blockdev); null: leave the device's default
    const variants = [
      { name: 'backing file (ext4 on vda)', direct: true },
      { name: 'mount -o loop (util-linux)', argv: ['mount', '-o', 'loop,ro'], ra: null },
      // the helper's default: direct I/O where the file allows it, read-ahead of the disk under it
      { name: 'mount -t loop (default)', argv: ['mount', '-t', 'loop', '-o', 'ro'], ra: null },
      { name: 'mount -t loop, dio off', argv: ['mount', '-t', 'loop', '-o', 'ro,direct-io=off'], ra: null },
      { name: 'dio off, setra 4096', argv: ['mount', '-t', 'loop', '-o', 'ro,direct-io=off'], ra: 4096 },
      { name: 'dio on, setra 4096', argv: ['mount', '-t', 'loop', '-o', 'ro,direct-io'], ra: 4096 },
      { name: 'dio off, setra 16384', argv: ['mount', '-t', 'loop', '-o', 'ro,direct-io=off'], ra: 16384 },
      { name: 'dio on, setra 16384', argv: ['mount', '-t', 'loop', '-o', 'ro,direct-io'], ra: 16384 },
    ];
    const reads = new Map(variants.map((v) => [v.name, []]));
    const seen = new Map();
    for (let i = 0; i < reps; i++) {
      for (const v of variants) {
        if (v.direct) {
          reads.get(v.name).push(timedRead(big));
          continue;
        }
        run(v.argv[0], [...v.argv.slice(1), big, mnt]);
        const dev = loopOf(mnt);
        const before = run('blockdev', ['--getra', `/dev/${dev}`]).stdout.trim();
        try {
          if (v.ra !== null) run('blockdev', ['--setra', String(v.ra), `/dev/${dev}`]);
          seen.set(v.name, { dio: sys(dev, 'loop/dio'), raKiB: sys(dev, 'queue/read_ahead_kb') });
          reads.get(v.name).push(timedRead(path.join(mnt, 'data.bin')));
        } finally {
          if (v.ra !== null) run('blockdev', ['--setra', before, `/dev/${dev}`], { check: false });
          run('umount', [mnt]);
        }
      }
    }
    const base = median(reads.get(variants[0].name));
    console.log(
      `sequential read of a ${FILE_MIB} MiB file, 1 MiB read(2)s, caches dropped before each read, median of ${reps} ` +
        `(vda read_ahead_kb ${fs.existsSync('/sys/block/vda') ? sys('vda', 'queue/read_ahead_kb') : '?'})`,
    );
    table(
      ['read through', 'loop dio', 'read_ahead_kb', 'MiB/s', 'min', 'max', 'x backing file'],
      variants.map((v) => {
        const r = reads.get(v.name);
        const s = seen.get(v.name) ?? { dio: '-', raKiB: '-' };
        const m = median(r);
        return [v.name, s.dio, s.raKiB, m.toFixed(0), Math.min(...r).toFixed(0), Math.max(...r).toFixed(0), (m / base).toFixed(2)];
      }),
    );
  }
} finally {
  for (let i = 0; i < 5 && mounted(mnt); i++) run('umount', [mnt], { check: false });
  run('umount', ['/usr/sbin'], { check: false }); // the overlay (the namespace drops it anyway)
  fs.rmSync(work, { recursive: true, force: true });
}
