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
 */
import { statSync } from 'node:fs';
import { basename } from 'node:path';
import { spawn } from 'node:child_process';
import { AttachError, attach } from '../kernel/attach.js';
import { NoFreeDeviceError } from '../kernel/allocate.js';
import { LOOP_MAJOR, major } from '../kernel/devnum.js';
import { isSysError } from '../kernel/errors.js';
import { LoopDevice } from '../kernel/loop-device.js';
import { native } from '../kernel/native.js';
import { canonicalize } from '../compat/canonicalize.js';
import { findOverlap } from '../compat/overlap.js';
import { Getopt, type LongOption } from '../compat/getopt.js';
import { Exit, Output } from '../compat/output.js';
import {
  formatMountOptions,
  isReadOnly,
  MountOptionError,
  optionValue,
  parseMountOptions,
  type MountOption,
} from '../compat/mount-options.js';
import { strtosize } from '../compat/strtosize.js';
import { QuotaError } from '../instance/local-instance.js';
import { BrokerError, BrokerScope, type BrokerMount } from '../instance/broker-scope.js';
import { MOUNT_ATTRS, type MountAttrName } from '../protocol/broker.js';
import { InstanceError, resolveScope } from '../instance/resolve.js';
import type { LoopScope } from '../instance/scope.js';
import { versionLine } from '../compat/version.js';

/** mount(8)'s exit statuses. */
export const MOUNT_EX_USAGE = 1;
export const MOUNT_EX_FAIL = 32;

/** Options that select or configure the loop device: consumed here, never passed on. */
const LOOP_OPTIONS = new Set(['loop', 'offset', 'sizelimit', 'encryption', 'direct-io']);
/** Options libmount drops before a helper sees them; a hand-made call may still carry them. */
const DROPPED = new Set(['defaults', 'auto', 'noauto', 'comment']);

const OPT_INSTANCE = 256;
const OPT_HELP = 257;
const OPT_VERSION = 258;
const LONGOPTS: LongOption[] = [
  { name: 'instance', has: 'required', val: OPT_INSTANCE },
  { name: 'help', has: 'none', val: OPT_HELP },
  { name: 'version', has: 'none', val: OPT_VERSION },
];

export interface MountLoopInvocation {
  argv0: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
}

interface Request {
  spec: string;
  dir: string;
  sloppy: boolean;
  fake: boolean;
  noMtab: boolean;
  verbose: boolean;
  options: MountOption[];
  type: string | null;
  namespace: string | null;
  instance: string | null;
}

function usage(prog: string): string {
  return `
Usage:
 ${prog} [--instance <dir>] <image|loopdev> <dir> [-sfnv] [-o <options>] [-t loop.<type>] [-N <ns>]

Mount a filesystem image through a loop device of the current loopfs instance.

Options:
 -o <options>          mount options; loop options: loop[=<loopdev>], offset=<num>,
                         sizelimit=<num>, direct-io[=on|off]; ro makes the device read-only;
                         fuse|nofuse: a userspace driver or the kernel parses the image
                         (instances served by loopfs serve)
 -t loop.<type>        filesystem type (default: probed)
 -s                    tolerate sloppy mount options
 -f                    fake: do everything but attach and mount
 -n                    do not write utab
 -v                    verbose
 -N <ns>               mount in another mount namespace
     --instance <dir>  use the loop devices of instance <dir>
                         (default: $LOOPFS_INSTANCE, then /dev/loopfs, then the host)

 -h, --help            display this help
 -V, --version         display version

For more details see mount.loop(8).
`;
}

function parse(argv0: string, args: string[], out: Output, env: NodeJS.ProcessEnv): Request {
  const g = new Getopt(argv0, args, 'sfnvo:t:N:hV', LONGOPTS, { POSIXLY_CORRECT: env.POSIXLY_CORRECT });
  const r: Request = {
    spec: '',
    dir: '',
    sloppy: false,
    fake: false,
    noMtab: false,
    verbose: false,
    options: [],
    type: null,
    namespace: null,
    instance: null,
  };
  const optionTexts: string[] = [];
  for (let item = g.next(); item !== null; item = g.next()) {
    switch (item.opt) {
      case 's':
        r.sloppy = true;
        break;
      case 'f':
        r.fake = true;
        break;
      case 'n':
        r.noMtab = true;
        break;
      case 'v':
        r.verbose = true;
        break;
      case 'o':
        optionTexts.push(item.arg!);
        break;
      case 't':
        r.type = item.arg!;
        break;
      case 'N':
        r.namespace = item.arg!;
        break;
      case OPT_INSTANCE:
        r.instance = item.arg!;
        break;
      case 'h':
      case OPT_HELP:
        out.out(usage(out.prog));
        throw new Exit(0);
      case 'V':
      case OPT_VERSION:
        out.out(versionLine(out.prog));
        throw new Exit(0);
      default:
        if (item.error) out.errRaw(`${item.error}\n`);
        out.errRaw(`Try '${out.prog} --help' for more information.\n`);
        throw new Exit(MOUNT_EX_USAGE);
    }
  }
  const operands = g.operands();
  if (operands.length !== 2) {
    out.warnx(operands.length < 2 ? 'no image or mount point specified' : 'too many arguments');
    out.errRaw(`Try '${out.prog} --help' for more information.\n`);
    throw new Exit(MOUNT_EX_USAGE);
  }
  [r.spec, r.dir] = operands;
  try {
    r.options = optionTexts.flatMap((t) => parseMountOptions(t));
  } catch (e) {
    if (!(e instanceof MountOptionError)) throw e;
    fail(out, r.dir, `failed to parse mount options '${optionTexts.join(',')}': Invalid argument`, MOUNT_EX_USAGE);
  }
  return r;
}

/** mount(8) style: "mount: DIR: message." */
function fail(out: Output, dir: string, message: string, status = MOUNT_EX_FAIL): never {
  out.errRaw(`mount: ${dir}: ${message}.\n`);
  throw new Exit(status);
}

/** The filesystem type: `-t loop.ext4` names it; `-t loop` (or none) means "probe". */
function fsType(r: Request, out: Output): string | null {
  if (r.type === null || r.type === 'loop' || r.type === 'auto') return null;
  if (r.type.startsWith('loop.')) return r.type.slice(5) || null;
  if (r.type.includes('.')) fail(out, r.dir, `unknown filesystem type '${r.type}'`);
  return r.type;
}

interface LoopSetup {
  offset: bigint;
  sizelimit: bigint;
  explicitDevice: string | null;
  readOnly: boolean;
  /** true/false when asked for; null: on if the backing file allows it (the default) */
  directIo: boolean | null;
  passOn: MountOption[];
}

function loopSetup(r: Request, out: Output): LoopSetup {
  const bad = () => fail(out, r.dir, `failed to parse mount options '${formatMountOptions(r.options)}': Invalid argument`, MOUNT_EX_USAGE);
  const size = (v: string | null | undefined): bigint => {
    if (v === undefined) return 0n;
    if (v === null || v === '') bad();
    try {
      return strtosize(v!);
    } catch {
      return bad();
    }
  };
  if (optionValue(r.options, 'encryption') !== undefined) bad(); // cryptoloop is gone from Linux
  const loop = optionValue(r.options, 'loop');
  const dio = optionValue(r.options, 'direct-io');
  if (dio !== undefined && dio !== null && dio !== 'on' && dio !== 'off') bad();
  return {
    offset: size(optionValue(r.options, 'offset')),
    sizelimit: size(optionValue(r.options, 'sizelimit')),
    explicitDevice: typeof loop === 'string' && loop !== '' ? loop : null,
    readOnly: isReadOnly(r.options),
    directIo: dio === undefined ? null : dio === null || dio === 'on',
    passOn: r.options.filter((o) => !LOOP_OPTIONS.has(o.name) && !DROPPED.has(o.name) && !o.name.startsWith('x-')),
  };
}

interface Attached {
  device: LoopDevice;
  /** fds that keep the autoclear device bound until the mount holds it */
  open: LoopDevice[];
  /** we bound it (and so must undo it on failure) */
  ours: boolean;
}

function flagsFor(ls: LoopSetup): number {
  const c = native().constants;
  return c.LO_FLAGS_AUTOCLEAR | (ls.readOnly ? c.LO_FLAGS_READ_ONLY : 0) | (ls.directIo === true ? c.LO_FLAGS_DIRECT_IO : 0);
}

function attachImage(r: Request, ls: LoopSetup, scope: LoopScope, out: Output): Attached {
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
function useDevice(r: Request, scope: LoopScope, out: Output): Attached {
  try {
    scope.checkDevice(r.spec);
  } catch {
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

/** Whether this process is outside the initial user namespace (where mount(2) is refused). */
function inUserNamespace(): boolean {
  try {
    // the initial user namespace always has inode PROC_USER_INIT_INO (0xEFFFFFFD)
    return statSync('/proc/self/ns/user').ino !== 0xeffffffd;
  } catch {
    return false;
  }
}

/**
 * Run `mount -i` and collect its stderr (to be reworded only in the user-namespace
 * case). node:child_process rather than execa here: this is the helper's hot path, and
 * loading execa would add ~90 ms to every mount (bench/mount.mjs).
 */
function runMount(
  r: Request,
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

    if (scope instanceof BrokerScope) return mountThroughBroker(r, ls, type, scope, isLoopDevice, out);
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
    if (res.exitCode === MOUNT_EX_FAIL && /permission denied/i.test(stderr) && inUserNamespace()) {
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

/** Leave nothing behind: clear what we bound, then let the scope settle the device. */
function undo(a: Attached, scope: LoopScope): void {
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

// ---------------------------------------------------------------- brokered instances

/** fuse: the broker mounts through a userspace driver; nofuse: by the kernel (broker only). */
const FUSE_OPTIONS = new Set(['fuse', 'nofuse']);

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
function mountThroughBroker(r: Request, ls: LoopSetup, type: string | null, scope: BrokerScope, isLoopDevice: boolean, out: Output): number {
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
    m = scope.mount(device, { fstype: type, readOnly, attrs, fuse });
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
