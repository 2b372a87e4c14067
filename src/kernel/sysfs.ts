/**
 * Loop device attributes from sysfs (`/sys/block/loopN/...`).
 *
 * util-linux prefers sysfs over LOOP_GET_STATUS64 for everything sysfs has: it needs
 * no open() of the device (so it works without permission on the node) and it
 * carries the full backing-file path, where loop_info64 truncates it to 64 bytes.
 * Every reader returns null when the attribute is missing (device unbound or gone).
 */
import { opendirSync, readFileSync, statSync } from 'node:fs';
import { native } from './native.js';

export const SYS_BLOCK = '/sys/block';

/** sysfs terminates values with one newline; anything else is data (a path may end in spaces). */
function stripNewline(s: string): string {
  return s.charCodeAt(s.length - 1) === 10 ? s.slice(0, -1) : s;
}

function readAttrFile(path: string): string | null {
  try {
    return stripNewline(readFileSync(path, 'latin1'));
  } catch {
    // an attribute that is absent (ENOENT: the loop/ group exists only while the device is bound) or unreadable reads as none, as util-linux takes it
    return null;
  }
}

const U64 = /^\s*(\d+)\s*$/;
const FLAG = /^\s*(-?\d+)\s*$/;

function parseU64(s: string | null): bigint | null {
  if (s === null) return null;
  if (s === '0') return 0n; // most offsets and size limits
  const m = U64.exec(s);
  return m ? BigInt(m[1]) : null;
}

function parseFlag(s: string | null): boolean | null {
  if (s === null) return null;
  if (s === '0' || s === '1') return s === '1'; // what the kernel prints for a flag
  const m = FLAG.exec(s);
  return m ? Number(m[1]) !== 0 : null;
}

/** Every attribute a listing shows: prefetched together by {@link SysfsLoop.prefetch}. */
export const LISTING_ATTRS = [
  'loop/offset',
  'loop/sizelimit',
  'loop/autoclear',
  'loop/partscan',
  'loop/dio',
  'loop/backing_file',
  'ro',
  'queue/logical_block_size',
  'dev',
];

/** sysfs shows at most a page; a backing-file path is at most PATH_MAX (4096) bytes plus " (deleted)". */
const ATTR_MAX_BYTES = 4096 + 64;

const NON_ASCII = /[\x80-\xff]/;

/**
 * Decode a latin1-read string back into the UTF-8 path the kernel stored. An ASCII path
 * (nearly all) is already that string: no Buffer round trip per device in a listing.
 */
function bytesToPath(s: string): string {
  return NON_ASCII.test(s) ? Buffer.from(s, 'latin1').toString('utf8') : s;
}

/** The attribute a gated prefetch opens first: it exists only while the device is bound. */
const GATE = 'loop/offset';
const GATE_ONLY: readonly string[] = [GATE];
const NOTHING: readonly string[] = [];

/** The sysfs directory of one block device, e.g. `/sys/block/loop3` or `/sys/dev/block/7:3`. */
export class SysfsLoop {
  /**
   * Prefetched values: `names[j]` is `batch[base + j]` (as read, newline and all; null:
   * absent). The devices of one prefetch share its names and result array, so a listing
   * of thousands of devices allocates no map or copy per device: a CLI runs once, and
   * there the allocation and its garbage collection cost more than the lookups.
   */
  private names: readonly string[] = NOTHING;
  private batch: ReadonlyArray<string | null> = NOTHING;
  private base = 0;

  constructor(readonly dir: string) {}

  /**
   * Read the given attributes of many devices in one native call: a listing of a
   * thousand devices costs one N-API round trip instead of ~9000 readFileSync calls.
   * Values are kept on each SysfsLoop until {@link forget}.
   */
  static prefetch(loops: SysfsLoop[], attrs: readonly string[] = LISTING_ATTRS): void {
    if (loops.length === 0 || attrs.length === 0) return;
    const names = [...attrs];
    const values = native().readFiles(
      loops.map((l) => l.dir),
      names,
      ATTR_MAX_BYTES,
    );
    loops.forEach((l, i) => l.keep(names, values, i * names.length));
  }

  /**
   * The bound devices among `loops` (those with a `loop/offset` attribute), in the order
   * given, each with `attrs` prefetched. One native call: `loop/offset` is opened first
   * and the other attributes only where it exists, so the idle part of a big pool costs
   * one failed openat per device.
   */
  static prefetchBound(loops: SysfsLoop[], attrs: readonly string[] = LISTING_ATTRS): SysfsLoop[] {
    if (loops.length === 0) return [];
    const n = native();
    const names = [GATE, ...new Set(attrs)].filter((a, i) => i === 0 || a !== GATE);
    const values = n.readFiles(
      loops.map((l) => l.dir),
      names,
      ATTR_MAX_BYTES,
      n.constants.READ_FILES_FIRST_GATES,
    );
    const bound: SysfsLoop[] = [];
    for (let i = 0, k = 0; i < loops.length; i++, k += names.length) {
      // unbound (or gone): nothing but the gate was read, the rest reads on demand
      const gateOnly = values[k] === null;
      loops[i].keep(gateOnly ? GATE_ONLY : names, values, k);
      if (!gateOnly) bound.push(loops[i]);
    }
    return bound;
  }

  private keep(names: readonly string[], batch: ReadonlyArray<string | null>, base: number): void {
    this.names = names;
    this.batch = batch;
    this.base = base;
  }

  /** Drop prefetched values (after a change made through this process). */
  forget(): void {
    this.keep(NOTHING, NOTHING, 0);
  }

  private attr(name: string): string | null {
    const j = this.names.indexOf(name);
    if (j < 0) return readAttrFile(`${this.dir}/${name}`);
    const v = this.batch[this.base + j];
    return v === null ? null : stripNewline(v);
  }

  static forName(name: string): SysfsLoop {
    return new SysfsLoop(`${SYS_BLOCK}/${name}`);
  }

  static forDevno(maj: number, min: number): SysfsLoop {
    return new SysfsLoop(`/sys/dev/block/${maj}:${min}`);
  }

  /** Full backing-file path; the kernel appends " (deleted)" for unlinked files. */
  backingFile(): string | null {
    const s = this.attr('loop/backing_file');
    return s === null ? null : bytesToPath(s);
  }
  offset(): bigint | null {
    return parseU64(this.attr('loop/offset'));
  }
  sizelimit(): bigint | null {
    return parseU64(this.attr('loop/sizelimit'));
  }
  autoclear(): boolean | null {
    return parseFlag(this.attr('loop/autoclear'));
  }
  partscan(): boolean | null {
    return parseFlag(this.attr('loop/partscan'));
  }
  dio(): boolean | null {
    return parseFlag(this.attr('loop/dio'));
  }
  readOnly(): boolean | null {
    return parseFlag(this.attr('ro'));
  }
  logicalBlockSize(): bigint | null {
    return parseU64(this.attr('queue/logical_block_size'));
  }
  /** Size in 512-byte sectors. */
  sizeSectors(): bigint | null {
    return parseU64(this.attr('size'));
  }
  /** "MAJ:MIN" from the `dev` attribute. */
  devno(): [number, number] | null {
    const s = this.attr('dev');
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
    // no such directory (ENOENT: no sysfs, or no devices): no names
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
    // ENOENT: no sysfs mounted here
    return false;
  }
}
