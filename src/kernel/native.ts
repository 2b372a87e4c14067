/**
 * The typed face of the native addon (`native/*.cc`, entry point `native/addon.cc`;
 * built into `native/build/Release/loopfs.node` by `native/build.mjs`).
 *
 * The addon is syscalls and ioctls only: no policy, no retries, no printing. Every
 * function is synchronous (each call is one short syscall) and throws a {@link SysError}
 * on failure. Only `src/kernel/` imports this module; everything above talks to the
 * kernel through `LoopControl` and `LoopDevice`.
 *
 * The addon is loaded lazily on first use so that commands which can answer from
 * sysfs alone (`losetup -l` as non-root, `losetup -f` via sysfs) never pay for dlopen().
 */
import { createRequire } from 'node:module';

/** `struct loop_info64` (linux/loop.h). 64-bit fields are bigint: offsets may exceed 2^53. */
export interface LoopInfo64 {
  device: bigint; // lo_device: st_dev of the backing file (read-only)
  inode: bigint; // lo_inode: st_ino of the backing file (read-only)
  rdevice: bigint; // lo_rdevice (read-only)
  offset: bigint;
  sizelimit: bigint; // 0 == up to the end of the file
  number: number; // lo_number (read-only)
  encryptType: number; // obsolete, ignored by the kernel
  encryptKeySize: number;
  flags: number; // LO_FLAGS_*
  fileName: Buffer; // lo_file_name: exactly 64 bytes, NUL padded
  cryptName: Buffer; // lo_crypt_name: exactly 64 bytes, NUL padded
}

/** Input form of loop_info64: omitted fields are zero; names are truncated to 63 bytes + NUL. */
export interface LoopInfo64Input {
  offset?: bigint;
  sizelimit?: bigint;
  flags?: number;
  fileName?: Buffer | string;
  cryptName?: Buffer | string;
}

/** Subset of `struct stat` (from fstat(2)); dev_t split with glibc's major()/minor(). */
export interface NativeStat {
  dev: bigint;
  ino: bigint;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: bigint;
  size: bigint;
  devMajor: number;
  devMinor: number;
  rdevMajor: number;
  rdevMinor: number;
}

export interface NativeStatfs {
  type: number; // f_type (filesystem magic)
  bsize: number;
  blocks: bigint;
  bfree: bigint;
  bavail: bigint;
}

export interface NativeConstants {
  O_RDONLY: number;
  O_WRONLY: number;
  O_RDWR: number;
  O_CREAT: number;
  O_EXCL: number;
  O_DIRECT: number;
  O_NOFOLLOW: number;
  O_DIRECTORY: number;
  O_PATH: number;
  O_NONBLOCK: number;
  O_TRUNC: number;
  AT_FDCWD: number;
  AT_REMOVEDIR: number;
  LO_FLAGS_READ_ONLY: number;
  LO_FLAGS_AUTOCLEAR: number;
  LO_FLAGS_PARTSCAN: number;
  LO_FLAGS_DIRECT_IO: number;
  LOCK_SH: number;
  LOCK_EX: number;
  LOCK_UN: number;
  LOCK_NB: number;
  S_IFMT: number;
  S_IFBLK: number;
  S_IFCHR: number;
  S_IFREG: number;
  S_IFDIR: number;
  S_IFLNK: number;
  S_IFSOCK: number;
  LOOP_MAJOR: number;
}

export interface NativeAddon {
  constants: NativeConstants;
  /** strerror(3) text of an errno, as glibc prints it ("No such device or address"). */
  strerror(errno: number): string;
  /** open(2); O_CLOEXEC is always added. Mode used only with O_CREAT. */
  open(path: string, flags: number, mode?: number): number;
  /** openat(2) relative to a directory fd; O_CLOEXEC is always added. */
  openat(dirfd: number, name: string, flags: number, mode?: number): number;
  close(fd: number): void;

  /** ioctl(LOOP_CTL_GET_FREE): index of a free device (the kernel adds one if needed). */
  ctlGetFree(ctlFd: number): number;
  /** ioctl(LOOP_CTL_ADD, n): returns n. EEXIST when it exists. */
  ctlAdd(ctlFd: number, index: number): number;
  /** ioctl(LOOP_CTL_REMOVE, n): returns n. EBUSY while bound or open elsewhere. */
  ctlRemove(ctlFd: number, index: number): number;

  /** ioctl(LOOP_CONFIGURE) with struct loop_config { fd, block_size, info }. */
  loopConfigure(fd: number, backingFd: number, info: LoopInfo64Input, blockSize: number): void;
  /** ioctl(LOOP_SET_FD, backingFd). */
  loopSetFd(fd: number, backingFd: number): void;
  /** ioctl(LOOP_CLR_FD). */
  loopClrFd(fd: number): void;
  /** ioctl(LOOP_GET_STATUS64). ENXIO when the device is not bound. */
  loopGetStatus64(fd: number): LoopInfo64;
  /** ioctl(LOOP_SET_STATUS64). */
  loopSetStatus64(fd: number, info: LoopInfo64Input): void;
  /** ioctl(LOOP_SET_CAPACITY). */
  loopSetCapacity(fd: number): void;
  /** ioctl(LOOP_SET_DIRECT_IO, on ? 1 : 0). */
  loopSetDirectIo(fd: number, on: boolean): void;
  /** ioctl(LOOP_SET_BLOCK_SIZE, size). */
  loopSetBlockSize(fd: number, size: number): void;

  /** ioctl(BLKGETSIZE64): device size in bytes. */
  blkGetSize64(fd: number): bigint;
  /** ioctl(BLKSSZGET): logical sector size. */
  blkSszGet(fd: number): number;
  /** ioctl(BLKRAGET) / ioctl(BLKRASET): read-ahead in 512-byte sectors. */
  blkRaGet(fd: number): number;
  blkRaSet(fd: number, sectors: number): void;

  /** flock(2); op is LOCK_SH|LOCK_EX|LOCK_UN, optionally | LOCK_NB (EWOULDBLOCK then: code 'EAGAIN', same errno 11). */
  flock(fd: number, op: number): void;
  fstat(fd: number): NativeStat;
  /** statfs(2) of a path, or fstatfs(2) when given a number. */
  statfs(pathOrFd: string | number): NativeStatfs;
  /** mknod(2): mode includes the file type bits (S_IFBLK | 0660). */
  mknod(path: string, mode: number, major: number, minor: number): void;
  /** mknodat(2) relative to a directory fd. */
  mknodat(dirfd: number, name: string, mode: number, major: number, minor: number): void;
  /** fchown(2). */
  fchown(fd: number, uid: number, gid: number): void;

  // Directory-relative calls for instance directories (native/fs_at.cc): a pinned
  // directory fd, and never a followed symlink in the last component.
  /** renameat(2). */
  renameat(olddirfd: number, oldname: string, newdirfd: number, newname: string): void;
  /** unlinkat(2); flags 0 or AT_REMOVEDIR. */
  unlinkat(dirfd: number, name: string, flags: number): void;
  /** mkdirat(2). */
  mkdirat(dirfd: number, name: string, mode: number): void;
  /** fchownat(2) with AT_SYMLINK_NOFOLLOW. */
  fchownat(dirfd: number, name: string, uid: number, gid: number): void;
  /** fchmodat(2) (follows a final symlink: lstatat first). */
  fchmodat(dirfd: number, name: string, mode: number): void;
  /** fstatat(2) with AT_SYMLINK_NOFOLLOW. */
  lstatat(dirfd: number, name: string): NativeStat;
}

/**
 * Every failing native call throws an Error carrying these fields (like Node's own
 * system errors, but `errno` is the positive C value).
 */
export interface SysError extends Error {
  code: string; // "EBUSY"
  errno: number; // 16
  syscall: string; // "ioctl(LOOP_CONFIGURE)", "open", ...
  path?: string;
  fd?: number;
  description: string; // strerror text: "Device or resource busy"
}

let addon: NativeAddon | undefined;

/** The addon, loaded on first use from `native/build/Release/loopfs.node`. */
export function native(): NativeAddon {
  if (!addon) {
    const require = createRequire(import.meta.url);
    addon = require('../../native/build/Release/loopfs.node') as NativeAddon;
  }
  return addon;
}

export function isSysError(e: unknown): e is SysError {
  return e instanceof Error && typeof (e as SysError).errno === 'number' && typeof (e as SysError).code === 'string';
}
