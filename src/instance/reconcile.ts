/**
 * Reconcile one live instance with the claims and the kernel: the routine `loopfs instance
 * gc` runs for every instance, and that every watcher (activate --watch, serve, oci-broker)
 * runs for an instance when a kernel uevent names one of its devices. Events are only hints
 * (they can be lost, reordered or stale by the time they are read); this routine reads the
 * truth from the claims and sysfs each time, so running it once more is always harmless.
 * Caller holds the instance lock.
 */
import { readFileSync } from 'node:fs';
import { LoopControl } from '../kernel/loop-control.js';
import { SysfsLoop } from '../kernel/sysfs.js';
import type { LocalInstance } from './local-instance.js';
import type { Claim, Runtime } from './runtime.js';
import { completeDestroy } from './destroy.js';
import { heldMinors, type InstanceState } from './state.js';

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

export const removeIndex = (minor: number): 'removed' | 'busy' => LoopControl.removeIndex(minor);

// The rules, shared with gcPreview so that doctor reports exactly what gc would settle.

/** Devices claimed for the instance but not in its state (a crash while reserving or releasing). */
export function unrecordedClaims(s: Pick<InstanceState, 'id' | 'devices'>, claims: Claim[]): number[] {
  return claims.filter((c) => c.id === s.id && !s.devices[c.minor]).map((c) => c.minor);
}

/**
 * What is wrong with a device the state records, before its node is looked at:
 * `unclaimed` (recorded without our claim), `half-released` (marked removing, or gone
 * from the kernel), or null.
 */
export function heldDeviceIssue(s: Pick<InstanceState, 'id' | 'devices'>, minor: number, claim: Claim | null | undefined): 'unclaimed' | 'half-released' | null {
  if (!claim || claim.id !== s.id) return 'unclaimed';
  if (s.devices[minor].state === 'removing' || SysfsLoop.forName(`loop${minor}`).devno() === null) return 'half-released';
  return null;
}

/**
 * `pool`: the idle devices to keep (default: the instance's pool setting); a watcher that
 * keeps a different pool (activate --pool) passes its own, so that the two never undo each
 * other's work.
 */
export function reconcileInstance(inst: LocalInstance, rt: Runtime, report: GcReport, opts: { pool?: number } = {}): void {
  const s = inst.state();
  const fix = (minor: number | null, action: string) => report.fixes.push({ dir: inst.dir, minor, action });
  if (s.destroying) {
    // `instance destroy` was killed after its mark: finish it (it had decided already)
    const r = completeDestroy(inst, s);
    for (const minor of r.removed) fix(minor, 'removed device of an interrupted destroy');
    for (const minor of r.deferred) report.pending.push({ dir: inst.dir, minor, action: 'device of an interrupted destroy is still in use' });
    fix(null, 'finished an interrupted instance destroy');
    return;
  }
  rt.lock();
  // The instance directory is the truth for what the instance holds: a registry entry lost
  // with the runtime directory (removed, or a new one) is made again, so that gc finds the
  // instance and never takes its claims for a vanished instance's.
  if (!rt.isRegistered(s.id)) {
    rt.register({ id: s.id, dir: inst.dir, uid: s.owner.uid });
    fix(null, 'registered the instance again (its registry entry was lost)');
  }
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

  for (const minor of heldMinors(s)) {
    const claim = rt.claimOf(minor);
    const entry = inst.record(minor);
    if (!entry) continue;
    const issue = heldDeviceIssue({ id: s.id, devices: { [minor]: entry } }, minor, claim);
    if (issue === 'unclaimed') {
      // Recorded without our claim: our own steps never do this (claims come first and go
      // last). The runtime directory removed (or replaced) under running instances does:
      // the claim went with it, while the device and the record stayed, and the device may
      // be bound to the owner's file. The instance directory is the truth for what it holds:
      // a record older than the claims directory (its claim was in the old one) and written
      // since the kernel started names a device that can only have left through a
      // LOOP_CTL_REMOVE, which the kernel refuses while it is bound, so the claim is made
      // again from the record. Otherwise the claim is the truth: a record from before a
      // reboot names a device that is gone (a new one of that number is anybody's), a claim
      // removed from a claims directory that is still there was given up (or tampered
      // with), and another instance's claim means the device was removed and made again
      // for it. Those records are forgotten; the device itself is left as it is.
      if (!claim && claimLostWithRuntime(inst, rt, minor)) {
        rt.lock();
        const reclaimed = rt.claim({ minor, id: s.id, dir: inst.dir, uid: s.owner.uid });
        rt.unlock();
        if (reclaimed) {
          fix(minor, 'claimed again a held device whose claim was lost');
          continue;
        }
      }
      inst.forget(minor);
      fix(minor, rt.claimOf(minor) ? 'forgot device claimed by another instance' : 'forgot device recorded without a claim');
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

  // every idle device, looked at one by one: this is where devices freed behind our back
  // (a stock tool's detach, autoclear) get their idle hints
  // released together: one removal waits ~35 ms in the kernel, many in flight overlap
  // (200 devices freed by a stock tool's -d: 7.2 s one by one)
  const idle = inst.idleMinors();
  for (const minor of inst.releaseMany(idle.slice(opts.pool ?? s.pool), 0)) fix(minor, 'released idle device above the pool size');
}

/** Whether `minor`'s record predates the claims directory and not the running kernel. */
function claimLostWithRuntime(inst: LocalInstance, rt: Runtime, minor: number): boolean {
  if (SysfsLoop.forName(`loop${minor}`).devno() === null) return false;
  const written = inst.recordWrittenMs(minor);
  const claimsMade = rt.claimsMadeMs();
  return written !== null && claimsMade !== null && written < claimsMade && written >= bootTimeMs();
}

let bootMs: number | undefined;

/** When the running kernel started (ms since the epoch; /proc/stat's btime, whole seconds). */
function bootTimeMs(): number {
  if (bootMs === undefined) {
    const m = /^btime (\d+)$/m.exec(readFileSync('/proc/stat', 'latin1'));
    // unreadable /proc: every record counts as older than the kernel (forgotten, as before)
    bootMs = m ? Number(m[1]) * 1000 : Number.POSITIVE_INFINITY;
  }
  return bootMs;
}
