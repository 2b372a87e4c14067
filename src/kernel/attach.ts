/**
 * Binding one loop device to a backing file, with util-linux's semantics:
 * read-only fallback when the file cannot be opened read-write, LOOP_CONFIGURE with
 * the SET_FD fallback, a read-back that proves the device is bound to *our* file,
 * and a size check for offset/sizelimit setups. Every failure leaves the device as
 * it was found.
 */
import { hasCode, sysError, toSysError, type SysError } from './errors.js';
import type { LoopDevice } from './loop-device.js';
import { native } from './native.js';
import { sleepMs } from './sleep.js';

export interface AttachRequest {
  /**
   * Path to open: the caller canonicalises it (realpath) as util-linux does. With
   * `fileFd` nothing is opened and this is only the name recorded in lo_file_name.
   */
  file: string;
  /**
   * An already open backing file (the broker binds the fd a client passed with
   * SCM_RIGHTS, so the client's own permissions decided what it could open). Used as
   * is and never closed here; no read-only fallback and no O_DIRECT re-open: the
   * caller sets LO_FLAGS_READ_ONLY when the fd is not open for writing.
   */
  fileFd?: number;
  offset?: bigint;
  sizelimit?: bigint;
  /** LO_FLAGS_READ_ONLY | LO_FLAGS_PARTSCAN | LO_FLAGS_DIRECT_IO | LO_FLAGS_AUTOCLEAR */
  flags: number;
  blockSize?: number;
  /** lo_crypt_name: the instance layer's ownership tag. */
  cryptName?: string;
  /**
   * The device index came from loop-control a moment ago: its node may not be
   * accessible until udev has applied permissions, so open() is retried briefly.
   */
  freshDevice?: boolean;
}

export interface AttachResult {
  /** The device ended up read-only (asked for, or the file was not writable). */
  readOnly: boolean;
}

/** A failed attach; `deviceOpenFailed` tells util-linux's message which name to blame. */
export class AttachError extends Error {
  constructor(
    readonly cause: SysError,
    readonly deviceOpenFailed: boolean,
    /** The backing file could not be opened: no other device would do better. */
    readonly fileError = false,
  ) {
    super(cause.message);
    this.name = 'AttachError';
  }
  get code(): string {
    return this.cause.code;
  }
}

const UDEV_OPEN_RETRIES = 16;
const UDEV_OPEN_DELAY_MS = 25;

export function attach(dev: LoopDevice, req: AttachRequest): AttachResult {
  const n = native();
  const c = n.constants;
  let flags = req.flags;
  let readOnly = (flags & c.LO_FLAGS_READ_ONLY) !== 0;
  const extra = flags & c.LO_FLAGS_DIRECT_IO ? c.O_DIRECT : 0;

  const ownFd = req.fileFd === undefined;
  let fileFd: number;
  if (ownFd) {
    try {
      fileFd = n.open(req.file, (readOnly ? c.O_RDONLY : c.O_RDWR) | extra);
    } catch (e) {
      // a read-only filesystem or a file we may only read still gives a read-only device
      if (readOnly || !hasCode(e, 'EROFS', 'EACCES')) throw new AttachError(toSysError(e), false, true);
      try {
        fileFd = n.open(req.file, c.O_RDONLY | extra);
      } catch (e2) {
        throw new AttachError(toSysError(e2), false, true);
      }
      readOnly = true;
    }
  } else {
    fileFd = req.fileFd!;
  }
  flags = readOnly ? flags | c.LO_FLAGS_READ_ONLY : flags & ~c.LO_FLAGS_READ_ONLY;

  let deviceOpened = false;
  try {
    openDevice(dev, readOnly ? 'r' : 'rw', req.freshDevice === true);
    deviceOpened = true;
    dev.configure({
      backingFd: fileFd,
      offset: req.offset,
      sizelimit: req.sizelimit,
      flags,
      blockSize: req.blockSize,
      fileName: req.file,
      cryptName: req.cryptName,
    });
    verifyBinding(dev, fileFd, req);
    checkSize(dev, fileFd, req);
    return { readOnly };
  } catch (e) {
    // EBUSY means the device is somebody else's: never clear it. Clearing takes effect
    // at the last close, so our fd goes too: the device is free when attach() returns.
    if (deviceOpened && !hasCode(e, 'EBUSY') && !(e instanceof AttachError && e.code === 'EBUSY')) {
      try {
        dev.clear();
      } catch {
        /* the original error is the one to report */
      }
    }
    dev.close();
    throw e instanceof AttachError ? e : new AttachError(toSysError(e), !deviceOpened);
  } finally {
    if (ownFd) n.close(fileFd);
  }
}

function openDevice(dev: LoopDevice, mode: 'r' | 'rw', fresh: boolean): void {
  for (let attempt = 0; ; attempt++) {
    try {
      dev.open(mode);
      return;
    } catch (e) {
      if (!fresh || !hasCode(e, 'EACCES', 'ENOENT') || attempt >= UDEV_OPEN_RETRIES) throw e;
      sleepMs(UDEV_OPEN_DELAY_MS);
    }
  }
}

/**
 * Read the binding back: a device that a racing process cleared and re-bound between
 * our configure and now must not be reported as ours. Reported as EBUSY so that the
 * allocator retries with another device and nothing clears the stranger's binding.
 */
function verifyBinding(dev: LoopDevice, fileFd: number, req: AttachRequest): void {
  const st = native().fstat(fileFd);
  const info = dev.status();
  if (info.device !== st.dev || info.inode !== st.ino || info.offset !== (req.offset ?? 0n)) {
    throw new AttachError(sysError('EBUSY', 'ioctl(LOOP_GET_STATUS64)', dev.path), false);
  }
}

/**
 * Kernels before 3.9 did not resize a device configured with offset/sizelimit; some
 * still report a stale size until LOOP_SET_CAPACITY. Compare with the size we expect
 * and ask for a resize once; a persistent mismatch is ERANGE, as in util-linux.
 */
function checkSize(dev: LoopDevice, fileFd: number, req: AttachRequest): void {
  const offset = req.offset ?? 0n;
  const sizelimit = req.sizelimit ?? 0n;
  if (!offset && !sizelimit) return;
  const n = native();
  const st = n.fstat(fileFd);
  let expected = (st.mode & n.constants.S_IFMT) === n.constants.S_IFBLK ? n.blkGetSize64(fileFd) : st.size;
  if (expected === 0n || expected <= offset) return; // nothing sensible to compare with
  expected -= offset;
  if (sizelimit > 0n && sizelimit < expected) expected = sizelimit;
  expected -= expected % 512n;
  if (dev.sizeBytes() === expected) return;
  try {
    dev.setCapacity();
  } catch (e) {
    if (hasCode(e, 'ENOTTY', 'EINVAL')) throw new AttachError(sysError('ERANGE', 'ioctl(LOOP_SET_CAPACITY)', dev.path), false);
    throw e;
  }
  if (dev.sizeBytes() !== expected) throw new AttachError(sysError('ERANGE', 'ioctl(BLKGETSIZE64)', dev.path), false);
}
