/**
 * A "local" instance on a stock kernel: a directory whose loop devices are scoped by
 * our tools (run by root or a CI runner; the broker serves the unprivileged case).
 *
 *   DIR/loopN            published node of a held device (owner, mode from the state)
 *   DIR/loopNpM          its partitions, when set up with --partscan
 *   DIR/.loopfs/         (0700 root: the owner cannot forge anything in it; state.ts)
 *       state.json       id, owner, mode, limits (written once)
 *       devices/loopN    the record of each held device ("held"/"removing", partitions)
 *       idle/loopN       hints: held devices believed unbound (checked before use)
 *       releasing        a batch of devices being released (-D), until folded
 *       destroying       `instance destroy` has begun; lock
 *
 * Life of a device in an instance (every step may be SIGKILLed; gc settles it: gc.ts,
 * reconcile.ts):
 *   reserve:  claim minor (runtime) → write its record → bind (through the host node,
 *             before any instance node exists) → verify → publish DIR/loopN
 *   release:  detach → close → hold it exclusively once unbound (nobody can bind it
 *             now: bind-guard.ts) → mark its record "removing" → unlink its nodes →
 *             let go → LOOP_CTL_REMOVE (fails while anyone holds the device open) →
 *             delete its record → drop claim
 *   partitions: record the names → publish the nodes; unlink the nodes → record that
 *   destroy:  mark the instance "destroying" (one durable step for every device) →
 *             unlink every node → detach and remove each device → delete the records of
 *             the removed ones (one fsync) → drop their claims → remove the instance
 * Each step touches only the record of its own device (and O(1) other files), so an
 * attach or a release costs the same in an instance holding one device or thousands.
 * A device leaves an instance only through a successful LOOP_CTL_REMOVE, or when it was
 * never published (a bind that lost a race: no process of the instance can hold it).
 *
 * LOCK ORDER (the one statement of it; runtime.ts and kernel/loop-control.ts point here).
 * Three flocks, always taken in this order and never the other way round:
 *   1. the instance lock (DIR/.loopfs/lock; lock() below): everything that changes one
 *      instance's records or nodes;
 *   2. the runtime lock (RUN/lock; Runtime.lock): claims, the uid index, the registry, and
 *      gc's decision that an instance vanished;
 *   3. loop-control's (LoopControl.lock): the window between choosing a device index and
 *      binding or claiming it (LOOP_CTL_ADD here, LOOP_CTL_GET_FREE in kernel/allocate.ts).
 * A process may skip a level (gc's orphan pass takes only 2; a host losetup only 3) but
 * never waits for a lower-numbered lock while holding a higher one: gc takes no instance
 * lock while it holds the runtime lock. No lock is taken on a device itself: a device is
 * serialised by the instance that records it, and a binding race with a foreign tool is
 * settled by the kernel (EBUSY) instead.
 */
import { mkdirSync, readdirSync, statSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { attach, AttachError, type AttachRequest } from '../kernel/attach.js';
import { guardUnboundBy, releaseGuard, type BindGuard } from '../kernel/bind-guard.js';
import { NoFreeDeviceError, type Allocated } from '../kernel/allocate.js';
import { hostLoopNode, isBlockDevice, LOOP_MAJOR } from '../kernel/devnum.js';
import { hasCode, sysError } from '../kernel/errors.js';
import { LoopControl } from '../kernel/loop-control.js';
import { LoopDevice } from '../kernel/loop-device.js';
import { native } from '../kernel/native.js';
import { LISTING_ATTRS, loopNamesInSysfs, SysfsLoop } from '../kernel/sysfs.js';
import { jitterMs, sleepMs } from '../kernel/sleep.js';
import { limitForUid } from './limits.js';
import { PinnedDir } from './pinned-dir.js';
import { Runtime } from './runtime.js';
import { DeviceNames } from './device-names.js';
import { checkMember, devicePathIn, OWN_IOCTLS, type LoopScope } from './scope.js';
import {
  heldMinors,
  LOCK_FILE,
  newInstanceId,
  STATE_DIR,
  STATE_FILE,
  STATE_VERSION,
  StateStore,
  type HeldDevice,
  type InstanceHeader,
  type InstanceState,
} from './state.js';

export interface CreateOptions {
  owner: { uid: number; gid: number };
  mode: number;
  max: number | null;
  pool: number;
}

/** A limit was reached; the message is the one line the user sees. */
export class QuotaError extends Error {
  readonly code = 'EDQUOT';
}

const nodeName = (minor: number): string => `loop${minor}`;

/**
 * How long a release waits for a detached device to become unbound (LOOP_CLR_FD completes
 * at the last close) before leaving it held, for the pool policy (gc, the watcher, the
 * broker's retries) to look at once it is free: every release of a just-detached device
 * (losetup -d, destroy, gc, the broker) waits this long, no longer.
 */
export const UNBIND_WAIT_MS = 2000;

/** How many devices a batch release guards at once (bind-guard.ts: one fd each). */
const GUARD_SLICE = 256;

/** How often allocate() takes a new device after losing one to a foreign tool (EBUSY). */
const RESERVE_TRIES = 64;

export class LocalInstance implements LoopScope {
  /**
   * Called with devices about to leave the instance, while they are guarded and before
   * their DIR nodes go: a watcher's views drop their names of them here (live-sync.ts), so
   * that no view still shows a node a tool could bind while the removal runs. A view that
   * cannot drop a name fails the release (the device stays held).
   */
  beforeLeave: ((minors: number[]) => void) | null = null;

  readonly controlPath = null;
  readonly control = OWN_IOCTLS;
  readonly mounts = null;
  private lockFd = -1;
  /** How the devices handed out are named (a container's /dev names; see device-names.ts). */
  private names = DeviceNames.NONE;
  private readonly store: StateStore;

  private constructor(
    readonly dir: string,
    private readonly root: PinnedDir,
    private readonly stateDir: PinnedDir,
    readonly env: NodeJS.ProcessEnv,
  ) {
    this.store = new StateStore(stateDir);
  }

  // ---------------------------------------------------------------- lifecycle

  /** Whether DIR holds a local instance (a state file), without opening it. */
  static isInstance(dir: string): boolean {
    try {
      return statSync(`${dir}/${STATE_DIR}/state.json`).isFile();
    } catch {
      // any error (ENOENT, ENOTDIR, EACCES): no instance we can use at DIR
      return false;
    }
  }

  static open(dir: string, env: NodeJS.ProcessEnv = process.env, names = DeviceNames.NONE): LocalInstance {
    // Absolute from here on: `-f --show` prints DIR/loopN and that name must work again as
    // an operand (relative operands are looked up inside DIR, as util-linux looks them up in
    // /dev); claims and the registry record DIR for gc, which runs from any directory.
    dir = resolvePath(dir);
    const root = PinnedDir.open(dir);
    let stateDir: PinnedDir;
    try {
      stateDir = openStateDir(root);
    } catch (e) {
      root.close();
      throw e;
    }
    const inst = new LocalInstance(dir, root, stateDir, env);
    inst.names = names;
    try {
      if (!inst.store.header()) throw sysError('ENOENT', 'open', `${dir}/${STATE_DIR}/state.json`);
    } catch (e) {
      inst.close();
      throw e;
    }
    return inst;
  }

  /** Make DIR an instance. DIR is created if missing; it must not be an instance yet. */
  static create(dir: string, opts: CreateOptions, env: NodeJS.ProcessEnv = process.env): LocalInstance {
    dir = resolvePath(dir); // see open(): the registry must name DIR absolutely
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    const root = PinnedDir.open(dir);
    let stateDir: PinnedDir;
    try {
      try {
        root.mkdir(STATE_DIR, 0o700);
      } catch (e) {
        // a .loopfs without state.json is what a create or destroy killed half-way leaves
        // behind: it is taken over below (under its lock), so a SIGKILL never wedges DIR
        if (!hasCode(e, 'EEXIST')) throw e;
      }
      stateDir = openStateDir(root);
    } catch (e) {
      root.close();
      throw e;
    }
    const inst = new LocalInstance(dir, root, stateDir, env);
    try {
      // the instance lock serialises concurrent creates of one DIR
      inst.lock();
      if (stateDir.lstat(STATE_FILE)) throw sysError('EEXIST', 'mkdir', `${dir}/${STATE_DIR}`);
      const header: InstanceHeader = {
        version: STATE_VERSION,
        id: newInstanceId(),
        owner: opts.owner,
        mode: opts.mode,
        max: opts.max,
        pool: opts.pool,
        createdAt: new Date().toISOString(),
      };
      // Registered before the state exists: a crash in between leaves a registry entry
      // that gc drops (no state behind it), never a state that gc cannot find. Both steps
      // happen under the runtime lock, under which gc decides that an instance vanished
      // and which claims are orphans: gc never mistakes an instance being created (whose
      // first devices may already be claimed a moment later) for a vanished one.
      const rt = Runtime.open(env);
      try {
        rt.lock();
        rt.register({ id: header.id, dir: inst.dir, uid: opts.owner.uid });
        inst.store.create(header);
      } finally {
        rt.close();
      }
      inst.unlock();
      return inst;
    } catch (e) {
      inst.close();
      throw e;
    }
  }

  close(): void {
    this.unlock();
    this.store.close();
    this.stateDir.close();
    this.root.close();
  }

  /**
   * The instance lock: first in the lock order (LOCK ORDER, at the top of this file).
   * Taking it reads state.json again (the instance may have been destroyed, or destroyed
   * and created anew, while we waited) and migrates a version-1 state.
   */
  lock(): void {
    if (this.lockFd >= 0) return;
    const n = native();
    const c = n.constants;
    const fd = n.openat(this.stateDir.fd, LOCK_FILE, c.O_RDWR | c.O_CREAT | c.O_NOFOLLOW, 0o600);
    n.flock(fd, c.LOCK_EX);
    this.lockFd = fd;
    this.store.invalidate();
    if (this.store.readFile()?.legacyDevices) this.migrate();
    // a batch release killed half-way: its marks go into the records before anything else
    this.store.foldReleasing();
  }

  unlock(): void {
    if (this.lockFd >= 0) {
      native().close(this.lockFd);
      this.lockFd = -1;
    }
  }

  /**
   * Version 1 → 2, under the lock. Version 1 removed a node creation's temporary and a
   * partition's node only by a search of DIR at release; version 2 knows every name it
   * must unlink (temporaries live in .loopfs, partitions are recorded before they are
   * published). So DIR is searched once here, before the records are written: a kill
   * in between repeats both steps at the next lock.
   */
  private migrate(): void {
    const legacy = this.store.readFile()?.legacyDevices;
    if (!legacy) return;
    const expected = new Set<string>();
    for (const d of Object.values(legacy)) for (const p of d.partitions ?? []) expected.add(p);
    for (const name of this.root.list()) {
      if (/^\.loop\d+(p\d+)?\..*\.tmp$/.test(name) || (/^loop\d+p\d+$/.test(name) && !expected.has(name))) {
        this.root.unlinkQuiet(name);
      }
    }
    this.store.migrate();
  }

  /** The whole state: the header and every device record (O(devices): listings, gc). */
  state(): InstanceState {
    const s = this.store.read();
    if (!s) throw sysError('ENOENT', 'open', `${this.dir}/${STATE_DIR}/state.json`);
    return s;
  }

  /** Identity, owner and limits only (state.json, read once). */
  header(): InstanceHeader {
    const h = this.store.header();
    if (!h) throw sysError('ENOENT', 'open', `${this.dir}/${STATE_DIR}/state.json`);
    return h;
  }

  /** The record of one device, or null when the instance does not hold it. */
  record(minor: number): HeldDevice | null {
    return this.store.device(minor);
  }

  /** When the record of `minor` was last written (ms since the epoch), null without one. */
  recordWrittenMs(minor: number): number | null {
    return this.store.recordWrittenMs(minor);
  }

  /** Minors the instance holds, ascending (a listing of the records, none of them read). */
  minors(): number[] {
    return this.store.minors();
  }

  /** Whether `instance destroy` has begun (and, if nobody runs it now, gc is to finish it). */
  isDestroying(): boolean {
    return this.store.destroying();
  }

  /** The durable first step of `instance destroy`. Caller holds the instance lock. */
  markDestroying(): void {
    this.store.markDestroying();
  }

  private withLock<T>(fn: () => T): T {
    const held = this.lockFd >= 0;
    this.lock();
    try {
      return fn();
    } finally {
      if (!held) this.unlock();
    }
  }

  /** Nothing new goes into an instance that is being destroyed. */
  private checkNotDestroying(): void {
    if (this.store.destroying()) throw sysError('ENOENT', 'open', `${this.dir}/${STATE_DIR}/state.json`);
  }

  // ---------------------------------------------------------------- scope

  nodePath(minor: number): string {
    return `${this.dir}/${nodeName(minor)}`;
  }

  /** A device as handed out: under its container name where it has one, else DIR/loopN. */
  private device(minor: number): LoopDevice {
    return new LoopDevice(this.names.pathOf(minor) ?? this.nodePath(minor));
  }

  /**
   * Held and bound devices, in /sys/block order like util-linux, named as device() names
   * them. One read of the records, and one native call that finds which candidates are
   * bound and reads the attributes the listing shows (`prefetch`) for those only.
   */
  usedDevices(prefetch: readonly string[] = LISTING_ATTRS): LoopDevice[] {
    const s = this.state();
    const candidates: SysfsLoop[] = [];
    const minorOf = new Map<SysfsLoop, number>();
    for (const name of loopNamesInSysfs()) {
      const minor = this.names.sysBlockMinor(name);
      if (minor === null || s.devices[minor]?.state !== 'held') continue;
      // the name this process's /sys/block has (a container's overlay: its loopK link)
      const sys = SysfsLoop.forName(name);
      candidates.push(sys);
      minorOf.set(sys, minor);
    }
    const result: LoopDevice[] = [];
    for (const sys of SysfsLoop.prefetchBound(candidates, ['loop/backing_file', ...prefetch])) {
      const minor = minorOf.get(sys)!;
      if (!this.isPublished(minor)) continue;
      result.push(LoopDevice.withSysfs(this.names.pathOf(minor) ?? this.nodePath(minor), sys));
    }
    return result;
  }

  /** A relative device name is looked up in the instance directory, not /dev. */
  devicePath(arg: string): string {
    return devicePathIn(this.dir, arg, this.names);
  }

  /** Names resolve inside the instance; a device of anybody else does not exist here. */
  checkDevice(arg: string): void {
    checkMember(this, arg);
  }

  contains(dev: LoopDevice): boolean {
    const d = dev.devno();
    if (!d || d[0] !== LOOP_MAJOR) return false;
    return this.store.device(d[1])?.state === 'held' && this.isPublished(d[1]);
  }

  ensureDevice(): void {
    /* explicit devices must already belong to the instance: nothing is created */
  }

  /** The published node is ours: a block device with the right numbers (lstat, no symlink). */
  isPublished(minor: number): boolean {
    return isBlockDevice(this.root.lstat(nodeName(minor)), LOOP_MAJOR, minor);
  }

  /**
   * `losetup -f`: an unbound held device, else a new one reserved into the instance. The
   * idle hints are looked at first; every held device only when a limit stops a new one.
   */
  findFree(): LoopDevice {
    return this.withLock(() => {
      this.checkNotDestroying();
      const hinted = this.hintedIdle();
      if (hinted.length > 0) return this.device(hinted[0]);
      try {
        return this.device(this.reserve(null));
      } catch (e) {
        if (!(e instanceof QuotaError)) throw e;
        const idle = this.idleMinors();
        if (idle.length > 0) return this.device(idle[0]);
        throw e;
      }
    });
  }

  /**
   * Reserve devices until `pool` of them are idle (for activation). Stops quietly at a
   * limit: a pool is a convenience, the limits are not. Caller holds the instance lock.
   */
  ensurePool(pool: number): number[] {
    const reserved: number[] = [];
    // a full look (this refill is where devices freed behind our back get their hints)
    for (let idle = this.idleMinors().length; idle < pool; idle++) {
      try {
        reserved.push(this.reserve(null));
      } catch (e) {
        if (e instanceof QuotaError) break;
        throw e;
      }
    }
    return reserved;
  }

  /** `losetup -f FILE`: bind an idle held device, or reserve a new one and bind it. */
  allocate(req: AttachRequest): Allocated {
    return this.withLock(() => {
      this.checkNotDestroying();
      const reused = this.bindIdle(this.hintedIdle(), req);
      if (reused) return reused;
      let bound: Allocated | null = null;
      for (let attempt = 1; ; attempt++) {
        try {
          this.reserve((minor) => {
            const dev = new LoopDevice(hostLoopNode(minor));
            try {
              const r = attach(dev, req);
              // the open host node keeps an autoclear device bound until the caller is done
              bound = { device: this.device(minor), holder: dev, ...r };
            } catch (e) {
              dev.close();
              throw e;
            }
          });
          break;
        } catch (e) {
          if (e instanceof QuotaError) {
            // at a limit: an idle device that has no hint (freed by a stock tool, or by
            // autoclear after a stock umount) is still the instance's to use
            const idle = this.bindIdle(this.idleMinors(), req);
            if (idle) return idle;
            throw e;
          }
          // Lost the free device to a foreign tool between LOOP_CTL_GET_FREE and our bind:
          // it bound it (EBUSY), removed it (the open fails: ENOENT, ENODEV, ENXIO) or was
          // tearing it down (ENXIO, also right after our configure: the read-back finds it
          // unbound). reserve() already gave it back (it was never published); the loser of
          // a race does not fail the user's command while devices and quota remain — retry,
          // bounded like the host allocator (allocate.ts). A missing backing file is not.
          const lost =
            e instanceof AttachError &&
            (e.code === 'EBUSY' || e.code === 'ENXIO' || (e.deviceOpenFailed && hasCode(e.cause, 'ENOENT', 'ENODEV')));
          if (!lost || attempt >= RESERVE_TRIES) throw e;
          sleepMs(jitterMs(1, 25));
        }
      }
      this.publishPartitions(this.minorOf(bound!.device), req);
      return bound!;
    });
  }

  /** Bind the first of `minors` (idle held devices) that takes the file; null if none does. */
  private bindIdle(minors: number[], req: AttachRequest): Allocated | null {
    for (const minor of minors) {
      // bind through the host node, never through DIR/loopN: the instance owner may
      // swap that name for a symlink to another tenant's device between our lstat()
      // check and the open
      const dev = new LoopDevice(hostLoopNode(minor));
      try {
        const r = attach(dev, req);
        this.store.dropIdle(minor);
        this.publishPartitions(minor, req);
        return { device: this.device(minor), holder: dev, ...r };
      } catch (e) {
        dev.close();
        if (!(e instanceof AttachError) || e.code !== 'EBUSY') throw e;
        // a host tool took our idle device: it stays ours until it can be removed
        this.markRemoving(minor);
      }
    }
    return null;
  }

  private minorOf(dev: LoopDevice): number {
    return Number(dev.path.slice(dev.path.lastIndexOf('loop') + 4));
  }

  /** A held device that is not bound and whose node is published. */
  private isIdle(minor: number, entry: HeldDevice | null = this.store.device(minor)): boolean {
    return entry?.state === 'held' && this.isPublished(minor) && !SysfsLoop.forName(nodeName(minor)).isBound();
  }

  /**
   * The hinted idle devices that really are idle, ascending; stale hints are dropped.
   * Costs the number of hints (about the pool size), not the number of devices.
   */
  private hintedIdle(): number[] {
    const idle: number[] = [];
    for (const minor of this.store.idleHints()) {
      if (this.isIdle(minor)) idle.push(minor);
      else this.store.dropIdle(minor);
    }
    return idle;
  }

  /**
   * Every held device that is idle, ascending, found by looking at each one (reading
   * every record: for gc, a pool refill, a limit); their hints are written on the way.
   */
  idleMinors(): number[] {
    const s = this.state();
    const hints = new Set(this.store.idleHints());
    const idle = heldMinors(s).filter((m) => this.isIdle(m, s.devices[m]));
    for (const m of idle) if (!hints.has(m)) this.store.noteIdle(m);
    return idle;
  }

  /**
   * Take a new device into the instance, after checking both limits. `bind`, when
   * given, binds it through the host node *before* the instance node is published;
   * if it fails the device is returned to the system as if never taken.
   */
  private reserve(bind: ((minor: number) => void) | null): number {
    const h = this.header();
    // counting the records lists a directory that the limit itself keeps small
    if (h.max !== null && this.store.minors().length >= h.max) {
      throw new QuotaError(`${this.dir}: instance limit of ${h.max} loop devices reached`);
    }
    const rt = Runtime.open(this.env);
    let minor = -1;
    try {
      rt.lock();
      const limit = limitForUid(h.owner.uid, this.env);
      if (limit && rt.countClaimsOfUid(h.owner.uid) >= limit.limit) {
        throw new QuotaError(`uid ${h.owner.uid}: limit of ${limit.limit} loop devices reached (${limit.source})`);
      }
      minor = this.claimFreeMinor(rt, h);
      rt.unlock();
      try {
        this.store.writeDevice(minor, { state: 'held' });
      } catch (e) {
        // no record (the instance's filesystem full or read-only): nothing of the instance
        // knows the device, so it goes back at once rather than waiting for gc
        rt.lock();
        rt.release(minor, h.id);
        rt.unlock();
        this.removeQuietly(minor);
        throw e;
      }
      if (bind) {
        try {
          bind(minor);
        } catch (e) {
          // never published: nobody in the instance can hold it, so it may leave directly
          this.store.removeDevices([minor]);
          rt.lock();
          rt.release(minor, h.id);
          rt.unlock();
          this.removeQuietly(minor);
          throw e;
        }
      }
      this.publish(nodeName(minor), LOOP_MAJOR, minor, h);
      if (!bind) this.store.noteIdle(minor);
      return minor;
    } finally {
      rt.close();
    }
  }

  /** Create a node in DIR; its temporary lives in .loopfs, out of the owner's reach. */
  private publish(name: string, major: number, minor: number, h: InstanceHeader = this.header()): void {
    this.root.mknodBlock(name, major, minor, h.owner.uid, h.owner.gid, h.mode, this.stateDir);
  }

  /**
   * A fresh index above every existing device, made with LOOP_CTL_ADD and claimed for us,
   * rather than LOOP_CTL_GET_FREE's lowest unbound one (which may be another instance's
   * idle device): host tools allocate from the bottom, so they reach an instance's idle
   * device only when every lower one is busy, and giving the device back
   * (LOOP_CTL_REMOVE) never removes a device the host had before.
   * Where "above every existing device" is comes from the runtime's hint (the index after
   * the last one made) instead of a listing of /sys/block, whose size is the machine's
   * device count; the listing is taken when there is no hint, every NEXT_INDEX_USES
   * devices (the hint drifts up as lower devices go), and when indexes at the hint exist
   * already (made by a host tool or under another runtime directory).
   */
  private claimFreeMinor(rt: Runtime, h: InstanceHeader): number {
    const ctl = LoopControl.open();
    try {
      ctl.lock();
      const hint = rt.nextIndex();
      let scanned = hint === null;
      let next = hint ?? highestLoopIndex() + 1;
      let taken = 0;
      for (let tries = 0; tries < 64; tries++, next++) {
        try {
          ctl.add(next);
        } catch (e) {
          if (!hasCode(e, 'EEXIST')) throw e;
          // somebody else makes devices up here: look where the devices end, once
          if (!scanned && ++taken >= 4) {
            scanned = true;
            next = Math.max(next, highestLoopIndex());
          }
          continue;
        }
        let claimed: boolean;
        try {
          claimed = rt.claim({ minor: next, id: h.id, dir: this.dir, uid: h.owner.uid });
        } catch (e) {
          // the claim could not be written (a full or read-only runtime directory): the
          // device we just made is nobody's, and must not stay behind on the host
          this.removeQuietly(next);
          throw e;
        }
        // after the claim, and best effort: a hint never costs the device just claimed
        rt.madeIndex(next, scanned);
        if (claimed) return next;
        // a stale claim names this index: the device we just made is nobody's, undo it
        this.removeQuietly(next);
      }
      throw new NoFreeDeviceError(sysError('ENOSPC', 'ioctl(LOOP_CTL_ADD)'));
    } finally {
      ctl.close();
    }
  }

  private removeQuietly(minor: number): void {
    try {
      LoopControl.removeIndex(minor);
    } catch {
      /* still bound by whoever won the race, or busy: it is not ours either way */
    }
  }

  // ---------------------------------------------------------------- repair (gc)

  /** Drop a device from the record and unpublish it, leaving its claim alone. */
  forget(minor: number): void {
    const entry = this.store.device(minor);
    if (!entry) return;
    this.unlinkNodesOf(minor, entry);
    this.store.removeDevices([minor]);
  }

  /** Publish the node of a held device again if it is missing or wrong; true if it was. */
  republish(minor: number): boolean {
    if (this.isPublished(minor)) return false;
    this.root.unlinkQuiet(nodeName(minor));
    this.publish(nodeName(minor), LOOP_MAJOR, minor);
    return true;
  }

  /**
   * Undo a release that LOOP_CTL_REMOVE refused (EBUSY) for a device that is still unbound:
   * it was only open (a tool scanning for a free device), so it is still ours and idle;
   * held and published again, a tool that binds it next leaves a binding that destroy will
   * clear. A device bound meanwhile stays "removing": the binding may be a stranger's (a
   * host tool that took it while it was free), and is never handed to the instance owner.
   * Caller holds the instance lock. True when the device is held again.
   */
  keepIfUnbound(minor: number): boolean {
    const entry = this.store.device(minor);
    if (!entry || entry.state !== 'removing' || entry.partitions?.length) return false;
    const sys = SysfsLoop.forName(nodeName(minor));
    if (sys.devno() === null || sys.isBound()) return false;
    this.store.writeDevice(minor, { state: 'held' });
    this.republish(minor);
    this.store.noteIdle(minor);
    return true;
  }

  /**
   * Names in DIR that look like devices but are not published nodes of held devices:
   * nodes left by a crash, leftovers of a torn node creation, planted symlinks.
   */
  strayEntries(): string[] {
    const s = this.state();
    const expected = new Set<string>();
    for (const m of heldMinors(s)) {
      if (s.devices[m].state === 'held' && !s.destroying) expected.add(nodeName(m));
      for (const p of s.destroying ? [] : (s.devices[m].partitions ?? [])) expected.add(p);
    }
    return this.root
      .list()
      .filter((n) => (/^loop\d+(p\d+)?$/.test(n) && !expected.has(n)) || /^\.loop\d+(p\d+)?\..*\.tmp$/.test(n));
  }

  removeEntry(name: string): void {
    this.root.unlinkQuiet(name);
  }

  /**
   * Temporaries of state writes and node creations that a kill interrupted
   * (writeFileAtomic: write, then rename; mknodBlock: mknod in .loopfs, then rename into
   * DIR). Every such write happens under the instance lock, so with the lock held any
   * temporary is dead. Caller holds the instance lock. Returns the names removed.
   */
  removeTempFiles(): string[] {
    const removed = this.stateDir.list().filter((n) => n.startsWith('.') && n.endsWith('.tmp'));
    for (const n of removed) this.stateDir.unlinkQuiet(n);
    return [...removed, ...this.store.removeTempFiles()];
  }

  // ---------------------------------------------------------------- partitions

  /** Publish `DIR/loopNpM` for each partition the kernel found (set up with --partscan). */
  private publishPartitions(minor: number, req: AttachRequest): void {
    if (!(req.flags & native().constants.LO_FLAGS_PARTSCAN)) return;
    this.syncPartitions(minor);
  }

  /**
   * Make `DIR/loopNpM` match the partitions the kernel has for loopN now: found by the
   * kernel's scan at attach time (--partscan), or added later with BLKPG (`partx -a`,
   * `addpart`; also how partitions appear on kernels built without partition parsers).
   * Names are recorded before their nodes exist and forgotten only after their nodes are
   * gone, so the record always names every node a release must unlink.
   * Returns the names added and removed. Caller holds the instance lock.
   */
  syncPartitions(minor: number): { added: string[]; removed: string[] } {
    const entry = this.store.device(minor);
    if (!entry || entry.state !== 'held') return { added: [], removed: [] };
    const h = this.header();
    const current = partitionsOf(minor);
    const recorded = entry.partitions ?? [];
    const names = current.map((p) => p.name);
    const union = [...new Set([...recorded, ...names])];
    if (union.length !== recorded.length) this.store.writeDevice(minor, { state: 'held', partitions: union });
    const added: string[] = [];
    for (const part of current) {
      if (isBlockDevice(this.root.lstat(part.name), part.major, part.minor)) continue;
      this.root.unlinkQuiet(part.name);
      this.publish(part.name, part.major, part.minor, h);
      added.push(part.name);
    }
    const removed = recorded.filter((n) => !names.includes(n));
    for (const n of removed) this.root.unlinkQuiet(n);
    if (union.length !== names.length) this.store.writeDevice(minor, { state: 'held', partitions: names });
    return { added, removed };
  }

  // ---------------------------------------------------------------- detach and release

  /** `losetup -d` inside the instance: detach, then settle the device per the pool policy. */
  detach(dev: LoopDevice): void {
    dev.clear();
    dev.close();
    this.settle(dev);
  }

  /**
   * `losetup -D` inside the instance: LOOP_CLR_FD of each device, then all of them settled
   * together (settleDetached for many): the pool keeps what it lacks, and the rest leave in
   * one batch, their LOOP_CTL_REMOVEs in flight together, instead of one after another
   * (each waits ~35 ms in the kernel). Returns, per device, null or its LOOP_CLR_FD error.
   */
  detachMany(devs: LoopDevice[]): unknown[] {
    const errors = devs.map((dev): unknown => {
      try {
        dev.clear();
        dev.close();
        return null;
      } catch (e) {
        return e;
      }
    });
    const minors: number[] = [];
    for (const [i, dev] of devs.entries()) {
      const m = errors[i] === null ? dev.index() : null;
      if (m !== null) minors.push(m);
    }
    try {
      this.settleDetachedMany(minors);
    } catch {
      /* the detaches themselves succeeded; gc finishes what settling could not */
    }
    return errors;
  }

  /**
   * A device of ours was just detached (or autoclear is about to free it): keep it idle
   * in the pool, or give it back to the system. Never fails the caller: what cannot be
   * settled now (still open somewhere) is left marked for gc.
   */
  settle(dev: LoopDevice): void {
    const minor = dev.index();
    if (minor === null) return;
    try {
      this.settleDetached(minor);
    } catch {
      /* the detach itself succeeded; gc finishes what settling could not */
    }
  }

  private settleDetached(minor: number): void {
    this.withLock(() => {
      const entry = this.store.device(minor);
      if (!entry) return;
      if (entry.partitions?.length) {
        for (const p of entry.partitions) this.root.unlinkQuiet(p);
        this.store.writeDevice(minor, { state: entry.state });
      }
      const pool = this.header().pool;
      // the pool counts the hinted idle devices: a look at each held device is gc's job
      const idle = pool === 0 ? 0 : this.hintedIdle().filter((m) => m !== minor).length;
      if (idle >= pool) this.release(minor, UNBIND_WAIT_MS);
      else if (entry.state === 'held') this.store.noteIdle(minor);
    });
  }

  /** settleDetached for many devices, with one fsync per step and one batch of removals. */
  private settleDetachedMany(minors: number[]): void {
    this.withLock(() => {
      const entries = new Map<number, HeldDevice>();
      for (const m of minors) {
        const e = this.store.device(m);
        if (e) entries.set(m, e);
      }
      let rewritten = false;
      for (const [m, e] of entries) {
        if (!e.partitions?.length) continue;
        for (const p of e.partitions) this.root.unlinkQuiet(p);
        this.store.writeDevice(m, { state: e.state }, false);
        entries.set(m, { state: e.state });
        rewritten = true;
      }
      if (rewritten) this.store.syncDevices();
      const pool = this.header().pool;
      let idle = pool === 0 ? 0 : this.hintedIdle().filter((m) => !entries.has(m)).length;
      const leave: number[] = [];
      for (const [m, e] of entries) {
        if (idle >= pool) leave.push(m);
        else if (e.state === 'held') {
          this.store.noteIdle(m);
          idle++;
        }
      }
      this.releaseMany(leave, UNBIND_WAIT_MS, entries);
    });
  }

  private markRemoving(minor: number): void {
    const entry = this.store.device(minor);
    if (!entry) return;
    this.store.dropIdle(minor);
    if (entry.state !== 'removing') this.store.writeDevice(minor, { ...entry, state: 'removing' });
    this.unlinkNodesOf(minor, entry);
  }

  /**
   * Every name in DIR that can reach device `minor`: its node and its partitions' nodes
   * (all recorded before they are created). All go before LOOP_CTL_REMOVE: once the index
   * has left, the next device created with that number may be anybody's, and a node left
   * behind in DIR would still open it for the instance owner. A node creation killed
   * half-way leaves its temporary in .loopfs, where the owner cannot reach it.
   */
  private unlinkNodesOf(minor: number, entry: HeldDevice): void {
    this.root.unlinkQuiet(nodeName(minor));
    for (const p of entry.partitions ?? []) this.root.unlinkQuiet(p);
  }

  /**
   * Give a device back to the system: only a successful LOOP_CTL_REMOVE proves that no
   * process still holds it. The device must be unbound first, and stay so while its record
   * is marked and its nodes go: it is held exclusively meanwhile (bind-guard.ts), so that a
   * tool that finds its node still published cannot bind it and lose it to us. A device
   * still bound after `waitMs` (a clear the kernel deferred, or bound by somebody through a
   * node that was still there) is left as it is: held and reachable, for the pool policy to
   * look at again once it is free. On EBUSY from the removal (only open: a tool scanning)
   * it stays recorded as "removing" for gc (or keepIfUnbound). `guard`: one the caller took
   * already (released here). Caller holds the instance lock. Returns whether the device
   * left the instance.
   */
  release(minor: number, waitMs = 0, guard?: BindGuard): boolean {
    // loop-control first: inside an activated container /dev there is none, and the
    // device must then stay held (idle) rather than be stranded half-released
    let ctl: LoopControl;
    try {
      ctl = LoopControl.open();
    } catch {
      releaseGuard(guard ?? 'gone');
      // no loop-control (ENOENT in an activated container's /dev, EACCES): the device stays held
      return false;
    }
    const deadline = Date.now() + waitMs;
    let removed = false;
    try {
      const g = guard ?? guardUnboundBy(minor, deadline);
      if (g === 'in-use') return false;
      try {
        this.beforeLeave?.([minor]);
        this.markRemoving(minor);
      } finally {
        releaseGuard(g);
      }
      removed = removeWithin(ctl, minor, Math.max(0, deadline - Date.now()));
    } finally {
      ctl.close();
    }
    if (!removed) return false;
    this.forgetRemoved([minor]);
    return true;
  }

  /**
   * release() for many devices: all of them marked "removing" in one durable write (the
   * batch mark, state.ts RELEASING_FILE), every node unlinked, the removals in flight
   * together for up to `waitMs` in all, the removed ones forgotten, and the mark folded
   * into the records of those still busy. As release(), a device still bound at the
   * deadline stays held, and one still open stays "removing" for gc. Caller holds the
   * instance lock. Returns the minors that left, in the order given.
   */
  releaseMany(minors: number[], waitMs: number, known?: ReadonlyMap<number, HeldDevice>): number[] {
    if (minors.length === 0) return [];
    let ctl: LoopControl;
    try {
      ctl = LoopControl.open();
    } catch {
      return []; // no loop-control (an activated container's /dev): they stay held, idle
    }
    const deadline = Date.now() + waitMs;
    const removed: number[] = [];
    try {
      // in slices, so that the guards held at once stay far below any fd limit
      for (let i = 0; i < minors.length; i += GUARD_SLICE) {
        removed.push(...this.releaseSlice(ctl, minors.slice(i, i + GUARD_SLICE), deadline, known));
      }
    } finally {
      ctl.close();
    }
    return removed;
  }

  /** releaseMany's work for one slice of devices: guard, mark, unlink, remove, forget. */
  private releaseSlice(ctl: LoopControl, minors: number[], deadline: number, known?: ReadonlyMap<number, HeldDevice>): number[] {
    const guards = new Map<number, BindGuard>();
    let removed: number[] = [];
    try {
      // every device unbound and guarded (or gone) before any is marked: one still bound
      // at the deadline stays held, as release() leaves it
      for (const m of minors) guards.set(m, guardUnboundBy(m, deadline));
      const entries: Array<[number, HeldDevice]> = [];
      for (const m of minors) {
        if (guards.get(m) === 'in-use') continue;
        const e = known?.get(m) ?? this.store.device(m);
        if (e) entries.push([m, e]);
      }
      if (entries.length === 0) return [];
      this.beforeLeave?.(entries.map(([m]) => m));
      // the hints of those leaving (one listing of the hints, not an unlink per device)
      const hinted = new Set(this.store.idleHints());
      for (const [m] of entries) if (hinted.has(m)) this.store.dropIdle(m);
      const marking = entries.filter(([, e]) => e.state !== 'removing').map(([m]) => m);
      if (marking.length > 0) this.store.markReleasing(marking);
      for (const [m, e] of entries) this.unlinkNodesOf(m, e);
      for (const g of guards.values()) releaseGuard(g);
      guards.clear();
      removed = removeManyWithin(
        ctl,
        entries.map(([m]) => m),
        Math.max(0, deadline - Date.now()),
      ).removed;
    } finally {
      for (const g of guards.values()) releaseGuard(g);
    }
    this.forgetRemoved(removed);
    this.store.foldReleasing();
    return removed;
  }

  /**
   * Devices that LOOP_CTL_REMOVE took: delete their records (one fsync), then drop their
   * claims. Caller holds the instance lock.
   */
  private forgetRemoved(minors: number[]): void {
    if (minors.length === 0) return;
    const id = this.header().id;
    this.store.removeDevices(minors);
    const rt = Runtime.open(this.env);
    try {
      rt.lock();
      for (const m of minors) rt.release(m, id);
    } finally {
      rt.close();
    }
  }

  /**
   * The device half of `instance destroy`, after markDestroying(): unlink every node,
   * detach the held devices in `clear` that are still bound, remove every device (waiting
   * up to `waitMs` in all for the busy ones), then forget the removed ones in one batch.
   * Caller holds the instance lock.
   */
  releaseAll(clear: ReadonlySet<number>, waitMs: number, progress?: (done: number, total: number) => void): { removed: number[]; deferred: number[] } {
    const s = this.state();
    const all = heldMinors(s);
    for (const m of all) this.unlinkNodesOf(m, s.devices[m]);
    let removed: number[] = [];
    let busy: number[] = [];
    let ctl: LoopControl | null = null;
    try {
      ctl = LoopControl.open();
    } catch {
      /* no loop-control (an activated container's /dev): every device waits for gc */
    }
    try {
      // detach first (LOOP_CLR_FD is quick), then remove all at once: each removal spends
      // ~35 ms waiting in the kernel, and many of them in flight overlap (removeMany)
      for (const [i, minor] of all.entries()) {
        progress?.(i, all.length);
        if (clear.has(minor)) clearIfBound(minor);
      }
      busy = all;
      if (ctl) ({ removed, busy } = removeManyWithin(ctl, all, waitMs));
    } finally {
      ctl?.close();
    }
    progress?.(all.length, all.length);
    this.forgetRemoved(removed);
    return { removed, deferred: busy };
  }
}

/** LOOP_CTL_REMOVE, retried while EBUSY for up to `waitMs`; true once the index is gone. */
function removeWithin(ctl: LoopControl, minor: number, waitMs: number): boolean {
  const deadline = Date.now() + waitMs;
  for (;;) {
    try {
      ctl.remove(minor);
      return true;
    } catch (e) {
      // ENODEV/ENXIO: the index is gone already (a previous attempt got this far)
      if (hasCode(e, 'ENODEV', 'ENXIO')) return true;
      if (!hasCode(e, 'EBUSY')) throw e;
    }
    if (Date.now() >= deadline) return false;
    sleepMs(20);
  }
}

/**
 * LOOP_CTL_REMOVE of many devices at once (LoopControl.removeMany), the busy ones retried
 * until `waitMs` has passed in all.
 */
function removeManyWithin(ctl: LoopControl, minors: number[], waitMs: number): { removed: number[]; busy: number[] } {
  const deadline = Date.now() + waitMs;
  const removed: number[] = [];
  let busy = minors;
  while (busy.length > 0) {
    const outcome = ctl.removeMany(busy);
    removed.push(...busy.filter((_, i) => outcome[i] === 'removed'));
    busy = busy.filter((_, i) => outcome[i] === 'busy');
    if (busy.length === 0 || Date.now() >= deadline) break;
    sleepMs(20);
  }
  return { removed, busy };
}

/** Detach /dev/loopN if a file is bound to it (lazily, when somebody still holds it open). */
function clearIfBound(minor: number): void {
  const dev = new LoopDevice(hostLoopNode(minor));
  try {
    if (dev.sysfs()?.isBound()) dev.clear();
  } catch (e) {
    if (!hasCode(e, 'ENXIO', 'ENOENT', 'ENODEV')) throw e;
  } finally {
    dev.close();
  }
}

/** The highest loop index that exists now (-1 for none), from /sys/block. */
function highestLoopIndex(): number {
  let max = -1;
  for (const n of loopNamesInSysfs()) {
    const i = Number(n.slice(4));
    if (Number.isInteger(i) && i > max) max = i;
  }
  return max;
}

export interface PartitionNode {
  name: string;
  major: number;
  minor: number;
}

/** Partitions of loopN from sysfs (`/sys/block/loopN/loopNpM/dev`). */
export function partitionsOf(minor: number): PartitionNode[] {
  const base = `loop${minor}`;
  const result: PartitionNode[] = [];
  const dir = new SysfsLoop(`/sys/block/${base}`);
  for (const name of readdirSafe(dir.dir)) {
    if (!new RegExp(`^${base}p\\d+$`).test(name)) continue;
    const dn = new SysfsLoop(`${dir.dir}/${name}`).devno();
    if (dn) result.push({ name, major: dn[0], minor: dn[1] });
  }
  return result;
}

function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    // the device went meanwhile (ENOENT): it has no partitions
    return [];
  }
}

/**
 * DIR/.loopfs, refusing anything the instance owner could have made: DIR itself may be
 * the owner's (a container's /dev/loopfs), so they could rename our .loopfs away and put
 * their own in its place, with a state that lists somebody else's devices. Ours is a
 * real directory (O_NOFOLLOW), owned by us and writable by nobody else.
 */
function openStateDir(root: PinnedDir): PinnedDir {
  const dir = root.openSub(STATE_DIR);
  const n = native();
  const st = n.fstat(dir.fd);
  if ((st.uid !== 0 && st.uid !== process.geteuid!()) || (st.mode & 0o022) !== 0) {
    dir.close();
    throw sysError('EPERM', 'open', dir.path);
  }
  return dir;
}
