/**
 * The instance pass of `loopfs gc` (all its passes: doctor/machine-gc.ts): settle what
 * crashed commands left, over every registered instance (reconcile.ts per live instance),
 * instances that claims name but the registry lost, vanished instances' registry entries,
 * orphaned claims, junk and temporary files; and gcPreview, the same rules read only, for
 * `loopfs doctor`.
 */
import { hostLoopNode } from '../kernel/devnum.js';
import { hasCode } from '../kernel/errors.js';
import { LoopDevice } from '../kernel/loop-device.js';
import { sleepMs } from '../kernel/sleep.js';
import { SysfsLoop } from '../kernel/sysfs.js';
import { LocalInstance, UNBIND_WAIT_MS } from './local-instance.js';
import type { ProgressFn } from './progress.js';
import { heldDeviceIssue, reconcileInstance, removeIndex, unrecordedClaims, type GcReport } from './reconcile.js';
import { Runtime, type Claim, type RegistryEntry } from './runtime.js';
import { heldMinors, STATE_FILE, StateError } from './state.js';

export type { GcFix, GcReport } from './reconcile.js';


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
    // every record is read: one that cannot be parsed makes the instance unreadable
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
        // no usable instance at DIR, whatever the reason: decided below under the runtime lock (entryStatus)
        inst = null;
      }
      if (inst) {
        try {
          let id: string | null = null;
          try {
            inst.lock();
            id = inst.header().id;
          } catch {
            /* destroyed while we waited for its lock (its .loopfs may be gone), or unreadable: decided below */
          }
          if (id === entry.id) {
            report.instances++;
            try {
              reconcileInstance(inst, rt, report);
            } catch (e) {
              // a device record that cannot be read (corruption only root could cause):
              // the instance is left alone, as one whose state.json cannot be read
              if (!(e instanceof StateError)) throw e;
              report.pending.push({ dir: entry.dir, minor: null, action: 'instance state cannot be read; left alone' });
            }
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
    progress?.('instances', entries.length, entries.length);
    // Claims of unregistered instances that still exist where their claims say: the registry
    // entry went with the runtime directory (removed under running instances). Such an
    // instance is reconciled, which registers it again and claims its devices again.
    for (const lost of unregisteredOwners(rt)) {
      if (reconcileUnregistered(lost, rt, env, report)) report.instances++;
    }
    // Claims of instances that no longer exist: give the devices back to the system. The
    // registry is read again under the lock: an instance registered since the loop above
    // (and already claiming devices) is not an orphan.
    rt.lock();
    const registered = new Set(rt.instances().map((e) => e.id));
    const orphans = rt.claims().filter((c) => !registered.has(c.id));
    for (const [i, c] of orphans.entries()) {
      progress?.('devices of vanished instances', i, orphans.length);
      // an instance that lost its registry entry after the pass above: it is not vanished,
      // and the next gc (or its watcher's reconcile) registers it again
      if (entryStatus({ id: c.id, dir: c.dir, uid: c.uid }, env) === 'live') {
        report.pending.push({ dir: c.dir, minor: c.minor, action: 'claim of an instance that is not registered; left for the next gc' });
        continue;
      }
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
    // the per-uid index of the claims (derived from them, like the idle hints: mended
    // silently) after a kill between a claim and its index entry
    rt.syncUidIndex();
  } finally {
    rt.close();
  }
  return report;
}

/** The owners named by claims whose instance is not registered (one entry per id). */
function unregisteredOwners(rt: Runtime): RegistryEntry[] {
  rt.lock();
  try {
    const owners = new Map<string, RegistryEntry>();
    for (const c of rt.claims()) {
      if (!owners.has(c.id) && !rt.isRegistered(c.id)) owners.set(c.id, { id: c.id, dir: c.dir, uid: c.uid });
    }
    return [...owners.values()];
  } finally {
    rt.unlock();
  }
}

/**
 * Reconcile the instance a claim names when it is still there (same id) though not
 * registered; false when it is not (a vanished instance: its claims are orphans).
 */
function reconcileUnregistered(owner: RegistryEntry, rt: Runtime, env: NodeJS.ProcessEnv, report: GcReport): boolean {
  let inst: LocalInstance;
  try {
    inst = LocalInstance.open(owner.dir, env);
  } catch {
    return false; // no instance at DIR (any reason): the orphan pass decides under the lock
  }
  try {
    inst.lock();
    if (inst.header().id !== owner.id) return false;
    reconcileInstance(inst, rt, report);
    return true;
  } catch (e) {
    // destroyed while we waited for its lock, or a state that cannot be read: not ours to
    // settle here (the orphan pass looks at the claims again)
    if (e instanceof StateError || hasCode(e, 'ENOENT')) return false;
    throw e;
  } finally {
    inst.close();
  }
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
    const dev = new LoopDevice(hostLoopNode(c.minor));
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
  for (let waited = 0; outcome === 'busy' && waited < UNBIND_WAIT_MS && !SysfsLoop.forName(`loop${c.minor}`).isBound(); waited += 50) {
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

// ---------------------------------------------------------------- gc preview (doctor)

/** Something gc would settle (or, for `unreadable-instance`, leave alone and report). */
export type LeftoverKind =
  | 'vanished-instance' // registry entry of an instance that is gone or replaced
  | 'unreadable-instance' // a state gc cannot read: kept, needs a human
  | 'unregistered-instance' // a live instance that claims devices but lost its registry entry
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
    const unregistered = new Set<string>();
    for (const c of claims) {
      if (kept.has(c.id)) continue;
      // the registry entry lost, the instance still there (gc registers it again)
      if (unregistered.has(c.id) || entryStatus({ id: c.id, dir: c.dir, uid: c.uid }, env) === 'live') {
        if (!unregistered.has(c.id)) out.push({ kind: 'unregistered-instance', dir: c.dir, id: c.id, minor: null });
        unregistered.add(c.id);
        continue;
      }
      out.push({ kind: 'orphan-device', dir: c.dir, id: c.id, minor: c.minor, bound: bound(c.minor) });
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
    if (s.destroying) {
      // an interrupted destroy: gc finishes it, every device goes
      for (const minor of heldMinors(s)) add('half-released', minor);
      return;
    }
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
