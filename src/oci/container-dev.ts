/**
 * Put an instance into a container's /dev the seeds' way, from a createRuntime hook
 * (before pivot_root: the container's mount namespace still sees the host's tree):
 *
 *   /dev/loopfs        the instance directory, bind-mounted read-only (nosuid, noexec)
 *   /dev/loopK         symlinks to loopfs/loopN for the pre-allocated pool devices, K =
 *                      0, 1, 2, ... in ascending order of their minors N
 *   /dev/loop-control  a symlink to loopfs/loop-control, only where that is the
 *                      instance's own (a broker socket); never the host's
 *   /sys/block         a read-only tmpfs over the container's sysfs view of it: loopK ->
 *                      /sys/devices/virtual/block/loopN for those devices, every other
 *                      (not loop) block device as the host's sysfs links it
 *
 * Numbered from 0 because scanners without loop-control (busybox: losetup -f, mount -o
 * loop) probe /dev/loop0, loop1, ... and stop at the first missing number. util-linux
 * names a device it finds in use (losetup -a, -j, mount's overlap check) by its
 * /sys/block entry and then needs /dev with that same name: the overlay makes those
 * names the container's, while every attribute still comes from the real sysfs (through
 * the links, and /sys/dev/block/7:N by device number). It also keeps the host's own loop
 * devices out of the container's /sys/block.
 *
 * Symlinks, not nodes: a device the instance gives back disappears from DIR, and the
 * symlink then dangles instead of reaching whoever gets that minor next; and they work
 * in a rootless container's /dev, where nodes cannot be made (nodev, no CAP_MKNOD).
 *
 * The files are made through /proc/PID/root (a path walk in the container's mount
 * namespace, from here); the mounts need a process inside that namespace, and node's
 * main process cannot setns(CLONE_NEWNS) (it has threads): nsenter does it.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync, statSync, symlinkSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { hasCode } from '../kernel/errors.js';
import { native } from '../kernel/native.js';
import { BROKER_SOCKET } from '../protocol/broker.js';
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

/** One pool device as the container names it: /dev/NAME -> loopfs/NODE (NODE = loopN). */
export interface ContainerLoopName {
  name: string;
  node: string;
  minor: number;
}

/** The container's names of the instance's nodes: loop0, loop1, ... by ascending minor. */
export function containerLoopNames(nodes: readonly string[]): ContainerLoopName[] {
  return [...new Set(nodes.filter((n) => SAFE_NAME.test(n)))]
    .map((node) => ({ node, minor: Number(node.slice(4)) }))
    .sort((a, b) => a.minor - b.minor)
    .map((d, k) => ({ name: `loop${k}`, ...d }));
}

/**
 * The entries of the container's /sys/block (name, absolute sysfs target), in the order
 * to create them: its own loop devices under their container names, every block device
 * that is not a loop device as `sysBlock` (the host's) has it.
 */
export function sysBlockEntries(names: readonly ContainerLoopName[], sysBlock = '/sys/block'): Array<[string, string]> {
  const entries: Array<[string, string]> = [];
  for (const name of readdirSync(sysBlock).sort()) {
    if (name.startsWith('loop')) continue;
    entries.push([name, resolvePath(sysBlock, readlinkSync(`${sysBlock}/${name}`))]);
  }
  for (const d of names) {
    let target: string;
    try {
      target = readlinkSync(`${sysBlock}/${d.node}`);
    } catch (e) {
      // ENOENT: the device left between the listing of the instance and this look (a
      // release racing the container's start); the live view drops its name
      if (hasCode(e, 'ENOENT')) continue;
      throw e;
    }
    entries.push([d.name, resolvePath(sysBlock, target)]);
  }
  // made in this order; tmpfs lists the newest entry first (6.x), and util-linux lists in
  // readdir order: loop0 then comes first
  return entries.reverse();
}

export function prepareContainerDev(req: ContainerDevRequest): void {
  const devPath = `/proc/${req.pid}/root${req.rootPath}/dev`;
  let dev: PinnedDir;
  try {
    dev = PinnedDir.open(devPath);
  } catch (e) {
    throw new OciError(`cannot open the container's /dev (${devPath}): ${(e as Error).message}`);
  }
  const names = containerLoopNames(req.nodes);
  const restore = req.as ? actAs(req.as) : () => {};
  try {
    try {
      dev.mkdir(CONTAINER_INSTANCE_DIR, 0o755);
    } catch (e) {
      if (!hasCode(e, 'EEXIST')) throw e;
    }
    const links = names.map((d) => [d.name, `${CONTAINER_INSTANCE_DIR}/${d.node}`]);
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
  // a container without a sysfs of its own has no /sys/block to correct
  const sysBlock = `${req.rootPath}/sys/block`;
  const withSys = isDirectory(`/proc/${req.pid}/root${sysBlock}`);
  mountInContainer(req.pid, req.dir, `${req.rootPath}/dev/${CONTAINER_INSTANCE_DIR}`, withSys ? { at: sysBlock, entries: sysBlockEntries(names) } : null);
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    // absent (ENOENT) or beyond our reach: not a directory to use
    return false;
  }
}

/**
 * Act as `id` for the permission checks and the ownership of entries this thread creates
 * (a container's /dev belongs to its user namespace, where the host's root is unmapped);
 * returns the undo. The filesystem ids of the calling thread only: seteuid would switch
 * every thread of the process, and the oci-broker's instance workers, running meanwhile,
 * would lose root's access to the instances' state (EACCES).
 */
export function actAs(id: { uid: number; gid: number }): () => void {
  const n = native();
  const [uid, gid] = n.setfsids(id.uid, id.gid);
  return () => {
    n.setfsids(uid, gid);
  };
}

/**
 * In the mount namespace of PID: `mount --bind -o ro,nosuid,noexec DIR TARGET`, then the
 * /sys/block overlay (a tmpfs, filled with the links, remounted read-only). One nsenter
 * for both; a failure half-way fails the hook, and the runtime then discards the whole
 * namespace with whatever was mounted in it.
 */
function mountInContainer(pid: number, dir: string, target: string, sys: { at: string; entries: Array<[string, string]> } | null): void {
  const script = [
    'set -e',
    'mount --bind -o ro,nosuid,noexec "$1" "$2"',
    '[ "$#" -gt 2 ] || exit 0',
    'sys=$3; shift 3',
    'mount -t tmpfs -o mode=0755,nosuid,nodev,noexec,size=64k loopfs-sysblock "$sys"',
    'while [ "$#" -gt 0 ]; do ln -s "$2" "$sys/$1"; shift 2; done',
    'mount -o remount,ro,nosuid,nodev,noexec "$sys"',
  ].join('\n');
  const args = [dir, target, ...(sys ? [sys.at, ...sys.entries.flat()] : [])];
  const r = spawnSync('nsenter', ['-t', String(pid), '-m', '--', 'sh', '-c', script, 'loopfs-oci-hook', ...args], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  if (r.error) throw new OciError(`nsenter: ${r.error.message}`);
  if (r.status !== 0) {
    throw new OciError(`cannot mount ${dir} at ${target}${sys ? ` and the loop devices' ${sys.at}` : ''} in the container: ${r.stderr.trim() || `exit ${r.status}`}`);
  }
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
