/**
 * One loop block device node and the ioctls on it.
 *
 * The object is cheap to create: nothing is opened until an operation needs it, and
 * attributes come from sysfs first (no open, no permission needed), ioctls second.
 * Call close() (or use `using`-style try/finally) when done with an opened device.
 */
import { existsSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { LOOP_MAJOR, major, majorOfNumber, minor } from './devnum.js';
import { hasCode, sysError } from './errors.js';
import { native, type LoopInfo64, type LoopInfo64Input } from './native.js';
import { sleepMs } from './sleep.js';
import { SysfsLoop } from './sysfs.js';

export type OpenMode = 'r' | 'rw';

/** Staged configuration applied by {@link LoopDevice.configure} in one place. */
export interface LoopConfig {
  backingFd: number;
  offset?: bigint;
  sizelimit?: bigint;
  flags?: number; // LO_FLAGS_*
  blockSize?: number; // 0/undefined: kernel default
  fileName?: string | Buffer; // lo_file_name (truncated to 63 bytes by the kernel ABI)
  cryptName?: string | Buffer; // lo_crypt_name
}

/** The kernel answers EAGAIN while it flushes the device; util-linux retries 250 ms apart. */
const EAGAIN_RETRIES = 11;
const EAGAIN_DELAY_MS = 250;

export class LoopDevice {
  private fd = -1;
  private mode: OpenMode | null = null;
  private sysfsCache: SysfsLoop | null | undefined;
  private info: LoopInfo64 | null = null;

  constructor(readonly path: string) {}

  /**
   * A device whose sysfs directory is already known (a listing found it by name in
   * /sys/block, possibly with prefetched attributes): no stat() of the node needed.
   */
  static withSysfs(path: string, sys: SysfsLoop): LoopDevice {
    const dev = new LoopDevice(path);
    dev.sysfsCache = sys;
    return dev;
  }

  /** stat() of the node (follows symlinks, as util-linux does). */
  statNode() {
    return statSync(this.path, { bigint: true });
  }

  /** Device number of the node, or null when it is not a block device. */
  devno(): [number, number] | null {
    try {
      const st = this.statNode();
      return st.isBlockDevice() ? [major(st.rdev), minor(st.rdev)] : null;
    } catch {
      // no node (ENOENT) or no access: no device number to report
      return null;
    }
  }

  /** Loop index from the device number (minor), or null. */
  index(): number | null {
    const d = this.devno();
    return d && d[0] === LOOP_MAJOR ? d[1] : null;
  }

  /**
   * The sysfs directory of this device, found through the node's device number so
   * that nodes outside /dev (instance directories) resolve too.
   */
  sysfs(): SysfsLoop | null {
    if (this.sysfsCache === undefined) {
      const d = this.devno();
      const sys = d ? SysfsLoop.forDevno(d[0], d[1]) : null;
      this.sysfsCache = sys && existsSync(sys.dir) ? sys : null;
    }
    return this.sysfsCache;
  }

  /**
   * util-linux reads attributes with ioctls only when the device has no sysfs directory
   * ("no sysfs" mode): with sysfs, a missing attribute means "unbound", and opening the
   * node to ask again would cost an fd, fail for unprivileged users (0600 nodes), and
   * keep a detached device busy. Only the ids (dev/ino) need the ioctl either way.
   */
  private get ioctlFallback(): boolean {
    return this.sysfs() === null;
  }

  /** Open (or reopen in another mode) the device node; returns the fd. */
  open(mode: OpenMode = 'r'): number {
    if (this.fd >= 0 && this.mode === mode) return this.fd;
    this.close();
    const n = native();
    this.fd = n.open(this.path, mode === 'rw' ? n.constants.O_RDWR : n.constants.O_RDONLY);
    this.mode = mode;
    return this.fd;
  }

  get isOpen(): boolean {
    return this.fd >= 0;
  }

  close(): void {
    if (this.fd >= 0) {
      const fd = this.fd;
      this.fd = -1;
      this.mode = null;
      native().close(fd);
    }
  }

  /** LOOP_GET_STATUS64 (cached until the device is reconfigured). ENXIO when unbound. */
  status(): LoopInfo64 {
    if (!this.info) this.info = native().loopGetStatus64(this.open(this.mode ?? 'r'));
    return this.info;
  }

  /**
   * status() of many devices at once, kept as each one's cached status: for `-a` and the
   * BACK-INO and BACK-MAJ:MIN columns of a listing. The native batch asks a thousand on as
   * many threads as CPUs (one after another, the opens and ioctls were ~30 ms of `-a`). A
   * device whose open or ioctl failed is left to ask again itself, and fail as it would
   * have; one already open or with a status is left alone.
   */
  static prefetchStatus(devs: readonly LoopDevice[]): void {
    const todo = devs.filter((d) => !d.info && !d.isOpen);
    if (todo.length < 2) return;
    native()
      .loopStatusMany(todo.map((d) => d.path))
      .forEach((r, i) => {
        if (typeof r !== 'number') todo[i].info = r;
      });
  }

  /** status(), or null when the ioctl fails (unbound, no permission, ...). */
  tryStatus(): LoopInfo64 | null {
    try {
      return this.status();
    } catch {
      // documented above: unbound (ENXIO), no permission, no device
      return null;
    }
  }

  /**
   * Bind the device: LOOP_CONFIGURE (Linux >= 5.8) in one atomic ioctl; on kernels
   * without it (EINVAL/ENOTTY/ENOSYS) fall back to LOOP_SET_FD, LOOP_SET_BLOCK_SIZE
   * and LOOP_SET_STATUS64. The caller owns undoing a partial setup (see attach.ts).
   */
  configure(cfg: LoopConfig): 'configure' | 'set-fd' {
    const n = native();
    // the open mode decides the binding's mode: an fd left read-only by an earlier
    // query would silently give a read-only device
    const fd = this.open((cfg.flags ?? 0) & n.constants.LO_FLAGS_READ_ONLY ? 'r' : 'rw');
    const info: LoopInfo64Input = {
      offset: cfg.offset ?? 0n,
      sizelimit: cfg.sizelimit ?? 0n,
      flags: cfg.flags ?? 0,
      fileName: cfg.fileName,
      cryptName: cfg.cryptName,
    };
    this.changed();
    try {
      n.loopConfigure(fd, cfg.backingFd, info, cfg.blockSize ?? 0);
      return 'configure';
    } catch (e) {
      if (!hasCode(e, 'EINVAL', 'ENOTTY', 'ENOSYS')) throw e;
    }
    n.loopSetFd(fd, cfg.backingFd);
    if (cfg.blockSize) this.setBlockSize(cfg.blockSize);
    this.setStatus(info, Infinity);
    return 'set-fd';
  }

  /** LOOP_SET_STATUS64, retrying while the kernel says EAGAIN. */
  setStatus(info: LoopInfo64Input, retries = EAGAIN_RETRIES): void {
    const fd = this.open(this.mode ?? 'r');
    this.changed();
    this.retryEagain(() => native().loopSetStatus64(fd, info), retries);
  }

  /** LOOP_CLR_FD. If someone else still has the device open, the kernel defers it (autoclear). */
  clear(): void {
    const fd = this.open(this.mode ?? 'r');
    this.changed();
    native().loopClrFd(fd);
  }

  /** LOOP_SET_CAPACITY: re-read the backing file size. */
  setCapacity(): void {
    this.changed();
    native().loopSetCapacity(this.open(this.mode ?? 'r'));
  }

  /** LOOP_SET_DIRECT_IO. */
  setDirectIo(on: boolean): void {
    this.changed();
    native().loopSetDirectIo(this.open(this.mode ?? 'r'), on);
  }

  /** LOOP_SET_BLOCK_SIZE, retrying while the kernel says EAGAIN. */
  setBlockSize(size: number): void {
    this.changed();
    const fd = this.open(this.mode ?? 'r');
    this.retryEagain(() => native().loopSetBlockSize(fd, size), EAGAIN_RETRIES);
  }

  /** BLKGETSIZE64 in bytes. */
  sizeBytes(): bigint {
    return native().blkGetSize64(this.open(this.mode ?? 'r'));
  }

  /** BLKSSZGET: logical sector size. */
  sectorSize(): number {
    return native().blkSszGet(this.open(this.mode ?? 'r'));
  }

  /** BLKRASET: read-ahead in 512-byte sectors. */
  setReadAhead(sectors: number): void {
    native().blkRaSet(this.open(this.mode ?? 'r'), sectors);
  }

  /** BLKRAGET: read-ahead in 512-byte sectors. */
  readAhead(): number {
    return native().blkRaGet(this.open(this.mode ?? 'r'));
  }

  /**
   * Raise the read-ahead to that of the block device holding the backing file, when that
   * is larger. Why: with direct I/O the loop device reads the file with its own requests,
   * so its read-ahead (the loop driver's default, far below a disk's) sizes every read the
   * backing device sees; matched, a sequential read through the loop device runs at the
   * file's own speed (bench/mount.mjs). A file on a filesystem without a block device
   * (tmpfs, overlay: major 0) or a read-ahead already as large: nothing changes.
   * Returns the read-ahead set, in sectors, or null when nothing was changed.
   */
  matchBackingReadAhead(): number | null {
    const ids = this.backingIds();
    if (!ids || major(ids.dev) === 0) return null;
    const sys = `/sys/dev/block/${major(ids.dev)}:${minor(ids.dev)}`;
    // a partition has no queue/ of its own: its disk's is the one that reads
    const kb = readSysfsNumber(`${sys}/queue/read_ahead_kb`) ?? readSysfsNumber(`${sys}/../queue/read_ahead_kb`);
    if (kb === null || kb <= 0) return null;
    const sectors = kb * 2;
    if (this.readAhead() >= sectors) return null;
    this.setReadAhead(sectors);
    return sectors;
  }

  /** Whether sysfs says the device is bound to a file; falls back to the ioctl. */
  isBound(): boolean {
    const sys = this.sysfs();
    if (sys) return sys.offset() !== null;
    try {
      this.status();
      return true;
    } catch (e) {
      if (hasCode(e, 'ENXIO')) return false;
      throw e;
    }
  }

  // ---- attributes: sysfs first, LOOP_GET_STATUS64 second (util-linux's order) ----

  /**
   * Backing file path. sysfs has it in full; loop_info64 only keeps 64 bytes, so the
   * ioctl fallback marks a possibly truncated name with '*' as util-linux does.
   */
  backingFile(): string | null {
    const sys = this.sysfs();
    if (sys) return sys.backingFile();
    const info = this.tryStatus();
    if (!info) return null;
    const name = Buffer.from(info.fileName);
    name[62] = 0x2a; // '*'
    name[63] = 0;
    return cString(name);
  }
  offset(): bigint | null {
    return this.ioctlFallback ? (this.tryStatus()?.offset ?? null) : this.sysfs()!.offset();
  }
  sizelimit(): bigint | null {
    return this.ioctlFallback ? (this.tryStatus()?.sizelimit ?? null) : this.sysfs()!.sizelimit();
  }
  autoclear(): boolean {
    return this.ioctlFallback ? this.flagFromStatus(native().constants.LO_FLAGS_AUTOCLEAR) : !!this.sysfs()!.autoclear();
  }
  readOnly(): boolean {
    return this.ioctlFallback ? this.flagFromStatus(native().constants.LO_FLAGS_READ_ONLY) : !!this.sysfs()!.readOnly();
  }
  directIo(): boolean {
    return this.ioctlFallback ? this.flagFromStatus(native().constants.LO_FLAGS_DIRECT_IO) : !!this.sysfs()!.dio();
  }
  /**
   * sysfs `loop/partscan`; without it (an unbound device) util-linux answers whether the
   * kernel supports partition scanning at all, which every kernel >= 3.2 does: true.
   */
  partscan(): boolean {
    return this.sysfs()?.partscan() ?? true;
  }
  /** Logical sector size: sysfs, else BLKSSZGET. */
  logicalBlockSize(): bigint | null {
    const v = this.sysfs()?.logicalBlockSize();
    if (v != null) return v;
    try {
      return BigInt(this.sectorSize());
    } catch {
      // no sysfs and BLKSSZGET refused: the size is unknown (the listing prints nothing)
      return null;
    }
  }
  /** st_dev and st_ino of the backing file (ioctl only: sysfs does not have them). */
  backingIds(): { dev: bigint; ino: bigint } | null {
    const info = this.tryStatus();
    return info ? { dev: info.device, ino: info.inode } : null;
  }

  private flagFromStatus(flag: number): boolean {
    const info = this.tryStatus();
    return info ? (info.flags & flag) !== 0 : false;
  }

  /** Forget cached state after a change made through this object. */
  private changed(): void {
    this.info = null;
    if (this.sysfsCache) this.sysfsCache.forget();
  }

  private retryEagain(op: () => void, retries: number): void {
    for (let attempt = 0; ; attempt++) {
      try {
        op();
        return;
      } catch (e) {
        if (!hasCode(e, 'EAGAIN') || attempt >= retries) throw e;
        sleepMs(EAGAIN_DELAY_MS);
      }
    }
  }
}

/**
 * util-linux's "is this a loop device" test: the path must stat() to a block device
 * with the loop major, or (for kernels that hand out other majors) be a whole disk
 * whose sysfs name starts with "loop". Throws ENODEV otherwise, the errno util-linux
 * reports ("No such device").
 */
export function assertLoopDevice(path: string): void {
  let st;
  try {
    st = statSync(path, { bigint: true });
  } catch {
    throw sysError('ENODEV', 'stat', path);
  }
  if (st.isBlockDevice()) {
    if (major(st.rdev) === LOOP_MAJOR) return;
    const dir = SysfsLoop.forDevno(major(st.rdev), minor(st.rdev)).dir;
    if (isWholeDisk(dir) && sysfsName(dir)?.startsWith('loop')) return;
  }
  throw sysError('ENODEV', 'stat', path);
}

/**
 * {@link assertLoopDevice} as a yes/no, for a listing that checks a node per device: a
 * plain stat (no BigInt Stats, no exception for a missing node) settles the usual case,
 * a block device with the loop major; anything else takes the full check.
 */
export function isLoopDevice(path: string): boolean {
  const st = statSync(path, { throwIfNoEntry: false });
  if (!st) return false;
  if (st.isBlockDevice() && majorOfNumber(st.rdev) === LOOP_MAJOR) return true;
  try {
    assertLoopDevice(path);
    return true;
  } catch {
    // assertLoopDevice's refusal (ENODEV, ENOENT) is the answer: not a loop device
    return false;
  }
}

/**
 * isLoopDevice() of many paths, in order: one native stat of each, and the slow check of
 * isLoopDevice() only for a block device of another major.
 */
export function areLoopDevices(paths: readonly string[]): boolean[] {
  if (paths.length === 0) return [];
  const rdevs = native().blockRdevs([...paths]);
  return paths.map((p, i) => {
    const rdev = rdevs[i];
    if (rdev < 0) return false;
    return majorOfNumber(rdev) === LOOP_MAJOR || isLoopDevice(p);
  });
}

/** Kernel name of a /sys/dev/block/M:m entry (the last component of its link target). */
function sysfsName(dir: string): string | null {
  try {
    const p = realpathSync(dir);
    return p.slice(p.lastIndexOf('/') + 1);
  } catch {
    // no sysfs directory for it (ENOENT): no name
    return null;
  }
}

/** Partitions have a `partition` attribute; whole disks do not. */
function isWholeDisk(dir: string): boolean {
  return existsSync(`${dir}/dev`) && !existsSync(`${dir}/partition`);
}

/** The bytes of a NUL-terminated C string, decoded as UTF-8. */
export function cString(buf: Buffer): string {
  const end = buf.indexOf(0);
  return buf.subarray(0, end < 0 ? buf.length : end).toString('utf8');
}

/** A decimal sysfs attribute, or null when it does not exist. */
function readSysfsNumber(path: string): number | null {
  try {
    const v = Number(readFileSync(path, 'latin1').trim());
    return Number.isFinite(v) ? v : null;
  } catch (e) {
    if (hasCode(e, 'ENOENT', 'ENOTDIR')) return null;
    throw e;
  }
}
