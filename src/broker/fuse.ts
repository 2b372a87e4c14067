/**
 * Filesystem images parsed by a userspace FUSE driver instead of the kernel: a detached
 * FUSE mount built by root, served by a driver process that runs as an unprivileged uid
 * with nothing but the two fds it needs. Used by the broker's `mount` op (`loopfs serve
 * --fuse`, `mount.loop -o fuse`); usable by anything else that holds a mount fd for a
 * client (one function per step, no broker types).
 *
 *   const m = createFuseMount({ driver, source, userId, groupId, readOnly, attrFlags });
 *   const d = await startFuseDriver({ driver, fuseFd: m.fuseFd, imageFd, uid, gid, readOnly });
 *   // m.mntFd: send it (SCM_RIGHTS) or move_mount it, then close it; closeFuseFd(m)
 *
 * How (all verified on Linux 6.18, libfuse 2.9.9 and 3.14):
 *  - createFuseMount, as root: open /dev/fuse, fsopen("fuse"), fsconfig fd=, rootmode=,
 *    user_id=, group_id=, default_permissions, subtype=DRIVER, source=, then fsmount with
 *    nosuid,nodev forced. The kernel alone decides the mount's options: the driver never
 *    mounts anything, so it cannot choose suid, allow_other or a mount point. Only
 *    user_id/group_id's processes may use the mount (no allow_other): the caller's, not
 *    root's and not another tenant's. The kernel queues FUSE_INIT at once; requests wait
 *    (interruptibly) until the driver answers them.
 *  - startFuseDriver spawns the driver as `uid:gid` with no supplementary groups, fd 3 =
 *    the /dev/fuse connection and fd 4 = the image (an fd, reopened by the driver as
 *    /dev/fd/4: an O_PATH fd of a node the uid may open). libfuse 3 (squashfuse) takes a
 *    mount point of /dev/fd/3 to mean "already mounted, serve this fd". libfuse 2 (fuse2fs)
 *    does not know that; with `-o auto_unmount` it asks fusermount for the fd instead, so
 *    the driver runs in its own user and mount namespace (`unshare -r -m`, as the same
 *    uid), where FUSERMOUNT_SHIM is bind-mounted over /bin/fusermount and hands libfuse
 *    fd 3 over _FUSE_COMMFD. Nothing is mounted anywhere but by us.
 *  - Lifetime: the driver exits by itself when the filesystem goes away (last unmount of
 *    the mount, or its fd closed before it was attached: /dev/fuse then reads ENODEV).
 *    stopFuseDrivers() ends the ones still running (their mounts then fail with ENOTCONN).
 *    If the broker is SIGKILLed they are orphans that still exit with their mounts.
 *  - Readiness: the driver is ready when it waits in read(2) on its /dev/fuse fd: by then
 *    it has answered FUSE_INIT (queued before it started). A driver that exits first
 *    (unreadable image, not that filesystem) fails the start with its last stderr line.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, chmodSync, constants as fsc, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isSysError } from '../kernel/errors.js';
import { native } from '../kernel/native.js';

/** The userspace drivers loopfs knows, by the filesystem types they serve. */
export const FUSE_DRIVERS = {
  fuse2fs: { types: ['ext4', 'ext3', 'ext2'], libfuse: 2 },
  squashfuse: { types: ['squashfs'], libfuse: 3 },
} as const;
export type FuseDriver = keyof typeof FUSE_DRIVERS;

/** The driver for a filesystem type, or null when loopfs has none. */
export function fuseDriverFor(fstype: string): FuseDriver | null {
  for (const [driver, d] of Object.entries(FUSE_DRIVERS)) if ((d.types as readonly string[]).includes(fstype)) return driver as FuseDriver;
  return null;
}

/** Where the driver's program is on PATH, or null. */
export function fuseDriverPath(driver: FuseDriver, env: NodeJS.ProcessEnv = process.env): string | null {
  for (const dir of (env.PATH || '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin').split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, driver);
    try {
      accessSync(p, fsc.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return null;
}

export interface FuseMountOptions {
  driver: FuseDriver;
  /** What mountinfo shows as the source (the device or image name). */
  source: string;
  /** Whose processes may use the mount (in the initial user namespace). */
  userId: number;
  groupId: number;
  readOnly: boolean;
  /** MOUNT_ATTR_* for fsmount; nosuid and nodev are always added. */
  attrFlags?: number;
}

export interface FuseMount {
  /** The detached mount (fsmount): attach or send it, then close it. */
  mntFd: number;
  /** The /dev/fuse connection: give it to startFuseDriver, then close it. */
  fuseFd: number;
}

/** Build the detached FUSE mount (root only). Throws a SysError (fsconfig's log in `details`). */
export function createFuseMount(o: FuseMountOptions): FuseMount {
  const n = native();
  const c = n.constants;
  const fuseFd = n.open('/dev/fuse', c.O_RDWR);
  try {
    const fsfd = n.fsopen('fuse', c.FSOPEN_CLOEXEC);
    try {
      n.fsconfigSetString(fsfd, 'source', o.source);
      n.fsconfigSetString(fsfd, 'subtype', o.driver);
      n.fsconfigSetString(fsfd, 'fd', String(fuseFd));
      n.fsconfigSetString(fsfd, 'rootmode', '40000');
      n.fsconfigSetString(fsfd, 'user_id', String(o.userId));
      n.fsconfigSetString(fsfd, 'group_id', String(o.groupId));
      // permissions are the kernel's to check (mode bits), not the driver's
      n.fsconfigSetFlag(fsfd, 'default_permissions');
      if (o.readOnly) n.fsconfigSetFlag(fsfd, 'ro');
      n.fsconfigCreate(fsfd);
      const attrs = (o.attrFlags ?? 0) | c.MOUNT_ATTR_NOSUID | c.MOUNT_ATTR_NODEV | (o.readOnly ? c.MOUNT_ATTR_RDONLY : 0);
      return { mntFd: n.fsmount(fsfd, c.FSMOUNT_CLOEXEC, attrs), fuseFd };
    } finally {
      n.close(fsfd);
    }
  } catch (e) {
    n.close(fuseFd);
    throw e;
  }
}

export interface FuseDriverOptions {
  driver: FuseDriver;
  /** The /dev/fuse fd of createFuseMount (the caller closes its own copy afterwards). */
  fuseFd: number;
  /** The image, an fd the driver reopens as /dev/fd/4 with its own uid (O_PATH is fine). */
  imageFd: number;
  /** The unprivileged identity the driver runs as. */
  uid: number;
  gid: number;
  readOnly: boolean;
  /** How long the driver may take to answer FUSE_INIT (default 10 s). */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

export class FuseDriverError extends Error {
  constructor(
    readonly driver: FuseDriver,
    message: string,
  ) {
    super(message);
    this.name = 'FuseDriverError';
  }
}

/** A running driver. */
export interface FuseDaemon {
  driver: FuseDriver;
  pid: number;
  /** Resolves when the process has exited (and was reaped). */
  exited: Promise<void>;
}

const running = new Map<number, { child: ChildProcess; daemon: FuseDaemon }>();

/** Drivers started by this process that are still running. */
export function runningFuseDrivers(): FuseDaemon[] {
  return [...running.values()].map((r) => r.daemon);
}

/** End every driver still running (SIGTERM, SIGKILL after graceMs); their mounts fail from then on. */
export async function stopFuseDrivers(graceMs = 2000): Promise<void> {
  const all = [...running.values()];
  for (const r of all) r.child.kill('SIGTERM');
  const t = setTimeout(() => {
    for (const r of all) r.child.kill('SIGKILL');
  }, graceMs);
  await Promise.all(all.map((r) => r.daemon.exited));
  clearTimeout(t);
}

/** The shim libfuse 2 runs as fusermount: it passes fd 3 over $_FUSE_COMMFD (fusermount-shim.ts). */
const SHIM_JS = fileURLToPath(new URL('./fusermount-shim.js', import.meta.url));
let shimDir: string | null = null;

/**
 * A root-owned directory (mode 0755) with `fusermount`, a script running the shim, and
 * `mnt`, an empty directory libfuse 2 insists on as mount point (nothing is mounted on
 * it). Made once per process (again if a tmp cleaner took it), removed at exit.
 */
function fusermountShim(): { script: string; mountPoint: string } {
  if (shimDir === null || !existsSync(join(shimDir, 'fusermount')) || !existsSync(join(shimDir, 'mnt'))) {
    if (shimDir) rmSync(shimDir, { recursive: true, force: true });
    else process.once('exit', () => shimDir && rmSync(shimDir, { recursive: true, force: true }));
    const dir = mkdtempSync(join(tmpdir(), 'loopfs-fuse-'));
    chmodSync(dir, 0o755);
    writeFileSync(join(dir, 'fusermount'), `#!/bin/sh\nexec '${process.execPath}' '${SHIM_JS}' "$@"\n`, { mode: 0o755 });
    mkdirSync(join(dir, 'mnt'), { mode: 0o755 });
    shimDir = dir;
  }
  return { script: join(shimDir, 'fusermount'), mountPoint: join(shimDir, 'mnt') };
}

/** argv for the driver: fd 3 is /dev/fuse, fd 4 the image. */
function driverArgv(o: FuseDriverOptions, program: string): [string, string[]] {
  const ro = o.readOnly ? ['-o', 'ro'] : [];
  if (FUSE_DRIVERS[o.driver].libfuse === 3) {
    // -f: stay in the foreground (our child); -s: one thread (readiness is one read(2))
    return [program, ['-f', '-s', ...ro, '/dev/fd/4', '/dev/fd/3']];
  }
  const shim = fusermountShim();
  const opts = ['auto_unmount', ...(o.readOnly ? ['ro'] : [])].join(',');
  const script = 'mount --bind "$1" /bin/fusermount && shift && exec "$@"';
  return ['unshare', ['-r', '-m', '--', 'sh', '-c', script, 'sh', shim.script, program, '/dev/fd/4', shim.mountPoint, '-f', '-s', '-o', opts]];
}

/**
 * Start the driver for a mount made by createFuseMount and wait until it serves it.
 * Throws FuseDriverError (the driver's own last words when it exited).
 */
export async function startFuseDriver(o: FuseDriverOptions): Promise<FuseDaemon> {
  const env = o.env ?? process.env;
  const program = fuseDriverPath(o.driver, env);
  if (!program) throw new FuseDriverError(o.driver, `the FUSE driver ${o.driver} is not installed`);
  const [cmd, args] = driverArgv(o, program);
  const child = spawn(cmd, args, {
    uid: o.uid,
    gid: o.gid, // libuv drops supplementary groups (setgroups(0)) with it
    stdio: ['ignore', 'ignore', 'pipe', o.fuseFd, o.imageFd],
    env: { PATH: env.PATH || '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin', LANG: 'C' },
    cwd: '/',
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (s: string) => {
    if (stderr.length < 4096) stderr += s;
  });
  let exitedFlag = false;
  let exitDescription = '';
  const exited = new Promise<void>((resolve) => {
    child.once('error', (e) => {
      exitedFlag = true;
      exitDescription = e.message;
      resolve();
    });
    child.once('exit', (code, signal) => {
      exitedFlag = true;
      exitDescription = signal ? `killed by ${signal}` : `exit status ${code}`;
      resolve();
    });
  });
  const pid = child.pid ?? -1;
  const daemon: FuseDaemon = { driver: o.driver, pid, exited };
  if (pid > 0) {
    running.set(pid, { child, daemon });
    void exited.then(() => running.delete(pid));
  }
  const end = Date.now() + (o.timeoutMs ?? 10_000);
  while (!exitedFlag) {
    if (pid > 0 && servingFuse(pid)) return daemon;
    if (Date.now() > end) {
      child.kill('SIGKILL');
      await exited;
      throw new FuseDriverError(o.driver, `the FUSE driver ${o.driver} did not start within ${Math.round((o.timeoutMs ?? 10_000) / 1000)} s`);
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  await exited;
  const why = lastLine(stderr) || exitDescription;
  throw new FuseDriverError(o.driver, `the FUSE driver ${o.driver} failed: ${why}`);
}

function lastLine(s: string): string {
  const lines = s.split('\n').map((l) => l.trim()).filter(Boolean);
  return lines.length ? lines[lines.length - 1] : '';
}

/** Whether a thread of `pid` is blocked in read(2) on a /dev/fuse fd (/proc/PID/task/T/syscall). */
function servingFuse(pid: number): boolean {
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return false;
  }
  for (const t of tasks) {
    let sc: string;
    try {
      sc = readFileSync(`/proc/${pid}/task/${t}/syscall`, 'utf8');
    } catch {
      continue;
    }
    // "0 0x3 0x7f..." : syscall number (x86-64 read = 0, arm64 read = 63) and its first argument
    const [nr, arg0] = sc.trim().split(' ');
    if (READ_SYSCALL < 0) return true; // no table for this architecture: alive is all we can tell
    if (nr !== String(READ_SYSCALL)) continue;
    try {
      if (readlinkSync(`/proc/${pid}/fd/${parseInt(arg0, 16)}`) === '/dev/fuse') return true;
    } catch {
      /* raced with exit */
    }
  }
  return false;
}

const READ_SYSCALL = process.arch === 'arm64' ? 63 : process.arch === 'x64' ? 0 : -1;

/** A SysError from createFuseMount in one line. */
export function describeFuseError(e: unknown): string {
  if (isSysError(e)) {
    const details = (e as { details?: string[] }).details ?? [];
    return `${e.description}${details.length ? ` (${details.join('; ')})` : ''}`;
  }
  return e instanceof Error ? e.message : String(e);
}
