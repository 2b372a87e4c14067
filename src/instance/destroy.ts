/**
 * `loopfs instance destroy`: detach and remove every device, then the instance itself;
 * completeDestroy is also how gc finishes a destroy that was killed after its mark
 * (reconcile.ts). Returns data; the oclif command renders it.
 */
import { hasCode } from '../kernel/errors.js';
import { hostLoopNode } from '../kernel/devnum.js';
import { native } from '../kernel/native.js';
import { mountpointsOf, mountsByDevno } from './describe.js';
import { LocalInstance, UNBIND_WAIT_MS } from './local-instance.js';
import { PinnedDir } from './pinned-dir.js';
import type { ProgressFn } from './progress.js';
import { Runtime } from './runtime.js';
import { DESTROYING_FILE, DEVICES_DIR, heldMinors, IDLE_DIR, LOCK_FILE, RELEASING_FILE, STATE_DIR, STATE_FILE, type InstanceState } from './state.js';

export class BusyError extends Error {}

export interface DestroyResult {
  dir: string;
  id: string;
  removed: number[];
  /** Devices still in use (mounted, --force): autoclear frees them, gc removes them. */
  deferred: number[];
}

/**
 * Detach and remove every device, then remove the instance. Refuses while a device is
 * mounted unless `force`, which detaches lazily (the kernel sets autoclear and frees the
 * device at its last close) and leaves its removal to gc.
 */
export function destroyInstance(
  dir: string,
  force: boolean,
  env: NodeJS.ProcessEnv = process.env,
  progress?: ProgressFn,
): DestroyResult {
  const inst = LocalInstance.open(dir, env);
  try {
    inst.lock();
    const s = inst.state();
    if (!force && !s.destroying) {
      const mounts = mountsByDevno();
      for (const minor of heldMinors(s).filter((m) => s.devices[m].state === 'held')) {
        const mp = mountpointsOf(minor, mounts);
        if (mp.length > 0) throw new BusyError(`${inst.nodePath(minor)} is mounted on ${mp[0]} (use --force to detach lazily)`);
        // /proc/self/mountinfo shows only our mount namespace; a mount anywhere else (a
        // container's) holds the device open exclusively, which an O_EXCL open detects
        if (claimedExclusively(minor)) {
          throw new BusyError(`${inst.nodePath(minor)} is in use (mounted in another mount namespace?) (use --force to detach lazily)`);
        }
      }
    }
    // One durable step marks every device for removal: from here on a kill leaves an
    // instance that gc destroys (completeDestroy), never one half used, half torn down.
    inst.markDestroying();
    return completeDestroy(inst, s, progress);
  } finally {
    inst.close();
  }
}

/**
 * Everything of a destroy after its mark (`instance destroy`, or gc finishing one that was
 * killed): detach and remove every device, then remove the instance. Caller holds the
 * instance lock and has marked it destroying.
 */
export function completeDestroy(inst: LocalInstance, s: InstanceState = inst.state(), progress?: ProgressFn): DestroyResult {
  // Only "held" devices carry the instance's bindings. A "removing" one was let go
  // already (detached by the instance, or found bound by a host tool that took it while
  // idle): whatever is bound to it now is never cleared here, only removed once free.
  const live = new Set(heldMinors(s).filter((m) => s.devices[m].state === 'held'));
  const { removed, deferred } = inst.releaseAll(live, UNBIND_WAIT_MS, progress && ((done, total) => progress('devices', done, total)));
  // What is left is claimed by this id with no state behind it: gc's orphan handling.
  // Those devices were detached just now (lazily): mark their claims so that gc never
  // detaches them again — once autoclear frees one, a new binding is somebody else's.
  if (deferred.length > 0) {
    const rt = Runtime.open(inst.env);
    try {
      rt.lock();
      for (const minor of deferred) rt.markCleared({ minor, id: s.id, dir: inst.dir, uid: s.owner.uid });
    } finally {
      rt.close();
    }
  }
  // Nothing that looks like a device may outlive the instance: a node left by a killed
  // command (a torn node creation) would keep reaching its minor once that is reused.
  for (const name of inst.strayEntries()) inst.removeEntry(name);
  removeInstanceFiles(inst.dir, s, inst.env);
  return { dir: inst.dir, id: s.id, removed, deferred };
}

/** Whether somebody holds /dev/loopN with O_EXCL (a mount in any namespace, dm, swap). */
function claimedExclusively(minor: number): boolean {
  const n = native();
  let fd: number;
  try {
    fd = n.open(hostLoopNode(minor), n.constants.O_RDONLY | n.constants.O_EXCL);
  } catch (e) {
    return hasCode(e, 'EBUSY');
  }
  n.close(fd);
  return false;
}

function removeInstanceFiles(dir: string, s: InstanceState, env: NodeJS.ProcessEnv): void {
  const root = PinnedDir.open(dir);
  try {
    const sd = root.openSub(STATE_DIR);
    try {
      // state.json first: from here on DIR is no instance, whatever else a crash leaves
      // (a .loopfs without state is taken over by the next `instance create`)
      sd.unlinkQuiet(STATE_FILE);
      sd.unlinkQuiet(DESTROYING_FILE);
      sd.unlinkQuiet(RELEASING_FILE);
      sd.unlinkQuiet(LOCK_FILE);
      for (const sub of [DEVICES_DIR, IDLE_DIR]) {
        let d: PinnedDir;
        try {
          d = sd.openSub(sub);
        } catch (e) {
          if (hasCode(e, 'ENOENT')) continue;
          throw e;
        }
        try {
          for (const n of d.list()) d.unlinkQuiet(n);
        } finally {
          d.close();
        }
        sd.rmdirQuiet(sub);
      }
      for (const n of sd.list()) if (n.endsWith('.tmp')) sd.unlinkQuiet(n);
    } finally {
      sd.close();
    }
    try {
      root.rmdirQuiet(STATE_DIR);
    } catch (e) {
      // a process that waited for the instance lock re-created the lock file: harmless
      if (!hasCode(e, 'ENOTEMPTY', 'EEXIST')) throw e;
    }
  } finally {
    root.close();
  }
  const rt = Runtime.open(env);
  try {
    rt.unregister(s.id);
  } finally {
    rt.close();
  }
}
