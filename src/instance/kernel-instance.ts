/**
 * A real kernel loopfs mount (the v3 patches: statfs f_type 0x6c6f6f71). The kernel
 * scopes the devices itself: DIR/loop-control allocates inside the instance and DIR/loopN
 * are its devices, so we drive them exactly as util-linux drives /dev, with DIR in
 * place of /dev.
 */
import { allocateAndAttach, findFree, type DeviceDir } from '../kernel/allocate.js';
import type { AttachRequest } from '../kernel/attach.js';
import { LoopDevice } from '../kernel/loop-device.js';
import { readdirRaw } from '../kernel/sysfs.js';
import { checkMember, detachEach, devicePathIn, OWN_IOCTLS, type LoopScope } from './scope.js';

export const LOOPFS_SUPER_MAGIC = 0x6c6f6f71;

export class KernelInstance implements LoopScope {
  readonly control = OWN_IOCTLS;
  readonly mounts = null;
  private readonly devices: DeviceDir;

  constructor(readonly dir: string) {
    this.devices = { devDir: dir, controlPath: `${dir}/loop-control` };
  }

  get controlPath(): string {
    return this.devices.controlPath!;
  }

  private nodes(): LoopDevice[] {
    return readdirRaw(this.dir)
      .filter((n) => /^loop\d+$/.test(n))
      .map((n) => new LoopDevice(`${this.dir}/${n}`));
  }

  usedDevices(): LoopDevice[] {
    return this.nodes().filter((d) => d.offset() !== null);
  }

  devicePath(arg: string): string {
    return devicePathIn(this.dir, arg);
  }

  checkDevice(arg: string): void {
    checkMember(this, arg);
  }

  /** A device is the instance's when one of the instance's own nodes has its number. */
  contains(dev: LoopDevice): boolean {
    const d = dev.devno();
    return !!d && this.nodes().some((n) => {
      const nd = n.devno();
      return !!nd && nd[0] === d[0] && nd[1] === d[1];
    });
  }

  findFree(): LoopDevice {
    return findFree(this.devices);
  }

  allocate(req: AttachRequest) {
    return allocateAndAttach(req, this.devices);
  }

  ensureDevice(): void {
    /* the instance's loop-control creates devices on demand */
  }

  settle(): void {
    /* the kernel instance manages its own devices */
  }

  detachMany(devs: LoopDevice[]): unknown[] {
    return detachEach(this, devs);
  }

  detach(dev: LoopDevice): void {
    dev.clear();
  }
}
