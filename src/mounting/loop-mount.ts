/**
 * The one routine that mounts a loop device of an instance for another process: the
 * broker's `mount` op (src/broker/ops.ts) and the mounts `loopfs run` and the OCI seccomp
 * agent perform for a trapped mount(2) (src/intercept/perform.ts). It returns a detached
 * mount (an fd): the broker sends it to its client, the interceptor moves it into the
 * caller's namespace. What differs between them stays with them: who the mount is for
 * (MountFor) and how a refusal is told (each maps LoopMountRefused to its own errno and
 * words: a protocol error body, or the errno a trapped caller gets plus a log line).
 *
 * Rules:
 *  - the device is named by minor and reached through the host node /dev/loopN (root's
 *    devtmpfs), never through the instance's DIR/loopN or the caller's path, which their
 *    owners may swap for somebody else's device;
 *  - opening the host node pins the device's binding: until it is closed a LOOP_CLR_FD
 *    is deferred and LOOP_CTL_REMOVE fails, so the device cannot change hands between
 *    the checks and the mount; membership and binding are checked on the pinned device;
 *  - only allowed filesystem types, always nosuid,nodev;
 *  - a FUSE mount is served by a driver running as the instance owner, who opens the
 *    instance's node DIR/loopN (an O_PATH fd, opened without following symlinks and
 *    checked to be this very device).
 */
import { basename } from 'node:path';
import { hostLoopNode, isBlockDevice, LOOP_MAJOR } from '../kernel/devnum.js';
import { isSysError } from '../kernel/errors.js';
import { LoopDevice } from '../kernel/loop-device.js';
import { native } from '../kernel/native.js';
import { SysfsLoop } from '../kernel/sysfs.js';
import type { LocalInstance } from '../instance/local-instance.js';
import { PinnedDir } from '../instance/pinned-dir.js';
import type { MountAttrName } from '../protocol/broker.js';
import { createMount, MountError, mountAttrFlags, probeFilesystem } from './detached-mount.js';
import { createFuseMount, describeFuseError, fuseDriverFor, fuseDriverPath, type FuseDriverOptions } from './fuse-driver.js';

/** A loop device named by minor: the host node, with the device number known without a stat. */
export class MinorDevice extends LoopDevice {
  constructor(readonly minorNumber: number) {
    super(hostLoopNode(minorNumber));
  }
  override devno(): [number, number] {
    return [LOOP_MAJOR, this.minorNumber];
  }
}

/** Who a mount is for. */
export interface MountFor {
  /** The ids whose processes alone may use a FUSE mount (user_id/group_id, initial user namespace). */
  uid: number;
  gid: number;
  /** ID-map the kernel mount to them where they need it; returns whether it is mapped. */
  idmap(mntFd: number): boolean;
}

export interface LoopMountRequest {
  /** The instance; the device must be one it holds and has published. */
  inst: LocalInstance;
  minor: number;
  /** The type asked for; null: the one the superblock says. */
  fstype: string | null;
  /** Asked read-only (a read-only device is mounted read-only anyway). */
  readOnly: boolean;
  attrs: MountAttrName[];
  allowFs: readonly string[];
  /** Through a FUSE driver or the kernel: asked once the filesystem is known to be allowed. */
  fuse: () => boolean;
  for: MountFor;
  /** PATH for the FUSE drivers. */
  env: NodeJS.ProcessEnv;
}

/** What the caller needs to start a FUSE driver; it owns (and closes) both fds. */
export type FuseStart = Omit<FuseDriverOptions, 'timeoutMs' | 'env'>;

export interface LoopMount {
  /** The detached mount: send or attach it, then close it (an open mount fd keeps the device busy). */
  mntFd: number;
  fstype: string;
  readOnly: boolean;
  idmapped: boolean;
  /** A FUSE mount: the driver to start (fuse-driver.ts startFuseDriver) before the mount is used. */
  fuse: FuseStart | null;
}

/** Why a device was not mounted, with the facts each caller words its answer from. */
export type LoopMountRefusal =
  | { why: 'host-node-unopenable'; node: string; error: unknown }
  | { why: 'host-node-not-device'; node: string }
  | { why: 'not-member' }
  | { why: 'unbound' }
  | { why: 'unknown-type' }
  /** The asked type is not allowed, and the device holds another, allowed one. */
  | { why: 'wrong-type'; fstype: string; probed: string }
  | { why: 'type-not-allowed'; fstype: string }
  | { why: 'no-fuse-driver'; fstype: string }
  | { why: 'fuse-driver-missing'; driver: string }
  | { why: 'instance-node-unopenable'; node: string; error: unknown }
  | { why: 'instance-node-not-device'; node: string };

export class LoopMountRefused extends Error {
  constructor(readonly refusal: LoopMountRefusal) {
    super(`loop mount refused: ${refusal.why}`);
    this.name = 'LoopMountRefused';
  }
}

const refused = (r: LoopMountRefusal): never => {
  throw new LoopMountRefused(r);
};

/**
 * Mount loop device `minor` of the instance for `req.for`. Throws LoopMountRefused for
 * the refusals listed there, MountError when the kernel refuses the mount, anything
 * else as it came.
 */
export function mountLoopDevice(req: LoopMountRequest): LoopMount {
  const n = native();
  const c = n.constants;
  const { inst, minor, allowFs } = req;
  const host = hostLoopNode(minor);
  let devFd: number;
  try {
    devFd = n.open(host, c.O_RDONLY);
  } catch (error) {
    return refused({ why: 'host-node-unopenable', node: host, error });
  }
  try {
    if (!isBlockDevice(n.fstat(devFd), LOOP_MAJOR, minor)) refused({ why: 'host-node-not-device', node: host });
    if (!inst.contains(new MinorDevice(minor))) refused({ why: 'not-member' });
    const sys = SysfsLoop.forName(basename(host));
    if (!sys.isBound()) refused({ why: 'unbound' });
    const readOnly = req.readOnly || sys.readOnly() === true;
    // The superblock is read only when the answer depends on it: no type given, or a type
    // outside the allow-list. An allowed type needs no probe (the kernel's driver parses
    // the device either way), and reading 64 KiB through a loop device just bound costs
    // milliseconds per mount (util-linux always passes the type it probed).
    const probed = req.fstype === null || !allowFs.includes(req.fstype) ? probeFilesystem(devFd) : null;
    const fstype = req.fstype ?? probed;
    if (fstype === null) return refused({ why: 'unknown-type' });
    if (!allowFs.includes(fstype)) {
      // The device holds an allowed filesystem of another type: to a trapped caller the
      // kernel's answer to a wrong type (EINVAL), so that one trying type after type goes
      // on to the right one (busybox mount without -t tries ext3 and ext2 before ext4;
      // ext2/ext3 superblocks are the ext4 driver's, which probes as ext4).
      if (req.fstype && probed && probed !== req.fstype && allowFs.includes(probed)) refused({ why: 'wrong-type', fstype, probed });
      refused({ why: 'type-not-allowed', fstype });
    }
    if (req.fuse()) return fuseMount(req, fstype, readOnly);
    const mntFd = createMount(host, fstype, readOnly, req.attrs);
    try {
      return { mntFd, fstype, readOnly, idmapped: req.for.idmap(mntFd), fuse: null };
    } catch (e) {
      n.close(mntFd);
      throw e;
    }
  } finally {
    n.close(devFd);
  }
}

/**
 * The kernel part of a FUSE mount (fuse-driver.ts createFuseMount): usable by req.for's
 * ids only, never ID-mapped (the drivers cannot map ids). The driver will run as the
 * instance owner, who owns DIR/loopN: it gets that node as an O_PATH fd and reopens it
 * with its own rights.
 */
function fuseMount(req: LoopMountRequest, fstype: string, readOnly: boolean): LoopMount {
  const n = native();
  const c = n.constants;
  const { inst, minor } = req;
  const driver = fuseDriverFor(fstype);
  if (!driver) return refused({ why: 'no-fuse-driver', fstype });
  if (!fuseDriverPath(driver, req.env)) return refused({ why: 'fuse-driver-missing', driver });
  const owner = inst.header().owner;
  const node = inst.nodePath(minor);
  const root = PinnedDir.open(inst.dir);
  let imageFd: number;
  try {
    imageFd = n.openat(root.fd, basename(node), c.O_PATH | c.O_NOFOLLOW);
  } catch (error) {
    return refused({ why: 'instance-node-unopenable', node, error });
  } finally {
    root.close();
  }
  try {
    if (!isBlockDevice(n.fstat(imageFd), LOOP_MAJOR, minor)) refused({ why: 'instance-node-not-device', node });
    let m;
    try {
      m = createFuseMount({ driver, source: hostLoopNode(minor), userId: req.for.uid, groupId: req.for.gid, readOnly, attrFlags: mountAttrFlags(false, req.attrs) });
    } catch (e) {
      throw new MountError(isSysError(e) ? e.code : 'EIO', `cannot create a FUSE mount: ${describeFuseError(e)}`);
    }
    return { mntFd: m.mntFd, fstype, readOnly, idmapped: false, fuse: { driver, fuseFd: m.fuseFd, imageFd, uid: owner.uid, gid: owner.gid, readOnly } };
  } catch (e) {
    n.close(imageFd);
    throw e;
  }
}
