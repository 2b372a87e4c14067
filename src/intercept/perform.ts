/**
 * The mount `loopfs run` performs for a trapped mount(2) whose source is a block device:
 * only a bound loop device of the instance, only an allowed filesystem, always nosuid and
 * nodev, ID-mapped to the caller's user namespace, attached in the caller's own mount
 * namespace. Everything else is EPERM, as the kernel would answer the caller. The OCI
 * seccomp agent uses it too, with the same checks (see PerformerOptions for the one
 * caller it serves that `loopfs run` refuses).
 *
 * The mount is built here, as root in our namespace, from the host node /dev/loopN (never
 * from the caller's path, which it controls), with the broker's code (createMount); then a
 * forked child that holds only the caller's user namespace privilege moves it to the
 * caller's target path (nsMoveMount). Nothing is ever continued to the kernel for such a
 * mount: CONTINUE would make the kernel read the caller's strings again.
 */
import { LOOP_MAJOR } from '../kernel/devnum.js';
import { hasCode, isSysError } from '../kernel/errors.js';
import { LoopDevice } from '../kernel/loop-device.js';
import { native, type NativeStat } from '../kernel/native.js';
import { SysfsLoop } from '../kernel/sysfs.js';
import { LocalInstance } from '../instance/local-instance.js';
import { createMount, idmapToUserNamespace, MountError, probeFilesystem } from '../mounting/detached-mount.js';
import { createFuseMount, describeFuseError, fuseDriverFor, fuseDriverPath, FuseDriverError, startFuseDriver, type FuseDriverOptions } from '../mounting/fuse-driver.js';
import { MS, requestedAttrs } from './policy.js';
import type { TrappedProcess } from './trapped.js';

export interface MountRequest {
  /** stat of the source as the caller resolves it (in its namespaces, root and cwd). */
  source: NativeStat;
  sourcePath: string;
  target: string;
  fstype: string | null;
  flags: number;
  /** Filesystem-specific options (mount(2)'s data); must be empty. */
  data: string | null;
}

/** The answer to the caller: 0 (mounted) or an errno name, with a reason for the log. */
export interface Outcome {
  code: string | null;
  why: string;
  /** The errno to answer, when it is not `code`'s (an engine's errnoRet may have no name). */
  errno?: number;
}

export interface PerformerOptions {
  /**
   * Perform for exactly the callers whose effective uid (as the host sees it) is this one:
   * a container's root, mapped (the instance owner). Then CAP_SYS_ADMIN is not asked for
   * (Docker drops it by default; the engine's own verdict covers what the caller could
   * mount itself), and a caller without a user namespace of its own is served too: a
   * container run without one (Docker's and rootful podman's default), whose root is host
   * uid 0. Its mount is not ID-mapped (its ids are the host's). Unset (`loopfs run`):
   * callers must hold CAP_SYS_ADMIN in a user namespace of their own, because CMD may run
   * processes as host root before it drops privileges.
   */
  containerRoot?: number;
}

const refuse = (code: string, why: string): Outcome => ({ code, why });

/** A detached mount ready to be moved in (and the FUSE driver to start first). */
interface Prepared {
  mntFd: number;
  fuse: FuseDriverOptions | null;
  what: string;
}

export class MountPerformer {
  constructor(
    private readonly instanceDir: string,
    private readonly allowFs: string[],
    private readonly fuse: boolean,
    private readonly env: NodeJS.ProcessEnv,
    private readonly options: PerformerOptions = {},
  ) {}

  /** Perform or refuse. null: the caller vanished meanwhile (nothing to answer). */
  async mount(t: TrappedProcess, req: MountRequest): Promise<Outcome | null> {
    const p = this.prepare(t, req);
    if (!('mntFd' in p)) return p;
    const n = native();
    try {
      if (p.fuse) {
        try {
          await startFuseDriver(p.fuse);
        } catch (e) {
          if (e instanceof FuseDriverError) return refuse('EIO', e.message);
          throw e;
        } finally {
          n.close(p.fuse.fuseFd);
          n.close(p.fuse.imageFd);
        }
      }
      // the last moment to find the caller gone: after the move the mount is its namespace's
      if (!t.valid()) return null;
      n.nsMoveMount(t.fds, p.mntFd, req.target);
    } catch (e) {
      if (isSysError(e)) return refuse(e.code, `${req.target}: ${e.syscall}: ${e.description}`);
      throw e;
    } finally {
      // an open mount fd keeps the mount (and the device) busy
      n.close(p.mntFd);
    }
    return { code: null, why: `mounted ${p.what} on ${req.target}` };
  }

  /**
   * umount2 for the container's root (see PerformerOptions.containerRoot) of the root of
   * a mount of one of the instance's devices, which it may not unmount itself without
   * CAP_SYS_ADMIN. null: not such a caller or not such a mount (the caller's own rules
   * apply). The check and the unmount act on one open of the path (native nsUmount).
   */
  umount(t: TrappedProcess, target: string, flags: number): Outcome | null {
    const root = this.options.containerRoot;
    if (root === undefined || t.euid !== root) return null;
    const inst = LocalInstance.open(this.instanceDir);
    let minors: number[];
    try {
      minors = inst.minors();
    } finally {
      inst.close();
    }
    try {
      if (!native().nsUmount(t.fds, target, flags, minors)) return null;
    } catch (e) {
      if (isSysError(e)) return refuse(e.code, `${target}: ${e.syscall}: ${e.description}`);
      throw e;
    }
    return { code: null, why: `unmounted ${target}` };
  }

  /** The checks, and the detached mount; an Outcome is a refusal. */
  private prepare(t: TrappedProcess, req: MountRequest): Outcome | Prepared {
    const hostIds = t.inOurUserNamespace;
    const root = this.options.containerRoot;
    if (root !== undefined) {
      // Only the container's root. Without a user namespace of its own the mover below
      // joins just its mount namespace (opened by tid: the caller's own) and attaches with
      // our privilege there; the kernel keeps the target inside that namespace.
      if (t.euid !== root) return refuse('EPERM', `the caller (uid ${t.euid}) is not the container's root (uid ${root})`);
    } else if (hostIds) {
      return refuse('EPERM', 'mounts are performed only for processes in a user namespace of their own');
    } else if (!t.hasSysAdmin) {
      // The kernel would ask for CAP_SYS_ADMIN over the caller's mount namespace: in its own
      // user namespace here (the mover below joins that user namespace and then the mount
      // namespace, which fails unless the user namespace owns it).
      return refuse('EPERM', 'the caller lacks CAP_SYS_ADMIN in its user namespace');
    }
    const { rdevMajor: major, rdevMinor: minor } = req.source;
    if (major !== LOOP_MAJOR) return refuse('EPERM', `${req.sourcePath} (${major}:${minor}) is not a loop device`);
    if (req.data) return refuse('EPERM', `filesystem options "${req.data}" are not the caller's to choose`);
    const n = native();
    const c = n.constants;
    const inst = LocalInstance.open(this.instanceDir);
    let devFd = -1;
    try {
      const host = `/dev/loop${minor}`;
      // The open pins the device's binding: until we close it a LOOP_CLR_FD is deferred and
      // LOOP_CTL_REMOVE fails, so the device cannot change hands between the checks and the
      // mount. Membership is checked on the pinned device.
      try {
        devFd = n.open(host, c.O_RDONLY);
      } catch (e) {
        return refuse(hasCode(e, 'ENOENT', 'ENXIO') ? 'EPERM' : 'EIO', `${host}: ${(e as Error).message}`);
      }
      const st = n.fstat(devFd);
      if ((st.mode & c.S_IFMT) !== c.S_IFBLK || st.rdevMajor !== LOOP_MAJOR || st.rdevMinor !== minor) {
        return refuse('EPERM', `${host} is not loop device ${minor}`);
      }
      if (!inst.contains(new LoopDevice(host))) return refuse('EPERM', `loop${minor} is not a device of ${this.instanceDir}`);
      const sys = SysfsLoop.forName(`loop${minor}`);
      if (!sys.isBound()) return refuse('ENXIO', `loop${minor} is not bound to a file`);
      // The superblock is read only when the answer depends on it: no type given, or a type
      // outside the allow-list. An allowed type needs no probe (the kernel's driver parses
      // the device either way), and reading 64 KiB through the loop device just bound cost
      // the caller milliseconds per mount (util-linux always passes the type it probed).
      const probed = !req.fstype || !this.allowFs.includes(req.fstype) ? probeFilesystem(devFd) : null;
      const fstype = req.fstype || probed;
      if (!fstype) return refuse('EINVAL', `loop${minor}: cannot tell the filesystem type`);
      if (!this.allowFs.includes(fstype)) {
        // The device holds an allowed filesystem of another type: the kernel's answer to a
        // wrong type (EINVAL), so that a caller trying type after type goes on to the right
        // one (busybox mount without -t tries ext3 and ext2 before ext4; ext2/ext3
        // superblocks are the ext4 driver's, which probes as ext4).
        if (req.fstype && probed && probed !== req.fstype && this.allowFs.includes(probed)) {
          return refuse('EINVAL', `loop${minor} holds ${probed}, not ${req.fstype} (which is not allowed)`);
        }
        return refuse('EPERM', `filesystem type ${fstype} is not allowed (allowed: ${this.allowFs.join(', ') || 'none'})`);
      }
      const readOnly = (req.flags & MS.RDONLY) !== 0 || sys.readOnly() === true;
      const what = `loop${minor} (${fstype}${readOnly ? ', ro' : ''}${this.fuse ? ', fuse' : ''})`;
      if (this.fuse) return this.prepareFuse(inst, minor, fstype, readOnly, t, what);
      let mntFd: number;
      try {
        mntFd = createMount(host, fstype, readOnly, requestedAttrs(req.flags));
      } catch (e) {
        if (e instanceof MountError) return refuse(e.code, e.message);
        throw e;
      }
      try {
        // host ids need no mapping (and the initial user namespace cannot map a mount)
        if (!hostIds) idmapToUserNamespace(mntFd, t.fds.usernsFd);
      } catch (e) {
        n.close(mntFd);
        if (isSysError(e)) return refuse(e.code, `mount_setattr: ${e.description}`);
        throw e;
      }
      return { mntFd, fuse: null, what };
    } finally {
      if (devFd >= 0) n.close(devFd);
      inst.close();
    }
  }

  /**
   * The FUSE mount of loopN: usable by the caller's uid only (user_id/group_id: its ids in
   * the initial user namespace), served by the driver as the instance owner, who opens the
   * instance's node DIR/loopN (given as an O_PATH fd checked to be this very device).
   */
  private prepareFuse(inst: LocalInstance, minor: number, fstype: string, readOnly: boolean, t: TrappedProcess, what: string): Outcome | Prepared {
    const n = native();
    const c = n.constants;
    const driver = fuseDriverFor(fstype);
    if (!driver) return refuse('EPERM', `no FUSE driver for filesystem type ${fstype}`);
    if (!fuseDriverPath(driver, this.env)) return refuse('ENODEV', `the FUSE driver ${driver} is not installed`);
    const owner = inst.header().owner;
    let imageFd: number;
    try {
      imageFd = n.open(inst.nodePath(minor), c.O_PATH | c.O_NOFOLLOW);
    } catch (e) {
      return refuse('EPERM', `${inst.nodePath(minor)}: ${(e as Error).message}`);
    }
    const st = n.fstat(imageFd);
    if ((st.mode & c.S_IFMT) !== c.S_IFBLK || st.rdevMajor !== LOOP_MAJOR || st.rdevMinor !== minor) {
      n.close(imageFd);
      return refuse('EPERM', `${inst.nodePath(minor)} is not the node of loop device ${minor}`);
    }
    try {
      const m = createFuseMount({ driver, source: `/dev/loop${minor}`, userId: t.euid, groupId: t.egid, readOnly });
      return { mntFd: m.mntFd, fuse: { driver, fuseFd: m.fuseFd, imageFd, uid: owner.uid, gid: owner.gid, readOnly, env: this.env }, what };
    } catch (e) {
      n.close(imageFd);
      return refuse(isSysError(e) ? e.code : 'EIO', `cannot create a FUSE mount: ${describeFuseError(e)}`);
    }
  }
}
