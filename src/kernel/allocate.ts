/**
 * Finding a free loop device and binding it, safely under heavy concurrency.
 *
 * The race: LOOP_CTL_GET_FREE returns the lowest unbound device to every caller
 * alike, so two processes can pick the same index. LOOP_CONFIGURE is atomic (the
 * loser gets EBUSY), so correctness never depends on winning; the lock on
 * loop-control only makes our own processes queue instead of colliding, and the
 * bounded retry with jitter covers foreign tools (util-linux, systemd) that do not
 * take our lock.
 */
import { attach, AttachError, type AttachRequest, type AttachResult } from './attach.js';
import { hasCode, sysError, toSysError, type SysError } from './errors.js';
import { LoopControl, LOOP_CONTROL_PATH } from './loop-control.js';
import { assertLoopDevice, LoopDevice } from './loop-device.js';
import { readdirRaw, sysfsAvailable } from './sysfs.js';
import { jitterMs, sleepMs } from './sleep.js';

/** util-linux assumes loop0..loop7 exist before it scans the directory. */
const DEFAULT_NODES = 8;
/** Same bound as util-linux and systemd: 64 attempts. */
const MAX_TRIES = 64;

export interface DeviceDir {
  /** Directory holding the loopN nodes (`/dev` on the host). */
  devDir: string;
  /** The loop-control node, or null when there is none to use. */
  controlPath: string | null;
}

export const HOST_DEVICES: DeviceDir = { devDir: '/dev', controlPath: LOOP_CONTROL_PATH };

/** No free device could be found; `errno` is what util-linux would leave in errno. */
export class NoFreeDeviceError extends Error {
  constructor(readonly cause: SysError) {
    super('cannot find an unused loop device');
    this.name = 'NoFreeDeviceError';
  }
}

function nodePath(dir: DeviceDir, index: number): string {
  return `${dir.devDir}/loop${index}`;
}

/** A device is free when it is a loop device that is not bound to a file. */
function isFreeNode(path: string): boolean {
  assertLoopDevice(path);
  const dev = new LoopDevice(path);
  try {
    return !dev.isBound();
  } finally {
    dev.close(); // only opened without sysfs; an fd left here would keep the device busy
  }
}

/**
 * The first free device by scanning nodes, as util-linux does when loop-control is
 * unusable: loop0..7 first, then every other `loopN` node in numeric order.
 */
export function scanForFree(dir: DeviceDir): LoopDevice {
  let lastError: SysError = sysError('ENOENT', 'scan', dir.devDir);
  const tryNode = (index: number): LoopDevice | null => {
    const path = nodePath(dir, index);
    try {
      if (isFreeNode(path)) return new LoopDevice(path);
    } catch (e) {
      lastError = toSysError(e);
    }
    return null;
  };
  for (let i = 0; i < DEFAULT_NODES; i++) {
    const d = tryNode(i);
    if (d) return d;
  }
  const more = readdirRaw(dir.devDir)
    .map((name) => /^loop(\d+)$/.exec(name))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .filter((i) => i >= DEFAULT_NODES)
    .sort((a, b) => a - b);
  for (const i of more) {
    const d = tryNode(i);
    if (d) return d;
  }
  throw new NoFreeDeviceError(lastError);
}

/** Ask loop-control for a free index; null when loop-control is unusable or the node is missing. */
function freeFromControl(ctl: LoopControl, dir: DeviceDir): LoopDevice | null {
  let index: number;
  try {
    index = ctl.getFree();
  } catch {
    // LOOP_CTL_GET_FREE refused (ENOSPC: no free index, or max_loop reached): the caller falls back to scanning
    return null;
  }
  const path = nodePath(dir, index);
  try {
    return isFreeNode(path) ? new LoopDevice(path) : null;
  } catch {
    // the offered node is missing here or not ours to open (ENOENT, EACCES): not a free device in this directory
    return null;
  }
}

function openControl(dir: DeviceDir): LoopControl | null {
  if (!dir.controlPath) return null;
  try {
    return LoopControl.open(dir.controlPath);
  } catch {
    // no usable control node in this directory (ENOENT, EACCES, ENODEV): allocate by scanning
    return null;
  }
}

/** `losetup -f`: the first free device, without binding it. */
export function findFree(dir: DeviceDir = HOST_DEVICES): LoopDevice {
  const ctl = openControl(dir);
  if (ctl) {
    try {
      const d = freeFromControl(ctl, dir);
      if (d) return d;
    } finally {
      ctl.close();
    }
  }
  return scanForFree(dir);
}

export interface Allocated extends AttachResult {
  /** The device, named as the scope names it; open when it was bound through this name. */
  device: LoopDevice;
  /**
   * When the device was bound through another node (an instance binds through the host
   * node before publishing its own), that node, still open: an autoclear device stays
   * bound only while some fd is open, so the caller closes this when done with it.
   */
  holder?: LoopDevice;
}

/**
 * Find a free device and bind it to `req.file`. Retries (bounded, with jitter) only
 * when the chosen device was taken under our feet (EBUSY) or the kernel asked us to
 * come back (EAGAIN); every other error is final and leaves nothing bound.
 */
export function allocateAndAttach(req: AttachRequest, dir: DeviceDir = HOST_DEVICES): Allocated {
  for (let attempt = 1; ; attempt++) {
    const ctl = openControl(dir);
    let device: LoopDevice | null = null;
    try {
      if (ctl) {
        ctl.lock();
        device = freeFromControl(ctl, dir);
      }
      const fromControl = device !== null;
      device ??= scanForFree(dir);
      const result = attach(device, { ...req, freshDevice: fromControl });
      return { device, ...result };
    } catch (e) {
      device?.close();
      // EBUSY/EAGAIN: taken under our feet; ENXIO/ENODEV/ENOENT: removed under our feet
      // (LOOP_CTL_REMOVE by another process); a scan that found nothing after
      // loop-control worked: the device GET_FREE named was taken, it will create another
      const retryable =
        (e instanceof AttachError && hasCode(e, 'EBUSY', 'EAGAIN', 'ENXIO', 'ENODEV', 'ENOENT') && !e.fileError) ||
        (e instanceof NoFreeDeviceError && ctl !== null);
      if (!retryable || attempt >= MAX_TRIES) throw e;
    } finally {
      ctl?.close(); // closing the fd drops the flock
    }
    sleepMs(jitterMs(10, 250));
  }
}

/** Create device `index` through loop-control if it does not exist yet (util-linux does this for `losetup /dev/loopN file`). */
export function ensureDevice(index: number, dir: DeviceDir = HOST_DEVICES): void {
  const ctl = openControl(dir);
  if (!ctl) return;
  try {
    ctl.add(index);
  } catch {
    /* EEXIST is the common case; anything else surfaces when the device is opened */
  } finally {
    ctl.close();
  }
}

export { sysfsAvailable };
