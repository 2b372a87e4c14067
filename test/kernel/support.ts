// Shared fixtures for the root-only kernel-layer tests (test/kernel/*.test.ts).
//
// Device hygiene, the rules every file here follows:
//  - a test only touches loop devices it created: an index it added with LOOP_CTL_ADD (a high,
//    unused number, see OwnedIndexes), or a device the code under test bound to a file in the
//    test's private directory (tracked with the DeviceTracker from test/helpers);
//  - cleanup runs in afterEach/finally whether the test passed or not, detaches with util-linux
//    (never with the code under test), waits with a bounded poll for the kernel to really release
//    the device (LOOP_CLR_FD completes at the last close on current kernels) and removes every
//    added index with a short, bounded retry on EBUSY.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../../src/kernel/native.js';
import { detachDevice, isBound, waitUnbound } from '../helpers/devices.js';
import { announceSkip, loopSkipReason, REPO_ROOT } from '../helpers/env.js';

export const MiB = 1024 * 1024;
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Why the root-only kernel tests cannot run here (printed once), or undefined. */
export function kernelSkipReason(what: string): string | undefined {
  let reason = loopSkipReason();
  // These tests create the devices they use (LOOP_CTL_ADD, or LOOP_CTL_GET_FREE, which adds one
  // when none is free), so a loop driver that currently has no device at all is fine — other
  // suites on this machine do remove every device now and then.
  if (reason?.startsWith('no /sys/block/loopN entries') && fs.existsSync('/dev/loop-control')) reason = undefined;
  announceSkip(what, reason);
  return reason;
}

/** Title suffix that makes a skipped describe block say why it was skipped. */
export function skipTitle(title: string, reason: string | undefined): string {
  return reason ? `${title} [SKIPPED: ${reason}]` : title;
}

/**
 * Options for describe blocks whose tests need one of our devices to stay unbound for a moment:
 * on this shared machine another suite's LOOP_CTL_GET_FREE may hand it out meanwhile (the race
 * DESIGN.md describes for instance pools). A test that lost its device that way is run again
 * (hooks included, so with a fresh index); a real bug fails every attempt.
 */
export const SHARED_MACHINE = { retry: 2 } as const;
/** For it.fails tests inside such blocks: vitest would otherwise run an expected failure 3 times. */
export const NO_RETRY = { retry: 0 } as const;

/** A sparse file of `size` bytes. */
export function makeImage(file: string, size: number): string {
  const fd = fs.openSync(file, 'w');
  try {
    fs.ftruncateSync(fd, size);
  } finally {
    fs.closeSync(fd);
  }
  return file;
}

export function readSys(p: string): string | null {
  try {
    return fs.readFileSync(p, 'utf8').replace(/\n$/, '');
  } catch {
    return null;
  }
}

export function sysBacking(index: number): string | null {
  return readSys(`/sys/block/loop${index}/loop/backing_file`);
}

/** Wait (bounded) until /sys/block/loopN has no loop/backing_file; true when it got there. */
export function waitIndexUnbound(index: number, timeoutMs = 5_000): Promise<boolean> {
  return waitUnbound(`loop${index}`, timeoutMs);
}

/**
 * Keep polling for `ms` and report whether the device stayed bound all along: used to show that
 * something keeps a device bound, so a positive answer is never a timing accident.
 */
export async function staysBound(index: number, ms = 1_000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (!isBound(`loop${index}`)) return false;
    await sleep(25);
  }
  return isBound(`loop${index}`);
}

/**
 * fds of this process that refer to one of the given loop minors (through any node: /dev/loopN
 * or a node in a test directory). Found through /proc/self/fd, independent of the code under test.
 */
export function loopFdsOf(minors: Iterable<number>): number[] {
  const want = new Set(minors);
  const found: number[] = [];
  let entries: string[] = [];
  try {
    entries = fs.readdirSync('/proc/self/fd');
  } catch {
    return found;
  }
  for (const e of entries) {
    try {
      const st = fs.statSync(`/proc/self/fd/${e}`, { bigint: true });
      if (!st.isBlockDevice()) continue;
      const maj = Number((st.rdev >> 8n) & 0xfffn);
      const min = Number((st.rdev & 0xffn) | ((st.rdev >> 12n) & 0xfff00n));
      if (maj === 7 && want.has(min)) found.push(Number(e));
    } catch {
      /* the directory fd of readdir itself, or an fd closed meanwhile */
    }
  }
  return found;
}

/**
 * Close fds the code under test leaked on our own devices (see the fd-leak bug in
 * allocate.test.ts); without this a leaked fd keeps the device bound (the kernel defers
 * LOOP_CLR_FD to the last close) and its index busy (LOOP_CTL_REMOVE says EBUSY).
 * Only call it after every LoopDevice object of the test has been closed.
 */
export function closeLeakedFds(minors: Iterable<number>): number[] {
  const fds = loopFdsOf(minors);
  for (const fd of fds) {
    try {
      fs.closeSync(fd);
    } catch {
      /* already gone */
    }
  }
  return fds;
}

/** Something with a close(), e.g. LoopDevice or LoopControl. */
interface Closable {
  close(): void;
}

/** Other processes (pid and command line) that hold an fd on loop minor `index`. */
export function foreignHolders(index: number): string[] {
  const out: string[] = [];
  const self = String(process.pid);
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p) && p !== self)) {
    let fds: string[];
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const st = fs.statSync(`/proc/${pid}/fd/${fd}`, { bigint: true });
        if (st.isBlockDevice() && ((st.rdev >> 8n) & 0xfffn) === 7n && Number((st.rdev & 0xffn) | ((st.rdev >> 12n) & 0xfff00n)) === index) {
          const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
          out.push(`pid ${pid} (${cmd.slice(0, 120)})`);
          break;
        }
      } catch {
        /* gone */
      }
    }
  }
  return out;
}

/**
 * Loop indexes this test created with LOOP_CTL_ADD, plus the objects it opened on them.
 *
 * This machine is shared with other suites: LOOP_CTL_GET_FREE hands out the lowest unbound device
 * to anyone, so while one of our indexes is unbound another process may bind it, or open it and
 * keep it open. cleanup() therefore only detaches a binding to one of *our* files (ownBacking),
 * leaves anything else alone with a visible warning, and gives up removing an index that a
 * foreign process keeps open (warning, naming the process) instead of failing our test.
 */
export class OwnedIndexes {
  readonly indexes = new Set<number>();
  private objects: Closable[] = [];
  private backings: string[] = [];

  /** Backing files (or directories of them) that are ours; cleanup detaches only those. */
  ownBacking(pathOrDir: string): this {
    this.backings.push(pathOrDir.replace(/\/$/, ''));
    return this;
  }

  private isOurs(backing: string): boolean {
    const b = backing.replace(/ \(deleted\)$/, '');
    return this.backings.some((p) => b === p || b.startsWith(`${p}/`));
  }

  /** Create a loop device at an unused index >= `from` (no /sys/block entry, no /dev node). */
  add(from = 300): number {
    const n = native();
    const ctl = n.open('/dev/loop-control', n.constants.O_RDWR);
    try {
      for (let i = from; i < from + 2000; i++) {
        if (fs.existsSync(`/sys/block/loop${i}`) || fs.existsSync(`/dev/loop${i}`) || this.indexes.has(i)) continue;
        try {
          n.ctlAdd(ctl, i);
        } catch (e) {
          if ((e as { code?: string }).code === 'EEXIST') continue;
          throw e;
        }
        this.indexes.add(i);
        return i;
      }
    } finally {
      n.close(ctl);
    }
    throw new Error(`no unused loop index in ${from}..${from + 2000}`);
  }

  /** LOOP_CTL_REMOVE one of our (unbound, unopened) indexes right away. */
  removeNow(index: number): void {
    const n = native();
    const ctl = n.open('/dev/loop-control', n.constants.O_RDWR);
    try {
      n.ctlRemove(ctl, index);
      this.indexes.delete(index);
    } finally {
      n.close(ctl);
    }
  }

  /** Record an object to close before cleanup (closing twice is harmless for our objects). */
  track<T extends Closable>(obj: T): T {
    this.objects.push(obj);
    return obj;
  }

  async cleanup(): Promise<void> {
    const errors: string[] = [];
    for (const o of this.objects.splice(0)) {
      try {
        o.close();
      } catch (e) {
        errors.push(`close: ${String(e)}`);
      }
    }
    closeLeakedFds(this.indexes);
    const foreign = new Set<number>();
    for (const i of this.indexes) {
      const b = sysBacking(i);
      if (b === null) continue;
      if (!this.isOurs(b)) {
        console.warn(`[interference] loop${i} (added by this test) was bound by another process to ${JSON.stringify(b)}; left alone`);
        foreign.add(i);
        continue;
      }
      try {
        await detachDevice(`/dev/loop${i}`);
      } catch (e) {
        errors.push(`${String((e as Error).message ?? e)}; holders: ${foreignHolders(i).join(', ') || 'none'}`);
      }
    }
    const n = native();
    const ctl = n.open('/dev/loop-control', n.constants.O_RDWR);
    try {
      for (const i of this.indexes) {
        if (foreign.has(i)) continue;
        // no udev here, but a just-finished release or a foreign prober can hold it for a moment
        for (let attempt = 0; ; attempt++) {
          try {
            n.ctlRemove(ctl, i);
            this.indexes.delete(i);
            break;
          } catch (e) {
            const code = (e as { code?: string }).code;
            if (code === 'ENODEV') {
              this.indexes.delete(i);
              break;
            }
            if (code === 'EBUSY' && attempt < 100) {
              await sleep(50);
              continue;
            }
            const holders = foreignHolders(i);
            const b = sysBacking(i);
            const foreignBinding = b !== null && !this.isOurs(b);
            if (code === 'EBUSY' && loopFdsOf([i]).length === 0 && (holders.length > 0 || foreignBinding)) {
              const by = [...holders, ...(foreignBinding ? [`a binding to ${JSON.stringify(b)}`] : [])].join(', ');
              console.warn(`[interference] loop${i} (added by this test) is held by ${by}; not removed`);
            } else {
              errors.push(`LOOP_CTL_REMOVE ${i}: ${code}; holders: ${holders.join(', ') || 'none'}`);
            }
            break;
          }
        }
      }
    } finally {
      n.close(ctl);
    }
    if (errors.length) throw new Error(`cleanup failed:\n${errors.join('\n')}`);
  }
}

/** Make a block node `name` in `dir` for loop minor `index` (mknod through coreutils). */
export function mknodLoop(dir: string, name: string, index: number): string {
  const p = path.join(dir, name);
  execFileSync('mknod', ['-m', '600', p, 'b', '7', String(index)]);
  return p;
}

export const DIST_KERNEL = path.join(REPO_ROOT, 'dist', 'kernel');

/** Why child processes that import the built kernel layer cannot run, or undefined. */
export function distSkipReason(): string | undefined {
  for (const f of ['allocate.js', 'attach.js', 'loop-device.js', 'loop-control.js']) {
    if (!fs.existsSync(path.join(DIST_KERNEL, f))) return `${path.join(DIST_KERNEL, f)} missing (run npm run build)`;
  }
  return undefined;
}

export interface ChildResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run `node --input-type=module -e script args...` (optionally through a wrapper argv such as unshare). */
export function runNode(
  script: string,
  args: string[] = [],
  opts: {
    wrapper?: string[];
    uid?: number;
    gid?: number;
    timeoutMs?: number;
    onStdout?: (s: string) => void;
    /** give the child a stdin pipe; the callback gets a function that closes it */
    onRelease?: (release: () => void) => void;
  } = {},
): Promise<ChildResult> {
  const argv = [...(opts.wrapper ?? []), process.execPath, '--input-type=module', '-e', script, ...args];
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), {
      stdio: [opts.onRelease ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      uid: opts.uid,
      gid: opts.gid,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: '/' },
    });
    let stdout = '';
    let stderr = '';
    if (opts.onRelease) {
      child.stdin!.on('error', () => {}); // the child may be gone already
      opts.onRelease(() => child.stdin!.end());
    }
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.stdout!.on('data', (b: Buffer) => {
      stdout += b.toString();
      opts.onStdout?.(stdout);
    });
    child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
