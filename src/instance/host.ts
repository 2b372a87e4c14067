/** The host scope: /dev, /dev/loop-control and /sys/block, exactly as util-linux sees them. */
import { allocateAndAttach, ensureDevice, findFree, HOST_DEVICES } from '../kernel/allocate.js';
import type { AttachRequest } from '../kernel/attach.js';
import { areLoopDevices, assertLoopDevice, LoopDevice } from '../kernel/loop-device.js';
import { LISTING_ATTRS, loopNamesInSysfs, SysfsLoop } from '../kernel/sysfs.js';
import { detachEach, OWN_IOCTLS, type LoopScope } from './scope.js';

export class HostScope implements LoopScope {
  readonly controlPath = HOST_DEVICES.controlPath;
  readonly control = OWN_IOCTLS;
  readonly mounts = null;

  usedDevices(prefetch: readonly string[] = LISTING_ATTRS): LoopDevice[] {
    // one native call finds the bound devices (most of a big pool may be idle) and reads
    // every attribute the listing will show, for those only
    const loops = SysfsLoop.prefetchBound(
      loopNamesInSysfs().map((name) => SysfsLoop.forName(name)),
      ['loop/backing_file', ...prefetch],
    );
    // as util-linux: bound devices only (loop/backing_file and loop/offset exist), and
    // only when /dev has a loop device node of that name
    const bound = loops.filter((sys) => sys.backingFile() !== null);
    const paths = bound.map((sys) => `/dev/${sys.dir.slice(sys.dir.lastIndexOf('/') + 1)}`);
    const isLoop = areLoopDevices(paths);
    return bound.flatMap((sys, i) => (isLoop[i] ? [LoopDevice.withSysfs(paths[i], sys)] : []));
  }

  /** util-linux composes "/dev/NAME" for a name without a leading slash. */
  devicePath(arg: string): string {
    return arg.startsWith('/') ? arg : `/dev/${arg}`;
  }

  /** util-linux checks the operand as given (relative to the cwd), not the /dev name. */
  checkDevice(arg: string): void {
    assertLoopDevice(arg);
  }

  findFree(): LoopDevice {
    return findFree(HOST_DEVICES);
  }

  allocate(req: AttachRequest) {
    return allocateAndAttach(req, HOST_DEVICES);
  }

  /** LOOP_CTL_ADD for "/dev/loopN" or ".../N", as util-linux does before an explicit setup. */
  ensureDevice(path: string): void {
    // sscanf("/loop%d") semantics: leading digits count, trailing junk is ignored
    const m = /^\/(?:loop)?\s*\+?(\d+)/.exec(path.slice(path.lastIndexOf('/')));
    if (m) ensureDevice(Number(m[1]), HOST_DEVICES);
  }

  settle(): void {
    /* host devices need nothing after a detach */
  }

  detach(dev: LoopDevice): void {
    dev.clear();
  }

  detachMany(devs: LoopDevice[]): unknown[] {
    return detachEach(this, devs);
  }

  contains(): boolean {
    return true;
  }
}
