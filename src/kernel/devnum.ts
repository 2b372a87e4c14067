/**
 * dev_t encoding as glibc's major()/minor() do it, for the dev_t values that
 * fs.statSync(..., { bigint: true }) and LOOP_GET_STATUS64 report.
 */
export const LOOP_MAJOR = 7;

export function major(dev: bigint): number {
  return Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn & 0xfffff000n));
}

export function minor(dev: bigint): number {
  return Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn & 0xffffff00n));
}

export function makedev(maj: number, min: number): bigint {
  const M = BigInt(maj);
  const m = BigInt(min);
  return ((M & 0xfffn) << 8n) | ((M & ~0xfffn) << 32n) | (m & 0xffn) | ((m & ~0xffn) << 12n);
}
