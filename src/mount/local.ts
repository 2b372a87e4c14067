/**
 * mount.loop where it may mount(2) itself (root on the host, or a root-owned instance):
 * the image is attached in the resolved scope (autoclear), or a given loop device used as
 * it is, and `mount -i` mounts it; on failure nothing is left behind (undo).
 */
import { AttachError, attach } from '../kernel/attach.js';
import { NoFreeDeviceError } from '../kernel/allocate.js';
import { isSysError } from '../kernel/errors.js';
import { LoopDevice } from '../kernel/loop-device.js';
import { findInPath, runProgram, type ProgramResult } from '../kernel/run-program.js';
import { native } from '../kernel/native.js';
import { canonicalize } from '../compat/canonicalize.js';
import { findOverlap } from '../compat/overlap.js';
import { Output } from '../compat/output.js';
import { formatMountOptions, type MountOption } from '../compat/mount-options.js';
import { QuotaError } from '../instance/local-instance.js';
import type { LoopScope } from '../instance/scope.js';
import { fail, MOUNT_EX_FAIL, type LoopSetup, type MountLoopArgs } from './args.js';

export interface Attached {
  device: LoopDevice;
  /** fds that keep the autoclear device bound until the mount holds it */
  open: LoopDevice[];
  /** we bound it (and so must undo it on failure) */
  ours: boolean;
}

export function flagsFor(ls: LoopSetup): number {
  const c = native().constants;
  return c.LO_FLAGS_AUTOCLEAR | (ls.readOnly ? c.LO_FLAGS_READ_ONLY : 0) | (ls.directIo === true ? c.LO_FLAGS_DIRECT_IO : 0);
}

export function attachImage(r: MountLoopArgs, ls: LoopSetup, scope: LoopScope, out: Output): Attached {
  const file = canonicalize(r.spec);
  const setupFailed = (): never => fail(out, r.dir, `failed to setup loop device for ${r.spec}`);

  // as libmount: a device already bound to the same range of the file is re-used (so
  // the kernel sees one block device, never one filesystem mounted twice read-write),
  // and a partial overlap is refused
  if (!ls.explicitDevice) {
    const o = findOverlap(scope, r.spec, ls.offset, ls.sizelimit);
    if (o.kind === 'overlap') fail(out, r.dir, `overlapping loop device exists for ${r.spec}`);
    if (o.kind === 'full') {
      if (o.dev.readOnly() && !ls.readOnly) fail(out, r.dir, `cannot mount ${r.spec} read-write, its loop device is read-only`);
      o.dev.open('r');
      return { device: o.dev, open: [o.dev], ours: false };
    }
  }

  const bind = (flags: number, blockSize?: number): Attached => {
    const request = { file, offset: ls.offset, sizelimit: ls.sizelimit, flags, blockSize };
    if (ls.explicitDevice) {
      const path = scope.devicePath(ls.explicitDevice);
      try {
        scope.checkDevice(path);
      } catch {
        // any reason the device is not the instance's: util-linux's setup failure message
        setupFailed();
      }
      const device = new LoopDevice(path);
      attach(device, request);
      return { device, open: [device], ours: true };
    }
    const al = scope.allocate(request);
    return { device: al.device, open: al.holder ? [al.holder, al.device] : [al.device], ours: true };
  };
  /** The one message for a binding that failed (mount(8)'s); anything unexpected goes on. */
  const setupError = (e: unknown): never => {
    if (e instanceof QuotaError) fail(out, r.dir, e.message);
    if (e instanceof AttachError || e instanceof NoFreeDeviceError || isSysError(e)) setupFailed();
    throw e;
  };
  const bindOrFail = (flags: number): Attached => {
    try {
      return bind(flags);
    } catch (e) {
      return setupError(e);
    }
  };

  // Direct I/O by default (no double caching, near the file's own read speed:
  // bench/mount.mjs), asked for in the binding itself: LOOP_SET_DIRECT_IO on a bound
  // device freezes its queue and cost ~20 ms of every mount here, LO_FLAGS_DIRECT_IO in
  // LOOP_CONFIGURE nothing. attach() opens the file O_DIRECT for it. The block size stays
  // the buffered default, 512: with direct I/O asked for, newer kernels would give the
  // device the logical block size of the disk under the file, and a 4Kn disk would make a
  // 1 KiB-block ext4 or a vfat image unmountable. A filesystem that refuses O_DIRECT
  // (EINVAL), or a kernel that declines direct I/O for this binding (block size, offset
  // alignment; older kernels would then read the O_DIRECT file in buffered mode, and
  // fail), gets a buffered binding instead, as `direct-io=off` does.
  let a: Attached | null = null;
  if (ls.directIo === null) {
    const dio = native().constants.LO_FLAGS_DIRECT_IO;
    try {
      a = bind(flagsFor(ls) | dio, 512);
    } catch (e) {
      if (!(e instanceof AttachError && e.fileError && e.code === 'EINVAL')) setupError(e);
    }
    // the status attach() read back to verify the binding: no further ioctl
    if (a && ((a.open[0].tryStatus()?.flags ?? 0) & dio) === 0) {
      undo(a, scope);
      a = null;
    }
  }
  a ??= bindOrFail(flagsFor(ls));
  // and a read-ahead matched to the disk under the file: with direct I/O the loop
  // driver's small default would size every read the disk sees (bench/mount.mjs)
  try {
    a.open[0].matchBackingReadAhead();
  } catch (e) {
    // BLKRASET needs CAP_SYS_ADMIN (a device the broker bound for a user namespace), and
    // the backing disk may have gone meanwhile: the default read-ahead is slower, never wrong
    if (!isSysError(e)) throw e;
  }
  return a;
}

/** SPEC is a loop device: use it as it is (libmount attached it, or the user did). */
export function useDevice(r: MountLoopArgs, scope: LoopScope, out: Output): Attached {
  try {
    scope.checkDevice(r.spec);
  } catch {
    // any reason the device is not the instance's is worded the same
    fail(out, r.dir, `${r.spec} is not a loop device of this instance`);
  }
  const device = new LoopDevice(r.spec);
  try {
    device.open('r');
  } catch (e) {
    fail(out, r.dir, `cannot open ${r.spec}: ${isSysError(e) ? e.description : String(e)}`);
  }
  return { device, open: [device], ours: false };
}

/**
 * Run `mount -i` and collect its stderr (to be reworded only in the user-namespace
 * case). Neither execa (~90 ms to load, bench/mount.mjs) nor node:child_process (~20 ms of
 * modules and a fork, kernel/run-program.ts): this is the helper's hot path. The helper
 * has nothing else to do meanwhile, so it waits for mount(8) blocked. Where a seccomp
 * filter refuses the clone flags of that spawn, node's spawn does it.
 */
export async function runMount(
  r: MountLoopArgs,
  device: LoopDevice,
  type: string | null,
  opts: MountOption[],
  out: Output,
): Promise<{ exitCode: number; stderr: string }> {
  const argv = ['-i'];
  if (r.sloppy) argv.push('-s');
  if (r.noMtab) argv.push('-n');
  if (r.verbose) argv.push('-v');
  if (type) argv.push('-t', type);
  const optText = formatMountOptions(opts);
  if (optText) argv.push('-o', optText);
  if (r.namespace) argv.push('-N', r.namespace);
  argv.push(device.path, r.dir);
  out.flush();
  // execvp's search, as node's spawn did (the same message when there is no mount(8))
  const file = findInPath('mount', process.env.PATH);
  if (file === null) return { exitCode: MOUNT_EX_FAIL, stderr: 'mount: spawn mount ENOENT\n' };
  let res: ProgramResult;
  try {
    res = runProgram(file, ['mount', ...argv], process.env, 1);
  } catch (e) {
    if (isSysError(e) && e.syscall === 'clone') return spawnMount(argv);
    return { exitCode: MOUNT_EX_FAIL, stderr: `mount: ${isSysError(e) ? `${e.path ?? file}: ${e.description}` : String(e)}\n` };
  }
  return { exitCode: res.code ?? (res.signal ? MOUNT_EX_FAIL : 0), stderr: res.stderr };
}

/** runMount's way where spawnVm cannot clone: node's spawn. */
async function spawnMount(argv: string[]): Promise<{ exitCode: number; stderr: string }> {
  const { spawn } = await import('node:child_process');
  return new Promise((resolve) => {
    const child = spawn('mount', argv, { stdio: ['ignore', 'inherit', 'pipe'] });
    const chunks: Buffer[] = [];
    child.stderr.on('data', (b: Buffer) => chunks.push(b));
    child.on('error', (e) => resolve({ exitCode: MOUNT_EX_FAIL, stderr: `mount: ${e.message}\n` }));
    child.on('close', (code, signal) =>
      resolve({ exitCode: code ?? (signal ? MOUNT_EX_FAIL : 0), stderr: Buffer.concat(chunks).toString('utf8') }),
    );
  });
}

/** Leave nothing behind: clear what we bound, then let the scope settle the device. */
export function undo(a: Attached, scope: LoopScope): void {
  if (a.ours) {
    try {
      a.device.clear(); // deferred by the kernel until our fds close below
    } catch {
      /* autoclear does it anyway */
    }
  }
  for (const d of a.open) d.close();
  if (a.ours) scope.settle(a.device);
}

