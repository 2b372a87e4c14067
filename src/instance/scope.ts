/**
 * Where a command's loop devices live. The host scope is plain /dev with the global
 * loop-control, where every tool behaves exactly as util-linux does; private
 * instances (see local-instance.ts) implement the same interface with their own set of
 * devices, so the util-linux front end never needs to know which one it talks to.
 */
import type { AttachRequest } from '../kernel/attach.js';
import type { Allocated } from '../kernel/allocate.js';
import { sysError } from '../kernel/errors.js';
import { assertLoopDevice, LoopDevice } from '../kernel/loop-device.js';
import { DeviceNames } from './device-names.js';

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
   * (an instance gives devices back in one batch). Returns, per device, null or the error
   * of its LOOP_CLR_FD. Absent: detach() one by one.
   */
  detachMany?(devs: LoopDevice[]): unknown[];
  /**
   * LOOP_SET_CAPACITY for a scope that does it on the caller's behalf (a broker);
   * absent: the caller opens the device itself.
   */
  setCapacity?(dev: LoopDevice): void;
  /** LOOP_SET_DIRECT_IO on the caller's behalf (a broker); absent: the caller does it. */
  setDirectIo?(dev: LoopDevice, on: boolean): void;
  /** LOOP_SET_BLOCK_SIZE on the caller's behalf (a broker); absent: the caller does it. */
  setBlockSize?(dev: LoopDevice, size: number): void;
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
