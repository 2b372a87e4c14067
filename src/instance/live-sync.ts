/**
 * Live sync: instances and the views of them (an activated /dev, a container's /dev) follow
 * the kernel as devtmpfs and udev make /dev follow it on the host. A device bound or freed
 * (autoclear at umount), a partition added or deleted (`partx -a`, BLKPG, a partition scan),
 * a device created or removed: the kernel announces each with a uevent, and the watcher of
 * the instance that holds the device then reconciles it.
 *
 * Events are hints, never the truth: they can be lost (a full socket buffer), arrive late
 * or out of order, and say nothing about which instance a device belongs to. So an event
 * only says *which* instances to look at; what each of them then publishes comes from the
 * claims and sysfs, through the same reconcile routine `loopfs instance gc` runs
 * (reconcile.ts), followed by the views. A lost event (an overflow) makes every instance
 * be looked at; at start every instance is. Running a sync once more is always harmless.
 *
 * Nothing here polls: without events the watcher does not wake up.
 *
 * Idle devices above the pool: gc releases every one. A watcher runs right after the very
 * commands that make such a device on purpose (`losetup -f` without a file, the broker's
 * get-free, a pool refill: LOOP_CTL_ADD, an `add` event), and releasing it then would
 * pull the device out from under the name just printed. So, after its first pass (gc's
 * rule, like a gc run at start) and after a lost event, a watcher releases only devices
 * whose binding the kernel announced as changed (a `change` of the whole disk: a bind, an
 * unbind, autoclear at umount): the device freed behind our back goes back to the pool
 * policy at once, a reserved one waits for its bind (or for gc).
 */
import { lstatSync } from 'node:fs';
import { guardUnbound, releaseGuard, type BindGuard } from '../kernel/bind-guard.js';
import { LOOP_MAJOR } from '../kernel/devnum.js';
import { hasCode } from '../kernel/errors.js';
import { LoopUevents, type LoopUevent } from '../kernel/uevents.js';
import { partitionsOf, type LocalInstance } from './local-instance.js';
import { reconcileInstance, type GcReport } from './reconcile.js';
import { Runtime } from './runtime.js';
import { heldMinors, type InstanceState } from './state.js';

/** A node the instance publishes in DIR (its name there), as every view must show it. */
export interface PublishedNode {
  /** loopN or loopNpM. */
  name: string;
  /** N: the loop device (its minor). */
  disk: number;
  /** M for a partition, null for the whole device. */
  partition: number | null;
  major: number;
  minor: number;
}

/** What an instance publishes now, with the owner and mode every node of it carries. */
export interface InstanceSnapshot {
  dir: string;
  owner: { uid: number; gid: number };
  mode: number;
  /** Whole devices by ascending minor, each followed by its partitions by number. */
  nodes: PublishedNode[];
}

export interface ViewChange {
  added: string[];
  removed: string[];
}

/** A place besides DIR that shows an instance's nodes. `apply` is idempotent. */
export interface InstanceView {
  readonly name: string;
  apply(snapshot: InstanceSnapshot): ViewChange;
  /**
   * Of devices that may leave, the order in which they should (first goes first); a view
   * whose names must stay without gaps (busybox stops at the first missing /dev/loopK)
   * puts its highest names first, so that nothing has to be renamed.
   */
  leaveOrder?(candidates: number[]): number[];
}

export interface SyncOutcome {
  /** Devices whose release had to wait (still open somewhere): a later pass retries. */
  pending: number[];
  dir: string;
  /** What the reconcile settled (gc's wording). */
  fixes: string[];
  /** Devices reserved to refill the pool. */
  reserved: number[];
  views: Array<{ view: string } & ViewChange>;
  snapshot: InstanceSnapshot;
}

/** The held, published devices and partitions of an instance. Caller holds the instance lock. */
export function snapshotOf(inst: LocalInstance, s: InstanceState = inst.state()): InstanceSnapshot {
  const nodes: PublishedNode[] = [];
  for (const disk of heldMinors(s)) {
    if (s.devices[disk].state !== 'held' || !inst.isPublished(disk)) continue;
    nodes.push({ name: `loop${disk}`, disk, partition: null, major: LOOP_MAJOR, minor: disk });
    const recorded = new Set(s.devices[disk].partitions ?? []);
    const parts = partitionsOf(disk)
      .filter((p) => recorded.has(p.name))
      .map((p) => ({ name: p.name, disk, partition: Number(p.name.slice(p.name.lastIndexOf('p') + 1)), major: p.major, minor: p.minor }))
      .sort((a, b) => a.partition - b.partition);
    nodes.push(...parts);
  }
  return { dir: inst.dir, owner: { ...s.owner }, mode: s.mode, nodes };
}

export interface TargetOptions {
  /** Idle devices to keep (default: the instance's pool setting). */
  pool?: number;
  /** Reserve devices until `pool` are idle (views scanned by stock tools need that). */
  refill: boolean;
  env?: NodeJS.ProcessEnv;
}

/**
 * Which idle devices above the pool a sync may release: 'all' (gc's rule), or only those
 * whose binding changed since the last pass (whole-disk `change` events).
 */
export type ReleasePolicy = 'all' | ReadonlySet<number>;

/** One instance a watcher keeps in sync, with its views. */
export class SyncTarget {
  /** Devices the last sync published: an event about one of them concerns us even after it left. */
  private known = new Set<number>();
  /** Devices this target reserved to refill the pool: they may leave again like freed ones. */
  private refilled = new Set<number>();

  /** What the views changed in the sync under way (dropLeaving() adds to it). */
  private changes: ViewChange[] | null = null;

  constructor(
    readonly inst: LocalInstance,
    readonly views: InstanceView[],
    private readonly opts: TargetOptions,
  ) {
    // every release of this instance in this process (gc's pool rule at the first sync,
    // freed devices, reconcile) takes the devices out of the views first
    if (views.length > 0) inst.beforeLeave = (minors) => this.dropLeaving(minors);
  }

  /**
   * The views let go of devices before they go: a name in a view never points at a device
   * that is already gone (busybox takes a dangling /dev/loopK for a missing node, tries
   * mknod and fails with EEXIST), and no tool in a view finds the node of a device being
   * removed and binds it (util-linux retries the next free node after EBUSY, which could
   * be the same one again). Called by LocalInstance.release while the devices are guarded.
   */
  private dropLeaving(minors: number[]): void {
    const before = snapshotOf(this.inst);
    const into = this.changes ?? this.views.map((): ViewChange => ({ added: [], removed: [] }));
    this.applyViews({ ...before, nodes: before.nodes.filter((n) => !minors.includes(n.disk)) }, into);
  }

  get dir(): string {
    return this.inst.dir;
  }

  /** Whether an event about loop device `disk` may change what this instance publishes. */
  concerns(disk: number): boolean {
    if (this.known.has(disk)) return true;
    try {
      return this.inst.record(disk) !== null; // one record, not the whole state
    } catch {
      return true; // unreadable now: let sync() report it
    }
  }

  /** Reconcile the instance, refill its pool, then bring every view in line. */
  sync(release: ReleasePolicy = 'all'): SyncOutcome {
    const report: GcReport = { instances: 1, fixes: [], pending: [] };
    let reserved: number[] = [];
    let snapshot: InstanceSnapshot;
    const changes = this.views.map((): ViewChange => ({ added: [], removed: [] }));
    this.changes = changes;
    this.inst.lock();
    try {
      const rt = Runtime.open(this.opts.env ?? process.env);
      try {
        // with a narrower policy the reconcile keeps every idle device, and the changed
        // ones are released below
        reconcileInstance(this.inst, rt, report, { pool: release === 'all' ? this.opts.pool : Number.MAX_SAFE_INTEGER });
      } finally {
        rt.close();
      }
      if (release !== 'all' && release.size > 0) {
        // Each candidate is held exclusively before its view names go (bind-guard.ts): a
        // tool in a view may have bound it since it was found idle, through the node that
        // is still there; such a device is in use, and stays the instance's and in view.
        const guards = new Map<number, BindGuard>();
        try {
          for (const minor of this.releaseCandidates(release)) {
            const g = guardUnbound(minor);
            if (g === 'in-use') continue;
            guards.set(minor, g);
          }
          // (release() takes each out of the views first: dropLeaving)
          for (const minor of [...guards.keys()]) {
            const g = guards.get(minor)!;
            guards.delete(minor); // release() lets go of it
            if (this.inst.release(minor, 0, g)) report.fixes.push({ dir: this.inst.dir, minor, action: 'released idle device above the pool size' });
            // only open (a tool scanning for a free device, which may bind it next): it stays
            // an idle device of the instance, and the next change of its binding decides again
            else if (!this.inst.keepIfUnbound(minor)) report.pending.push({ dir: this.inst.dir, minor, action: 'device is still in use; removal deferred' });
          }
        } finally {
          for (const g of guards.values()) releaseGuard(g);
        }
      }
      if (this.opts.refill) reserved = this.inst.ensurePool(this.opts.pool ?? this.inst.header().pool);
      snapshot = snapshotOf(this.inst);
    } finally {
      this.inst.unlock();
      this.changes = null;
    }
    this.known = new Set(snapshot.nodes.map((n) => n.disk));
    for (const m of reserved) this.refilled.add(m);
    for (const m of this.refilled) if (!this.known.has(m)) this.refilled.delete(m);
    this.applyViews(snapshot, changes);
    const views = this.views.map((v, i) => ({ view: v.name, ...changes[i] }));
    const pending = report.pending.map((p) => p.minor).filter((m): m is number => m !== null);
    return { dir: this.dir, fixes: report.fixes.map((f) => f.action), pending, reserved, views, snapshot };
  }

  private applyViews(snap: InstanceSnapshot, into: ViewChange[]): void {
    this.views.forEach((v, i) => {
      const c = v.apply(snap);
      into[i].added.push(...c.added);
      into[i].removed.push(...c.removed);
    });
  }

  /**
   * The pool policy, narrowed: while more than `pool` held devices are idle, idle devices
   * may leave if their binding changed (freed by autoclear or a detach) or if this target
   * reserved them itself to refill the pool, never one somebody reserved on purpose
   * (`losetup -f`, the broker's get-free). Which of them go first, the views say. Caller
   * holds the instance lock.
   */
  private releaseCandidates(changed: ReadonlySet<number>): number[] {
    const idle = this.inst.idleMinors();
    const excess = idle.length - (this.opts.pool ?? this.inst.header().pool);
    if (excess <= 0) return [];
    let eligible = idle.filter((m) => changed.has(m) || this.refilled.has(m));
    for (const v of this.views) if (v.leaveOrder) eligible = v.leaveOrder(eligible);
    return eligible.slice(0, excess);
  }
}

export interface LiveSyncOptions {
  /** The targets now (asked at every batch of events: a server's set changes). */
  targets(): Iterable<SyncTarget>;
  /** After a sync of a target that changed something. */
  onChange?(o: SyncOutcome): void;
  /** A sync that failed; the watcher goes on (the next event or start retries). */
  onError?(dir: string, e: unknown): void;
  /** Keep node's event loop alive for the watcher alone (a command that only watches). */
  keepAlive?: boolean;
}

/** Changed anything: a fix, a refill or a view entry. */
export function changed(o: SyncOutcome): boolean {
  return o.fixes.length > 0 || o.reserved.length > 0 || o.views.some((v) => v.added.length > 0 || v.removed.length > 0);
}

/** A removed name sysfs still shows is looked at again after LINGER_MS, at most LINGER_PASSES times (1 s). */
const LINGER_MS = 5;
const LINGER_PASSES = 200;

/** Whether the kernel still lists block device `name` (loopN or loopNpM). */
function existsInSysfs(name: string): boolean {
  try {
    lstatSync(`/sys/class/block/${name}`);
    return true;
  } catch (e) {
    if (hasCode(e, 'ENOENT')) return false;
    throw e;
  }
}

export class LiveSync {
  private readonly events: LoopUevents;
  private dirtyDisks = new Set<number>();
  /** Whole disks with a `change` event (bind, unbind) since the last pass. */
  private rebound = new Set<number>();
  private everything = true;
  /** The next pass applies gc's pool rule to every idle device (the first one, after an overflow). */
  private releaseAll = true;
  private scheduled = false;
  private stopped = false;
  /**
   * Names announced as removed that sysfs still showed at the last pass, with the passes
   * left to wait for them. The kernel sends a `remove` uevent before it deletes the
   * device's sysfs directory (device_del: the uevent, then kobject_del), so a pass that
   * runs at once can still find the partition it was told about and keep its node; with
   * no further event nothing would take it away. Each such name gets one more pass a few
   * milliseconds later, until sysfs agrees (bounded: a name that stays is real again).
   */
  private lingering = new Map<string, { disk: number; passes: number }>();
  /**
   * Devices whose release a pass had to defer (the tool that freed it still held it open
   * for a moment, as `losetup -d` does while the kernel announces the unbind): they get
   * passes a few milliseconds apart until released (bounded like the names above).
   */
  private deferred = new Map<number, number>();
  private lingerTimer: NodeJS.Timeout | null = null;
  private markReady!: () => void;
  /** Resolves once the first sync of every target (the one at start) has run. */
  readonly ready: Promise<void> = new Promise((r) => (this.markReady = r));

  private constructor(private readonly opts: LiveSyncOptions) {
    this.events = LoopUevents.open({
      event: (e: LoopUevent) => this.onEvent(e),
      overflow: () => this.resyncAll(true),
    });
    if (!opts.keepAlive) this.events.unref();
    // the first sync (everything) runs once the caller has finished setting up
    this.schedule();
  }

  /** Start listening: the socket is open before the first sync, so nothing falls in between. */
  static start(opts: LiveSyncOptions): LiveSync {
    return new LiveSync(opts);
  }

  /**
   * Look at every target again (after a lost event, or when the set of targets changed).
   * `releaseAll`: release every idle device above the pool, as gc does (events were lost);
   * otherwise only those whose binding changed.
   */
  resyncAll(releaseAll = false): void {
    this.everything = true;
    if (releaseAll) this.releaseAll = true;
    this.schedule();
  }

  close(): void {
    this.stopped = true;
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.events.close();
  }

  private onEvent(e: LoopUevent): void {
    this.dirtyDisks.add(e.disk);
    if (e.action === 'change' && e.partition === null) this.rebound.add(e.disk);
    if (e.action === 'remove') this.lingering.set(e.devname, { disk: e.disk, passes: LINGER_PASSES });
    else this.lingering.delete(e.devname); // added again: sysfs is right about it now
    this.schedule();
  }

  /** After a pass: names announced removed that sysfs still has get another pass soon. */
  private followLingering(): void {
    for (const [name, l] of this.lingering) {
      if (!existsInSysfs(name) || l.passes <= 0) this.lingering.delete(name);
      else l.passes--;
    }
    if ((this.lingering.size === 0 && this.deferred.size === 0) || this.lingerTimer || this.stopped) return;
    this.lingerTimer = setTimeout(() => {
      this.lingerTimer = null;
      for (const l of this.lingering.values()) this.dirtyDisks.add(l.disk);
      for (const d of this.deferred.keys()) this.dirtyDisks.add(d);
      this.schedule();
    }, LINGER_MS);
    if (!this.opts.keepAlive) this.lingerTimer.unref();
  }

  /** Batch: every event read in one turn of the loop (partx adds p1 and p2 together) is one sync. */
  private schedule(): void {
    if (this.scheduled || this.stopped) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  private flush(): void {
    if (this.stopped) return this.markReady();
    const all = this.everything;
    const disks = this.dirtyDisks;
    const release: ReleasePolicy = this.releaseAll ? 'all' : this.rebound;
    this.everything = false;
    this.releaseAll = false;
    this.dirtyDisks = new Set();
    this.rebound = new Set();
    const pendingNow = new Set<number>();
    for (const t of this.opts.targets()) {
      if (!all && ![...disks].some((d) => t.concerns(d))) continue;
      try {
        const o = t.sync(release);
        for (const m of o.pending) pendingNow.add(m);
        if (changed(o)) this.opts.onChange?.(o);
      } catch (e) {
        this.opts.onError?.(t.dir, e);
      }
    }
    // a deferred release is retried until a pass no longer has to defer it (bounded)
    for (const m of [...this.deferred.keys()]) if (!pendingNow.has(m)) this.deferred.delete(m);
    for (const m of pendingNow) {
      const left = (this.deferred.get(m) ?? LINGER_PASSES) - 1;
      if (left > 0) this.deferred.set(m, left);
      else this.deferred.delete(m);
    }
    this.followLingering();
    this.markReady();
  }
}
