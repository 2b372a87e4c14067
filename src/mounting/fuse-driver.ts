/**
 * Filesystem images parsed by a userspace FUSE driver instead of the kernel: a detached
 * FUSE mount built by root, served by a driver process that runs as an unprivileged uid
 * with nothing but the two fds it needs. Used by the broker's `mount` op (`loopfs serve
 * --fuse`, `mount.loop -o fuse`) and by the mounts `loopfs run --fuse` and the OCI seccomp
 * agent perform (through loop-mount.ts); one function per step, no broker types.
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
 *  - startFuseDriver runs the driver through native/fuse_exec.c (FUSE_EXEC, compiled: no
 *    node process on this path), started as root with spawnVm (posix_spawn's way: no fork
 *    of node, whose page tables alone cost ~3 ms to copy): it closes every fd but 0-4, drops to
 *    `uid:gid` with no supplementary groups and no capabilities (none even for an owner
 *    of uid 0: empty bounding set, SECBIT_NOROOT), sets no_new_privs and execs the driver
 *    with fd 3 = the /dev/fuse connection and fd 4 = the image (an fd, reopened by the
 *    driver as /dev/fd/4: an O_PATH fd of a node the uid may open). libfuse 3
 *    (squashfuse) takes a mount point of /dev/fd/3 to mean "already mounted, serve this
 *    fd". libfuse 2 (fuse2fs) does not know that; with `-o auto_unmount` it asks
 *    /bin/fusermount for the fd instead, so for it fuse_exec first makes a private mount
 *    namespace with itself bind-mounted over /bin/fusermount, where it hands libfuse fd 3
 *    over _FUSE_COMMFD. Nothing is mounted anywhere but by us: the driver could not even
 *    if it tried (no CAP_SYS_ADMIN, and its mount point `/` is only a name to libfuse).
 *  - Lifetime: the driver exits by itself when the filesystem goes away (last unmount of
 *    the mount, or its fd closed before it was attached: /dev/fuse then reads ENODEV).
 *    stopFuseDrivers() ends the ones still running (their mounts then fail with ENOTCONN).
 *    If the broker is SIGKILLed they are orphans that still exit with their mounts.
 *  - Readiness: the driver is ready when it waits in read(2) on its /dev/fuse fd: by then
 *    it has answered FUSE_INIT (queued before it started). The drivers serve with one
 *    thread (-s), so that is the main thread's /proc/PID/syscall, looked at every
 *    millisecond (a start takes a few). A driver that exits first (unreadable image, not
 *    that filesystem) fails the start with its last stderr line.
 */
import { accessSync, constants as fsc, readFileSync, readlinkSync } from 'node:fs';
import { constants as osc } from 'node:os';
import { delimiter, join } from 'node:path';
import { isSysError } from '../kernel/errors.js';
import { FUSE_EXEC } from '../kernel/fuse-exec.js';
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

/** Drivers running: each with the way to signal it (only until it is reaped, so never a reused pid). */
const running = new Map<number, { daemon: FuseDaemon; signal(sig: NodeJS.Signals): void }>();

/** Drivers started by this process that are still running. */
export function runningFuseDrivers(): FuseDaemon[] {
  return [...running.values()].map((r) => r.daemon);
}

/** End every driver still running (SIGTERM, SIGKILL after graceMs); their mounts fail from then on. */
export async function stopFuseDrivers(graceMs = 2000): Promise<void> {
  const all = [...running.values()];
  for (const r of all) r.signal('SIGTERM');
  const t = setTimeout(() => {
    for (const r of all) r.signal('SIGKILL');
  }, graceMs);
  await Promise.all(all.map((r) => r.daemon.exited));
  clearTimeout(t);
}

/** argv for FUSE_EXEC: the driver's identity, whether it needs the fusermount namespace, the driver's argv (fd 3 /dev/fuse, fd 4 the image). */
function driverArgv(o: FuseDriverOptions, program: string): string[] {
  const ids = [String(o.uid), String(o.gid)];
  if (FUSE_DRIVERS[o.driver].libfuse === 3) {
    // -f: stay in the foreground (our child); -s: one thread (readiness is one read(2))
    return [...ids, 'plain', program, '-f', '-s', ...(o.readOnly ? ['-o', 'ro'] : []), '/dev/fd/4', '/dev/fd/3'];
  }
  // auto_unmount: libfuse 2 then goes straight to fusermount (it never tries mount(2)); the
  // mount point is only a name here, handed to fusermount, which ignores it (nonempty:
  // libfuse 2 would refuse a directory with entries before it even asks)
  const opts = ['auto_unmount', 'nonempty', ...(o.readOnly ? ['ro'] : [])].join(',');
  return [...ids, 'fusermount', program, '/dev/fd/4', '/', '-f', '-s', '-o', opts];
}

/**
 * Start the driver for a mount made by createFuseMount and wait until it serves it.
 * Throws FuseDriverError (the driver's own last words when it exited).
 */
export async function startFuseDriver(o: FuseDriverOptions): Promise<FuseDaemon> {
  const env = o.env ?? process.env;
  const program = fuseDriverPath(o.driver, env);
  if (!program) throw new FuseDriverError(o.driver, `the FUSE driver ${o.driver} is not installed`);
  // Started without node's child_process, whose fork copies node's page tables (~3 ms):
  // native spawnVm (posix_spawn's way). As root: FUSE_EXEC needs it for the namespace,
  // then drops every privilege itself. Its stderr is a socket here (one record per write).
  const n = native();
  const [errRead, errWrite] = n.socketPair(false);
  let started: { pid: number; pidfd: number };
  let devNull = -1;
  try {
    devNull = n.open('/dev/null', n.constants.O_RDWR);
    const path = env.PATH || '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin';
    started = n.spawnVm(FUSE_EXEC, [FUSE_EXEC, ...driverArgv(o, program)], [`PATH=${path}`, 'LANG=C'], [devNull, devNull, errWrite, o.fuseFd, o.imageFd], '/');
  } catch (e) {
    n.close(errRead);
    throw new FuseDriverError(o.driver, `the FUSE driver ${o.driver} failed: ${FUSE_EXEC}: ${describeFuseError(e)}`);
  } finally {
    n.close(errWrite);
    if (devNull >= 0) n.close(devNull);
  }
  const { pid, pidfd } = started;

  let stderr = '';
  let stderrEnded!: () => void;
  const stderrClosed = new Promise<void>((resolve) => (stderrEnded = resolve));
  const errWatch = n.watchFd(errRead, () => {
    for (;;) {
      let m: { eof: boolean; data?: Buffer } | null;
      try {
        m = n.recvMsg(errRead, 4096, 0);
      } catch {
        m = { eof: true }; // an error reading the driver's words ends them, not the driver
      }
      if (!m) return; // all read for now
      if (m.eof) {
        errWatch.close();
        n.close(errRead);
        stderrEnded();
        return;
      }
      if (stderr.length < 4096) stderr += m.data!.toString('utf8');
    }
  });
  errWatch.unref();

  let exitedFlag = false;
  let exitDescription = '';
  let markExited!: () => void;
  const exited = new Promise<void>((resolve) => (markExited = resolve));
  // the pidfd turns readable when the driver exits; it is reaped here (waitPid) and only
  // then forgotten, so a signal from stopFuseDrivers never reaches a reused pid
  const exitWatch = n.watchFd(pidfd, () => {
    const w = n.waitPid(pid, true);
    exitWatch.close();
    n.close(pidfd);
    exitedFlag = true;
    exitDescription = !w ? 'exited' : w.signal !== null ? `killed by ${signalName(w.signal)}` : `exit status ${w.code}`;
    running.delete(pid);
    markExited();
  });
  const daemon: FuseDaemon = { driver: o.driver, pid, exited };
  const signal = (sig: NodeJS.Signals) => {
    if (exitedFlag) return;
    try {
      process.kill(pid, sig);
    } catch {
      /* exiting: not reaped yet, so still ours */
    }
  };
  running.set(pid, { daemon, signal });
  const end = Date.now() + (o.timeoutMs ?? 10_000);
  while (!exitedFlag) {
    if (servingFuse(pid)) return daemon;
    if (Date.now() > end) {
      signal('SIGKILL');
      await exited;
      throw new FuseDriverError(o.driver, `the FUSE driver ${o.driver} did not start within ${Math.round((o.timeoutMs ?? 10_000) / 1000)} s`);
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  await exited;
  // bounded: a process the driver left behind may still hold the pipe
  await Promise.race([stderrClosed, new Promise((r) => setTimeout(r, 200))]);
  const why = lastLine(stderr) || exitDescription;
  throw new FuseDriverError(o.driver, `the FUSE driver ${o.driver} failed: ${why}`);
}

function signalName(n: number): string {
  return Object.entries(osc.signals).find(([, v]) => v === n)?.[0] ?? `signal ${n}`;
}

function lastLine(s: string): string {
  const lines = s.split('\n').map((l) => l.trim()).filter(Boolean);
  return lines.length ? lines[lines.length - 1] : '';
}

/**
 * Whether pid's main thread is blocked in read(2) on a /dev/fuse fd (/proc/PID/syscall:
 * the drivers run with -s, so the main thread is the one that serves).
 */
function servingFuse(pid: number): boolean {
  let sc: string;
  try {
    sc = readFileSync(`/proc/${pid}/syscall`, 'utf8');
  } catch {
    // the driver exited meanwhile (ENOENT/ESRCH): not serving; its exit is noticed by its pidfd
    return false;
  }
  if (READ_SYSCALL < 0) return true; // no table for this architecture: alive is all we can tell
  // "0 0x3 0x7f..." : syscall number (x86-64 read = 0, arm64 read = 63) and its first argument
  const [nr, arg0] = sc.trim().split(' ');
  if (nr !== String(READ_SYSCALL)) return false;
  try {
    return readlinkSync(`/proc/${pid}/fd/${parseInt(arg0, 16)}`) === '/dev/fuse';
  } catch {
    return false; // raced with exit
  }
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
