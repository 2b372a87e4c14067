/**
 * Loop device attributes from sysfs (`/sys/block/loopN/...`).
 *
 * util-linux prefers sysfs over LOOP_GET_STATUS64 for everything sysfs has: it needs
 * no open() of the device (so it works without permission on the node) and it
 * carries the full backing-file path, where loop_info64 truncates it to 64 bytes.
 * Every reader returns null when the attribute is missing (device unbound or gone).
 */
import { opendirSync, readFileSync, statSync } from 'node:fs';

export const SYS_BLOCK = '/sys/block';

function readAttr(path: string): string | null {
  try {
    const s = readFileSync(path, 'latin1');
    // sysfs terminates values with one newline; anything else is data (a path may end in spaces)
    return s.endsWith('\n') ? s.slice(0, -1) : s;
  } catch {
    return null;
  }
}

function readU64(path: string): bigint | null {
  const s = readAttr(path);
  if (s === null) return null;
  const t = s.trim();
  return /^\d+$/.test(t) ? BigInt(t) : null;
}

function readFlag(path: string): boolean | null {
  const s = readAttr(path);
  if (s === null) return null;
  const t = s.trim();
  return /^-?\d+$/.test(t) ? Number(t) !== 0 : null;
}

/** Decode a latin1-read string back into the UTF-8 path the kernel stored. */
function bytesToPath(s: string): string {
  return Buffer.from(s, 'latin1').toString('utf8');
}

/** The sysfs directory of one block device, e.g. `/sys/block/loop3` or `/sys/dev/block/7:3`. */
export class SysfsLoop {
  constructor(readonly dir: string) {}

  static forName(name: string): SysfsLoop {
    return new SysfsLoop(`${SYS_BLOCK}/${name}`);
  }

  static forDevno(maj: number, min: number): SysfsLoop {
    return new SysfsLoop(`/sys/dev/block/${maj}:${min}`);
  }

  /** Full backing-file path; the kernel appends " (deleted)" for unlinked files. */
  backingFile(): string | null {
    const s = readAttr(`${this.dir}/loop/backing_file`);
    return s === null ? null : bytesToPath(s);
  }
  offset(): bigint | null {
    return readU64(`${this.dir}/loop/offset`);
  }
  sizelimit(): bigint | null {
    return readU64(`${this.dir}/loop/sizelimit`);
  }
  autoclear(): boolean | null {
    return readFlag(`${this.dir}/loop/autoclear`);
  }
  partscan(): boolean | null {
    return readFlag(`${this.dir}/loop/partscan`);
  }
  dio(): boolean | null {
    return readFlag(`${this.dir}/loop/dio`);
  }
  readOnly(): boolean | null {
    return readFlag(`${this.dir}/ro`);
  }
  logicalBlockSize(): bigint | null {
    return readU64(`${this.dir}/queue/logical_block_size`);
  }
  /** Size in 512-byte sectors. */
  sizeSectors(): bigint | null {
    return readU64(`${this.dir}/size`);
  }
  /** "MAJ:MIN" from the `dev` attribute. */
  devno(): [number, number] | null {
    const s = readAttr(`${this.dir}/dev`);
    const m = s?.trim().match(/^(\d+):(\d+)$/);
    return m ? [Number(m[1]), Number(m[2])] : null;
  }
  /** Whether the device is bound: the `loop/backing_file` attribute exists only then. */
  isBound(): boolean {
    return this.backingFile() !== null;
  }
}

/**
 * Names of loop block devices (`loop0`, `loop12`, ...) in `readdir()` order of
 * /sys/block: util-linux lists in that order, not numerically, and so do we.
 */
export function loopNamesInSysfs(): string[] {
  return readdirRaw(SYS_BLOCK).filter((n) => n.startsWith('loop'));
}

/**
 * Directory entries in the kernel's readdir() order. fs.readdirSync() cannot be
 * used: libuv's scandir sorts the names, which would change util-linux's order.
 */
export function readdirRaw(dir: string): string[] {
  const names: string[] = [];
  let d;
  try {
    d = opendirSync(dir, { bufferSize: 1024 });
  } catch {
    return names;
  }
  try {
    for (let e = d.readSync(); e !== null; e = d.readSync()) names.push(e.name);
  } finally {
    d.closeSync();
  }
  return names;
}

/** Whether sysfs is usable at all (util-linux falls back to ioctls/proc without it). */
export function sysfsAvailable(): boolean {
  try {
    return statSync(SYS_BLOCK).isDirectory();
  } catch {
    return false;
  }
}
