/**
 * Machine-wide loopfs records under /run/loopfs (tmpfs: they vanish at reboot together
 * with every loop device they describe):
 *
 *   claims/loopN        which instance holds minor N — created with link(), so exactly
 *                       one instance can ever claim a device (the second gets EEXIST)
 *   uids/UID/loopN      empty: an index of the claims by uid, so that the per-uid limit
 *                       counts names in one small directory instead of reading every
 *                       claim of the machine. Made before its claim and dropped after it:
 *                       a kill in between can only over-count (stricter), and gc mends it
 *   next-index          where the last new device was made (a hint for the next one, so an
 *                       attach need not list every device of the machine; see nextIndex)
 *   instances/ID.json   the instances that exist (for `instance ls` and `gc`)
 *   lock                serialises claim changes and per-uid quota counting
 *
 * $LOOPFS_RUNTIME_DIR overrides the location (tests use private ones).
 */
import { mkdirSync, readSync, statSync, writeSync } from 'node:fs';
import { hasCode, isSysError } from '../kernel/errors.js';
import { native } from '../kernel/native.js';
import { PinnedDir } from './pinned-dir.js';

export function runtimeDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.LOOPFS_RUNTIME_DIR || '/run/loopfs';
}

export interface Claim {
  minor: number;
  id: string;
  dir: string;
  uid: number;
  /**
   * Set once the device of a vanished instance has been detached for it (destroy --force,
   * gc): from then on a binding on this minor is not the instance's, and is never cleared.
   */
  cleared?: boolean;
}

export interface RegistryEntry {
  id: string;
  dir: string;
  uid: number;
}

const UIDS_DIR = 'uids';
const NEXT_INDEX_FILE = 'next-index';
/**
 * How many new devices are made from the hint before the next one looks at every device
 * again: the hint only grows (a device given back below it is not seen), so this bounds
 * how far it drifts above the devices that really exist.
 */
const NEXT_INDEX_USES = 64;

export class Runtime {
  private lockFd = -1;
  private uidsDir: PinnedDir | null = null;
  /** uids/UID directories opened so far (a batch of releases opens each once). */
  private readonly uidDirs = new Map<number, PinnedDir>();

  private constructor(
    readonly root: PinnedDir,
    private readonly claimsDir: PinnedDir,
    private readonly instancesDir: PinnedDir,
  ) {}

  static open(env: NodeJS.ProcessEnv = process.env): Runtime {
    const path = runtimeDir(env);
    mkdirSync(`${path}/claims`, { recursive: true, mode: 0o755 });
    mkdirSync(`${path}/instances`, { recursive: true, mode: 0o755 });
    const root = PinnedDir.open(path);
    return new Runtime(root, root.openSub('claims'), root.openSub('instances'));
  }

  close(): void {
    this.unlock();
    for (const d of this.uidDirs.values()) d.close();
    this.uidDirs.clear();
    this.uidsDir?.close();
    this.uidsDir = null;
    this.claimsDir.close();
    this.instancesDir.close();
    this.root.close();
  }

  /** The runtime lock: second in the lock order (LOCK ORDER in local-instance.ts). */
  lock(): void {
    if (this.lockFd >= 0) return;
    const n = native();
    const c = n.constants;
    const fd = n.openat(this.root.fd, 'lock', c.O_RDWR | c.O_CREAT | c.O_NOFOLLOW, 0o600);
    n.flock(fd, c.LOCK_EX);
    this.lockFd = fd;
  }

  unlock(): void {
    if (this.lockFd >= 0) {
      native().close(this.lockFd); // closing drops the flock
      this.lockFd = -1;
    }
  }

  // ---------------------------------------------------------------- claims

  /** Claim a minor for an instance; false when another claim exists already. Caller holds the lock. */
  claim(c: Claim): boolean {
    // the uid index first: a kill before the claim exists leaves an entry too many
    const indexed = this.indexUid(c.uid, c.minor);
    try {
      this.claimsDir.createExclusive(`loop${c.minor}`, `${JSON.stringify(c)}\n`);
      return true;
    } catch (e) {
      // an entry that existed before belongs to the claim that won (same uid) or is gc's
      if (indexed) this.unindexUid(c.uid, c.minor);
      if (hasCode(e, 'EEXIST')) return false;
      throw e;
    }
  }

  /** Drop a claim, but only if it is this instance's. Caller holds the lock. */
  release(minor: number, id: string): void {
    const c = this.claimOf(minor);
    if (!c || c.id !== id) return;
    this.claimsDir.unlinkQuiet(`loop${minor}`);
    this.unindexUid(c.uid, minor); // after the claim: a kill in between over-counts
  }

  /** Record that the claim's device was detached for its vanished instance (see Claim). */
  markCleared(c: Claim): void {
    const cur = this.claimOf(c.minor);
    if (!cur || cur.id !== c.id || cur.cleared) return;
    this.claimsDir.writeFileAtomic(`loop${c.minor}`, `${JSON.stringify({ ...cur, cleared: true })}\n`);
  }

  claimOf(minor: number): Claim | null {
    const text = this.claimsDir.readFile(`loop${minor}`);
    if (text === null) return null;
    try {
      const c = JSON.parse(text) as Claim;
      return typeof c.id === 'string' && typeof c.uid === 'number' ? { ...c, minor } : null;
    } catch {
      // not JSON: link() writes a claim whole, so only tampering makes one (junkClaims reports it)
      return null;
    }
  }

  claims(): Claim[] {
    const result: Claim[] = [];
    for (const name of this.claimsDir.list()) {
      const m = /^loop(\d+)$/.exec(name);
      if (!m) continue;
      const c = this.claimOf(Number(m[1]));
      if (c) result.push(c);
    }
    return result.sort((a, b) => a.minor - b.minor);
  }

  /** Claim files that are not parseable (a crash cannot produce them: link() is atomic). */
  junkClaims(): string[] {
    return this.claimsDir.list().filter((n) => /^loop\d+$/.test(n) && this.claimOf(Number(n.slice(4))) === null);
  }

  removeClaimFile(name: string): void {
    this.claimsDir.unlinkQuiet(name);
  }

  /**
   * Temporaries of claim and registry writes that a kill interrupted (createExclusive,
   * writeFileAtomic). Claims and registry entries are written under the runtime lock, so
   * with the lock held any temporary is dead. Caller holds the lock. Returns the names.
   */
  removeTempFiles(): string[] {
    const removed: string[] = [];
    for (const dir of [this.claimsDir, this.instancesDir]) {
      for (const n of dir.list()) {
        if (!n.startsWith('.') || !n.endsWith('.tmp')) continue;
        dir.unlinkQuiet(n);
        removed.push(n);
      }
    }
    return removed;
  }

  /**
   * How many devices `uid` holds: the names in its index directory (never a claim read).
   * Caller holds the lock. May count a claim whose creation or removal a kill interrupted
   * (until gc: syncUidIndex); never misses one.
   */
  countClaimsOfUid(uid: number): number {
    const dir = this.uidDir(uid, false);
    return dir ? dir.list().filter((n) => /^loop\d+$/.test(n)).length : 0;
  }

  /**
   * Make the uid index say exactly what the claims say (gc; caller holds the lock): entries
   * a kill left without their claim go, claims without an entry get one. Returns the
   * changes, as "uid UID: loopN added|dropped".
   */
  syncUidIndex(): string[] {
    const want = new Map<string, Set<string>>();
    for (const c of this.claims()) {
      const set = want.get(String(c.uid)) ?? new Set<string>();
      set.add(`loop${c.minor}`);
      want.set(String(c.uid), set);
    }
    const changes: string[] = [];
    const present = new Set<string>();
    const root = this.uids();
    for (const uid of root.list()) {
      if (!/^\d+$/.test(uid)) continue;
      const dir = root.openSub(uid);
      try {
        for (const n of dir.list()) {
          if (!/^loop\d+$/.test(n)) continue;
          if (want.get(uid)?.has(n)) present.add(`${uid}/${n}`);
          else if (dir.unlinkQuiet(n)) changes.push(`uid ${uid}: ${n} dropped`);
        }
      } finally {
        dir.close();
      }
    }
    for (const [uid, names] of want) {
      for (const n of names) {
        if (present.has(`${uid}/${n}`)) continue;
        this.indexUid(Number(uid), Number(n.slice(4)));
        changes.push(`uid ${uid}: ${n} added`);
      }
    }
    return changes;
  }

  /**
   * runtime/uids, opened once; made (and filled from the claims) on first use, under the
   * lock, where an older loopfs left claims without an index.
   */
  private uids(): PinnedDir {
    if (this.uidsDir) return this.uidsDir;
    try {
      this.uidsDir = this.root.openSub(UIDS_DIR);
      return this.uidsDir;
    } catch (e) {
      if (!hasCode(e, 'ENOENT')) throw e;
    }
    try {
      this.root.mkdir(UIDS_DIR, 0o755);
    } catch (e) {
      if (!hasCode(e, 'EEXIST')) throw e;
    }
    this.uidsDir = this.root.openSub(UIDS_DIR);
    for (const c of this.claims()) this.indexUid(c.uid, c.minor);
    return this.uidsDir;
  }

  /** uids/UID, opened once per Runtime (null when missing and not `create`). */
  private uidDir(uid: number, create: boolean): PinnedDir | null {
    const cached = this.uidDirs.get(uid);
    if (cached) return cached;
    const name = String(uid);
    let dir: PinnedDir;
    try {
      dir = this.uids().openSub(name);
    } catch (e) {
      if (!hasCode(e, 'ENOENT')) throw e;
      if (!create) return null;
      try {
        this.uids().mkdir(name, 0o755);
      } catch (e2) {
        if (!hasCode(e2, 'EEXIST')) throw e2;
      }
      dir = this.uids().openSub(name);
    }
    this.uidDirs.set(uid, dir);
    return dir;
  }

  /** Add uids/UID/loopN; false when it existed already. */
  private indexUid(uid: number, minor: number): boolean {
    const dir = this.uidDir(uid, true)!;
    const n = native();
    const c = n.constants;
    try {
      n.close(n.openat(dir.fd, `loop${minor}`, c.O_WRONLY | c.O_CREAT | c.O_EXCL | c.O_NOFOLLOW, 0o644));
      return true;
    } catch (e) {
      if (hasCode(e, 'EEXIST')) return false;
      throw e;
    }
  }

  private unindexUid(uid: number, minor: number): void {
    this.uidDir(uid, false)?.unlinkQuiet(`loop${minor}`);
  }

  // ---------------------------------------------------------------- next index

  /**
   * Where to make the next new device: the index after the last one made, for at most
   * NEXT_INDEX_USES devices in a row; null when it is time to look at every device (no
   * hint yet, a torn one, or used up). Caller holds the lock.
   */
  nextIndex(): number | null {
    const text = this.readNextIndexFile();
    const m = /^(\d+) (\d+)\n$/.exec(text ?? '');
    if (!m) return null;
    const left = Number(m[2]);
    return left > 0 ? Number(m[1]) : null;
  }

  /**
   * Record that `index` was made: the next new device goes above it. Caller holds the lock.
   * Best effort: it is only a hint, and the device just made must not fail to be claimed
   * because the hint could not be written (a full runtime filesystem). A hint torn by a kill
   * or a failed write reads as none (the next device looks at every device).
   */
  madeIndex(index: number, fromScan: boolean): void {
    try {
      const m = /^(\d+) (\d+)\n$/.exec(this.readNextIndexFile() ?? '');
      const left = fromScan || !m ? NEXT_INDEX_USES : Math.max(0, Number(m[2]) - 1);
      // rewritten in place, without rename or fsync
      const n = native();
      const c = n.constants;
      const fd = n.openat(this.root.fd, NEXT_INDEX_FILE, c.O_WRONLY | c.O_CREAT | c.O_NOFOLLOW, 0o644);
      try {
        const data = Buffer.from(`${String(index + 1).padStart(10, '0')} ${String(left).padStart(3, '0')}\n`);
        writeSync(fd, data, 0, data.length, 0);
      } finally {
        n.close(fd);
      }
    } catch (e) {
      // any system error (ENOSPC/EDQUOT full, EROFS, EIO): the old hint stays, or none;
      // a wrong hint costs a look at every device (claimFreeMinor), never a wrong device
      if (!isSysError(e)) throw e;
    }
  }

  private readNextIndexFile(): string | null {
    const n = native();
    const c = n.constants;
    let fd: number;
    try {
      fd = n.openat(this.root.fd, NEXT_INDEX_FILE, c.O_RDONLY | c.O_NOFOLLOW);
    } catch (e) {
      if (hasCode(e, 'ENOENT')) return null;
      throw e;
    }
    try {
      const buf = Buffer.alloc(32);
      return buf.toString('latin1', 0, readSync(fd, buf, 0, buf.length, 0));
    } finally {
      n.close(fd);
    }
  }

  // ---------------------------------------------------------------- registry

  /** Caller holds the lock (see LocalInstance.create and gc). */
  register(e: RegistryEntry): void {
    this.instancesDir.writeFileAtomic(`${e.id}.json`, `${JSON.stringify(e)}\n`);
  }

  /**
   * When the claims directory was made (statx birth time, ms), null where the filesystem
   * does not say: a claim recorded before it cannot be in it, it went with the directory
   * (the runtime directory removed or replaced; see reconcile.ts).
   */
  claimsMadeMs(): number | null {
    const born = statSync(`/proc/self/fd/${this.claimsDir.fd}`).birthtimeMs;
    return born > 0 ? born : null;
  }

  /** Whether the registry lists instance `id` (one lstat, no read). */
  isRegistered(id: string): boolean {
    return this.instancesDir.lstat(`${id}.json`) !== null;
  }

  unregister(id: string): void {
    this.instancesDir.unlinkQuiet(`${id}.json`);
  }

  instances(): RegistryEntry[] {
    const result: RegistryEntry[] = [];
    for (const name of this.instancesDir.list()) {
      if (!/^[0-9a-f]{16}\.json$/.test(name)) continue;
      try {
        const e = JSON.parse(this.instancesDir.readFile(name) ?? 'null') as RegistryEntry;
        if (e && typeof e.dir === 'string' && typeof e.id === 'string') result.push(e);
      } catch {
        /* a torn registry entry cannot happen (atomic writes); ignore foreign files */
      }
    }
    return result.sort((a, b) => a.dir.localeCompare(b.dir));
  }
}
