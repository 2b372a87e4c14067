// Shared fixtures for the instance tests (test/instance/*.test.ts): real loop devices, real
// `bin/losetup` / `bin/loopfs` processes, and a private sandbox per test file.
//
// Device hygiene, the rules every file here follows:
//  - every backing file lives under the sandbox's private directory, and every instance the
//    tests create records its claims in the sandbox's own runtime dir ($LOOPFS_RUNTIME_DIR)
//    with its own limits file ($LOOPFS_LIMITS): the machine's /run/loopfs and
//    /etc/loopfs/limits are never read or written;
//  - cleanup (afterEach/afterAll, also after a failure) unmounts whatever is mounted under the
//    sandbox, detaches with util-linux (never the code under test) every device bound to a
//    sandbox file, and removes with LOOP_CTL_REMOVE only indexes that a sandbox instance
//    claimed and that are unbound — so devices of other people are never touched;
//  - loop numbers are never assumed: other engineers may run tests at the same moment.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { native } from '../../src/kernel/native.js';
import { readInstanceState } from '../helpers/instance-state.js';
import { boundLoopDevices, isBound, readLoopState, type LoopState } from '../helpers/devices.js';
import { announceSkip, firstReason, loopSkipReason, REF_LOSETUP, refSkipReason, REPO_ROOT } from '../helpers/env.js';
import { pinnedEnv, runProgram, type RunResult } from '../helpers/run.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';

export const LOSETUP = path.join(REPO_ROOT, 'bin', 'losetup');
export const LOOPFS = path.join(REPO_ROOT, 'bin', 'loopfs');
export const MiB = 1024 * 1024;
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Why the instance tests cannot run here (printed once per file), or undefined. */
export function instanceSkipReason(what: string): string | undefined {
  const built = (p: string) => (fs.existsSync(path.join(REPO_ROOT, p)) ? undefined : `${p} missing (run npm run build)`);
  let loop = loopSkipReason();
  // no loopN at all is fine here: instances create their devices on demand (LOOP_CTL_GET_FREE
  // and LOOP_CTL_ADD), and other suites on this machine may just have removed every device
  if (loop?.startsWith('no /sys/block/loopN entries') && fs.existsSync('/dev/loop-control') && fs.existsSync('/sys/block')) loop = undefined;
  const reason = firstReason(
    loop,
    refSkipReason(),
    built('dist/bundle/losetup.mjs'),
    built('dist/commands/instance/create.js'),
  );
  announceSkip(what, reason);
  return reason;
}

/** Title suffix that makes a skipped block say why. */
export function skipTitle(title: string, reason: string | undefined): string {
  return reason ? `${title} [SKIPPED: ${reason}]` : title;
}

export const text = (b: Buffer) => b.toString('utf8');
export const lines = (b: Buffer) => text(b).split('\n').filter((l) => l !== '');

export interface StateFile {
  id: string;
  owner: { uid: number; gid: number };
  mode: number;
  max: number | null;
  pool: number;
  devices: Record<string, { state: 'held' | 'removing'; partitions?: string[] }>;
}

export interface ClaimFile {
  minor: number;
  id: string;
  dir: string;
  uid: number;
}

/** A private world: a temp dir with files, instances, a runtime dir and a limits file. */
export class Sandbox {
  readonly root: string;
  readonly files: string;
  readonly runtime: string;
  readonly limits: string;
  readonly env: NodeJS.ProcessEnv;

  constructor(prefix = 'loopfs-inst') {
    this.root = makeTempDir(prefix);
    this.files = path.join(this.root, 'files');
    this.runtime = path.join(this.root, 'run');
    this.limits = path.join(this.root, 'limits');
    fs.mkdirSync(this.files);
    const env = pinnedEnv({ LOOPFS_RUNTIME_DIR: this.runtime, LOOPFS_LIMITS: this.limits });
    delete env.LOOPFS_INSTANCE;
    delete env.LOOPFS_DEBUG;
    this.env = env;
  }

  /** A sparse backing file under the sandbox. */
  file(name: string, size = MiB): string {
    const p = path.join(this.files, name);
    const fd = fs.openSync(p, 'w');
    try {
      fs.ftruncateSync(fd, size);
    } finally {
      fs.closeSync(fd);
    }
    return p;
  }

  path(...parts: string[]): string {
    return path.join(this.root, ...parts);
  }

  losetup(args: string[], opts: { env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
    return runProgram(LOSETUP, args, { env: { ...this.env, ...opts.env }, cwd: opts.cwd ?? this.root, timeoutMs: opts.timeoutMs });
  }

  loopfs(args: string[], opts: { env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
    return runProgram(LOOPFS, args, { env: { ...this.env, ...opts.env }, cwd: opts.cwd ?? this.root, timeoutMs: opts.timeoutMs });
  }

  /** `loopfs instance create DIR ...`, asserting success. Returns the new state. */
  async create(dir: string, flags: string[] = []): Promise<StateFile> {
    const r = await this.loopfs(['instance', 'create', dir, ...flags]);
    if (r.exitCode !== 0) throw new Error(`instance create ${dir} failed (${r.exitCode}): ${text(r.stderr)}`);
    return this.state(dir)!;
  }

  /** Attach FILE on the host with util-linux (a device that belongs to no instance). */
  hostAttach(file: string): string {
    const dev = execFileSync(REF_LOSETUP, ['-f', '--show', file], { encoding: 'utf8' }).trim();
    return dev;
  }

  /** DIR's state: its header and every device record (test/helpers/instance-state.ts). */
  state(dir: string): StateFile | null {
    return readInstanceState(dir);
  }

  claims(): ClaimFile[] {
    let names: string[] = [];
    try {
      names = fs.readdirSync(path.join(this.runtime, 'claims'));
    } catch {
      return [];
    }
    return names
      .filter((n) => /^loop\d+$/.test(n))
      .map((n) => JSON.parse(fs.readFileSync(path.join(this.runtime, 'claims', n), 'utf8')) as ClaimFile)
      .sort((a, b) => a.minor - b.minor);
  }

  registry(): Array<{ id: string; dir: string; uid: number }> {
    let names: string[] = [];
    try {
      names = fs.readdirSync(path.join(this.runtime, 'instances'));
    } catch {
      return [];
    }
    return names
      .filter((n) => /^[0-9a-f]{16}\.json$/.test(n))
      .map((n) => JSON.parse(fs.readFileSync(path.join(this.runtime, 'instances', n), 'utf8')));
  }

  /**
   * Whether loopN is now bound to a file that is not the sandbox's: other people's tests and
   * benchmarks run on this machine, and LOOP_CTL_GET_FREE hands any unbound device — also one
   * an instance still holds between LOOP_CLR_FD and LOOP_CTL_REMOVE — to their `losetup -f`
   * (DESIGN.md). loopfs then keeps the device recorded as "removing" and never detaches it;
   * tests accept that outcome, and only that one.
   */
  takenByOthers(minor: number): boolean {
    const b = readLoopState(`loop${minor}`)?.backingFile;
    return b !== undefined && !b.startsWith(`${this.root}/`);
  }

  /** Entries of DIR's state other than those a host tool took while unbound (see takenByOthers). */
  ownDevices(dir: string): Record<string, { state: 'held' | 'removing'; partitions?: string[] }> {
    const devices = { ...(this.state(dir)?.devices ?? {}) };
    for (const [m, e] of Object.entries(devices)) if (e.state === 'removing' && this.takenByOthers(Number(m))) delete devices[m];
    return devices;
  }

  /** Devices bound to a file of this sandbox. */
  bound(): LoopState[] {
    return boundLoopDevices().filter((s) => s.backingFile.startsWith(`${this.root}/`));
  }

  /** Mount points under the sandbox, deepest first (this mount namespace). */
  mounts(): string[] {
    const out: string[] = [];
    for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
      const f = line.split(' ');
      if (f.length < 5) continue;
      const mp = f[4].replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
      if (mp === this.root || mp.startsWith(`${this.root}/`)) out.push(mp);
    }
    return out.sort((a, b) => b.length - a.length);
  }

  /**
   * Give back everything the sandbox took: unmount, detach its devices (util-linux), remove
   * the unbound indexes its instances claimed. With `keepTree` the directory stays (between
   * tests of one file); otherwise it is removed too. Throws (after doing all it can) when a
   * device of the sandbox stays bound.
   */
  async cleanup(keepTree = false): Promise<void> {
    const errors: string[] = [];
    for (const mp of this.mounts()) {
      try {
        execFileSync('umount', [mp], { stdio: 'ignore' });
      } catch {
        try {
          execFileSync('umount', ['-l', mp], { stdio: 'ignore' });
        } catch (e) {
          errors.push(`umount ${mp}: ${(e as Error).message}`);
        }
      }
    }
    errors.push(...(await this.detachOwn()));
    // indexes the sandbox's instances claimed: remove them when nobody uses them any more
    const minors = new Set<number>(this.claims().map((c) => c.minor));
    for (const dir of this.instanceDirs()) {
      for (const m of Object.keys(this.state(dir)?.devices ?? {})) minors.add(Number(m));
    }
    for (const m of minors) removeIndexIfUnbound(m);
    if (!keepTree) removeTree(this.root);
    else {
      removeTree(this.runtime);
      for (const dir of this.instanceDirs()) removeTree(dir);
    }
    if (errors.length) throw new Error(errors.join('\n'));
  }

  /**
   * Detach (util-linux) every device bound to a sandbox file and wait until none is. Not
   * DeviceTracker.detachAll(): that waits for the device to be *unbound*, and on this busy
   * machine a freed device is often bound again by somebody else within milliseconds; what
   * matters is that no device is bound to *our* files any more. Returns error messages.
   */
  async detachOwn(timeoutMs = 15_000): Promise<string[]> {
    const end = Date.now() + timeoutMs;
    const tried = new Map<string, number>();
    for (;;) {
      const own = this.bound();
      if (own.length === 0) return [];
      if (Date.now() > end) return own.map((s) => `cleanup: ${s.dev} still bound to ${s.backingFile}`);
      // loops on loops: detach the upper devices first
      const lower = new Set(boundLoopDevices().map((s) => s.backingFile));
      const round = own.filter((s) => !lower.has(s.dev));
      for (const s of round.length ? round : own) {
        const last = tried.get(s.dev) ?? 0;
        if (Date.now() - last < 1000) continue; // a deferred detach (device still open): give it time
        tried.set(s.dev, Date.now());
        try {
          execFileSync(REF_LOSETUP, ['-d', s.dev], { stdio: 'ignore' });
        } catch {
          /* unbound meanwhile, or busy: checked again */
        }
      }
      await sleep(20);
    }
  }

  /** Directories under the sandbox that hold (or held) an instance. */
  instanceDirs(): string[] {
    return instanceDirsUnder(this.root, 2, ['files']);
  }
}

/** Directories under `root` (at most `depth` levels down) that hold (or held) an instance: a `.loopfs` in them. */
export function instanceDirsUnder(root: string, depth: number, skip: readonly string[] = []): string[] {
  const result: string[] = [];
  const walk = (d: string, left: number) => {
    let entries: fs.Dirent[] = [];
    try {
      entries = fs.readdirSync(d, { withFileTypes: true });
    } catch {
      return; // gone meanwhile, or not readable: holds nothing we can count
    }
    if (entries.some((e) => e.name === '.loopfs')) result.push(d);
    if (left > 0) for (const e of entries) if (e.isDirectory() && e.name !== '.loopfs' && !skip.includes(e.name)) walk(path.join(d, e.name), left - 1);
  };
  walk(root, depth);
  return result;
}

/** LOOP_CTL_REMOVE an index that is not bound (best effort: busy or gone is fine). */
export function removeIndexIfUnbound(minor: number): void {
  if (isBound(`loop${minor}`)) return;
  if (!fs.existsSync(`/sys/block/loop${minor}`)) return;
  const n = native();
  let fd = -1;
  try {
    fd = n.open('/dev/loop-control', n.constants.O_RDWR);
    n.ctlRemove(fd, minor);
  } catch {
    /* busy (someone opened it) or already gone */
  } finally {
    if (fd >= 0) n.close(fd);
  }
}

/** Minor of an instance node path (`DIR/loopN`). */
export function minorOf(node: string): number {
  const m = /loop(\d+)$/.exec(node);
  if (!m) throw new Error(`not a loop node: ${node}`);
  return Number(m[1]);
}

/** lstat of a node with its device numbers. */
export function nodeInfo(p: string): { uid: number; gid: number; mode: number; block: boolean; major: number; minor: number } | null {
  try {
    const st = fs.lstatSync(p);
    return {
      uid: st.uid,
      gid: st.gid,
      mode: st.mode & 0o7777,
      block: st.isBlockDevice(),
      major: Math.floor(st.rdev / 256) & 0xfff,
      minor: (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00),
    };
  } catch {
    return null;
  }
}

/** `loopN` entries of a directory. */
export function loopEntries(dir: string): string[] {
  try {
    return fs.readdirSync(dir).filter((n) => /^loop\d+(p\d+)?$/.test(n));
  } catch {
    return [];
  }
}
