/**
 * What the broker does for a client, on one instance: the kernel and instance work behind
 * each protocol op. Runs in the instance's worker thread (worker.ts), never on the event
 * loop that serves the sockets: instance locks, fsyncs and LOOP_CTL_REMOVE's bounded
 * waits are all blocking. One worker per instance serialises the ops of that instance.
 *
 * Rules that hold for every op here:
 *  - devices are named by minor and always reached through the host node `/dev/loopN`
 *    (devtmpfs, root's), never through `DIR/loopN`, which the instance owner may be able to
 *    swap for a symlink to somebody else's device;
 *  - a minor is the caller's only when the instance holds it and has published its node
 *    (LocalInstance.contains): a device of another instance, or of nobody, is ENODEV;
 *  - limits (--max, per-uid) are LocalInstance's: allocate/findFree enforce them.
 */
import { readFileSync, readlinkSync } from 'node:fs';
import { NoFreeDeviceError } from '../kernel/allocate.js';
import { AttachError } from '../kernel/attach.js';
import { hostLoopNode, LOOP_MAJOR } from '../kernel/devnum.js';
import { hasCode, isSysError, toSysError } from '../kernel/errors.js';
import { LoopDevice } from '../kernel/loop-device.js';
import { native } from '../kernel/native.js';
import { SysfsLoop } from '../kernel/sysfs.js';
import { LocalInstance, QuotaError, UNBIND_WAIT_MS } from '../instance/local-instance.js';
import { otherBrokerAlive, ownIdentity, readSessionRecord, writeSessionRecord } from './sessions.js';
import { idmapToPeer, MountError, type MountPeer } from '../mounting/detached-mount.js';
import { LoopMountRefused, MinorDevice, mountLoopDevice, type FuseStart, type LoopMountRefusal } from '../mounting/loop-mount.js';
import type { AttachRequestMsg, DeviceEntry, ErrorBody, ErrorKind, FuseMode, GetFreeReply, ListReply, MountRequest } from '../protocol/broker.js';

/** Filesystems the broker mounts unless `loopfs serve --allow-fs` says otherwise. */
export const DEFAULT_ALLOWED_FS = ['ext4', 'squashfs', 'erofs', 'iso9660', 'vfat'];

export interface OpsConfig {
  /** Absolute instance directory. */
  dir: string;
  /** The instance id recorded when serving started: a DIR that now holds another instance is refused. */
  id: string;
  allowFs: string[];
  /** Whether mounts go through a FUSE driver never, when the client asks, or always. */
  fuseMode: FuseMode;
  env: Record<string, string | undefined>;
}

/** A failure with the protocol's error fields. */
export class OpError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly kind: ErrorKind,
  ) {
    super(message);
    this.name = 'OpError';
  }
}

/** Any thrown value as an error reply body. */
export function toErrorBody(e: unknown): ErrorBody {
  if (e instanceof OpError) return { code: e.code, message: e.message, kind: e.kind };
  if (e instanceof MountError) return { code: e.code, message: e.message, kind: 'mount' };
  if (e instanceof QuotaError) return { code: 'EDQUOT', message: e.message, kind: 'quota' };
  if (e instanceof NoFreeDeviceError) return { code: e.cause.code || 'ENOSPC', message: e.message, kind: 'nofree' };
  if (e instanceof AttachError) return { code: e.code, message: e.cause.description, kind: e.fileError ? 'file' : 'device' };
  if (isSysError(e)) return { code: e.code, message: e.description ?? e.message, kind: 'device' };
  return { code: 'EIO', message: e instanceof Error ? e.message : String(e), kind: 'internal' };
}

const sysfsOf = (minor: number) => SysfsLoop.forName(`loop${minor}`);
const isBound = (minor: number) => sysfsOf(minor).isBound();

export interface AttachOutcome {
  minor: number;
  readOnly: boolean;
  /** For autoclear devices: an fd on /dev/loopN the connection keeps until it closes. */
  holderFd: number | null;
}

export interface MountOutcome {
  fd: number;
  fstype: string;
  readOnly: boolean;
  idmapped: boolean;
  /** A FUSE mount: the driver the main thread starts (and whose fds it closes) before the mount is sent. */
  fuse?: FuseStart;
}

const O_ACCMODE = 3;
const O_PATH = 0o10000000;

export class InstanceOps {
  /** Session devices whose detach the kernel deferred (still open: mounted): released once free. */
  private readonly deferred = new Set<number>();
  /**
   * Autoclear devices whose connection ended while something else (a mount) still held them:
   * settled by the pool policy once autoclear has freed them (at umount), as a detach would.
   */
  private readonly settleWhenFree = new Set<number>();
  /** Released devices that LOOP_CTL_REMOVE found busy (left "removing"): removal retried. */
  private readonly removing = new Set<number>();

  /** Live session devices (of any connection) and autoclear devices a connection holds. */
  private readonly sessionDevices = new Set<number>();
  private readonly autoclearHeld = new Set<number>();
  /** The session record as last written (sessions.ts), to write only changes. */
  private written = '';

  /** A minor just handed to a client is in use again: no pending settling applies to it. */
  private reused(minor: number): number {
    this.deferred.delete(minor);
    this.settleWhenFree.delete(minor);
    this.sessionDevices.delete(minor);
    this.autoclearHeld.delete(minor);
    return minor;
  }

  /**
   * Persist what a successor must settle if this broker dies now (sessions.ts): before the
   * reply that hands a session device out. Best effort: a runtime dir we cannot write
   * loses crash recovery, not the request.
   */
  private record(inst: LocalInstance): void {
    const sorted = (...sets: Set<number>[]) => [...new Set(sets.flatMap((x) => [...x]))].sort((a, b) => a - b);
    const sessions = sorted(this.sessionDevices, this.deferred);
    const released = sorted(this.autoclearHeld, this.settleWhenFree).filter((m) => !sessions.includes(m));
    const key = JSON.stringify([sessions, released]);
    if (key === this.written) return;
    try {
      inst.lock();
      try {
        writeSessionRecord(this.cfg.env, this.cfg.id, { broker: ownIdentity(), sessions, released });
      } finally {
        inst.unlock();
      }
      this.written = key;
    } catch {
      /* next change tries again */
    }
  }

  /**
   * Settle what a broker that died (SIGKILL, crash) left in the record: its connections
   * ended with it, so their session devices are detached and released and their autoclear
   * devices settled, as endSession would have done. A record of a broker that still runs
   * is not ours to touch. Returns the devices settled.
   */
  recover(): number[] {
    const rec = readSessionRecord(this.cfg.env, this.cfg.id);
    if (!rec || otherBrokerAlive(rec.broker)) return [];
    this.endSession(rec.sessions, rec.released);
    return [...rec.sessions, ...rec.released];
  }

  constructor(private readonly cfg: OpsConfig) {}

  /** The instance, checked to be the one we serve. Close it when done. */
  private open(): LocalInstance {
    let inst: LocalInstance;
    try {
      inst = LocalInstance.open(this.cfg.dir, this.cfg.env);
    } catch (e) {
      throw new OpError('ENOENT', `${this.cfg.dir}: the instance no longer exists (${toErrorBody(e).message})`, 'internal');
    }
    let id: string | null = null;
    try {
      id = inst.header().id;
    } catch {
      /* unreadable: refused below */
    }
    if (id !== this.cfg.id) {
      inst.close();
      throw new OpError('ENOENT', `${this.cfg.dir}: the instance was destroyed or replaced`, 'internal');
    }
    return inst;
  }

  private with<T>(fn: (inst: LocalInstance) => T): T {
    const inst = this.open();
    try {
      return fn(inst);
    } finally {
      inst.close();
    }
  }

  private member(inst: LocalInstance, minor: number): MinorDevice {
    const dev = new MinorDevice(minor);
    if (!inst.contains(dev)) throw new OpError('ENODEV', `loop${minor}: not a device of this instance`, 'device');
    return dev;
  }

  // ---------------------------------------------------------------- list

  /** Held devices with util-linux's fields: bound ones in /sys/block order, then idle ones. */
  list(): ListReply {
    return this.with((inst) => {
      // bound ones: held, published and bound, in /sys/block order (one state read)
      const bound = inst.usedDevices().map((d) => minorOfPath(d.path));
      const seen = new Set(bound);
      const devices: DeviceEntry[] = bound.map((m) => deviceEntry(m));
      // then the idle ones ("removing" ones and unpublished nodes are not the client's)
      const s = inst.state();
      const idle = Object.keys(s.devices)
        .map(Number)
        .filter((m) => !seen.has(m) && s.devices[m].state === 'held')
        .sort((a, b) => a - b);
      for (const minor of idle) if (inst.contains(new MinorDevice(minor))) devices.push(deviceEntry(minor));
      return { devices };
    });
  }

  // ---------------------------------------------------------------- get-free

  getFree(session = false): GetFreeReply {
    return this.with((inst) => {
      const dev = inst.findFree();
      const minor = this.reused(minorOfPath(dev.path));
      if (session) this.sessionDevices.add(minor);
      this.record(inst);
      return { minor };
    });
  }

  // ---------------------------------------------------------------- attach

  /**
   * Bind a device of the instance to the client's file. The fd decides: a regular file or
   * a loop device of this very instance (a loop on a loop); never a directory, socket,
   * FIFO, character device, another block device, or a device of another instance.
   * Opened read-only (O_RDONLY in fdinfo), it gives a read-only device.
   */
  attach(fileFd: number, req: AttachRequestMsg): AttachOutcome {
    const n = native();
    const c = n.constants;
    const accmode = checkBackingFd(fileFd);
    return this.with((inst) => {
      const st = n.fstat(fileFd);
      const type = st.mode & c.S_IFMT;
      if (type === c.S_IFBLK) {
        if (st.rdevMajor !== LOOP_MAJOR || !inst.contains(new MinorDevice(st.rdevMinor))) {
          throw new OpError('EPERM', 'the backing file is a block device that is not a loop device of this instance', 'file');
        }
      } else if (type !== c.S_IFREG) {
        throw new OpError('EINVAL', `the backing file is ${fileTypeName(type)}, not a regular file`, 'file');
      }
      const readOnly = req.readOnly === true || accmode === c.O_RDONLY;
      const flags =
        (readOnly ? c.LO_FLAGS_READ_ONLY : 0) |
        (req.partscan ? c.LO_FLAGS_PARTSCAN : 0) |
        (req.directIo ? c.LO_FLAGS_DIRECT_IO : 0) |
        (req.autoclear ? c.LO_FLAGS_AUTOCLEAR : 0);
      const a = inst.allocate({
        file: backingName(fileFd, req.name),
        fileFd,
        offset: req.offset === undefined ? 0n : BigInt(req.offset),
        sizelimit: req.sizelimit === undefined ? 0n : BigInt(req.sizelimit),
        flags,
        blockSize: req.blockSize ?? 0,
      });
      const minor = this.reused(minorOfPath(a.device.path));
      let holderFd: number | null = null;
      try {
        // An autoclear device is cleared at its last close: hold it (for the connection)
        // before letting go of the fds that bound it.
        if (req.autoclear) holderFd = n.open(hostLoopNode(minor), c.O_RDONLY);
      } finally {
        a.holder?.close();
        a.device.close();
      }
      if (req.session) this.sessionDevices.add(minor);
      if (holderFd !== null) this.autoclearHeld.add(minor);
      this.record(inst);
      return { minor, readOnly: a.readOnly, holderFd };
    });
  }

  // ---------------------------------------------------------------- detach, set-capacity

  /**
   * LOOP_CLR_FD, then the instance's pool policy; a deferred clear (device open: mounted) is
   * settled later. `autoclearHeld`: the broker just closed holder fds of this autoclear
   * device, so the kernel may have cleared it already (ENXIO is then success).
   */
  detach(minor: number, autoclearHeld = false): void {
    this.with((inst) => {
      const dev = this.member(inst, minor);
      try {
        dev.clear();
      } catch (e) {
        if (!(autoclearHeld && hasCode(e, 'ENXIO'))) throw e;
      } finally {
        dev.close();
      }
      this.sessionDevices.delete(minor);
      this.autoclearHeld.delete(minor);
      this.settleOrDefer(inst, minor, false);
      this.record(inst);
    });
  }

  setCapacity(minor: number): void {
    this.onDevice(minor, (dev) => dev.setCapacity());
  }

  /** LOOP_SET_DIRECT_IO on a device of the instance (bound or not: the kernel decides). */
  setDirectIo(minor: number, on: boolean): void {
    this.onDevice(minor, (dev) => dev.setDirectIo(on));
  }

  /** LOOP_SET_BLOCK_SIZE on a device of the instance. */
  setBlockSize(minor: number, size: number): void {
    this.onDevice(minor, (dev) => dev.setBlockSize(size));
  }

  /** One ioctl on a member device, through the host node. */
  private onDevice(minor: number, fn: (dev: MinorDevice) => void): void {
    this.with((inst) => {
      const dev = this.member(inst, minor);
      try {
        fn(dev);
      } finally {
        dev.close();
      }
    });
  }

  // ---------------------------------------------------------------- sessions

  /**
   * A connection closed. `sessions`: devices to detach and give back to the system;
   * `released`: autoclear devices whose holder fd was just closed (cleared by the kernel if
   * nothing else holds them): settled by the pool policy. Never throws.
   */
  endSession(sessions: number[], released: number[]): void {
    let inst: LocalInstance;
    try {
      inst = this.open();
    } catch {
      return; // the instance is gone: gc settles its devices
    }
    for (const minor of [...sessions, ...released]) {
      this.sessionDevices.delete(minor);
      this.autoclearHeld.delete(minor);
    }
    try {
      for (const minor of sessions) {
        try {
          const dev = this.member(inst, minor);
          try {
            if (isBound(minor)) dev.clear();
          } catch (e) {
            if (!hasCode(e, 'ENXIO')) throw e;
          } finally {
            dev.close();
          }
          this.settleOrDefer(inst, minor, true);
        } catch {
          /* not ours any more (released already) */
        }
      }
      for (const minor of released) {
        if (sessions.includes(minor)) continue;
        try {
          const dev = this.member(inst, minor);
          if (isBound(minor)) this.settleWhenFree.add(minor);
          else this.settle(inst, dev);
        } catch {
          /* gone meanwhile */
        }
      }
      this.record(inst);
    } finally {
      inst.close();
    }
  }

  /** Give back a just-detached device now if it is free, else once it is (retryDeferred). */
  private settleOrDefer(inst: LocalInstance, minor: number, release: boolean): void {
    if (isBound(minor)) {
      // the kernel deferred the clear (a mount or another opener holds the device)
      (release ? this.deferred : this.settleWhenFree).add(minor);
      return;
    }
    this.deferred.delete(minor);
    this.settleWhenFree.delete(minor);
    if (release) {
      this.release(inst, minor, UNBIND_WAIT_MS);
    } else {
      this.settle(inst, new MinorDevice(minor));
    }
  }

  /** The pool policy for an unbound device; a release that found it busy is retried later. */
  private settle(inst: LocalInstance, dev: MinorDevice): void {
    inst.settle(dev);
    if (inst.record(dev.minorNumber)?.state === 'removing') this.removing.add(dev.minorNumber);
  }

  /** LocalInstance.release under the instance lock; a busy device is retried later. */
  private release(inst: LocalInstance, minor: number, waitMs: number): void {
    inst.lock();
    try {
      if (inst.release(minor, waitMs) || !inst.record(minor)) this.removing.delete(minor);
      else this.removing.add(minor);
    } finally {
      inst.unlock();
    }
  }

  /** Devices waiting for their deferred clear, for autoclear, or for their removal. */
  pending(): number[] {
    return [...this.deferred, ...this.settleWhenFree, ...this.removing];
  }

  /** Called periodically while devices are deferred: release or settle those that became free. */
  retryDeferred(): void {
    if (this.deferred.size === 0 && this.settleWhenFree.size === 0 && this.removing.size === 0) return;
    let inst: LocalInstance;
    try {
      inst = this.open();
    } catch {
      // the instance is gone or replaced: gc settles its devices, nothing is ours to retry
      this.deferred.clear();
      this.settleWhenFree.clear();
      this.removing.clear();
      return;
    }
    try {
      for (const minor of [...this.removing]) {
        try {
          this.release(inst, minor, 0);
        } catch {
          /* next round */
        }
      }
      for (const minor of [...this.settleWhenFree]) {
        try {
          const dev = this.member(inst, minor);
          if (isBound(minor)) continue;
          this.settleWhenFree.delete(minor);
          this.settle(inst, dev);
        } catch {
          // not a device of the instance any more (released, or the instance changed): not ours to settle
          this.settleWhenFree.delete(minor);
        }
      }
      for (const minor of [...this.deferred]) {
        try {
          this.member(inst, minor);
        } catch {
          // not a device of the instance any more: its deferred release is not ours
          this.deferred.delete(minor);
          continue;
        }
        if (isBound(minor)) continue;
        try {
          this.settleOrDefer(inst, minor, true);
        } catch {
          /* busy for a moment (udev probing): next round */
        }
      }
      this.record(inst);
    } finally {
      inst.close();
    }
  }

  // ---------------------------------------------------------------- mount

  /**
   * A detached mount of a bound device of the instance (src/mounting/loop-mount.ts), for
   * the peer: ID-mapped to its user namespace when it has one, or a FUSE mount only its
   * ids may use. Returns the mount fd: the caller sends it and closes it at once (an open
   * mount fd keeps the mount, and so the device, busy).
   */
  mount(minor: number, req: MountRequest, peer: MountPeer): MountOutcome {
    return this.with((inst) => {
      // a device of somebody else is "not a device of this instance" before anything else
      this.member(inst, minor);
      let m;
      try {
        m = mountLoopDevice({
          inst,
          minor,
          fstype: req.fstype ?? null,
          readOnly: req.readOnly === true,
          attrs: req.attrs ?? [],
          allowFs: this.cfg.allowFs,
          fuse: () => this.useFuse(req),
          for: { uid: peer.uid, gid: peer.gid, idmap: (mntFd) => idmapToPeer(mntFd, peer) },
          env: this.cfg.env,
        });
      } catch (e) {
        throw e instanceof LoopMountRefused ? this.refusal(minor, e.refusal) : e;
      }
      return { fd: m.mntFd, fstype: m.fstype, readOnly: m.readOnly, idmapped: m.idmapped, ...(m.fuse ? { fuse: m.fuse } : {}) };
    });
  }

  /** A refused mount as the client is told: the broker's errno, words and error kind. */
  private refusal(minor: number, r: LoopMountRefusal): unknown {
    switch (r.why) {
      case 'host-node-unopenable':
        return r.error;
      case 'host-node-not-device':
        return new OpError('ENODEV', `${r.node} is not loop device ${minor}`, 'internal');
      case 'not-member':
        return new OpError('ENODEV', `loop${minor}: not a device of this instance`, 'device');
      case 'unbound':
        return new OpError('ENXIO', `loop${minor}: not bound to a file`, 'device');
      case 'unknown-type':
        return new OpError('EINVAL', `loop${minor}: cannot tell the filesystem type (name it with -t loop.TYPE)`, 'mount');
      case 'wrong-type':
      case 'type-not-allowed':
        return new OpError('EPERM', `filesystem type ${r.fstype} is not allowed by this broker (allowed: ${this.cfg.allowFs.join(', ') || 'none'})`, 'mount');
      case 'no-fuse-driver':
        return new OpError('EPERM', `no FUSE driver for filesystem type ${r.fstype} (fuse2fs: ext2/3/4, squashfuse: squashfs)`, 'mount');
      case 'fuse-driver-missing':
        return new OpError('ENOENT', `the FUSE driver ${r.driver} is not installed`, 'mount');
      case 'instance-node-unopenable':
        return new OpError('ENODEV', `${r.node}: ${toErrorBody(r.error).message}`, 'device');
      case 'instance-node-not-device':
        return new OpError('ENODEV', `${r.node} is not the node of loop device ${minor}`, 'device');
    }
  }

  /** FUSE or the kernel, as the request and the broker's mode say. */
  private useFuse(req: MountRequest): boolean {
    const mode = this.cfg.fuseMode;
    if (req.fuse === true && mode === 'never') throw new OpError('EPERM', 'this broker does not mount through FUSE', 'mount');
    if (req.fuse === false && mode === 'always') throw new OpError('EPERM', 'this broker mounts through FUSE only', 'mount');
    return req.fuse ?? mode === 'always';
  }
}

// ---------------------------------------------------------------- helpers

function minorOfPath(path: string): number {
  const m = /loop(\d+)$/.exec(path);
  if (!m) throw new OpError('EIO', `unexpected device path ${path}`, 'internal');
  return Number(m[1]);
}

/** One held device as `losetup -l` describes it (sysfs first, LOOP_GET_STATUS64 for the ids). */
function deviceEntry(minor: number): DeviceEntry {
  const sys = sysfsOf(minor);
  const backingFile = sys.backingFile();
  const entry: DeviceEntry = {
    minor,
    bound: backingFile !== null,
    backingFile,
    offset: null,
    sizelimit: null,
    autoclear: false,
    readOnly: false,
    directIo: false,
    partscan: sys.partscan() ?? true,
    logSec: sys.logicalBlockSize()?.toString() ?? null,
    backingDev: null,
    backingIno: null,
  };
  if (backingFile === null) return entry;
  entry.offset = sys.offset()?.toString() ?? null;
  entry.sizelimit = sys.sizelimit()?.toString() ?? null;
  entry.autoclear = sys.autoclear() === true;
  entry.readOnly = sys.readOnly() === true;
  entry.directIo = sys.dio() === true;
  const dev = new LoopDevice(hostLoopNode(minor));
  try {
    const ids = dev.backingIds();
    if (ids) {
      entry.backingDev = ids.dev.toString();
      entry.backingIno = ids.ino.toString();
    }
  } finally {
    dev.close();
  }
  return entry;
}

/** Access mode of a received fd (O_RDONLY/O_RDWR), refusing O_PATH and write-only fds. */
function checkBackingFd(fd: number): number {
  const c = native().constants;
  let flags: number;
  try {
    const m = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
    flags = m ? parseInt(m[1], 8) : NaN;
  } catch (e) {
    throw toSysError(e);
  }
  if (!Number.isInteger(flags)) throw new OpError('EIO', 'cannot read the access mode of the backing file', 'internal');
  if (flags & O_PATH) throw new OpError('EBADF', 'the backing file was opened with O_PATH', 'file');
  const acc = flags & O_ACCMODE;
  if (acc !== c.O_RDONLY && acc !== c.O_RDWR) throw new OpError('EBADF', 'the backing file is not open for reading', 'file');
  return acc;
}

function fileTypeName(type: number): string {
  const c = native().constants;
  if (type === c.S_IFDIR) return 'a directory';
  if (type === c.S_IFSOCK) return 'a socket';
  if (type === c.S_IFCHR) return 'a character device';
  if (type === 0o010000) return 'a FIFO';
  return 'not a regular file';
}

/** The name recorded in lo_file_name: the file as the broker sees it, else the client's name. */
function backingName(fd: number, name: string | undefined): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    // the fd's /proc link unreadable for any reason: the client's name is only for display
    return name ?? '';
  }
}
