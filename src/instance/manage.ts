/**
 * Instance management behind `loopfs instance …`: describe, destroy and reconcile.
 * Every function returns data; the oclif commands render it.
 */
import { readFileSync } from 'node:fs';
import { hasCode } from '../kernel/errors.js';
import { LoopControl } from '../kernel/loop-control.js';
import { sleepMs } from '../kernel/sleep.js';
import { LoopDevice } from '../kernel/loop-device.js';
import { native } from '../kernel/native.js';
import { SysfsLoop } from '../kernel/sysfs.js';
import { LocalInstance, partitionsOf } from './local-instance.js';
import { PinnedDir } from './pinned-dir.js';
import { Runtime, type Claim, type RegistryEntry } from './runtime.js';
import { heldMinors, LOCK_FILE, STATE_DIR, STATE_FILE, StateError, type InstanceState } from './state.js';

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
    const mounts = mountsByDevno();
    // Only "held" devices carry the instance's bindings. A "removing" one was let go
    // already (detached by the instance, or found bound by a host tool that took it while
    // idle): whatever is bound to it now is never cleared here, only removed once free.
    const live = heldMinors(s).filter((m) => s.devices[m].state === 'held');
    if (!force) {
      for (const minor of live) {
        const mp = mountpointsOf(minor, mounts);
        if (mp.length > 0) throw new BusyError(`${inst.nodePath(minor)} is mounted on ${mp[0]} (use --force to detach lazily)`);
        // /proc/self/mountinfo shows only our mount namespace; a mount anywhere else (a
        // container's) holds the device open exclusively, which an O_EXCL open detects
        if (claimedExclusively(minor)) {
          throw new BusyError(`${inst.nodePath(minor)} is in use (mounted in another mount namespace?) (use --force to detach lazily)`);
        }
      }
    }
    const removed: number[] = [];
    const deferred: number[] = [];
    const all = heldMinors(s);
    for (const [i, minor] of all.entries()) {
      progress?.('devices', i, all.length);
      const dev = new LoopDevice(`/dev/loop${minor}`);
      try {
        if (live.includes(minor) && dev.sysfs()?.isBound()) dev.clear();
      } catch (e) {
        if (!hasCode(e, 'ENXIO', 'ENOENT', 'ENODEV')) throw e;
      } finally {
        dev.close();
      }
      (inst.release(minor, 2000) ? removed : deferred).push(minor);
    }
    progress?.('devices', all.length, all.length);
    // What is left is claimed by this id with no state behind it: gc's orphan handling.
    // Those devices were detached just now (lazily): mark their claims so that gc never
    // detaches them again — once autoclear frees one, a new binding is somebody else's.
    if (deferred.length > 0) {
      const rt = Runtime.open(env);
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
    removeInstanceFiles(inst.dir, s, env);
    return { dir: inst.dir, id: s.id, removed, deferred };
  } finally {
    inst.close();
  }
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
      sd.unlinkQuiet(LOCK_FILE);
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

const removeIndex = (minor: number): 'removed' | 'busy' => LoopControl.removeIndex(minor);

/**
 * What a registry entry's DIR holds now. `gone`: no instance there any more (DIR, its
 * .loopfs or its state.json missing, or a .loopfs we did not make); `replaced`: an
 * instance with another id; `unreadable`: a state we cannot read (kept, reported).
 */
function entryStatus(entry: RegistryEntry, env: NodeJS.ProcessEnv): 'live' | 'gone' | 'replaced' | 'unreadable' {
  let inst: LocalInstance;
  try {
    inst = LocalInstance.open(entry.dir, env);
  } catch (e) {
    if (e instanceof StateError) return 'unreadable';
    // state.json inside our own .loopfs (0700, ours) that is not a plain file: corruption
    // only root could cause — left alone rather than taken for a vanished instance
    const p = (e as { path?: string }).path ?? '';
    if (p.endsWith(`/${STATE_FILE}`) && !hasCode(e, 'ENOENT')) return 'unreadable';
    return hasCode(e, 'ENOENT', 'ENOTDIR', 'ELOOP', 'EPERM') ? 'gone' : 'unreadable';
  }
  try {
    return inst.state().id === entry.id ? 'live' : 'replaced';
  } catch (e) {
    return e instanceof StateError ? 'unreadable' : 'gone';
  } finally {
    inst.close();
  }
}

/**
 * Reconcile every instance with the claims and the kernel. Safe to run at any time and
 * repeatedly, also while instances are created, used and destroyed; after a SIGKILL at
 * any step of reserve/release/create/destroy it leaves every device either held by
 * exactly one instance or returned to the system.
 */
export function gc(env: NodeJS.ProcessEnv = process.env, progress?: ProgressFn): GcReport {
  const report: GcReport = { instances: 0, fixes: [], pending: [] };
  const rt = Runtime.open(env);
  try {
    const entries = rt.instances();
    for (const [i, entry] of entries.entries()) {
      progress?.('instances', i, entries.length);
      let inst: LocalInstance | null = null;
      try {
        inst = LocalInstance.open(entry.dir, env);
      } catch {
        inst = null;
      }
      if (inst) {
        try {
          let id: string | null = null;
          try {
            inst.lock();
            id = inst.state().id;
          } catch {
            /* destroyed while we waited for its lock (its .loopfs may be gone), or unreadable: decided below */
          }
          if (id === entry.id) {
            report.instances++;
            reconcileInstance(inst, rt, report);
            continue;
          }
        } finally {
          inst.close();
        }
      }
      // Not (or no longer) a usable instance. Decided again under the runtime lock, which
      // `instance create` holds from registering to writing the state: an instance being
      // created right now is never taken for a vanished one (its claims would be orphans).
      rt.lock();
      try {
        const status = entryStatus(entry, env);
        if (status === 'gone' || status === 'replaced') {
          rt.unregister(entry.id);
          report.fixes.push({
            dir: entry.dir,
            minor: null,
            action: `dropped registry entry of a ${status === 'gone' ? 'vanished' : 'replaced'} instance`,
          });
        } else if (status === 'unreadable') {
          report.pending.push({ dir: entry.dir, minor: null, action: 'instance state cannot be read; left alone' });
        }
        // 'live': it became one meanwhile; the next run reconciles it
      } finally {
        rt.unlock();
      }
    }
    // Claims of instances that no longer exist: give the devices back to the system. The
    // registry is read again under the lock: an instance registered since the loop above
    // (and already claiming devices) is not an orphan.
    progress?.('instances', entries.length, entries.length);
    rt.lock();
    const registered = new Set(rt.instances().map((e) => e.id));
    const orphans = rt.claims().filter((c) => !registered.has(c.id));
    for (const [i, c] of orphans.entries()) {
      progress?.('devices of vanished instances', i, orphans.length);
      settleOrphan(c, rt, report);
    }
    progress?.('devices of vanished instances', orphans.length, orphans.length);
    for (const junk of rt.junkClaims()) {
      rt.removeClaimFile(junk);
      report.fixes.push({ dir: null, minor: null, action: `removed unreadable claim ${junk}` });
    }
    for (const tmp of rt.removeTempFiles()) {
      report.fixes.push({ dir: null, minor: null, action: `removed leftover ${tmp}` });
    }
  } finally {
    rt.close();
  }
  return report;
}

/**
 * A claim whose instance is gone: nothing records who may still use the device, so it is
 * detached once (lazily: the kernel frees it at the last close) and then removed; until
 * LOOP_CTL_REMOVE succeeds the claim stays, so no other instance can take the device.
 * Only once: after that detach the device may be freed and bound again by anybody, and
 * that binding is not the vanished instance's. Caller holds the runtime lock.
 */
function settleOrphan(c: Claim, rt: Runtime, report: GcReport): void {
  if (!c.cleared) {
    const dev = new LoopDevice(`/dev/loop${c.minor}`);
    try {
      if (dev.sysfs()?.isBound()) dev.clear();
    } catch {
      /* gone meanwhile */
    } finally {
      dev.close();
    }
    rt.markCleared(c);
  }
  // LOOP_CLR_FD completes at the last close, which a process that was just SIGKILLed may
  // not have reached yet: while the device is unbound but still open, wait a little
  // (bounded) instead of reporting it busy until the next gc
  let outcome = removeIndex(c.minor);
  for (let waited = 0; outcome === 'busy' && waited < 2000 && !SysfsLoop.forName(`loop${c.minor}`).isBound(); waited += 50) {
    sleepMs(50);
    outcome = removeIndex(c.minor);
  }
  if (outcome === 'removed') {
    rt.release(c.minor, c.id);
    report.fixes.push({ dir: c.dir, minor: c.minor, action: 'removed device of a vanished instance' });
  } else {
    report.pending.push({ dir: c.dir, minor: c.minor, action: 'device of a vanished instance is still in use' });
  }
}

// The rules gc applies to a live instance, shared with gcPreview so that doctor reports
// exactly what gc would settle.

/** Devices claimed for the instance but not in its state (a crash while reserving or releasing). */
function unrecordedClaims(s: InstanceState, claims: Claim[]): number[] {
  return claims.filter((c) => c.id === s.id && !s.devices[c.minor]).map((c) => c.minor);
}

/**
 * What is wrong with a device the state records, before its node is looked at:
 * `unclaimed` (recorded without our claim), `half-released` (marked removing, or gone
 * from the kernel), or null.
 */
function heldDeviceIssue(s: InstanceState, minor: number, claim: Claim | null | undefined): 'unclaimed' | 'half-released' | null {
  if (!claim || claim.id !== s.id) return 'unclaimed';
  if (s.devices[minor].state === 'removing' || SysfsLoop.forName(`loop${minor}`).devno() === null) return 'half-released';
  return null;
}

function reconcileInstance(inst: LocalInstance, rt: Runtime, report: GcReport): void {
  const s = inst.state();
  const fix = (minor: number | null, action: string) => report.fixes.push({ dir: inst.dir, minor, action });
  rt.lock();
  const unrecorded = unrecordedClaims(s, rt.claims());
  rt.unlock();

  // Claimed but not recorded: a crash between claiming and recording (reserve), or
  // between forgetting and dropping the claim (release after its successful REMOVE, a
  // bind that failed). Such a device was never published, or has left already: no
  // process of the instance can hold it. reserve() binds only after recording, so a
  // binding on it now is somebody else's (a host tool that took the free device): it is
  // never adopted — that would hand a stranger's device to the instance owner.
  for (const minor of unrecorded) {
    const bound = SysfsLoop.forName(`loop${minor}`).isBound();
    // unbound: give back what reserve() took (busy: somebody else just opened it — theirs)
    if (!bound) removeIndex(minor);
    rt.lock();
    rt.release(minor, s.id);
    rt.unlock();
    fix(minor, bound ? 'dropped claim of a device bound outside the instance (never published)' : 'freed device that was claimed but not recorded');
  }

  const current = inst.state();
  for (const minor of heldMinors(current)) {
    const claim = rt.claimOf(minor);
    const issue = heldDeviceIssue(inst.state(), minor, claim);
    if (issue === 'unclaimed') {
      // Recorded without our claim: our own steps never do this (claims come first and go
      // last); a reboot that emptied /run, a restored backup or tampering can. The claim is
      // the truth: re-claiming could hand the owner a device somebody else uses now.
      inst.forget(minor);
      fix(minor, claim ? 'forgot device claimed by another instance' : 'forgot device recorded without a claim');
      continue;
    }
    if (issue === 'half-released') {
      const exists = SysfsLoop.forName(`loop${minor}`).devno() !== null;
      if (inst.release(minor)) fix(minor, exists ? 'removed device left half-released' : 'forgot device that no longer exists');
      else report.pending.push({ dir: inst.dir, minor, action: 'device is still in use; removal deferred' });
      continue;
    }
    if (inst.republish(minor)) fix(minor, 'restored missing device node');
    const parts = inst.syncPartitions(minor);
    for (const n of parts.added) fix(minor, `published partition ${n}`);
    for (const n of parts.removed) fix(minor, `removed stale partition node ${n}`);
  }

  for (const stray of inst.strayEntries()) {
    inst.removeEntry(stray);
    fix(null, `removed stray ${stray}`);
  }
  for (const tmp of inst.removeTempFiles()) fix(null, `removed leftover ${tmp}`);

  const after = inst.state();
  const idle = heldMinors(after).filter(
    (m) => after.devices[m].state === 'held' && !SysfsLoop.forName(`loop${m}`).isBound(),
  );
  for (const minor of idle.slice(after.pool)) {
    if (inst.release(minor)) fix(minor, 'released idle device above the pool size');
  }
}

// ---------------------------------------------------------------- gc preview (doctor)

/** Something gc would settle (or, for `unreadable-instance`, leave alone and report). */
export type LeftoverKind =
  | 'vanished-instance' // registry entry of an instance that is gone or replaced
  | 'unreadable-instance' // a state gc cannot read: kept, needs a human
  | 'orphan-device' // claim of an instance that no longer exists: its device goes back
  | 'junk-claim' // a claim file that does not parse
  | 'unrecorded-claim' // claimed by a live instance, not in its state (a crash while reserving)
  | 'unclaimed-device' // in a state without its claim (another instance's, or none)
  | 'half-released' // marked "removing", or recorded but gone from the kernel
  | 'missing-node' // a held device whose DIR/loopN is missing or wrong
  | 'stray-node'; // a loopN-like name in DIR that is no held device's node

export interface Leftover {
  kind: LeftoverKind;
  dir: string | null;
  id: string | null;
  minor: number | null;
  /** For devices: whether a file is bound to it now. */
  bound?: boolean;
  /** For stray nodes: the name in DIR. */
  name?: string;
}

/**
 * What gc would find now, without changing anything and without waiting for locks: the
 * same rules as gc (entryStatus; reconcileInstance's claim/state/node checks; orphaned
 * claims), read-only. A diagnosis, not a transaction: a command in flight may show as a
 * leftover for a moment, which is why `loopfs doctor` names gc as the fix instead of
 * settling anything itself.
 */
export function gcPreview(env: NodeJS.ProcessEnv = process.env): Leftover[] {
  const out: Leftover[] = [];
  const bound = (minor: number) => SysfsLoop.forName(`loop${minor}`).isBound();
  const rt = Runtime.open(env);
  try {
    const claims = rt.claims();
    // ids whose claims are not orphans: live instances, and unreadable ones (gc keeps them)
    const kept = new Set<string>();
    for (const entry of rt.instances()) {
      const status = entryStatus(entry, env);
      const at = { dir: entry.dir, id: entry.id, minor: null };
      if (status === 'gone' || status === 'replaced') {
        out.push({ kind: 'vanished-instance', ...at });
        continue;
      }
      kept.add(entry.id);
      if (status === 'unreadable') out.push({ kind: 'unreadable-instance', ...at });
      else inspectInstance(entry, claims, env, out);
    }
    for (const c of claims) {
      if (!kept.has(c.id)) out.push({ kind: 'orphan-device', dir: c.dir, id: c.id, minor: c.minor, bound: bound(c.minor) });
    }
    for (const junk of rt.junkClaims()) out.push({ kind: 'junk-claim', dir: null, id: null, minor: Number(junk.slice(4)) });
  } finally {
    rt.close();
  }
  return out;
}

function inspectInstance(entry: RegistryEntry, claims: Claim[], env: NodeJS.ProcessEnv, out: Leftover[]): void {
  let inst: LocalInstance;
  try {
    inst = LocalInstance.open(entry.dir, env);
  } catch {
    return; // destroyed since entryStatus looked
  }
  try {
    const s = inst.state();
    const add = (kind: LeftoverKind, minor: number | null) =>
      out.push({ kind, dir: inst.dir, id: s.id, minor, ...(minor === null ? {} : { bound: SysfsLoop.forName(`loop${minor}`).isBound() }) });
    for (const minor of unrecordedClaims(s, claims)) add('unrecorded-claim', minor);
    for (const minor of heldMinors(s)) {
      const issue = heldDeviceIssue(s, minor, claims.find((c) => c.minor === minor));
      if (issue === 'unclaimed') add('unclaimed-device', minor);
      else if (issue === 'half-released') add('half-released', minor);
      else if (!inst.isPublished(minor)) add('missing-node', minor);
    }
    for (const name of inst.strayEntries()) out.push({ kind: 'stray-node', dir: inst.dir, id: s.id, minor: null, name });
  } finally {
    inst.close();
  }
}
