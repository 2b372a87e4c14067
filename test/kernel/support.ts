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
  const reason = loopSkipReason();
  announceSkip(what, reason);
  return reason;
}

/** Title suffix that makes a skipped describe block say why it was skipped. */
export function skipTitle(title: string, reason: string | undefined): string {
  return reason ? `${title} [SKIPPED: ${reason}]` : title;
}

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

/**
 * Loop indexes this test created with LOOP_CTL_ADD, plus the objects it opened on them.
 * cleanup(): close the objects, close leaked fds on the indexes, detach (util-linux) what is
 * still bound, wait for the release, then LOOP_CTL_REMOVE with a bounded EBUSY retry.
 */
export class OwnedIndexes {
  readonly indexes = new Set<number>();
  private objects: Closable[] = [];

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
    for (const i of this.indexes) {
      try {
        await detachDevice(`/dev/loop${i}`);
      } catch (e) {
        errors.push(String((e as Error).message ?? e));
      }
    }
    const n = native();
    const ctl = n.open('/dev/loop-control', n.constants.O_RDWR);
    try {
      for (const i of this.indexes) {
        // udev-less VM, but a probe or a just-finished release can hold the device for a moment
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
            if (code !== 'EBUSY' || attempt >= 100) {
              errors.push(`LOOP_CTL_REMOVE ${i}: ${code}`);
              break;
            }
            await sleep(50);
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
  opts: { wrapper?: string[]; uid?: number; gid?: number; timeoutMs?: number; onStdout?: (s: string) => void } = {},
): Promise<ChildResult> {
  const argv = [...(opts.wrapper ?? []), process.execPath, '--input-type=module', '-e', script, ...args];
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0], argv.slice(1), {
      stdio: ['ignore', 'pipe', 'pipe'],
      uid: opts.uid,
      gid: opts.gid,
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: '/' },
    });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.stdout.on('data', (b: Buffer) => {
      stdout += b.toString();
      opts.onStdout?.(stdout);
    });
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
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
