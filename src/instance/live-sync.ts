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
 */
import { LOOP_MAJOR } from '../kernel/devnum.js';
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
}

export interface SyncOutcome {
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

/** One instance a watcher keeps in sync, with its views. */
export class SyncTarget {
  /** Devices the last sync published: an event about one of them concerns us even after it left. */
  private known = new Set<number>();

  constructor(
    readonly inst: LocalInstance,
    readonly views: InstanceView[],
    private readonly opts: TargetOptions,
  ) {}

  get dir(): string {
    return this.inst.dir;
  }

  /** Whether an event about loop device `disk` may change what this instance publishes. */
  concerns(disk: number): boolean {
    if (this.known.has(disk)) return true;
    try {
      return this.inst.state().devices[disk] !== undefined;
    } catch {
      return true; // unreadable now: let sync() report it
    }
  }

  /** Reconcile the instance, refill its pool, then bring every view in line. */
  sync(): SyncOutcome {
    const report: GcReport = { instances: 1, fixes: [], pending: [] };
    let reserved: number[] = [];
    let snapshot: InstanceSnapshot;
    this.inst.lock();
    try {
      const rt = Runtime.open(this.opts.env ?? process.env);
      try {
        reconcileInstance(this.inst, rt, report, { pool: this.opts.pool });
      } finally {
        rt.close();
      }
      if (this.opts.refill) reserved = this.inst.ensurePool(this.opts.pool ?? this.inst.state().pool);
      snapshot = snapshotOf(this.inst);
    } finally {
      this.inst.unlock();
    }
    this.known = new Set(snapshot.nodes.map((n) => n.disk));
    const views = this.views.map((v) => ({ view: v.name, ...v.apply(snapshot) }));
    return { dir: this.dir, fixes: report.fixes.map((f) => f.action), reserved, views, snapshot };
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

export class LiveSync {
  private readonly events: LoopUevents;
  private dirtyDisks = new Set<number>();
  private everything = true;
  private scheduled = false;
  private stopped = false;
  private markReady!: () => void;
  /** Resolves once the first sync of every target (the one at start) has run. */
  readonly ready: Promise<void> = new Promise((r) => (this.markReady = r));

  private constructor(private readonly opts: LiveSyncOptions) {
    this.events = LoopUevents.open({
      event: (e: LoopUevent) => this.onEvent(e),
      overflow: () => this.resyncAll(),
    });
    if (!opts.keepAlive) this.events.unref();
    // the first sync (everything) runs once the caller has finished setting up
    this.schedule();
  }

  /** Start listening: the socket is open before the first sync, so nothing falls in between. */
  static start(opts: LiveSyncOptions): LiveSync {
    return new LiveSync(opts);
  }

  /** Look at every target again (after a lost event, or when the set of targets changed). */
  resyncAll(): void {
    this.everything = true;
    this.schedule();
  }

  close(): void {
    this.stopped = true;
    this.events.close();
  }

  private onEvent(e: LoopUevent): void {
    this.dirtyDisks.add(e.disk);
    this.schedule();
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
    this.everything = false;
    this.dirtyDisks = new Set();
    for (const t of this.opts.targets()) {
      if (!all && ![...disks].some((d) => t.concerns(d))) continue;
      try {
        const o = t.sync();
        if (changed(o)) this.opts.onChange?.(o);
      } catch (e) {
        this.opts.onError?.(t.dir, e);
      }
    }
    this.markReady();
  }
}
