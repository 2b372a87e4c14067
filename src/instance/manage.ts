/**
 * Instance management behind `loopfs instance …`: describe, list and destroy. Every
 * function returns data; the oclif commands render it. Reconciling lives in gc.ts (the
 * passes over every instance) and reconcile.ts (one live instance, also run by watchers).
 */
import { readFileSync } from 'node:fs';
import { hasCode } from '../kernel/errors.js';
import { native } from '../kernel/native.js';
import { SysfsLoop } from '../kernel/sysfs.js';
import { LocalInstance, partitionsOf } from './local-instance.js';
import { PinnedDir } from './pinned-dir.js';
import { Runtime } from './runtime.js';
import { DESTROYING_FILE, DEVICES_DIR, heldMinors, IDLE_DIR, LOCK_FILE, RELEASING_FILE, STATE_DIR, STATE_FILE, type InstanceState } from './state.js';

export interface DeviceInfo {
  minor: number;
  node: string;
  state: 'bound' | 'idle' | 'removing';
  backingFile: string | null;
  partitions: string[];
  mountpoints: string[];
}

export interface InstanceInfo {
  dir: string;
  id: string;
  owner: { uid: number; gid: number };
  mode: string;
  max: number | null;
  pool: number;
  devices: DeviceInfo[];
}

/** Mount points by "major:minor", from /proc/self/mountinfo. */
export function mountsByDevno(): Map<string, string[]> {
  const map = new Map<string, string[]>();
  let text = '';
  try {
    text = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return map;
  }
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length < 5) continue;
    const list = map.get(f[2]) ?? [];
    list.push(f[4].replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
    map.set(f[2], list);
  }
  return map;
}

function mountpointsOf(minor: number, mounts: Map<string, string[]>): string[] {
  const result = [...(mounts.get(`7:${minor}`) ?? [])];
  for (const p of partitionsOf(minor)) result.push(...(mounts.get(`${p.major}:${p.minor}`) ?? []));
  return result;
}

export function describeInstance(inst: LocalInstance): InstanceInfo {
  const s = inst.state();
  const mounts = mountsByDevno();
  const devices = heldMinors(s).map((minor): DeviceInfo => {
    const sys = SysfsLoop.forName(`loop${minor}`);
    const backingFile = sys.backingFile();
    return {
      minor,
      node: inst.nodePath(minor),
      state: s.devices[minor].state === 'removing' ? 'removing' : backingFile !== null ? 'bound' : 'idle',
      backingFile,
      partitions: s.devices[minor].partitions ?? [],
      mountpoints: mountpointsOf(minor, mounts),
    };
  });
  return {
    dir: inst.dir,
    id: s.id,
    owner: s.owner,
    mode: `0${s.mode.toString(8)}`,
    max: s.max,
    pool: s.pool,
    devices,
  };
}

export interface ListedInstance {
  dir: string;
  id: string;
  uid: number;
  devices: number;
  bound: number;
  max: number | null;
  ok: boolean;
}

/** Every registered instance; `ok` is false for entries whose directory no longer is one. */
export function listInstances(env: NodeJS.ProcessEnv = process.env): ListedInstance[] {
  const rt = Runtime.open(env);
  try {
    return rt.instances().map((e) => {
      try {
        const inst = LocalInstance.open(e.dir, env);
        try {
          const s = inst.header();
          if (s.id !== e.id) throw new Error('replaced');
          const minors = inst.minors();
          const bound = minors.filter((m) => SysfsLoop.forName(`loop${m}`).isBound()).length;
          return { dir: e.dir, id: e.id, uid: s.owner.uid, devices: minors.length, bound, max: s.max, ok: true };
        } finally {
          inst.close();
        }
      } catch {
        return { dir: e.dir, id: e.id, uid: e.uid, devices: 0, bound: 0, max: null, ok: false };
      }
    });
  } finally {
    rt.close();
  }
}

export class BusyError extends Error {}

/**
 * Called as a long operation advances (`step` names what is counted): the commands draw
 * a progress indicator on a terminal. Lower layers never print.
 */
export type ProgressFn = (step: string, done: number, total: number) => void;

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
  const { removed, deferred } = inst.releaseAll(live, 2000, progress && ((done, total) => progress('devices', done, total)));
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
    fd = n.open(`/dev/loop${minor}`, n.constants.O_RDONLY | n.constants.O_EXCL);
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
