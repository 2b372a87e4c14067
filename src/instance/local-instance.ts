/**
 * A "local" instance on a stock kernel: a directory whose loop devices are scoped by
 * our tools (run by root or a CI runner; the broker serves the unprivileged case).
 *
 *   DIR/loopN            published node of a held device (owner, mode from the state)
 *   DIR/loopNpM          its partitions, when set up with --partscan
 *   DIR/.loopfs/state.json, DIR/.loopfs/lock   (0700 root: the owner cannot forge them)
 *
 * Life of a device in an instance (every step may be SIGKILLed; gc.ts settles it):
 *   reserve:  claim minor (runtime) → record in state → bind (through the host node,
 *             before any instance node exists) → verify → publish DIR/loopN
 *   release:  detach → close → mark "removing" → LOOP_CTL_REMOVE (fails while anyone
 *             holds the device open) → unlink nodes → forget in state → drop claim
 * A device leaves an instance only through a successful LOOP_CTL_REMOVE, or when it was
 * never published (a bind that lost a race: no process of the instance can hold it).
 */
import { mkdirSync, readdirSync, statSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { attach, AttachError, type AttachRequest } from '../kernel/attach.js';
import { NoFreeDeviceError, type Allocated } from '../kernel/allocate.js';
import { LOOP_MAJOR } from '../kernel/devnum.js';
import { hasCode, sysError } from '../kernel/errors.js';
import { LoopControl } from '../kernel/loop-control.js';
import { LoopDevice } from '../kernel/loop-device.js';
import { native } from '../kernel/native.js';
import { loopNamesInSysfs, SysfsLoop } from '../kernel/sysfs.js';
import { jitterMs, sleepMs } from '../kernel/sleep.js';
import { limitForUid } from './limits.js';
import { PinnedDir } from './pinned-dir.js';
import { Runtime } from './runtime.js';
import { DeviceNames } from './device-names.js';
import { checkMember, devicePathIn, type LoopScope } from './scope.js';
import {
  heldMinors,
  LOCK_FILE,
  newInstanceId,
  readState,
  STATE_DIR,
  STATE_FILE,
  STATE_VERSION,
  writeState,
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

/** The user named a device that is not this instance's. */
export class NotInInstanceError extends Error {
  readonly code = 'ENODEV';
}

const hostNode = (minor: number): string => `/dev/loop${minor}`;
const nodeName = (minor: number): string => `loop${minor}`;

/** How long a release waits for a detached device to become unbound before leaving it to gc. */
const UNBIND_WAIT_MS = 2000;

/** How often allocate() takes a new device after losing one to a foreign tool (EBUSY). */
const RESERVE_TRIES = 64;

export class LocalInstance implements LoopScope {
  readonly controlPath = null;
  private lockFd = -1;
  /** How the devices handed out are named (a container's /dev names; see device-names.ts). */
  private names = DeviceNames.NONE;

  private constructor(
    readonly dir: string,
    private readonly root: PinnedDir,
    private readonly stateDir: PinnedDir,
    private readonly env: NodeJS.ProcessEnv,
  ) {}

  // ---------------------------------------------------------------- lifecycle

  /** Whether DIR holds a local instance (a state file), without opening it. */
  static isInstance(dir: string): boolean {
    try {
      return statSync(`${dir}/${STATE_DIR}/state.json`).isFile();
    } catch {
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
    if (!readState(stateDir)) {
      inst.close();
      throw sysError('ENOENT', 'open', `${dir}/${STATE_DIR}/state.json`);
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
      const state: InstanceState = {
        version: STATE_VERSION,
        id: newInstanceId(),
        owner: opts.owner,
        mode: opts.mode,
        max: opts.max,
        pool: opts.pool,
        createdAt: new Date().toISOString(),
        devices: {},
      };
      // Registered before the state exists: a crash in between leaves a registry entry
      // that gc drops (no state behind it), never a state that gc cannot find. Both steps
      // happen under the runtime lock, under which gc decides that an instance vanished
      // and which claims are orphans: gc never mistakes an instance being created (whose
      // first devices may already be claimed a moment later) for a vanished one.
      const rt = Runtime.open(env);
      try {
        rt.lock();
        rt.register({ id: state.id, dir: inst.dir, uid: opts.owner.uid });
        writeState(stateDir, state);
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
    this.stateDir.close();
    this.root.close();
  }

  /** The instance lock: first in the lock order (instance, runtime, loop-control, device). */
  lock(): void {
    if (this.lockFd >= 0) return;
    const n = native();
    const c = n.constants;
    const fd = n.openat(this.stateDir.fd, LOCK_FILE, c.O_RDWR | c.O_CREAT | c.O_NOFOLLOW, 0o600);
    n.flock(fd, c.LOCK_EX);
    this.lockFd = fd;
  }

  unlock(): void {
    if (this.lockFd >= 0) {
      native().close(this.lockFd);
      this.lockFd = -1;
    }
  }

  state(): InstanceState {
    const s = readState(this.stateDir);
    if (!s) throw sysError('ENOENT', 'open', `${this.dir}/${STATE_DIR}/state.json`);
    return s;
  }

  private save(s: InstanceState): void {
    writeState(this.stateDir, s);
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

  // ---------------------------------------------------------------- scope

  nodePath(minor: number): string {
    return `${this.dir}/${nodeName(minor)}`;
  }

  /** A device as handed out: under its container name where it has one, else DIR/loopN. */
  private device(minor: number): LoopDevice {
    return new LoopDevice(this.names.pathOf(minor) ?? this.nodePath(minor));
  }

  /** Held and bound devices, in /sys/block order like util-linux, named as device() names them. */
  usedDevices(): LoopDevice[] {
    const s = this.state();
    const result: LoopDevice[] = [];
    for (const name of loopNamesInSysfs()) {
      const minor = this.names.sysBlockMinor(name);
      if (minor === null || s.devices[minor]?.state !== 'held') continue;
      if (!this.isPublished(minor)) continue;
      const dev = this.device(minor);
      if (dev.sysfs()?.offset() == null) continue; // not bound
      result.push(dev);
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
    return this.state().devices[d[1]]?.state === 'held' && this.isPublished(d[1]);
  }

  ensureDevice(): void {
    /* explicit devices must already belong to the instance: nothing is created */
  }

  /** The published node is ours: a block device with the right numbers (lstat, no symlink). */
  isPublished(minor: number): boolean {
    const st = this.root.lstat(nodeName(minor));
    const c = native().constants;
    return !!st && (st.mode & c.S_IFMT) === c.S_IFBLK && st.rdevMajor === LOOP_MAJOR && st.rdevMinor === minor;
  }

  /** `losetup -f`: the first unbound held device, else a new one reserved into the instance. */
  findFree(): LoopDevice {
    return this.withLock(() => {
      const idle = this.idleMinors(this.state());
      if (idle.length > 0) return this.device(idle[0]);
      const minor = this.reserve(null);
      return this.device(minor);
    });
  }

  /**
   * Reserve devices until `pool` of them are idle (for activation). Stops quietly at a
   * limit: a pool is a convenience, the limits are not. Caller holds the instance lock.
   */
  ensurePool(pool: number): number[] {
    const reserved: number[] = [];
    while (this.idleMinors(this.state()).length < pool) {
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
      for (const minor of this.idleMinors(this.state())) {
        // bind through the host node, never through DIR/loopN: the instance owner may
        // swap that name for a symlink to another tenant's device between our lstat()
        // check and the open
        const dev = new LoopDevice(hostNode(minor));
        try {
          const r = attach(dev, req);
          this.publishPartitions(minor, req);
          return { device: this.device(minor), holder: dev, ...r };
        } catch (e) {
          dev.close();
          if (!(e instanceof AttachError) || e.code !== 'EBUSY') throw e;
          // a host tool took our idle device: it stays ours until it can be removed
          this.markRemoving(minor);
        }
      }
      let bound: Allocated | null = null;
      for (let attempt = 1; ; attempt++) {
        try {
          this.reserve((minor) => {
            const dev = new LoopDevice(hostNode(minor));
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

  private minorOf(dev: LoopDevice): number {
    return Number(dev.path.slice(dev.path.lastIndexOf('loop') + 4));
  }

  /** Held devices that are not bound and whose node is published, ascending. */
  private idleMinors(s: InstanceState): number[] {
    return heldMinors(s).filter(
      (m) => s.devices[m].state === 'held' && this.isPublished(m) && !SysfsLoop.forName(nodeName(m)).isBound(),
    );
  }

  /**
   * Take a new device into the instance, after checking both limits. `bind`, when
   * given, binds it through the host node *before* the instance node is published;
   * if it fails the device is returned to the system as if never taken.
   */
  private reserve(bind: ((minor: number) => void) | null): number {
    const s = this.state();
    const held = heldMinors(s).length;
    if (s.max !== null && held >= s.max) {
      throw new QuotaError(`${this.dir}: instance limit of ${s.max} loop devices reached`);
    }
    const rt = Runtime.open(this.env);
    let minor = -1;
    try {
      rt.lock();
      const limit = limitForUid(s.owner.uid, this.env);
      if (limit && rt.countClaimsOfUid(s.owner.uid) >= limit.limit) {
        throw new QuotaError(`uid ${s.owner.uid}: limit of ${limit.limit} loop devices reached (${limit.source})`);
      }
      minor = this.claimFreeMinor(rt, s);
      rt.unlock();
      s.devices[minor] = { state: 'held' };
      this.save(s);
      if (bind) {
        try {
          bind(minor);
        } catch (e) {
          // never published: nobody in the instance can hold it, so it may leave directly
          delete s.devices[minor];
          this.save(s);
          rt.release(minor, s.id);
          this.removeQuietly(minor);
          throw e;
        }
      }
      this.root.mknodBlock(nodeName(minor), LOOP_MAJOR, minor, s.owner.uid, s.owner.gid, s.mode);
      return minor;
    } finally {
      rt.close();
    }
  }

  /**
   * A free minor that no instance has claimed, claimed for us. LOOP_CTL_GET_FREE gives
   * the lowest unbound device, which may be another instance's idle one; then a fresh
   * index above every existing device is added instead.
   */
  private claimFreeMinor(rt: Runtime, s: InstanceState): number {
    // A fresh index above every existing device, created with LOOP_CTL_ADD, rather than
    // LOOP_CTL_GET_FREE's lowest unbound one: host tools allocate from the bottom, so
    // they reach an instance's idle device only when every lower one is busy, and giving
    // the device back (LOOP_CTL_REMOVE) never removes a device the host had before.
    const ctl = LoopControl.open();
    try {
      ctl.lock();
      let next = Math.max(-1, ...loopNamesInSysfs().map((n) => Number(n.slice(4))).filter(Number.isInteger)) + 1;
      for (let tries = 0; tries < 64; tries++, next++) {
        try {
          ctl.add(next);
        } catch (e) {
          if (hasCode(e, 'EEXIST')) continue;
          throw e;
        }
        if (rt.claim({ minor: next, id: s.id, dir: this.dir, uid: s.owner.uid })) return next;
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

  /** Record a claimed device and publish its node. Caller holds the instance lock. */
  adopt(minor: number): void {
    const s = this.state();
    s.devices[minor] = { state: 'held' };
    this.save(s);
    this.republish(minor);
  }

  /** Drop a device from the record and unpublish it, leaving its claim alone. */
  forget(minor: number): void {
    const s = this.state();
    this.unpublishPartitions(minor, s);
    if (s.devices[minor]) {
      this.root.unlinkQuiet(nodeName(minor));
      delete s.devices[minor];
    }
    this.save(s);
  }

  /** Publish the node of a held device again if it is missing or wrong; true if it was. */
  republish(minor: number): boolean {
    if (this.isPublished(minor)) return false;
    const s = this.state();
    this.root.unlinkQuiet(nodeName(minor));
    this.root.mknodBlock(nodeName(minor), LOOP_MAJOR, minor, s.owner.uid, s.owner.gid, s.mode);
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
      if (s.devices[m].state === 'held') expected.add(nodeName(m));
      for (const p of s.devices[m].partitions ?? []) expected.add(p);
    }
    return this.root
      .list()
      .filter((n) => (/^loop\d+(p\d+)?$/.test(n) && !expected.has(n)) || /^\.loop\d+(p\d+)?\..*\.tmp$/.test(n));
  }

  removeEntry(name: string): void {
    this.root.unlinkQuiet(name);
  }

  /**
   * Temporaries of state writes that a kill interrupted (writeFileAtomic: write, then
   * rename). Every state write happens under the instance lock, so with the lock held
   * any temporary is dead. Caller holds the instance lock. Returns the names removed.
   */
  removeTempFiles(): string[] {
    const removed = this.stateDir.list().filter((n) => n.startsWith('.') && n.endsWith('.tmp'));
    for (const n of removed) this.stateDir.unlinkQuiet(n);
    return removed;
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
   * Returns the names added and removed. Caller holds the instance lock.
   */
  syncPartitions(minor: number): { added: string[]; removed: string[] } {
    const s = this.state();
    const entry = s.devices[minor];
    if (!entry || entry.state !== 'held') return { added: [], removed: [] };
    const current = partitionsOf(minor);
    const c = native().constants;
    const added: string[] = [];
    for (const part of current) {
      const st = this.root.lstat(part.name);
      const ok = st && (st.mode & c.S_IFMT) === c.S_IFBLK && st.rdevMajor === part.major && st.rdevMinor === part.minor;
      if (ok) continue;
      this.root.unlinkQuiet(part.name);
      this.root.mknodBlock(part.name, part.major, part.minor, s.owner.uid, s.owner.gid, s.mode);
      added.push(part.name);
    }
    const names = new Set(current.map((p) => p.name));
    const removed = (entry.partitions ?? []).filter((n) => !names.has(n));
    for (const n of removed) this.root.unlinkQuiet(n);
    const list = [...names];
    if (added.length || removed.length || (entry.partitions ?? []).length !== list.length) {
      if (list.length) entry.partitions = list;
      else delete entry.partitions;
      this.save(s);
    }
    return { added, removed };
  }

  private unpublishPartitions(minor: number, s: InstanceState): void {
    for (const p of s.devices[minor]?.partitions ?? []) this.root.unlinkQuiet(p);
    if (s.devices[minor]) delete s.devices[minor].partitions;
  }

  // ---------------------------------------------------------------- detach and release

  /** `losetup -d` inside the instance: detach, then settle the device per the pool policy. */
  detach(dev: LoopDevice): void {
    dev.clear();
    dev.close();
    this.settle(dev);
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
      const s = this.state();
      if (!s.devices[minor]) return;
      this.unpublishPartitions(minor, s);
      this.save(s);
      const idle = this.idleMinors(s).filter((m) => m !== minor).length;
      if (idle >= s.pool) this.release(minor, UNBIND_WAIT_MS);
    });
  }

  private markRemoving(minor: number): void {
    const s = this.state();
    if (!s.devices[minor]) return;
    s.devices[minor].state = 'removing';
    this.save(s);
    this.unlinkNodesOf(minor);
  }

  /**
   * Every name in DIR that can reach device `minor`: its node, its partitions' nodes, and
   * the temporary of a node creation that was killed (mknodBlock: created, chowned to the
   * owner, then renamed). All go before LOOP_CTL_REMOVE: once the index has left, the next
   * device created with that number may be anybody's, and a node left behind in DIR would
   * still open it for the instance owner.
   */
  private unlinkNodesOf(minor: number): void {
    const re = new RegExp(`^\\.?loop${minor}(p\\d+)?(\\..*\\.tmp)?$`);
    for (const name of this.root.list()) if (re.test(name)) this.root.unlinkQuiet(name);
  }

  /**
   * Give a device back to the system: only a successful LOOP_CTL_REMOVE proves that no
   * process still holds it. On EBUSY it stays recorded as "removing" for gc.
   * Caller holds the instance lock. Returns whether the device left the instance.
   */
  release(minor: number, waitMs = 0): boolean {
    // loop-control first: inside an activated container /dev there is none, and the
    // device must then stay held (idle) rather than be stranded half-released
    let ctl: LoopControl;
    try {
      ctl = LoopControl.open();
    } catch {
      return false;
    }
    let removed = false;
    try {
      this.markRemoving(minor);
      const deadline = Date.now() + waitMs;
      for (;;) {
        try {
          ctl.remove(minor);
          removed = true;
        } catch (e) {
          // ENODEV/ENXIO: the index is gone already (a previous attempt got this far)
          if (hasCode(e, 'ENODEV', 'ENXIO')) removed = true;
          else if (!hasCode(e, 'EBUSY')) throw e;
        }
        if (removed || Date.now() >= deadline) break;
        sleepMs(20);
      }
    } finally {
      ctl.close();
    }
    if (!removed) return false;
    const s = this.state();
    this.unpublishPartitions(minor, s);
    this.root.unlinkQuiet(nodeName(minor));
    delete s.devices[minor];
    this.save(s);
    const rt = Runtime.open(this.env);
    try {
      rt.lock();
      rt.release(minor, s.id);
    } finally {
      rt.close();
    }
    return true;
  }
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
