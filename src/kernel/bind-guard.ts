/**
 * Keeping everybody else from binding a loop device while we decide it may leave.
 *
 * An idle device of an instance is unbound and its node is published (in DIR, and in every
 * activated /dev view until that view syncs), so a stock `losetup -f` or `mount -o loop`
 * may bind it at any moment: between a release's look at it ("unbound, idle") and its
 * LOOP_CTL_REMOVE, a tool could take it, and the release would then write off a device
 * somebody was just handed (found by the chaos soak: a view's util-linux lost its device).
 *
 * The kernel settles the race for us: an exclusive open of the block device (O_EXCL) makes
 * every other LOOP_CONFIGURE and LOOP_SET_FD fail with EBUSY while it is held (the loop
 * driver claims the device before binding it), util-linux then takes the next device. A
 * release therefore holds this guard while it looks and unlinks the device's nodes, and
 * closes it just before LOOP_CTL_REMOVE (which refuses while any fd is open).
 */
import { hostLoopNode } from './devnum.js';
import { hasCode } from './errors.js';
import { native } from './native.js';
import { sleepMs } from './sleep.js';
import { SysfsLoop } from './sysfs.js';

/** The guard's fd (close it with releaseGuard), or why none could be taken. */
export type BindGuard = { fd: number } | 'gone' | 'in-use';

/**
 * Hold /dev/loopN exclusively if it is unbound now. 'gone': the device no longer exists
 * (its removal got that far before); 'in-use': bound (a deferred clear, or somebody just
 * bound it) or held exclusively by someone else (mounted).
 */
export function guardUnbound(minor: number): BindGuard {
  const sys = SysfsLoop.forName(`loop${minor}`);
  if (sys.devno() === null) return 'gone';
  const n = native();
  let fd: number;
  try {
    fd = n.open(hostLoopNode(minor), n.constants.O_RDONLY | n.constants.O_EXCL);
  } catch (e) {
    // ENXIO/ENODEV: removed between the look and the open
    if (hasCode(e, 'ENXIO', 'ENODEV')) return 'gone';
    // EBUSY: somebody holds it exclusively (a mount); ENOENT: no host node to hold it by
    if (hasCode(e, 'EBUSY', 'ENOENT')) return 'in-use';
    throw e;
  }
  // bound before we took the guard: somebody's device now (or a clear the kernel deferred)
  if (sys.isBound()) {
    n.close(fd);
    return 'in-use';
  }
  return { fd };
}

/**
 * guardUnbound, retried every 20 ms while the device is in use, until `deadline` (ms since
 * the epoch): a device we just detached becomes unbound only at its last close.
 */
export function guardUnboundBy(minor: number, deadline: number): BindGuard {
  for (;;) {
    const g = guardUnbound(minor);
    if (g !== 'in-use' || Date.now() >= deadline) return g;
    sleepMs(20);
  }
}

export function releaseGuard(g: BindGuard): void {
  if (typeof g === 'object') native().close(g.fd);
}
