/**
 * dev_t encoding as glibc's major()/minor() do it, for the dev_t values that
 * fs.statSync(..., { bigint: true }) and LOOP_GET_STATUS64 report.
 */
export const LOOP_MAJOR = 7;

export function major(dev: bigint): number {
  return Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn & 0xfffff000n));
}

/** major() of a dev_t held in a number (exact below 2^53): for a listing's thousand stats, no BigInt. */
export function majorOfNumber(dev: number): number {
  return ((dev >>> 8) & 0xfff) | (Math.floor(dev / 2 ** 32) & ~0xfff);
}

export function minor(dev: bigint): number {
  return Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn & 0xffffff00n));
}

export function makedev(maj: number, min: number): bigint {
  const M = BigInt(maj);
  const m = BigInt(min);
  return ((M & 0xfffn) << 8n) | ((M & ~0xfffn) << 32n) | (m & 0xffn) | ((m & ~0xffn) << 12n);
}

/** The host's node of loop device `min` (devtmpfs): the one path every loopfs layer means by it. */
export function hostLoopNode(min: number): string {
  return `/dev/loop${min}`;
}

// st_mode's file type bits on Linux (every architecture): <sys/stat.h>'s S_IFMT and S_IFBLK
const S_IFMT = 0o170000;
const S_IFBLK = 0o060000;

/** What a stat of a node says about it (NativeStat and node's bigint-free Stats alike). */
export interface NodeStat {
  mode: number;
  rdevMajor: number;
  rdevMinor: number;
}

/**
 * Whether `st` is the block device maj:min: the check before a node found in a directory
 * (an instance's, a container's /dev) is trusted to be the device it is named after.
 */
export function isBlockDevice(st: NodeStat | null | undefined, maj: number, min: number): boolean {
  return !!st && (st.mode & S_IFMT) === S_IFBLK && st.rdevMajor === maj && st.rdevMinor === min;
}
