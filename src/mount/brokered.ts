/**
 * mount.loop for an instance served by a loopfs broker (mount-loop.ts chooses it): the
 * broker attaches the image and hands back a detached mount that we attach to DIR.
 */
import { isSysError } from '../kernel/errors.js';
import { LoopDevice } from '../kernel/loop-device.js';
import { native } from '../kernel/native.js';
import { canonicalize } from '../compat/canonicalize.js';
import { Output } from '../compat/output.js';
import { QuotaError } from '../instance/local-instance.js';
import { BrokerError, type BrokerMount } from '../instance/brokered-instance.js';
import type { BrokeredMounts, LoopScope } from '../instance/scope.js';
import { MOUNT_ATTRS, type MountAttrName } from '../protocol/broker.js';
import { fail, MOUNT_EX_USAGE, type LoopSetup, type MountLoopArgs } from './args.js';
import { flagsFor } from './local.js';

/** fuse: the broker mounts through a userspace driver; nofuse: by the kernel (broker only). */
export const FUSE_OPTIONS = new Set(['fuse', 'nofuse']);

/** Options that only mount(8) and fstab care about: nothing to do for them here. */
const USERSPACE_ONLY = new Set(['rw', 'exec', 'suid', 'dev', 'atime', 'diratime', 'symfollow', 'nofail', '_netdev', 'user', 'users', 'nouser', 'owner', 'group', 'async']);

/**
 * The instance is served by a loopfs broker (we may not mount(2) at all, e.g. as root of
 * a user namespace): the broker attaches the image through its own fd and hands back a
 * detached nosuid,nodev mount, ID-mapped to our user namespace, which we attach to DIR with
 * move_mount. The device is attached with autoclear and held by our connection until the
 * mount holds it: it frees itself at umount, and if we die before that, when the
 * connection closes. `-o fuse` asks for the filesystem to be served by a userspace driver
 * (src/mounting/fuse-driver.ts) instead of the kernel; `-o nofuse` for the kernel where the broker
 * offers both. No utab entry is written: this path runs only where mount(2) is refused,
 * as root of a user namespace, where /run/mount is not writable either (mount(8) there
 * exits 16 when it would need utab, for x- options, which we drop), and umount(8) needs
 * none for an autoclear device.
 */
export function mountThroughBroker(r: MountLoopArgs, ls: LoopSetup, type: string | null, scope: LoopScope, broker: BrokeredMounts, isLoopDevice: boolean, out: Output): number {
  let readOnly = ls.readOnly;
  let fuse: boolean | undefined;
  const attrs: MountAttrName[] = [];
  for (const o of ls.passOn) {
    if (o.name === 'ro' && o.value === null) readOnly = true;
    else if (FUSE_OPTIONS.has(o.name) && o.value === null) fuse = o.name === 'fuse';
    else if ((MOUNT_ATTRS as readonly string[]).includes(o.name) && o.value === null) attrs.push(o.name as MountAttrName);
    else if (o.name === 'suid' || o.name === 'dev') {
      if (!r.sloppy) fail(out, r.dir, `option '${o.name}' is refused by the loopfs broker (its mounts are always nosuid,nodev)`, MOUNT_EX_USAGE);
    } else if (!USERSPACE_ONLY.has(o.name) && !r.sloppy) {
      fail(out, r.dir, `option '${o.name}' cannot be passed through the loopfs broker`, MOUNT_EX_USAGE);
    }
  }
  if (r.namespace) fail(out, r.dir, 'mounting into another namespace (-N) is not supported through the loopfs broker', MOUNT_EX_USAGE);

  let device: LoopDevice;
  let attachedHere = false;
  if (isLoopDevice) {
    try {
      scope.checkDevice(r.spec);
    } catch {
      // any reason the device is not the instance's is worded the same
      fail(out, r.dir, `${r.spec} is not a loop device of this instance`);
    }
    device = new LoopDevice(r.spec);
  } else {
    if (ls.explicitDevice) fail(out, r.dir, 'loop=DEVICE is not supported through the loopfs broker', MOUNT_EX_USAGE);
    const request = { file: canonicalize(r.spec), offset: ls.offset, sizelimit: ls.sizelimit, flags: flagsFor(ls) };
    try {
      const a = scope.allocate(request);
      device = a.device;
      readOnly ||= a.readOnly;
      attachedHere = true;
    } catch (e) {
      if (e instanceof QuotaError) fail(out, r.dir, e.message);
      // the broker itself failed (no answer, went away): say so, not "failed to setup"
      if (e instanceof BrokerError && e.kind === undefined) fail(out, r.dir, e.message);
      fail(out, r.dir, `failed to setup loop device for ${r.spec}`);
    }
  }
  if (r.verbose) out.out(`${out.prog}: ${device.path} is ${r.spec}\n`);

  const undo = () => {
    if (!attachedHere) return;
    try {
      scope.detach(device);
    } catch {
      /* autoclear frees it when our connection closes */
    }
  };
  let m: BrokerMount;
  try {
    m = broker.mount(device, { fstype: type, readOnly, attrs, fuse });
  } catch (e) {
    undo();
    fail(out, r.dir, e instanceof Error ? e.message : String(e));
  }
  const n = native();
  try {
    n.moveMount(m.fd, n.constants.AT_FDCWD, r.dir, n.constants.MOVE_MOUNT_F_EMPTY_PATH);
  } catch (e) {
    n.close(m.fd); // the detached mount goes away with its last fd
    undo();
    fail(out, r.dir, `cannot attach the mount: ${isSysError(e) ? e.description : String(e)}`);
  }
  n.close(m.fd);
  if (r.verbose) {
    const how = `${m.fstype}${m.fuse ? `, FUSE: ${m.fuse}` : ''}${m.readOnly ? ', ro' : ''}${m.idmapped ? ', idmapped' : ''}`;
    out.out(`${out.prog}: mounted ${device.path} (${how}) on ${r.dir}\n`);
  }
  return 0;
}

