// Shared fixtures for the root-only mount.loop tests (test/mount/*.test.ts).
//
// Everything mounts inside a *private mount namespace*, never in the host's:
//  - `MountNamespace.start()` spawns a holder process
//      setpriv --pdeathsig KILL -- unshare -m --propagation private bash -c 'SETUP; exec sleep infinity'
//    whose SETUP puts bin/mount.loop into /usr/sbin through an overlay mount (lower layer: the real
//    /usr/sbin; upper layer: a private directory holding a `mount.loop` symlink to bin/mount.loop).
//    /sbin is `usr/sbin` on Debian, so mount(8) finds /sbin/mount.loop there, and only there: the
//    host's /sbin is never modified.
//  - commands run in that namespace with `nsenter -t PID -m` (`ns.run`, `ns.sh`), and the test
//    process reads and writes files inside mounted images through `/proc/PID/root/...` (`ns.path`);
//  - when the holder exits (stop(), or the test runner dies: pdeathsig), the namespace and every
//    mount in it go away, so an autoclear device can never stay bound by a forgotten mount.
//
// Device hygiene: images live in the test's private directory, so every device bound to one of
// them is the test's own (`DeviceTracker.ownDir`). `cleanupUnder(dir)` unmounts every mount under
// the directory (innermost first) and the tracker then detaches, with util-linux, whatever is left.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { announceSkip, firstReason, loopSkipReason, REPO_ROOT } from '../helpers/env.js';
import { runProgram, type RunResult } from '../helpers/run.js';

export const MiB = 1024 * 1024;
export const HELPER = path.join(REPO_ROOT, 'bin', 'mount.loop');
export const LOOPFS = path.join(REPO_ROOT, 'bin', 'loopfs');
export const MOUNT = '/usr/bin/mount';
export const UMOUNT = '/usr/bin/umount';
/**
 * How long a test waits for the kernel to release an autoclear device after umount or a failed
 * mount. Normally milliseconds; generous because the loop driver serialises device changes and a
 * busy machine (hundreds of devices changing) can delay a release by seconds.
 */
export const RELEASE_WAIT_MS = 20_000;
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ skip reasons

function which(cmd: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

/** Filesystems the running kernel supports (no modules on these machines: built-ins only). */
export function kernelHasFs(fstype: string): boolean {
  try {
    return fs
      .readFileSync('/proc/filesystems', 'utf8')
      .split('\n')
      .some((l) => l.split('\t').pop() === fstype);
  } catch {
    return false;
  }
}

/** Why the real-mount tests cannot run here (printed once), or undefined. */
export function mountSkipReason(what: string): string | undefined {
  const reason = firstReason(
    loopSkipReason(),
    ...['unshare', 'nsenter', 'setpriv', 'mount', 'umount', 'mkfs.ext4'].map((t) =>
      which(t) ? undefined : `${t} not installed (util-linux / e2fsprogs)`,
    ),
    kernelHasFs('overlay') ? undefined : 'kernel has no overlay filesystem (needed to put mount.loop into /sbin privately)',
    kernelHasFs('ext4') ? undefined : 'kernel has no ext4',
    fs.existsSync(path.join(REPO_ROOT, 'dist', 'bundle', 'mount.loop.mjs')) ? undefined : 'dist/bundle/mount.loop.mjs missing: run `npm run build`',
  );
  announceSkip(what, reason);
  return reason;
}

/** Why images of `fstype` cannot be made and mounted here, or undefined. */
export function fsSkipReason(fstype: string, tools: string[]): string | undefined {
  const missing = tools.filter((t) => !which(t));
  const reason = firstReason(
    kernelHasFs(fstype) ? undefined : `kernel has no ${fstype} filesystem (not in /proc/filesystems)`,
    missing.length ? `${missing.join(', ')} not installed` : undefined,
  );
  announceSkip(`mount/${fstype}`, reason);
  return reason;
}

export function skipTitle(title: string, reason: string | undefined): string {
  return reason ? `${title} [SKIPPED: ${reason}]` : title;
}

// ------------------------------------------------------------------ images

export const HELLO = 'hello from inside the image\n';

function sh(cmd: string, args: string[], opts: { cwd?: string } = {}): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8', cwd: opts.cwd });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: rc ${r.status}: ${r.stderr}`);
}

/** A source tree with hello.txt (and a 64 KiB file, so reads cross several blocks). */
export function makeSourceTree(dir: string): string {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'hello.txt'), HELLO);
  fs.writeFileSync(path.join(dir, 'blob.bin'), Buffer.alloc(64 * 1024, 0x5a));
  return dir;
}

export function makeExt4(file: string, src: string, size = 16 * MiB): string {
  fs.closeSync(fs.openSync(file, 'w'));
  fs.truncateSync(file, size);
  sh('mkfs.ext4', ['-q', '-F', '-d', src, file]);
  return file;
}

export function makeSquashfs(file: string, src: string): string {
  sh('mksquashfs', [src, file, '-quiet', '-noappend', '-no-progress']);
  return file;
}

export function makeErofs(file: string, src: string): string {
  sh('mkfs.erofs', ['--quiet', file, src]);
  return file;
}

export function makeVfat(file: string, src: string, size = 8 * MiB): string {
  fs.closeSync(fs.openSync(file, 'w'));
  fs.truncateSync(file, size);
  sh('mkfs.vfat', [file]);
  for (const name of fs.readdirSync(src)) sh('mcopy', ['-i', file, path.join(src, name), `::/${name}`]);
  return file;
}

/** `size` bytes of random data: no filesystem signature anywhere. */
export function makeRandom(file: string, size = MiB): string {
  const fd = fs.openSync(file, 'w');
  try {
    const chunk = Buffer.alloc(64 * 1024);
    for (let done = 0; done < size; done += chunk.length) {
      for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((Math.random() * 0x100000000) >>> 0, i);
      fs.writeSync(fd, chunk, 0, Math.min(chunk.length, size - done));
    }
  } finally {
    fs.closeSync(fd);
  }
  return file;
}

/**
 * An ext4 image cut to a quarter of its size: blkid still finds a valid ext4 superblock, the
 * kernel refuses it (block count beyond the end of the device).
 */
export function makeCorruptExt4(file: string, src: string): string {
  makeExt4(file, src, 16 * MiB);
  fs.truncateSync(file, 4 * MiB);
  return file;
}

/**
 * A disk image with an MBR partition table: one Linux partition (type 0x83) from sector 2048
 * (1 MiB) holding an ext4 filesystem of `partSize` bytes. Written by hand so the tests need no
 * fdisk; the kernels here have no partition parsers, so the partition is reached with
 * offset=/sizelimit=.
 */
export function makePartitioned(file: string, src: string, partSize = 16 * MiB): { file: string; offset: number; sizelimit: number } {
  const offset = MiB;
  const ext4 = `${file}.part`;
  makeExt4(ext4, src, partSize);
  const fd = fs.openSync(file, 'w');
  try {
    fs.ftruncateSync(fd, offset + partSize + MiB); // a free MiB after the partition
    const entry = Buffer.alloc(16);
    entry[0] = 0x00; // not bootable
    entry.set([0xfe, 0xff, 0xff], 1); // CHS: use LBA
    entry[4] = 0x83; // Linux
    entry.set([0xfe, 0xff, 0xff], 5);
    entry.writeUInt32LE(offset / 512, 8);
    entry.writeUInt32LE(partSize / 512, 12);
    fs.writeSync(fd, entry, 0, 16, 446);
    fs.writeSync(fd, Buffer.from([0x55, 0xaa]), 0, 2, 510);
    const data = fs.readFileSync(ext4);
    fs.writeSync(fd, data, 0, data.length, offset);
  } finally {
    fs.closeSync(fd);
    fs.rmSync(ext4, { force: true });
  }
  return { file, offset, sizelimit: partSize };
}

// ------------------------------------------------------------------ mount namespace

export interface MountInfo {
  id: number;
  /** major:minor of st_dev */
  devno: string;
  target: string;
  fstype: string;
  source: string;
  mountOptions: string;
  superOptions: string;
}

function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export interface NamespaceOptions {
  /** scratch directory for the overlay's upper and work directories */
  scratch: string;
  /** the mount.loop the overlay installs as /usr/sbin/mount.loop (default bin/mount.loop) */
  helper?: string | null;
  /** more shell commands, run in the namespace after the overlay is in place */
  setup?: string;
  env?: NodeJS.ProcessEnv;
}

/** A private mount namespace kept alive by a holder process; see the file comment. */
export class MountNamespace {
  private constructor(
    private readonly child: ChildProcess,
    readonly pid: number,
    private readonly env: NodeJS.ProcessEnv,
  ) {}

  static async start(opts: NamespaceOptions): Promise<MountNamespace> {
    const upper = path.join(opts.scratch, 'sbin-upper');
    const work = path.join(opts.scratch, 'sbin-work');
    fs.mkdirSync(upper, { recursive: true });
    fs.mkdirSync(work, { recursive: true });
    const helper = opts.helper === undefined ? HELPER : opts.helper;
    if (helper) fs.symlinkSync(helper, path.join(upper, 'mount.loop'));
    const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
    const script = [
      'set -e',
      `mount -t overlay overlay -o lowerdir=/usr/sbin,upperdir=${q(upper)},workdir=${q(work)} /usr/sbin`,
      opts.setup ?? ':',
      'echo READY',
      'exec sleep infinity',
    ].join('\n');
    const env = opts.env ?? process.env;
    const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', 'unshare', '-m', '--propagation', 'private', 'bash', '-c', script], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env,
    });
    let out = '';
    let err = '';
    child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`mount namespace not ready after 30 s: ${err}`)), 30_000);
      child.stdout!.on('data', (b: Buffer) => {
        out += b.toString();
        if (out.includes('READY\n')) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`mount namespace setup failed (rc ${code}): ${out}${err}`));
      });
    });
    child.removeAllListeners('exit');
    const ns = new MountNamespace(child, child.pid!, env);
    // sanity: really a different mount namespace, with the helper in /sbin
    if (fs.readlinkSync(`/proc/${ns.pid}/ns/mnt`) === fs.readlinkSync('/proc/self/ns/mnt')) {
      await ns.stop();
      throw new Error('unshare -m did not create a new mount namespace');
    }
    return ns;
  }

  /** Run a program inside the namespace (argv as given, no shell). */
  run(file: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
    return runProgram('nsenter', ['-t', String(this.pid), '-m', '--', file, ...args], {
      env: { ...this.env, ...opts.env },
      timeoutMs: opts.timeoutMs ?? 60_000,
    });
  }

  /** Run a shell script inside the namespace. */
  sh(script: string, opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<RunResult> {
    return this.run('bash', ['-c', script], opts);
  }

  /** The path under which the test process sees `p` as the namespace does. */
  path(p: string): string {
    return `/proc/${this.pid}/root${p}`;
  }

  mounts(): MountInfo[] {
    const text = fs.readFileSync(`/proc/${this.pid}/mountinfo`, 'utf8');
    return text
      .split('\n')
      .filter(Boolean)
      .map((line) => {
        const [pre, post] = line.split(' - ');
        const f = pre.split(' ');
        const g = post.split(' ');
        return {
          id: Number(f[0]),
          devno: f[2],
          target: unescapeMountinfo(f[4]),
          mountOptions: f[5],
          fstype: g[0],
          source: unescapeMountinfo(g[1]),
          superOptions: g[2] ?? '',
        };
      });
  }

  /** The mounts on `target` (stacked mounts: several), bottom first. */
  mountsOn(target: string): MountInfo[] {
    return this.mounts().filter((m) => m.target === target);
  }

  mountsUnder(dir: string): MountInfo[] {
    const d = dir.endsWith('/') ? dir : `${dir}/`;
    return this.mounts().filter((m) => m.target === dir || m.target.startsWith(d));
  }

  /** Unmount everything under `dir`, innermost and most recent first (lazily as a last resort). */
  async cleanupUnder(dir: string): Promise<string[]> {
    const problems: string[] = [];
    for (let round = 0; round < 20; round++) {
      const ms = this.mountsUnder(dir).sort((a, b) => b.target.length - a.target.length || b.id - a.id);
      if (ms.length === 0) return problems;
      const r = await this.run(UMOUNT, round < 10 ? [ms[0].target] : ['-l', ms[0].target]);
      if (r.exitCode !== 0) problems.push(`umount ${ms[0].target}: ${r.stderr.toString().trim()}`);
      if (r.exitCode !== 0) await sleep(50);
    }
    problems.push(`still mounted: ${this.mountsUnder(dir).map((m) => m.target).join(' ')}`);
    return problems;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const done = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.kill('SIGKILL');
    await done;
  }
}

// ------------------------------------------------------------------ result helpers

export function text(r: RunResult): { rc: number | null; out: string; err: string } {
  return { rc: r.exitCode, out: r.stdout.toString(), err: r.stderr.toString() };
}

/** Device names are whatever was free: the one thing two runs legitimately differ in. */
export function normDevices(s: string): string {
  return s.replace(/\/dev\/loop\d+/g, '/dev/loopN');
}

/** The loop device (e.g. "loop7") behind a mountinfo entry, from its st_dev. */
export function loopNameOf(m: MountInfo): string {
  const [maj, min] = m.devno.split(':').map(Number);
  if (maj !== 7) throw new Error(`${m.target} is not on a loop device (st_dev ${m.devno}, source ${m.source})`);
  return `loop${min}`;
}

export function exists(p: string): boolean {
  return fs.existsSync(p);
}

/** Sysfs: whether the loop device is bound right now. */
export function sysBound(name: string): boolean {
  return fs.existsSync(`/sys/block/${name}/loop/backing_file`);
}

export function sysAttr(name: string, attr: string): string | null {
  try {
    return fs.readFileSync(`/sys/block/${name}/${attr}`, 'utf8').trim();
  } catch {
    return null;
  }
}
