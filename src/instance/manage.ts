/**
 * Instance management behind `loopfs instance …`: describe, destroy and reconcile.
 * Every function returns data; the oclif commands render it.
 */
import { readFileSync } from 'node:fs';
import { hasCode } from '../kernel/errors.js';
import { LoopControl } from '../kernel/loop-control.js';
import { LoopDevice } from '../kernel/loop-device.js';
import { SysfsLoop } from '../kernel/sysfs.js';
import { LocalInstance, partitionsOf } from './local-instance.js';
import { PinnedDir } from './pinned-dir.js';
import { Runtime, type Claim } from './runtime.js';
import { heldMinors, LOCK_FILE, STATE_DIR, STATE_FILE, type InstanceState } from './state.js';

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
          const s = inst.state();
          if (s.id !== e.id) throw new Error('replaced');
          const minors = heldMinors(s);
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
export function destroyInstance(dir: string, force: boolean, env: NodeJS.ProcessEnv = process.env): DestroyResult {
  const inst = LocalInstance.open(dir, env);
  try {
    inst.lock();
    const s = inst.state();
    const mounts = mountsByDevno();
    if (!force) {
      for (const minor of heldMinors(s)) {
        const mp = mountpointsOf(minor, mounts);
        if (mp.length > 0) throw new BusyError(`${inst.nodePath(minor)} is mounted on ${mp[0]} (use --force to detach lazily)`);
      }
    }
    const removed: number[] = [];
    const deferred: number[] = [];
    for (const minor of heldMinors(s)) {
      const dev = new LoopDevice(`/dev/loop${minor}`);
      try {
        if (dev.sysfs()?.isBound()) dev.clear();
      } catch (e) {
        if (!hasCode(e, 'ENXIO', 'ENOENT', 'ENODEV')) throw e;
      } finally {
        dev.close();
      }
      (inst.release(minor, 2000) ? removed : deferred).push(minor);
    }
    // what is left is claimed by this id with no state behind it: gc's orphan handling
    removeInstanceFiles(inst.dir, s);
    return { dir: inst.dir, id: s.id, removed, deferred };
  } finally {
    inst.close();
  }
}

function removeInstanceFiles(dir: string, s: InstanceState, env: NodeJS.ProcessEnv = process.env): void {
  const root = PinnedDir.open(dir);
  try {
    const sd = root.openSub(STATE_DIR);
    try {
      sd.unlinkQuiet(STATE_FILE);
      sd.unlinkQuiet(LOCK_FILE);
      for (const n of sd.list()) if (n.endsWith('.tmp')) sd.unlinkQuiet(n);
    } finally {
      sd.close();
    }
    root.rmdirQuiet(STATE_DIR);
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

// ---------------------------------------------------------------- gc

export interface GcFix {
  dir: string | null;
  minor: number | null;
  action: string;
}

export interface GcReport {
  instances: number;
  fixes: GcFix[];
  /** Devices that could not be settled yet (still in use); gc will retry next time. */
  pending: GcFix[];
}

function removeIndex(minor: number): 'removed' | 'busy' {
  try {
    const ctl = LoopControl.open();
    try {
      ctl.remove(minor);
    } finally {
      ctl.close();
    }
    return 'removed';
  } catch (e) {
    if (hasCode(e, 'ENODEV', 'ENXIO')) return 'removed';
    if (hasCode(e, 'EBUSY')) return 'busy';
    throw e;
  }
}

/**
 * Reconcile every instance with the claims and the kernel. Safe to run at any time and
 * repeatedly; after a SIGKILL at any step of reserve/release/create/destroy it leaves
 * every device either held by exactly one instance or returned to the system.
 */
export function gc(env: NodeJS.ProcessEnv = process.env): GcReport {
  const report: GcReport = { instances: 0, fixes: [], pending: [] };
  const rt = Runtime.open(env);
  const live = new Set<string>();
  try {
    for (const entry of rt.instances()) {
      let inst: LocalInstance;
      try {
        inst = LocalInstance.open(entry.dir, env);
      } catch {
        rt.unregister(entry.id);
        report.fixes.push({ dir: entry.dir, minor: null, action: 'dropped registry entry of a vanished instance' });
        continue;
      }
      try {
        inst.lock();
        if (inst.state().id !== entry.id) {
          rt.unregister(entry.id);
          report.fixes.push({ dir: entry.dir, minor: null, action: 'dropped registry entry of a replaced instance' });
          continue;
        }
        live.add(entry.id);
        report.instances++;
        reconcileInstance(inst, rt, report);
      } finally {
        inst.close();
      }
    }
    // claims of instances that no longer exist: give the devices back to the system
    rt.lock();
    for (const c of rt.claims()) {
      if (live.has(c.id)) continue;
      settleOrphan(c, rt, report);
    }
    for (const junk of rt.junkClaims()) {
      rt.removeClaimFile(junk);
      report.fixes.push({ dir: null, minor: null, action: `removed unreadable claim ${junk}` });
    }
  } finally {
    rt.close();
  }
  return report;
}

function settleOrphan(c: Claim, rt: Runtime, report: GcReport): void {
  const dev = new LoopDevice(`/dev/loop${c.minor}`);
  try {
    if (dev.sysfs()?.isBound()) dev.clear();
  } catch {
    /* gone meanwhile */
  } finally {
    dev.close();
  }
  if (removeIndex(c.minor) === 'removed') {
    rt.release(c.minor, c.id);
    report.fixes.push({ dir: c.dir, minor: c.minor, action: 'removed device of a vanished instance' });
  } else {
    report.pending.push({ dir: c.dir, minor: c.minor, action: 'device of a vanished instance is still in use' });
  }
}

function reconcileInstance(inst: LocalInstance, rt: Runtime, report: GcReport): void {
  const s = inst.state();
  const fix = (minor: number | null, action: string) => report.fixes.push({ dir: inst.dir, minor, action });
  rt.lock();
  const ours = rt.claims().filter((c) => c.id === s.id);
  rt.unlock();
  const claimed = new Set(ours.map((c) => c.minor));

  // claimed but not recorded: a crash between claiming and recording
  for (const minor of claimed) {
    if (s.devices[minor]) continue;
    if (SysfsLoop.forName(`loop${minor}`).isBound()) {
      inst.adopt(minor);
      fix(minor, 'adopted bound device that was claimed but not recorded');
    } else {
      if (removeIndex(minor) === 'removed') {
        rt.lock();
        rt.release(minor, s.id);
        rt.unlock();
        fix(minor, 'freed unbound device that was claimed but not recorded');
      } else {
        inst.adopt(minor);
        fix(minor, 'adopted busy device that was claimed but not recorded');
      }
    }
  }

  const current = inst.state();
  for (const minor of heldMinors(current)) {
    const claim = rt.claimOf(minor);
    if (!claim || claim.id !== current.id) {
      // recorded without our claim: only possible by tampering; the claim is the truth
      if (!claim && rt.claim({ minor, id: current.id, dir: inst.dir, uid: current.owner.uid })) {
        fix(minor, 'restored missing claim');
      } else {
        inst.forget(minor);
        fix(minor, 'forgot device claimed by another instance');
        continue;
      }
    }
    const entry = inst.state().devices[minor];
    const exists = SysfsLoop.forName(`loop${minor}`).devno() !== null;
    if (entry.state === 'removing' || !exists) {
      if (inst.release(minor)) fix(minor, exists ? 'removed device left half-released' : 'forgot device that no longer exists');
      else report.pending.push({ dir: inst.dir, minor, action: 'device is still in use; removal deferred' });
      continue;
    }
    if (inst.republish(minor)) fix(minor, 'restored missing device node');
  }

  for (const stray of inst.strayEntries()) {
    inst.removeEntry(stray);
    fix(null, `removed stray ${stray}`);
  }

  const after = inst.state();
  const idle = heldMinors(after).filter(
    (m) => after.devices[m].state === 'held' && !SysfsLoop.forName(`loop${m}`).isBound(),
  );
  for (const minor of idle.slice(after.pool)) {
    if (inst.release(minor)) fix(minor, 'released idle device above the pool size');
  }
}
