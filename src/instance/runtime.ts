/**
 * Machine-wide loopfs records under /run/loopfs (tmpfs: they vanish at reboot together
 * with every loop device they describe):
 *
 *   claims/loopN        which instance holds minor N — created with link(), so exactly
 *                       one instance can ever claim a device (the second gets EEXIST)
 *   instances/ID.json   the instances that exist (for `instance ls` and `gc`)
 *   lock                serialises claim changes and per-uid quota counting
 *
 * $LOOPFS_RUNTIME_DIR overrides the location (tests use private ones).
 */
import { mkdirSync } from 'node:fs';
import { hasCode } from '../kernel/errors.js';
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

export class Runtime {
  private lockFd = -1;

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
    this.claimsDir.close();
    this.instancesDir.close();
    this.root.close();
  }

  /** Lock order: instance lock, then this, then loop-control, then a device. */
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
    try {
      this.claimsDir.createExclusive(`loop${c.minor}`, `${JSON.stringify(c)}\n`);
      return true;
    } catch (e) {
      if (hasCode(e, 'EEXIST')) return false;
      throw e;
    }
  }

  /** Drop a claim, but only if it is this instance's. */
  release(minor: number, id: string): void {
    const c = this.claimOf(minor);
    if (c && c.id === id) this.claimsDir.unlinkQuiet(`loop${minor}`);
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

  countClaimsOfUid(uid: number): number {
    return this.claims().filter((c) => c.uid === uid).length;
  }

  // ---------------------------------------------------------------- registry

  /** Caller holds the lock (see LocalInstance.create and gc). */
  register(e: RegistryEntry): void {
    this.instancesDir.writeFileAtomic(`${e.id}.json`, `${JSON.stringify(e)}\n`);
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
