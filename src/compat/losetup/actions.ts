/**
 * One function per losetup action, each printing exactly what util-linux 2.38.1
 * prints. The kernel work goes through the scope (host or instance) and the typed
 * kernel layer; this module only decides what to say.
 */
import { existsSync, accessSync, constants as fsConstants, statSync } from 'node:fs';
import { canonicalize } from '../canonicalize.js';
import { attach, AttachError } from '../../kernel/attach.js';
import { NoFreeDeviceError } from '../../kernel/allocate.js';
import { toSysError } from '../../kernel/errors.js';
import { LoopDevice } from '../../kernel/loop-device.js';
import { QuotaError } from '../../instance/local-instance.js';
import type { LoopScope } from '../../instance/scope.js';
import type { Output } from '../output.js';
import { renderTable } from '../smartcols.js';
import { COLUMNS } from './columns.js';
import type { LosetupPlan } from './options.js';
import { LO_FLAGS_AUTOCLEAR, LO_FLAGS_READ_ONLY } from './options.js';
import { deviceLine } from './print-line.js';
import { FileMatcher, findOverlap } from '../overlap.js';
import { localeIsUtf8 } from '../locale.js';

export interface ActionContext {
  plan: LosetupPlan;
  scope: LoopScope;
  out: Output;
}

const describe = (e: unknown): string => toSysError(e).description;

/** Returns the exit status. */
export function runAction(ctx: ActionContext): number {
  switch (ctx.plan.action) {
    case 'create':
      return create(ctx);
    case 'delete':
      return detach(ctx);
    case 'delete-all':
      return detachAll(ctx);
    case 'find-free':
      return findFree(ctx);
    case 'show':
      return ctx.plan.list ? showTable(ctx, null) : showAll(ctx);
    case 'show-one':
      return showOne(ctx);
    case 'set-capacity':
      return ioctlOn(ctx, 'set capacity failed', (d) => ctx.scope.control.setCapacity(d));
    case 'set-direct-io':
      return ioctlOn(ctx, 'set direct io failed', (d) => ctx.scope.control.setDirectIo(d, ctx.plan.useDirectIo));
    case 'set-blocksize': {
      const size = Number(ctx.plan.blockSize);
      return ioctlOn(ctx, 'set logical block size failed', (d) => ctx.scope.control.setBlockSize(d, size));
    }
  }
}

// ---------------------------------------------------------------- listing

/** The `-a`/`-j` line reads these; a table reads its columns' attributes. */
const LINE_ATTRS = ['loop/backing_file', 'loop/offset', 'loop/sizelimit'];

function selectedDevices(ctx: ActionContext, attrs: readonly string[]): LoopDevice[] {
  const { plan, scope } = ctx;
  const devices = scope.usedDevices(attrs);
  if (plan.file === null) return devices;
  const m = new FileMatcher(plan.file, plan.offsetSet ? plan.offset : null);
  return devices.filter((d) => m.matches(d));
}

function showAll(ctx: ActionContext): number {
  const devices = selectedDevices(ctx, LINE_ATTRS);
  LoopDevice.prefetchStatus(devices); // every line shows the backing file's device and inode
  for (const dev of devices) {
    const line = deviceLine(dev);
    // closed at once, as util-linux does: a thousand devices would otherwise hold a
    // thousand fds (LOOP_GET_STATUS64 opens each) until the process exits
    dev.close();
    if (line !== null) ctx.out.out(line);
  }
  return 0;
}

function showTable(ctx: ActionContext, single: LoopDevice | null): number {
  const { plan, out } = ctx;
  const cols = plan.columns.map((i) => COLUMNS[i]);
  const devices = single ? [single] : selectedDevices(ctx, cols.flatMap((c) => c.attrs));
  if (cols.some((c) => c.status)) LoopDevice.prefetchStatus(devices);
  const rows = devices.map((d) => {
    const row = cols.map((c) => c.value(d));
    d.close(); // BACK-INO and BACK-MAJ:MIN open the device (see showAll)
    return row;
  });
  const mode = plan.json ? 'json' : plan.raw ? 'raw' : 'table';
  out.out(renderTable(cols, rows, { mode, noHeadings: plan.noHeadings, tableName: 'loopdevices', utf8: localeIsUtf8() }));
  return 0;
}

function showOne(ctx: ActionContext): number {
  const dev = new LoopDevice(ctx.scope.devicePath(ctx.plan.device!));
  if (ctx.plan.list) return showTable(ctx, dev);
  const line = deviceLine(dev);
  if (line === null) {
    // util-linux reports the errno of the failed sysfs read of loop/backing_file
    ctx.out.warn(dev.path, dev.sysfs() ? 'No such file or directory' : 'No such device or address');
    return 1;
  }
  ctx.out.out(line);
  return 0;
}

// ---------------------------------------------------------------- control

function ioctlOn(ctx: ActionContext, what: string, op: (d: LoopDevice) => void): number {
  const dev = new LoopDevice(ctx.scope.devicePath(ctx.plan.device!));
  try {
    op(dev);
    return 0;
  } catch (e) {
    ctx.out.warn(`${dev.path}: ${what}`, describe(e));
    return 1;
  } finally {
    dev.close();
  }
}

/** LOOP_CLR_FD on a read-only fd, like util-linux; true on success. */
function detachOne(ctx: ActionContext, dev: LoopDevice): boolean {
  try {
    ctx.scope.detach(dev);
    return true;
  } catch (e) {
    ctx.out.warn(`${dev.path}: detach failed`, describe(e));
    return false;
  }
}

function detach(ctx: ActionContext): number {
  const { plan, out } = ctx;
  const opened: LoopDevice[] = [];
  // util-linux keeps one context: an operand that fails the loop-device check leaves
  // the previous device selected, and that device is detached (again) in its place
  let current = new LoopDevice(ctx.scope.devicePath(plan.device!));
  opened.push(current);
  let failures = detachOne(ctx, current) ? 0 : 1;
  for (const arg of plan.moreDevices) {
    try {
      ctx.scope.checkDevice(arg);
      current = new LoopDevice(ctx.scope.devicePath(arg));
      opened.push(current);
    } catch (e) {
      out.warn(`${arg}: failed to use device`, describe(e));
    }
    if (!detachOne(ctx, current)) failures++;
  }
  for (const d of opened) d.close();
  return failures ? 1 : 0;
}

function detachAll(ctx: ActionContext): number {
  let failures = 0;
  // no listing attributes: -D needs only which devices are bound (~10 sysfs reads each less)
  const devs = ctx.scope.usedDevices([]);
  // the same warnings, in the same order, as one detach() after another
  const errors = ctx.scope.detachMany(devs);
  for (const [i, dev] of devs.entries()) {
    if (errors[i] !== null) {
      ctx.out.warn(`${dev.path}: detach failed`, describe(errors[i]));
      failures++;
    }
    dev.close();
  }
  return failures ? 1 : 0;
}

function findFree(ctx: ActionContext): number {
  try {
    const dev = ctx.scope.findFree();
    ctx.out.out(`${dev.path}\n`);
    return 0;
  } catch (e) {
    if (e instanceof QuotaError) {
      ctx.out.warnx(e.message); // the limit's own words, not a strerror
      return 1;
    }
    let description: string;
    const control = ctx.scope.controlPath;
    // util-linux reports EACCES when loop-control exists but is not writable for us
    if (control && existsSync(control) && !writable(control)) description = 'Permission denied';
    else if (e instanceof NoFreeDeviceError) description = e.cause.description;
    else description = describe(e);
    ctx.out.warn('cannot find an unused loop device', description);
    return 1;
  }
}

function writable(path: string): boolean {
  try {
    accessSync(path, fsConstants.W_OK);
    return true;
  } catch {
    // any refusal (EACCES, EROFS, ENOENT) means: not writable
    return false;
  }
}


// ---------------------------------------------------------------- setup

function create(ctx: ActionContext): number {
  const { plan, out, scope } = ctx;
  const file = plan.file!;
  const hasDevice = plan.device !== null;
  const offset = plan.offsetSet ? plan.offset : 0n;
  const sizelimit = plan.sizelimitSet ? plan.sizelimit : 0n;
  let device: LoopDevice | null = null;

  if (!hasDevice && plan.noOverlap) {
    const o = findOverlap(scope, file, offset, sizelimit);
    if (o.kind === 'overlap') out.errx(`${file}: overlapping loop device exists`);
    if (o.kind === 'full') {
      // re-use the device: once bound read-only its mode cannot change
      if (o.dev.readOnly() && !(plan.loFlags & LO_FLAGS_READ_ONLY)) {
        out.errx(`${file}: overlapping read-only loop device exists`);
      }
      const info = o.dev.tryStatus();
      if (info && info.encryptType !== 0) out.errx(`${file}: overlapping encrypted loop device exists`);
      try {
        if (!info) throw new Error('no status');
        o.dev.setStatus({ ...info, flags: info.flags & ~LO_FLAGS_AUTOCLEAR });
      } catch {
        // util-linux reports any failure of the re-use (no status, an ioctl refused) with this one line
        out.errx(`${file}: failed to re-use loop device`);
      }
      finishCreate(ctx, o.dev);
      return 0;
    }
  }

  // util-linux canonicalises the name before binding; an empty name cannot be, and
  // errno is left at ENOENT
  if (file === '') {
    out.warn(`${file}: failed to use backing file`, 'No such file or directory');
    return 1;
  }

  const devicePath = hasDevice ? scope.devicePath(plan.device!) : null;
  if (devicePath) {
    scope.ensureDevice(devicePath);
    // inside an instance, a device that is not the instance's does not exist
    if (existsSync(devicePath) && !scope.contains(new LoopDevice(devicePath))) {
      out.warn(`${devicePath}: failed to set up loop device`, 'No such device');
      return 1;
    }
    if (plan.noOverlap && findOverlap(scope, file, offset, sizelimit).kind !== 'none') {
      out.errx(`${file}: overlapping loop device exists`);
    }
  }

  const request = {
    file: canonicalize(file),
    offset,
    sizelimit,
    flags: plan.loFlags,
    blockSize: Number(plan.blockSize),
  };
  try {
    if (devicePath) {
      device = new LoopDevice(devicePath);
      attach(device, request);
    } else {
      const allocated = scope.allocate(request);
      allocated.holder?.close();
      device = allocated.device;
    }
  } catch (e) {
    if (e instanceof NoFreeDeviceError) {
      out.warnx('cannot find an unused loop device');
      return 1;
    }
    if (!(e instanceof AttachError)) throw e;
    const blame = devicePath && e.deviceOpenFailed ? devicePath : file;
    out.warn(`${blame}: failed to set up loop device`, e.cause.description);
    return 1;
  } finally {
    device?.close();
  }
  finishCreate(ctx, device);
  return 0;
}

/** After a successful setup: --show, then the size warnings. */
function finishCreate(ctx: ActionContext, dev: LoopDevice): void {
  const { plan, out } = ctx;
  if (plan.showDevice) out.out(`${dev.path}\n`);
  warnSize(out, plan.file!, plan.sizelimitSet ? plan.sizelimit : 0n, plan.offsetSet ? plan.offset : null);
}

/**
 * util-linux warn_size(): the device size is the sizelimit, or the file size minus
 * the offset (unsigned: an offset past the end wraps around, so no warning).
 */
function warnSize(out: Output, file: string, sizelimit: bigint, offset: bigint | null): void {
  let size = sizelimit;
  if (!size) {
    let st;
    try {
      st = statSync(file, { bigint: true });
    } catch {
      // a file that cannot be stat'ed is not a block device: the setup reports its own error later
      return;
    }
    if (st.isBlockDevice()) return;
    size = st.size;
    if (offset !== null) size = BigInt.asUintN(64, size - offset);
  }
  if (size < 512n) {
    out.warnx(`${file}: Warning: file is smaller than 512 bytes; the loop device may be useless or invisible for system tools.`);
  } else if (size % 512n) {
    out.warnx(`${file}: Warning: file does not fit into a 512-byte sector; the end of the file will be ignored.`);
  }
}
