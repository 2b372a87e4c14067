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
  return s.endsWith('\n') ? s.slice(0, -1) : s;
}

function readAttrFile(path: string): string | null {
  try {
    return stripNewline(readFileSync(path, 'latin1'));
  } catch {
    return null;
  }
}

function parseU64(s: string | null): bigint | null {
  if (s === null) return null;
  const t = s.trim();
  return /^\d+$/.test(t) ? BigInt(t) : null;
}

function parseFlag(s: string | null): boolean | null {
  if (s === null) return null;
  const t = s.trim();
  return /^-?\d+$/.test(t) ? Number(t) !== 0 : null;
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

/** Decode a latin1-read string back into the UTF-8 path the kernel stored. */
function bytesToPath(s: string): string {
  return Buffer.from(s, 'latin1').toString('utf8');
}

/** The sysfs directory of one block device, e.g. `/sys/block/loop3` or `/sys/dev/block/7:3`. */
export class SysfsLoop {
  /** Attribute values read so far (null: absent), so a listing reads each file once. */
  private readonly cache = new Map<string, string | null>();

  constructor(readonly dir: string) {}

  /**
   * Read the given attributes of many devices in one native call: a listing of a
   * thousand devices costs one N-API round trip instead of ~9000 readFileSync calls.
   * Values are cached on each SysfsLoop until {@link forget}.
   */
  static prefetch(loops: SysfsLoop[], attrs: readonly string[] = LISTING_ATTRS): void {
    if (loops.length === 0 || attrs.length === 0) return;
    const values = native().readFiles(
      loops.map((l) => l.dir),
      [...attrs],
      ATTR_MAX_BYTES,
    );
    let i = 0;
    for (const l of loops) {
      for (const a of attrs) l.store(a, values[i++]);
    }
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
    const names = ['loop/offset', ...new Set(attrs)].filter((a, i) => i === 0 || a !== 'loop/offset');
    const values = n.readFiles(
      loops.map((l) => l.dir),
      names,
      ATTR_MAX_BYTES,
      n.constants.READ_FILES_FIRST_GATES,
    );
    const bound: SysfsLoop[] = [];
    let i = 0;
    for (const l of loops) {
      if (values[i] === null) {
        // unbound (or gone): nothing else was read
        l.store('loop/offset', null);
        i += names.length;
        continue;
      }
      for (const a of names) l.store(a, values[i++]);
      bound.push(l);
    }
    return bound;
  }

  private store(name: string, v: string | null): void {
    this.cache.set(name, v === null ? null : stripNewline(v));
  }

  /** Drop cached values (after a change made through this process). */
  forget(): void {
    this.cache.clear();
  }

  private attr(name: string): string | null {
    if (this.cache.has(name)) return this.cache.get(name)!;
    return readAttrFile(`${this.dir}/${name}`);
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
