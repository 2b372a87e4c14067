/** The host scope: /dev, /dev/loop-control and /sys/block, exactly as util-linux sees them. */
import { existsSync } from 'node:fs';
import { allocateAndAttach, ensureDevice, findFree, HOST_DEVICES } from '../kernel/allocate.js';
import type { AttachRequest } from '../kernel/attach.js';
import { assertLoopDevice, LoopDevice } from '../kernel/loop-device.js';
import { loopNamesInSysfs, SYS_BLOCK } from '../kernel/sysfs.js';
import type { LoopScope } from './scope.js';

export class HostScope implements LoopScope {
  readonly controlPath = HOST_DEVICES.controlPath;

  usedDevices(): LoopDevice[] {
    const result: LoopDevice[] = [];
    for (const name of loopNamesInSysfs()) {
      // only bound devices have loop/backing_file; the node must exist in /dev too
      if (!existsSync(`${SYS_BLOCK}/${name}/loop/backing_file`)) continue;
      const dev = new LoopDevice(`/dev/${name}`);
      try {
        assertLoopDevice(dev.path);
      } catch {
        continue;
      }
      if (dev.offset() === null) continue; // raced with a detach
      result.push(dev);
    }
    return result;
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

  contains(): boolean {
    return true;
  }
}
