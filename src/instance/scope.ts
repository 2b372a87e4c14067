/**
 * Where a command's loop devices live. The host scope (HostScope, host.ts) is plain /dev
 * with the global loop-control, where every tool behaves exactly as util-linux does. The
 * instances implement the same interface with their own set of devices: LocalInstance (a
 * directory loopfs manages), KernelInstance (the kernel's loopfs) and BrokeredInstance (an
 * instance reached through its broker). The util-linux front end never needs to know which
 * one it talks to: what differs is said by the scope's capabilities (`control`, `mounts`),
 * never found out with instanceof.
 */
import type { AttachRequest } from '../kernel/attach.js';
import type { Allocated } from '../kernel/allocate.js';
import { sysError } from '../kernel/errors.js';
import { assertLoopDevice, LoopDevice } from '../kernel/loop-device.js';
import type { BrokerMount, MountOptions } from './brokered-instance.js';
import { DeviceNames } from './device-names.js';

/** Changes to a live device's settings: the caller's own ioctls, or a broker's on its behalf. */
export interface DeviceControl {
  setCapacity(dev: LoopDevice): void;
  setDirectIo(dev: LoopDevice, on: boolean): void;
  setBlockSize(dev: LoopDevice, size: number): void;
}

/** The caller's own ioctls on the device node: every scope whose devices the caller may change. */
export const OWN_IOCTLS: DeviceControl = {
  setCapacity: (dev) => dev.setCapacity(),
  setDirectIo: (dev, on) => dev.setDirectIo(on),
  setBlockSize: (dev, size) => dev.setBlockSize(size),
};

/** Mounts a broker makes for the caller (a user-namespace root cannot mount a block device). */
export interface BrokeredMounts {
  mount(dev: LoopDevice, opts?: MountOptions): BrokerMount;
}

export interface LoopScope {
  /**
   * Devices bound to a backing file, in listing order. `prefetch` names the sysfs
   * attributes the caller will read (see SysfsLoop.prefetch), so that a listing of
   * thousands of devices reads them in one batch; scopes may ignore it.
   */
  usedDevices(prefetch?: readonly string[]): LoopDevice[];
  /** The node path for a device argument as the user typed it. */
  devicePath(arg: string): string;
  /**
   * util-linux's is_loopdev() check of a device operand (-d, -c, DEV), plus membership
   * of the scope. Throws a SysError (ENODEV: "No such device").
   */
  checkDevice(arg: string): void;
  /** The first free device (not bound). */
  findFree(): LoopDevice;
  /** Find a free device and bind it. */
  allocate(req: AttachRequest): Allocated;
  /** Make sure an explicitly named device exists before it is set up (LOOP_CTL_ADD). */
  ensureDevice(path: string): void;
  /** LOOP_CLR_FD, then whatever the scope does with a device that is no longer bound. */
  detach(dev: LoopDevice): void;
  /** After a device was cleared by other means (autoclear): the scope's part of detach. */
  settle(dev: LoopDevice): void;
  /**
   * `-D`: detach() of every device, with the scope's part done for all of them at once
   * where it can be (an instance gives devices back in one batch; detachEach otherwise).
   * Returns, per device, null or the error of its LOOP_CLR_FD.
   */
  detachMany(devs: LoopDevice[]): unknown[];
  /** LOOP_SET_CAPACITY, LOOP_SET_DIRECT_IO, LOOP_SET_BLOCK_SIZE: by the caller (OWN_IOCTLS) or a broker. */
  readonly control: DeviceControl;
  /** Who mounts a device of this scope: null, the caller (mount(2) or mount(8)); else the broker. */
  readonly mounts: BrokeredMounts | null;
  /** Whether a device named by the user belongs to this scope. */
  contains(dev: LoopDevice): boolean;
  /** The loop-control path the scope allocates through, if any (for error reporting). */
  readonly controlPath: string | null;
}

/**
 * In an instance a relative device name is looked up in the instance directory, not /dev;
 * a name the container gives a device (device-names.ts: "loop0") is that device.
 */
export function devicePathIn(dir: string, arg: string, names: DeviceNames = DeviceNames.NONE): string {
  if (arg.startsWith('/')) return arg;
  return names.operand(arg) ?? `${dir}/${arg}`;
}

/**
 * The device check of every instance scope: a loop device (util-linux's is_loopdev)
 * that belongs to the scope; anybody else's device does not exist here (ENODEV).
 */
export function checkMember(scope: LoopScope, arg: string): void {
  const path = scope.devicePath(arg);
  assertLoopDevice(path);
  if (!scope.contains(new LoopDevice(path))) throw sysError('ENODEV', 'stat', path);
}

/** detachMany for a scope with nothing to batch: detach() of each device, in order. */
export function detachEach(scope: LoopScope, devs: LoopDevice[]): unknown[] {
  return devs.map((dev): unknown => {
    try {
      scope.detach(dev);
      return null;
    } catch (e) {
      return e;
    }
  });
}
