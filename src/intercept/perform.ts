/**
 * The mount `loopfs run` performs for a trapped mount(2) whose source is a block device:
 * only a bound loop device of the instance, only an allowed filesystem, always nosuid and
 * nodev, ID-mapped to the caller's user namespace, attached in the caller's own mount
 * namespace. Everything else is EPERM, as the kernel would answer the caller. The OCI
 * seccomp agent uses it too, with the same checks (see PerformerOptions for the one
 * caller it serves that `loopfs run` refuses).
 *
 * The mount is built here, as root in our namespace, from the host node /dev/loopN (never
 * from the caller's path, which it controls), by the routine the broker's mount op uses
 * too (src/mounting/loop-mount.ts mountLoopDevice); then a
 * forked child that holds only the caller's user namespace privilege moves it to the
 * caller's target path (nsMoveMount). Nothing is ever continued to the kernel for such a
 * mount: CONTINUE would make the kernel read the caller's strings again.
 */
import { LOOP_MAJOR } from '../kernel/devnum.js';
import { hasCode, isSysError } from '../kernel/errors.js';
import { native, type NativeStat } from '../kernel/native.js';
import { LocalInstance } from '../instance/local-instance.js';
import { idmapToUserNamespace, MountError } from '../mounting/detached-mount.js';
import { FuseDriverError, startFuseDriver, type FuseDriverOptions } from '../mounting/fuse-driver.js';
import { LoopMountRefused, mountLoopDevice, type LoopMountRefusal } from '../mounting/loop-mount.js';
import { MS, requestedAttrs } from './policy.js';
import type { TrappedProcess } from './trapped.js';

/** The arguments of a trapped mount(2) whose source is a block device. */
export interface TrappedMount {
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
  async mount(t: TrappedProcess, req: TrappedMount): Promise<Outcome | null> {
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
  private prepare(t: TrappedProcess, req: TrappedMount): Outcome | Prepared {
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
    const inst = LocalInstance.open(this.instanceDir);
    try {
      const m = mountLoopDevice({
        inst,
        minor,
        fstype: req.fstype || null,
        readOnly: (req.flags & MS.RDONLY) !== 0,
        // the caller's noexec & co., on a FUSE mount as on a kernel one (the broker's too)
        attrs: requestedAttrs(req.flags),
        allowFs: this.allowFs,
        fuse: () => this.fuse,
        for: {
          // the caller's ids in the initial user namespace
          uid: t.euid,
          gid: t.egid,
          // host ids need no mapping (and the initial user namespace cannot map a mount)
          idmap: (mntFd) => {
            if (hostIds) return false;
            try {
              return idmapToUserNamespace(mntFd, t.fds.usernsFd);
            } catch (e) {
              if (isSysError(e)) throw new MountError(e.code, `mount_setattr: ${e.description}`);
              throw e;
            }
          },
        },
        env: this.env,
      });
      const what = `loop${minor} (${m.fstype}${m.readOnly ? ', ro' : ''}${this.fuse ? ', fuse' : ''})`;
      return { mntFd: m.mntFd, fuse: m.fuse && { ...m.fuse, env: this.env }, what };
    } catch (e) {
      if (e instanceof LoopMountRefused) return this.refusal(minor, e.refusal);
      if (e instanceof MountError) return refuse(e.code, e.message);
      throw e;
    } finally {
      inst.close();
    }
  }

  /** A refused mount as the trapped caller is answered (the errno the kernel could give) and logged. */
  private refusal(minor: number, r: LoopMountRefusal): Outcome {
    switch (r.why) {
      case 'host-node-unopenable':
        return refuse(hasCode(r.error, 'ENOENT', 'ENXIO') ? 'EPERM' : 'EIO', `${r.node}: ${(r.error as Error).message}`);
      case 'host-node-not-device':
        return refuse('EPERM', `${r.node} is not loop device ${minor}`);
      case 'not-member':
        return refuse('EPERM', `loop${minor} is not a device of ${this.instanceDir}`);
      case 'unbound':
        return refuse('ENXIO', `loop${minor} is not bound to a file`);
      case 'unknown-type':
        return refuse('EINVAL', `loop${minor}: cannot tell the filesystem type`);
      case 'wrong-type':
        return refuse('EINVAL', `loop${minor} holds ${r.probed}, not ${r.fstype} (which is not allowed)`);
      case 'type-not-allowed':
        return refuse('EPERM', `filesystem type ${r.fstype} is not allowed (allowed: ${this.allowFs.join(', ') || 'none'})`);
      case 'no-fuse-driver':
        return refuse('EPERM', `no FUSE driver for filesystem type ${r.fstype}`);
      case 'fuse-driver-missing':
        return refuse('ENODEV', `the FUSE driver ${r.driver} is not installed`);
      case 'instance-node-unopenable':
        return refuse('EPERM', `${r.node}: ${(r.error as Error).message}`);
      case 'instance-node-not-device':
        return refuse('EPERM', `${r.node} is not the node of loop device ${minor}`);
    }
  }
}
