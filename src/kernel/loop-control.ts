/**
 * The loop-control character device (`/dev/loop-control`): allocates, adds and
 * removes loop device indexes.
 */
import { constants as osConstants } from 'node:os';
import { hostLoopNode } from './devnum.js';
import { hasCode, sysError } from './errors.js';
import { native } from './native.js';

export const LOOP_CONTROL_PATH = '/dev/loop-control';

const errnos = osConstants.errno as Record<string, number>;

export class LoopControl {
  private constructor(
    readonly path: string,
    private fd: number,
  ) {}

  /** Open read-write (the ioctls need it). Throws SysError (ENOENT, EACCES, ...). */
  static open(path: string = LOOP_CONTROL_PATH): LoopControl {
    const n = native();
    return new LoopControl(path, n.open(path, n.constants.O_RDWR));
  }

  /** The lowest unbound device index; the kernel creates a new device when none is free. */
  getFree(): number {
    return native().ctlGetFree(this.fd);
  }

  /** Create device `index`; EEXIST when it already exists. */
  add(index: number): number {
    return native().ctlAdd(this.fd, index);
  }

  /**
   * Remove device `index`. EBUSY while it is bound or open by anyone, which is why a
   * successful remove proves that no process still holds the device. (The ioctl's
   * return value is the index on old kernels and 0 since 5.15: do not rely on it.)
   */
  remove(index: number): number {
    return native().ctlRemove(this.fd, index);
  }

  /**
   * Remove many devices at once, `threads` removals in flight (each spends ~35 ms waiting
   * in del_gendisk; one after another that is the whole cost of a large destroy). Measured
   * here (6.18, 2 CPUs), ms per device for 500 fresh indexes: 1 thread 34, 16 threads 2.0,
   * 64 threads 0.51, 128 threads 0.29, 256 threads 0.26, 512 threads 0.29: past ~256 the
   * part of each removal the kernel serialises is the bound (1000 indexes: 0.23). Returns
   * for each index 'removed' (also when already gone: ENODEV/ENXIO) or 'busy' (EBUSY);
   * another error of any index throws, after all were tried.
   */
  removeMany(indices: number[], threads = 256): Array<'removed' | 'busy'> {
    if (indices.length === 0) return [];
    const errs = native().ctlRemoveMany(this.fd, indices, threads);
    const { EBUSY, ENODEV, ENXIO } = errnos;
    const bad = errs.findIndex((e) => e !== 0 && e !== ENODEV && e !== ENXIO && e !== EBUSY);
    if (bad >= 0) {
      const code = Object.entries(errnos).find(([, v]) => v === errs[bad])?.[0] ?? `E${errs[bad]}`;
      throw sysError(code, 'ioctl(LOOP_CTL_REMOVE)', hostLoopNode(indices[bad]));
    }
    return errs.map((e) => (e === EBUSY ? 'busy' : 'removed'));
  }

  /**
   * Open loop-control, remove `index`, close: 'removed' when it is gone (also when it was
   * gone already: ENODEV/ENXIO), 'busy' while bound or held open (EBUSY). Other errors throw.
   */
  static removeIndex(index: number, path: string = LOOP_CONTROL_PATH): 'removed' | 'busy' {
    const ctl = LoopControl.open(path);
    try {
      ctl.remove(index);
      return 'removed';
    } catch (e) {
      if (hasCode(e, 'ENODEV', 'ENXIO')) return 'removed';
      if (hasCode(e, 'EBUSY')) return 'busy';
      throw e;
    } finally {
      ctl.close();
    }
  }

  /**
   * Serialise allocation between our own processes: whoever holds the lock owns the
   * window between LOOP_CTL_GET_FREE (or LOOP_CTL_ADD) and binding or claiming the device.
   * Last in the lock order, after an instance's and the runtime's (LOCK ORDER in
   * src/instance/local-instance.ts).
   */
  lock(): void {
    const n = native();
    n.flock(this.fd, n.constants.LOCK_EX);
  }

  unlock(): void {
    const n = native();
    n.flock(this.fd, n.constants.LOCK_UN);
  }

  close(): void {
    if (this.fd >= 0) {
      native().close(this.fd);
      this.fd = -1;
    }
  }
}
