/**
 * Activation: prepare a container's /dev the seeds' way, so that *unmodified* tools
 * inside it (util-linux losetup, `mount -o loop`, busybox) use only the instance.
 *
 *   PATH/loopN     one node per device the instance holds (bound or idle), owner/mode
 *                  of the instance; nothing else named loopN survives a sync
 *   PATH/loopNpM   the partitions the instance publishes in DIR (--partscan, `partx -a`)
 *   pool           `pool` idle devices kept ready: with no loop-control in PATH,
 *                  util-linux falls back to scanning PATH for an unbound loopN node
 *   loop-control   never created: the global one would hand out host devices
 *
 * `syncDevDir()` is idempotent; `watchDevDir()` repeats it whenever the kernel announces a
 * change of one of the instance's devices (live-sync.ts): a stock tool binding a pool
 * device makes the pool refill, autoclear at umount gives the device back to the pool
 * policy, partitions come and go with `partx`.
 */
import { isBlockDevice, LOOP_MAJOR } from '../kernel/devnum.js';
import { LiveSync, SyncTarget, type InstanceSnapshot, type InstanceView, type SyncOutcome, type ViewChange } from './live-sync.js';
import type { LocalInstance } from './local-instance.js';
import { PinnedDir } from './pinned-dir.js';

/** The names a view of an instance owns: anything else in PATH is left alone. */
const VIEW_NAME = /^loop\d+(p\d+)?$/;

/** A /dev directory holding block nodes of the instance's devices, named as in DIR. */
export class DevDirView implements InstanceView {
  constructor(readonly path: string) {}

  get name(): string {
    return this.path;
  }

  apply(snap: InstanceSnapshot): ViewChange {
    const change: ViewChange = { added: [], removed: [] };
    const wanted = new Map(snap.nodes.map((n) => [n.name, n]));
    const dev = PinnedDir.open(this.path);
    try {
      for (const name of dev.list()) {
        if (!VIEW_NAME.test(name)) continue;
        const st = dev.lstat(name);
        const want = wanted.get(name);
        const correct =
          st &&
          want &&
          isBlockDevice(st, want.major, want.minor) &&
          st.uid === snap.owner.uid &&
          st.gid === snap.owner.gid &&
          (st.mode & 0o7777) === snap.mode;
        if (!correct) {
          dev.unlinkQuiet(name);
          change.removed.push(name);
        }
      }
      for (const n of snap.nodes) {
        if (dev.lstat(n.name)) continue;
        dev.mknodBlock(n.name, n.major, n.minor, snap.owner.uid, snap.owner.gid, snap.mode);
        change.added.push(n.name);
      }
    } finally {
      dev.close();
    }
    return change;
  }
}

export interface SyncResult {
  created: string[];
  removed: string[];
  reserved: number[];
  /** The device nodes (loopN) in PATH now. */
  nodes: string[];
}

function resultOf(o: SyncOutcome): SyncResult {
  const v = o.views[0];
  return {
    created: v.added,
    removed: v.removed,
    reserved: o.reserved,
    nodes: o.snapshot.nodes.filter((n) => n.major === LOOP_MAJOR && n.partition === null).map((n) => n.name),
  };
}

function targetFor(inst: LocalInstance, devPath: string, pool: number): SyncTarget {
  return new SyncTarget(inst, [new DevDirView(devPath)], { pool, refill: true });
}

export function syncDevDir(inst: LocalInstance, devPath: string, pool: number): SyncResult {
  return resultOf(targetFor(inst, devPath, pool).sync());
}

/**
 * Keep PATH in sync until `signal` aborts: on every kernel event about one of the
 * instance's devices, and, with `intervalMs`, also that often (a safety net for changes
 * the kernel does not announce, such as a node removed from PATH by hand).
 */
export async function watchDevDir(
  inst: LocalInstance,
  devPath: string,
  pool: number,
  intervalMs: number | null,
  signal: AbortSignal,
  onChange: (r: SyncResult) => void,
  onError: (e: unknown) => void = () => {},
): Promise<void> {
  const target = targetFor(inst, devPath, pool);
  const live = LiveSync.start({
    targets: () => [target],
    onChange: (o) => onChange(resultOf(o)),
    onError: (_dir, e) => onError(e),
    keepAlive: true,
  });
  const timer = intervalMs ? setInterval(() => live.resyncAll(), intervalMs) : null;
  try {
    await new Promise<void>((resolve) => {
      if (signal.aborted) return resolve();
      signal.addEventListener('abort', () => resolve(), { once: true });
    });
  } finally {
    if (timer) clearInterval(timer);
    live.close();
  }
}
