/**
 * The record an instance keeps of itself, under `DIR/.loopfs/` (0700 root):
 *
 *   state.json       identity, owner, limits: written once by `instance create`
 *   devices/loopN    one small record per loop device the instance holds
 *   idle/loopN       empty hint files: held devices believed idle (see below)
 *   releasing        transient: a batch of devices marked "removing" (RELEASING_FILE)
 *
 * One record per device (format version 2) rather than one map of every device (version
 * 1, still read, and migrated under the instance lock): an attach or a release writes
 * and reads only the record of its own device, so its cost stays the same whether the
 * instance holds one device or ten thousand. Each record is replaced atomically (write,
 * fsync, rename, fsync the directory), exactly as the whole map used to be; the record of
 * a plain held device is an empty file, durable with the directory's fsync alone.
 *
 * Only the minors are recorded, not whether they are bound: the kernel (sysfs) is the
 * truth for that, so the record cannot go stale when a device is detached by autoclear
 * or by a stock tool. A minor is recorded *after* its global claim exists (runtime.ts)
 * and forgotten *before* its claim is dropped, so that after a crash at any point the
 * claims are a superset of what records say, and `gc` can settle every difference.
 *
 * The idle hints spare `losetup -f` a look at every held device to find an unbound one:
 * the devices that became idle through our own tools (a `-f` reservation, the pool, a
 * detach that kept its device) are hinted. A hint is never trusted, only a place to look
 * (the device is checked in sysfs before use), and a missing hint costs only a fresh
 * device instead of a reused one; so hints are written without fsync. A device freed
 * behind our back (a stock tool's LOOP_CLR_FD, autoclear after a stock umount) gets its
 * hint from the next full scan (reconcile, gc, a pool refill).
 */
import { statSync } from 'node:fs';
import { randomHex } from './random.js';
import { hasCode } from '../kernel/errors.js';
import { native } from '../kernel/native.js';
import type { PinnedDir } from './pinned-dir.js';

export const STATE_DIR = '.loopfs';
export const STATE_FILE = 'state.json';
export const LOCK_FILE = 'lock';
export const DEVICES_DIR = 'devices';
export const IDLE_DIR = 'idle';
/** Version 2: per-device records; version 1 kept every device in state.json. */
export const STATE_VERSION = 2;
const LEGACY_VERSION = 1;

/** What a held device is doing: `held` normally; `removing` once LOOP_CTL_REMOVE is due. */
export type HeldState = 'held' | 'removing';

export interface HeldDevice {
  state: HeldState;
  /** Partition nodes published for it (`loopNpM`), so they can be removed again. */
  partitions?: string[];
}

/** state.json: what never changes after `instance create`. */
export interface InstanceHeader {
  version: typeof STATE_VERSION;
  id: string;
  owner: { uid: number; gid: number };
  /** Mode of the device nodes (default 0660). */
  mode: number;
  /** Per-instance device limit, or null for none. */
  max: number | null;
  /** Unbound devices kept ready after a detach (for tools that scan nodes). */
  pool: number;
  createdAt: string;
}

/** The whole instance: its header and every device record (read, not stored, as one). */
export interface InstanceState extends InstanceHeader {
  /** Keyed by minor, as a decimal string. */
  devices: Record<string, HeldDevice>;
  /** `instance destroy` has begun (DESTROYING_FILE): every device is on its way out. */
  destroying?: boolean;
}

export function newInstanceId(): string {
  return randomHex(8);
}

export class StateError extends Error {
  constructor(
    readonly dir: string,
    message: string,
  ) {
    super(message);
    this.name = 'StateError';
  }
}

function isUint(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
}

function isHeldDevice(v: unknown): v is HeldDevice {
  const d = v as HeldDevice;
  return (
    !!d &&
    typeof d === 'object' &&
    (d.state === 'held' || d.state === 'removing') &&
    (d.partitions === undefined || (Array.isArray(d.partitions) && d.partitions.every((p) => /^loop\d+p\d+$/.test(p))))
  );
}

/** A parsed state.json: the header, plus the device map of a version-1 file. */
export interface ParsedStateFile {
  header: InstanceHeader;
  legacyDevices: Record<string, HeldDevice> | null;
}

/** Parse and validate; anything unexpected is an error, never silently repaired here. */
export function parseStateFile(dir: string, text: string): ParsedStateFile {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new StateError(dir, 'instance state is not valid JSON');
  }
  const s = raw as Omit<Partial<InstanceState>, "version"> & { version?: number };
  const legacy = !!s && s.version === LEGACY_VERSION;
  const ok =
    s &&
    (s.version === STATE_VERSION || legacy) &&
    typeof s.id === 'string' &&
    /^[0-9a-f]{16}$/.test(s.id) &&
    s.owner &&
    isUint(s.owner.uid) &&
    isUint(s.owner.gid) &&
    isUint(s.mode) &&
    s.mode <= 0o7777 &&
    (s.max === null || isUint(s.max)) &&
    isUint(s.pool) &&
    typeof s.createdAt === 'string' &&
    (!legacy ||
      (s.devices && typeof s.devices === 'object' && Object.entries(s.devices).every(([k, v]) => /^\d+$/.test(k) && isHeldDevice(v))));
  if (!ok) throw new StateError(dir, 'instance state is malformed');
  const header: InstanceHeader = {
    version: STATE_VERSION,
    id: s.id!,
    owner: { uid: s.owner!.uid, gid: s.owner!.gid },
    mode: s.mode!,
    max: s.max!,
    pool: s.pool!,
    createdAt: s.createdAt!,
  };
  return { header, legacyDevices: legacy ? s.devices! : null };
}

export function serializeHeader(h: InstanceHeader): string {
  const { version, id, owner, mode, max, pool, createdAt } = h;
  return `${JSON.stringify({ version, id, owner, mode, max, pool, createdAt }, null, 2)}\n`;
}

const recordName = (minor: number): string => `loop${minor}`;
const RECORD_RE = /^loop(\d+)$/;
/** Far above any record (a device has at most 256 partitions); a longer one is read alone. */
const RECORD_MAX_BYTES = 65536;

/** readFiles() returns bytes as latin1; a record is UTF-8 JSON (nearly always ASCII). */
function latin1ToUtf8(s: string): string {
  return /[\x80-\xff]/.test(s) ? Buffer.from(s, 'latin1').toString('utf8') : s;
}

/**
 * `destroying`: written (durably, one fsync) by `instance destroy` before it touches any
 * device: from then on every device of the instance is on its way out, and whoever takes
 * the instance lock next (gc, a watcher) finishes the destroy instead of using it.
 */
export const DESTROYING_FILE = 'destroying';

/**
 * `releasing`: many devices marked "removing" in one durable step (a release of many,
 * `losetup -D`): the minors, as a JSON array. Whoever takes the instance lock next folds it
 * into the records of those still held (foldReleasing) before anything else, so every
 * holder of the lock sees the marks in the records, as if written one by one; readers
 * without the lock need none (the devices' nodes go only after the mark is durable).
 */
export const RELEASING_FILE = 'releasing';

/**
 * The files of one instance's state, through its pinned `.loopfs`. Readers need no lock;
 * every writer holds the instance lock.
 */
export class StateStore {
  private devicesDir: PinnedDir | null = null;
  private idleDir: PinnedDir | null = null;
  /** state.json as last read; a version-2 header never changes, so it is read once. */
  private cached: ParsedStateFile | null = null;

  constructor(private readonly stateDir: PinnedDir) {}

  close(): void {
    this.devicesDir?.close();
    this.idleDir?.close();
    this.devicesDir = this.idleDir = null;
  }

  /** state.json, or null when it does not exist (a version-1 file is read again each time). */
  readFile(): ParsedStateFile | null {
    if (this.cached && !this.cached.legacyDevices) return this.cached;
    const text = this.stateDir.readFile(STATE_FILE);
    this.cached = text === null ? null : parseStateFile(this.stateDir.path, text);
    return this.cached;
  }

  /** Forget what was read (state.json may have been removed or replaced: gc, destroy). */
  invalidate(): void {
    this.cached = null;
  }

  header(): InstanceHeader | null {
    return this.readFile()?.header ?? null;
  }

  /** Write the header of a new instance (caller holds the instance lock). */
  create(h: InstanceHeader): void {
    // a .loopfs taken over from a create or destroy killed half-way may still hold records
    const dir = this.sub(DEVICES_DIR, true)!;
    for (const name of dir.list()) dir.unlinkQuiet(name);
    const idle = this.sub(IDLE_DIR, true)!;
    for (const name of idle.list()) idle.unlinkQuiet(name);
    this.stateDir.unlinkQuiet(DESTROYING_FILE);
    this.stateDir.unlinkQuiet(RELEASING_FILE);
    this.stateDir.writeFileAtomic(STATE_FILE, serializeHeader(h), 0o644);
    this.cached = { header: h, legacyDevices: null };
  }

  /** The whole state: header and every record (O(devices): for listings, gc, describe). */
  read(): InstanceState | null {
    const f = this.readFile();
    if (!f) return null;
    const s: InstanceState = { ...f.header, devices: f.legacyDevices ?? this.readRecords() };
    if (this.destroying()) s.destroying = true;
    return s;
  }

  /**
   * Turn a version-1 state.json into records and a version-2 header. Caller holds the
   * instance lock. Records first (each fsynced, the directory once), the header last: a
   * kill before the header is replaced leaves a version-1 file, whose map is still the
   * truth, and the next lock migrates again from scratch.
   */
  migrate(): boolean {
    const f = this.readFile();
    if (!f || !f.legacyDevices) return false;
    const dir = this.sub(DEVICES_DIR, true)!;
    this.sub(IDLE_DIR, true);
    for (const name of dir.list()) if (!f.legacyDevices[RECORD_RE.exec(name)?.[1] ?? '']) dir.unlinkQuiet(name);
    for (const [k, d] of Object.entries(f.legacyDevices)) this.writeDevice(Number(k), d, false);
    dir.fsync();
    this.stateDir.writeFileAtomic(STATE_FILE, serializeHeader(f.header), 0o644);
    this.cached = { header: f.header, legacyDevices: null };
    return true;
  }

  /**
   * Every version-2 record (the caller has read state.json once already), read in one
   * native call through the pinned directory: three syscalls a record and no N-API or fs
   * round trips each (a listing of an instance holding a thousand devices spent most of
   * its time reading records one by one). A record that call could not read whole is read
   * again alone, which reports what is wrong with it as before (or finds it removed).
   */
  private readRecords(): Record<string, HeldDevice> {
    const devices: Record<string, HeldDevice> = {};
    const minors = this.names(DEVICES_DIR);
    const dir = this.sub(DEVICES_DIR, false);
    if (!dir || minors.length === 0) return devices;
    const n = native();
    const texts = n.readFiles([`/proc/self/fd/${dir.fd}`], minors.map(recordName), RECORD_MAX_BYTES, n.constants.READ_FILES_NO_FOLLOW);
    minors.forEach((minor, i) => {
      const text = texts[i];
      const d = text === null || text.length >= RECORD_MAX_BYTES ? this.record(minor) : this.parseRecord(minor, latin1ToUtf8(text));
      if (d) devices[minor] = d;
    });
    return devices;
  }

  /** Minors that have a record, ascending (a directory listing: no record is read). */
  minors(): number[] {
    const f = this.readFile();
    if (f?.legacyDevices) return heldMinors({ devices: f.legacyDevices });
    return this.names(DEVICES_DIR);
  }

  /** One device's record, or null when the instance does not hold it. */
  device(minor: number): HeldDevice | null {
    const f = this.readFile();
    if (f?.legacyDevices) return f.legacyDevices[minor] ?? null;
    return this.record(minor);
  }

  /**
   * The version-2 record file of a device, parsed and checked; null when there is none.
   * An empty file is a held device without partitions (see writeDevice).
   */
  private record(minor: number): HeldDevice | null {
    const dir = this.sub(DEVICES_DIR, false);
    const text = dir?.readFile(recordName(minor)) ?? null;
    return text === null ? null : this.parseRecord(minor, text);
  }

  /**
   * When a device's record was last written (ms since the epoch), or null when there is
   * none: whether the record is older than the running kernel (a reboot) decides whether
   * the device it names can still be the one it recorded (reconcile.ts).
   */
  recordWrittenMs(minor: number): number | null {
    const dir = this.sub(DEVICES_DIR, false);
    if (!dir) return null;
    try {
      // through the pinned fd; the name is ours (.loopfs is root's, 0700), no symlink to follow
      return statSync(`/proc/self/fd/${dir.fd}/${recordName(minor)}`).mtimeMs;
    } catch (e) {
      if (hasCode(e, 'ENOENT')) return null;
      throw e;
    }
  }

  /** The text of a device's record, parsed and checked. */
  private parseRecord(minor: number, text: string): HeldDevice {
    if (text === '') return { state: 'held' };
    let d: unknown;
    try {
      d = JSON.parse(text);
    } catch {
      throw new StateError(this.stateDir.path, `device record ${recordName(minor)} is not valid JSON`);
    }
    if (!isHeldDevice(d)) throw new StateError(this.stateDir.path, `device record ${recordName(minor)} is malformed`);
    return d;
  }

  /**
   * Record (or replace the record of) a device, durably, and (unless the caller fsyncs the
   * directory itself, once for a batch) fsync the directory. Caller holds the instance
   * lock, on a version-2 state (LocalInstance.lock migrates).
   *
   * The common record, a device just taken (held, no partitions), is an empty file made
   * with O_EXCL: it has no data to flush, so the directory's fsync alone makes it durable
   * (one fsync per attach instead of two), and no crash can tear it. Any other record is
   * replaced atomically: written, fsynced, renamed.
   */
  writeDevice(minor: number, d: HeldDevice, syncDir = true): void {
    const dir = this.sub(DEVICES_DIR, true)!;
    const plain = d.state === 'held' && !d.partitions?.length;
    if (plain && this.createEmpty(dir, recordName(minor))) {
      if (syncDir) dir.fsync();
      return;
    }
    const rec: HeldDevice = { state: d.state, ...(d.partitions?.length ? { partitions: d.partitions } : {}) };
    dir.writeFileAtomic(recordName(minor), plain ? '' : `${JSON.stringify(rec)}\n`, 0o644, syncDir);
  }

  /** Create an empty file; false when the name exists already. */
  private createEmpty(dir: PinnedDir, name: string): boolean {
    const n = native();
    const c = n.constants;
    try {
      n.close(n.openat(dir.fd, name, c.O_WRONLY | c.O_CREAT | c.O_EXCL | c.O_NOFOLLOW, 0o644));
      return true;
    } catch (e) {
      if (hasCode(e, 'EEXIST')) return false;
      throw e;
    }
  }

  /** fsync the records' directory (after a batch of writeDevice(…, false)). */
  syncDevices(): void {
    this.sub(DEVICES_DIR, false)?.fsync();
  }

  /** Forget devices, durably: the unlinks, then one fsync of the directory. */
  removeDevices(minors: number[]): void {
    const dir = this.sub(DEVICES_DIR, false);
    let changed = false;
    for (const m of minors) if (dir?.unlinkQuiet(recordName(m))) changed = true;
    if (changed) dir!.fsync();
    if (minors.length === 1) this.dropIdle(minors[0]);
    else {
      const gone = new Set(minors);
      for (const m of this.idleHints()) if (gone.has(m)) this.dropIdle(m);
    }
  }

  /** Temporaries of record writes a kill interrupted. Caller holds the instance lock. */
  removeTempFiles(): string[] {
    const removed: string[] = [];
    for (const name of [DEVICES_DIR, IDLE_DIR] as const) {
      const dir = this.sub(name, false);
      if (!dir) continue;
      for (const n of dir.list()) {
        if (RECORD_RE.test(n)) continue;
        dir.unlinkQuiet(n);
        removed.push(`${name}/${n}`);
      }
    }
    return removed;
  }

  // ---------------------------------------------------------------- batch release mark

  /** Mark `minors` "removing" with one durable write (RELEASING_FILE). Caller holds the lock. */
  markReleasing(minors: number[]): void {
    this.stateDir.writeFileAtomic(RELEASING_FILE, `${JSON.stringify(minors)}\n`, 0o600);
  }

  /**
   * Write the batch mark into the records of the devices it names that are still recorded
   * (durably, one directory fsync), then drop the mark. Caller holds the lock.
   */
  foldReleasing(): void {
    const text = this.stateDir.readFile(RELEASING_FILE);
    if (text === null) return;
    let minors: unknown = null;
    try {
      minors = JSON.parse(text);
    } catch {
      /* written atomically, so never torn: a foreign file, dropped */
    }
    let wrote = false;
    for (const m of Array.isArray(minors) ? minors : []) {
      if (!isUint(m)) continue;
      const d = this.device(m);
      if (!d || d.state === 'removing') continue;
      this.writeDevice(m, { ...d, state: 'removing' }, false);
      wrote = true;
    }
    if (wrote) this.syncDevices();
    this.stateDir.unlinkQuiet(RELEASING_FILE);
    this.stateDir.fsync();
  }

  // ---------------------------------------------------------------- destroy marker

  destroying(): boolean {
    return this.stateDir.lstat(DESTROYING_FILE) !== null;
  }

  /** The one durable step that marks every device of the instance for removal. */
  markDestroying(): void {
    if (!this.destroying()) this.stateDir.writeFileAtomic(DESTROYING_FILE, `${new Date().toISOString()}\n`, 0o600);
  }

  // ---------------------------------------------------------------- idle hints

  /** Minors hinted idle, ascending (unverified). */
  idleHints(): number[] {
    return this.names(IDLE_DIR);
  }

  noteIdle(minor: number): void {
    const dir = this.sub(IDLE_DIR, true)!;
    const n = native();
    const c = n.constants;
    n.close(n.openat(dir.fd, recordName(minor), c.O_WRONLY | c.O_CREAT | c.O_NOFOLLOW | c.O_NONBLOCK, 0o600));
  }

  dropIdle(minor: number): void {
    this.sub(IDLE_DIR, false)?.unlinkQuiet(recordName(minor));
  }

  private names(name: typeof DEVICES_DIR | typeof IDLE_DIR): number[] {
    const dir = this.sub(name, false);
    if (!dir) return [];
    const result: number[] = [];
    for (const n of dir.list()) {
      const m = RECORD_RE.exec(n);
      if (m) result.push(Number(m[1]));
    }
    return result.sort((a, b) => a - b);
  }

  /** A subdirectory of .loopfs, opened once; created when `create` (under the lock). */
  private sub(name: typeof DEVICES_DIR | typeof IDLE_DIR, create: boolean): PinnedDir | null {
    const cached = name === DEVICES_DIR ? this.devicesDir : this.idleDir;
    if (cached) return cached;
    let dir: PinnedDir;
    try {
      dir = this.stateDir.openSub(name);
    } catch (e) {
      if (!hasCode(e, 'ENOENT')) throw e;
      if (!create) return null;
      try {
        this.stateDir.mkdir(name, 0o700);
      } catch (e2) {
        if (!hasCode(e2, 'EEXIST')) throw e2;
      }
      dir = this.stateDir.openSub(name);
    }
    if (name === DEVICES_DIR) this.devicesDir = dir;
    else this.idleDir = dir;
    return dir;
  }
}

/** Minors held by the instance, ascending. */
export function heldMinors(s: Pick<InstanceState, 'devices'>): number[] {
  return Object.keys(s.devices)
    .map(Number)
    .sort((a, b) => a - b);
}
