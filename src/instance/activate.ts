/**
 * Activation: prepare a container's /dev the seeds' way, so that *unmodified* tools
 * inside it (util-linux losetup, `mount -o loop`, busybox) use only the instance.
 *
 *   PATH/loopN     one node per device the instance holds (bound or idle), owner/mode
 *                  of the instance; nothing else named loopN survives a sync
 *   pool           `pool` idle devices kept ready: with no loop-control in PATH,
 *                  util-linux falls back to scanning PATH for an unbound loopN node
 *   loop-control   never created: the global one would hand out host devices
 *
 * `sync()` is idempotent; `watch()` repeats it as devices come and go (a stock tool
 * binding a pool device makes the pool shrink, autoclear at umount makes it grow).
 */
import { LOOP_MAJOR } from '../kernel/devnum.js';
import { native } from '../kernel/native.js';
import { LocalInstance } from './local-instance.js';
import { PinnedDir } from './pinned-dir.js';
import { heldMinors } from './state.js';

export interface SyncResult {
  created: string[];
  removed: string[];
  reserved: number[];
  nodes: string[];
}

export function syncDevDir(inst: LocalInstance, devPath: string, pool: number): SyncResult {
  const result: SyncResult = { created: [], removed: [], reserved: [], nodes: [] };
  inst.lock();
  try {
    result.reserved = inst.ensurePool(pool);
    const s = inst.state();
    const wanted = new Map<string, number>();
    for (const m of heldMinors(s)) if (s.devices[m].state === 'held') wanted.set(`loop${m}`, m);
    const dev = PinnedDir.open(devPath);
    try {
      const c = native().constants;
      for (const name of dev.list()) {
        if (!/^loop\d+$/.test(name)) continue;
        const st = dev.lstat(name);
        const minor = wanted.get(name);
        const correct =
          st &&
          (st.mode & c.S_IFMT) === c.S_IFBLK &&
          st.rdevMajor === LOOP_MAJOR &&
          minor !== undefined &&
          st.rdevMinor === minor &&
          st.uid === s.owner.uid &&
          st.gid === s.owner.gid &&
          (st.mode & 0o7777) === s.mode;
        if (!correct) {
          dev.unlinkQuiet(name);
          result.removed.push(name);
        }
      }
      for (const [name, minor] of wanted) {
        if (!dev.lstat(name)) {
          dev.mknodBlock(name, LOOP_MAJOR, minor, s.owner.uid, s.owner.gid, s.mode);
          result.created.push(name);
        }
      }
      result.nodes = [...wanted.keys()];
    } finally {
      dev.close();
    }
  } finally {
    inst.unlock();
  }
  return result;
}

/**
 * Keep PATH in sync until `signal` aborts. Polls sysfs through the instance record:
 * stock tools change device state without telling anyone, and sysfs offers no events
 * for a loop device being bound.
 */
export async function watchDevDir(
  inst: LocalInstance,
  devPath: string,
  pool: number,
  intervalMs: number,
  signal: AbortSignal,
  onChange: (r: SyncResult) => void,
): Promise<void> {
  while (!signal.aborted) {
    const r = syncDevDir(inst, devPath, pool);
    if (r.created.length || r.removed.length || r.reserved.length) onChange(r);
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, intervalMs);
      signal.addEventListener('abort', () => {
        clearTimeout(t);
        resolve();
      }, { once: true });
    });
  }
}
