/**
 * `/sbin/mount.loop`: the helper mount(8) runs for `mount -t loop` and fstab lines of
 * type `loop`, also pleasant to call by hand. argv as libmount builds it:
 *
 *   mount.loop SPEC DIR [-s] [-f] [-n] [-v] [-o OPTS] [-t loop.SUBTYPE] [-N NS]
 *   mount.loop [--instance DIR] SPEC DIR [-o ro,offset=1MiB,...]
 *
 * SPEC is an image file (a device is attached in the resolved instance, autoclear) or a
 * loop device (libmount attaches one itself for `-t loop -o loop|offset=|sizelimit=`).
 *
 * The mount itself is done by `mount -i` (mount(8) without helpers), not by mount(2)
 * from here: it probes the filesystem type with libblkid exactly as `mount -o loop`
 * would, writes utab, and words every failure as mount(8) does, so users see one
 * familiar set of messages. We keep the device open until it returns: an autoclear
 * device with no opener is cleared by the kernel at once.
 *
 * Modules: args.ts the command line and mount(8)'s failures; local.ts the path that
 * mounts with `mount -i`; brokered.ts the path through a loopfs broker.
 */
import { statSync } from 'node:fs';
import { basename } from 'node:path';
import { LOOP_MAJOR, major } from '../kernel/devnum.js';
import { knownInUserNamespace } from '../kernel/process.js';
import { Exit, Output } from '../compat/output.js';
import { formatMountOptions } from '../compat/mount-options.js';
import { InstanceError, resolveScope } from '../instance/resolve.js';
import type { LoopScope } from '../instance/scope.js';
import { fail, fsType, loopSetup, MOUNT_EX_FAIL, MOUNT_EX_USAGE, parse } from './args.js';
import { FUSE_OPTIONS, mountThroughBroker } from './brokered.js';
import { attachImage, runMount, undo, useDevice, type Attached } from './local.js';

export interface MountLoopInvocation {
  argv0: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
}
export async function mountLoop({ argv0, args, env = process.env }: MountLoopInvocation): Promise<number> {
  const out = new Output(basename(argv0));
  let attached: Attached | null = null;
  let scope: LoopScope | null = null;
  try {
    const r = parse(argv0, args, out, env);
    const type = fsType(r, out);
    const ls = loopSetup(r, out);
    try {
      scope = resolveScope(r.instance, env);
    } catch (e) {
      if (e instanceof InstanceError) fail(out, r.dir, e.message);
      throw e;
    }

    let st;
    try {
      st = statSync(r.spec, { bigint: true });
    } catch {
      // any stat failure is util-linux's 'failed to setup loop device'
      fail(out, r.dir, `failed to setup loop device for ${r.spec}`);
    }
    const isLoopDevice = st.isBlockDevice() && major(st.rdev) === LOOP_MAJOR;
    if (!isLoopDevice && !st.isFile()) fail(out, r.dir, `failed to setup loop device for ${r.spec}`);

    const passOn = [...ls.passOn];
    if (ls.readOnly && !passOn.some((o) => o.name === 'ro')) passOn.push({ name: 'ro', value: null });
    if (r.fake) {
      if (r.verbose) out.out(`${out.prog}: fake: would mount ${r.spec} on ${r.dir} (${formatMountOptions(passOn) || 'defaults'})\n`);
      return 0;
    }

    if (scope.mounts) return mountThroughBroker(r, ls, type, scope, scope.mounts, isLoopDevice, out);
    if (ls.passOn.some((o) => FUSE_OPTIONS.has(o.name))) {
      fail(out, r.dir, 'the fuse option needs an instance served by the loopfs broker (loopfs serve)', MOUNT_EX_USAGE);
    }

    attached = isLoopDevice ? useDevice(r, scope, out) : attachImage(r, ls, scope, out);
    if (r.verbose) out.out(`${out.prog}: ${attached.device.path} is ${r.spec}\n`);

    const res = await runMount(r, attached.device, type, passOn, out);
    const stderr = res.stderr;
    if (res.exitCode === 0) {
      if (stderr) out.errRaw(stderr);
      return 0;
    }
    if (res.exitCode === MOUNT_EX_FAIL && /permission denied/i.test(stderr) && knownInUserNamespace()) {
      out.errRaw(
        `mount: ${r.dir}: mount(2) is not permitted in this user namespace, and the instance has no loopfs broker to mount for it.\n`,
      );
    } else if (stderr) {
      out.errRaw(stderr);
    }
    undo(attached, scope);
    attached = null;
    return res.exitCode;
  } catch (e) {
    if (e instanceof Exit) {
      if (attached && e.status !== 0) undo(attached, scope!);
      return e.status;
    }
    if (attached) undo(attached, scope!);
    out.warnx(e instanceof Error ? e.message : String(e));
    return MOUNT_EX_FAIL;
  } finally {
    // the mount (when it succeeded) holds the device now; autoclear frees it at umount
    for (const d of attached?.open ?? []) d.close();
    out.flush();
  }
}

