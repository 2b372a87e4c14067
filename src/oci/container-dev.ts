/**
 * Put an instance into a container's /dev the seeds' way, from a createRuntime hook
 * (before pivot_root: the container's mount namespace still sees the host's tree):
 *
 *   /dev/loopfs        the instance directory, bind-mounted read-only (nosuid, noexec)
 *   /dev/loopN         symlinks to loopfs/loopN for the pre-allocated pool devices
 *   /dev/loop-control  a symlink to loopfs/loop-control, only where that is the
 *                      instance's own (a broker socket); never the host's
 *
 * Symlinks, not nodes: a device the instance gives back disappears from DIR, and the
 * symlink then dangles instead of reaching whoever gets that minor next; and they work
 * in a rootless container's /dev, where nodes cannot be made (nodev, no CAP_MKNOD).
 *
 * The files are made through /proc/PID/root (a path walk in the container's mount
 * namespace, from here); the bind mount needs a process inside that namespace, and
 * node's main process cannot setns(CLONE_NEWNS) (it has threads): nsenter does it.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, symlinkSync } from 'node:fs';
import { hasCode } from '../kernel/errors.js';
import { BROKER_SOCKET } from '../instance/broker-scope.js';
import { PinnedDir } from '../instance/pinned-dir.js';
import { OciError } from './bundle.js';
import { ociRoot } from './record.js';

export const CONTAINER_INSTANCE_DIR = 'loopfs';

export interface ContainerDevRequest {
  /** Container init pid in this process's PID namespace. */
  pid: number;
  /** The container's root as a path in its (not yet pivoted) mount namespace. */
  rootPath: string;
  /** The instance directory (host path; visible in the container's namespace too). */
  dir: string;
  /** Node names (loopN) to link into /dev. */
  nodes: string[];
  /** Link /dev/loop-control to the instance's own (brokered instances). */
  control: boolean;
  /**
   * Create the entries as this host uid/gid: the container's root as mapped on the host.
   * A /dev mounted inside the container's user namespace refuses ids it does not map
   * (EOVERFLOW for the host's root).
   */
  as?: { uid: number; gid: number };
}

const SAFE_NAME = /^loop\d+$/;

export function prepareContainerDev(req: ContainerDevRequest): void {
  const devPath = `/proc/${req.pid}/root${req.rootPath}/dev`;
  let dev: PinnedDir;
  try {
    dev = PinnedDir.open(devPath);
  } catch (e) {
    throw new OciError(`cannot open the container's /dev (${devPath}): ${(e as Error).message}`);
  }
  const restore = req.as ? actAs(req.as) : () => {};
  try {
    try {
      dev.mkdir(CONTAINER_INSTANCE_DIR, 0o755);
    } catch (e) {
      if (!hasCode(e, 'EEXIST')) throw e;
    }
    const links = req.nodes.filter((n) => SAFE_NAME.test(n)).map((n) => [n, `${CONTAINER_INSTANCE_DIR}/${n}`]);
    if (req.control) links.push([BROKER_SOCKET, `${CONTAINER_INSTANCE_DIR}/${BROKER_SOCKET}`]);
    for (const [name, target] of links) {
      // the runtime's /dev holds no loop names; anything there now is not ours to keep
      dev.unlinkQuiet(name);
      symlinkSync(target, `/proc/self/fd/${dev.fd}/${name}`);
    }
  } finally {
    restore();
    dev.close();
  }
  bindInContainer(req.pid, req.dir, `${req.rootPath}/dev/${CONTAINER_INSTANCE_DIR}`);
}

/**
 * Switch the effective ids (glibc applies them to every thread of the process) for the
 * permission checks of entries created through an fd opened before; returns the undo.
 */
function actAs(id: { uid: number; gid: number }): () => void {
  const uid = process.geteuid!();
  const gid = process.getegid!();
  if (id.uid === uid && id.gid === gid) return () => {};
  process.setegid!(id.gid);
  process.seteuid!(id.uid);
  return () => {
    process.seteuid!(uid);
    process.setegid!(gid);
  };
}

/** `mount --bind -o ro,nosuid,noexec DIR TARGET` inside the mount namespace of PID. */
function bindInContainer(pid: number, dir: string, target: string): void {
  const r = spawnSync('nsenter', ['-t', String(pid), '-m', '--', 'mount', '--bind', '-o', 'ro,nosuid,noexec', dir, target], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  if (r.error) throw new OciError(`nsenter: ${r.error.message}`);
  if (r.status !== 0) throw new OciError(`cannot bind ${dir} into the container at ${target}: ${r.stderr.trim() || `exit ${r.status}`}`);
}

/**
 * The mount point holding PATH when that mount is nodev (per-mount option), else null.
 * Our bind of an instance directory in a rootful container clears nodev; a rootless
 * runtime cannot (the flag is locked in its user namespace), so its instances must live
 * on a mount without it. Longest mount-point prefix of PATH in /proc/self/mountinfo.
 */
export function nodevMountOf(path: string): string | null {
  let best = '';
  let nodev = false;
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f.length < 6) continue;
    const mp = f[4].replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    const under = mp === '/' || path === mp || path.startsWith(`${mp}/`);
    if (under && mp.length >= best.length) {
      best = mp;
      nodev = f[5].split(',').includes('nodev');
    }
  }
  return nodev ? best : null;
}

/**
 * Refuse where container instances would live on a nodev mount and `who` cannot clear
 * that flag in its bind (a rootless container, one with a user namespace).
 */
export function refuseNodevRuntime(who: string, env: NodeJS.ProcessEnv, path = ociRoot(env)): void {
  const nodev = nodevMountOf(path);
  if (nodev) {
    throw new OciError(`${ociRoot(env)} is on ${nodev}, mounted nodev: ${who} cannot use devices through it (mount a tmpfs without nodev there)`);
  }
}
