// The chaos soak (issue 16): everything loopfs does, at once, for a bounded time, while a chaos
// thread SIGKILLs clients and daemons at random moments; then faults one by one; then a final
// `loopfs gc` and a count of everything that may have leaked. Shared by the short profile
// (test/chaos/soak.test.ts, run by vitest) and the long one (bench/soak.mjs runs the same file
// with LOOPFS_CHAOS_SECONDS and prints the report).
//
// Real processes only: bin/losetup, bin/loopfs, bin/mount.loop, util-linux losetup, podman.
// Hygiene is the fixtures' (test/broker/support.ts, test/oci/support.ts): one BrokerSandbox
// holds every file, instance, claim and podman storage; every client runs in its own process
// group (a SIGKILL takes setpriv, unshare and the tool together); teardown destroys every
// instance, detaches with util-linux whatever is still bound to a sandbox file and unmounts.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { REF_LOSETUP, REPO_ROOT } from '../helpers/env.js';
import { boundLoopDevices } from '../helpers/devices.js';
import { readInstanceState } from '../helpers/instance-state.js';
import { instanceDirsUnder } from '../instance/support.js';
import { prng } from '../helpers/prng.js';
import { ADDON, BrokerSandbox, LOOPFS, LOSETUP, MOUNT_LOOP, Server, sleep, type User } from '../broker/support.js';
import { COMMON_FLAGS, installHooks, Podman, processesMatching, ROOTFUL_FLAGS, SubIdRanges } from '../oci/support.js';

const FLOOD = path.join(REPO_ROOT, 'test', 'chaos', 'flood.cjs');
const CLK_TCK = 100; // sysconf(_SC_CLK_TCK) on Linux

export interface SoakOptions {
  /** How long the concurrent phase runs. */
  seconds: number;
  seed: number;
  /** Run the podman workers (rootful and rootless containers with the OCI hook). */
  podman: boolean;
  /** Delay before a killed daemon is started again (the units say RestartSec=2). */
  restartMs: number;
  /** Mean pause of the chaos thread between two kills. */
  killEveryMs: number;
  /** RSS growth is judged only on samples after this long (see growth()). */
  rssWarmupSeconds: number;
  /** util-linux workers per activated view (the cheapest operation: the long profile's volume). */
  viewWorkers: number;
  log?: (line: string) => void;
}

export interface PathFigures {
  ops: number;
  p50: number;
  p99: number;
}

export interface FaultOutcome {
  name: string;
  injected: number;
  /** Every check that did not hold (empty: the fault was survived as it must be). */
  problems: string[];
  notes: string[];
}

export interface SoakReport {
  seconds: number;
  seed: number;
  ops: number;
  opsPerSecond: number;
  latency: Record<string, PathFigures>;
  kills: Record<string, number>;
  restarts: Record<string, number>;
  /** Failures of commands that were not killed, by path and stderr line. */
  failures: Record<string, number>;
  /** Failures that were not one clear line with a non-zero exit, or commands that hung. */
  badFailures: string[];
  faults: FaultOutcome[];
  leaks: Record<string, string[]>;
  growth: Record<string, { fdsFirst: number; fdsLast: number; rssFirstKiB: number; rssLastKiB: number; rssJudged: boolean; rssCurveKiB: number[] }>;
  /** For each device found lost: every traced event naming it, and the daemons' kills and starts. */
  lostTrace: Record<string, string[]>;
  podman: boolean;
}

// ------------------------------------------------------------------ trace

/**
 * A timeline of what the soak did and what its daemons said, kept so that a leak can be
 * explained: for each device found lost, the report carries every event naming it.
 */
class Trace {
  private readonly t0 = Date.now();
  readonly events: string[] = [];

  add(s: string): void {
    this.events.push(`${((Date.now() - this.t0) / 1000).toFixed(3)} ${s}`);
  }

  /** Every line a child writes, prefixed with `who`. */
  follow(who: string, child: ChildProcess): void {
    for (const stream of [child.stdout, child.stderr]) {
      let partial = '';
      stream?.on('data', (chunk: Buffer | string) => {
        const lines = (partial + chunk.toString()).split('\n');
        partial = lines.pop() ?? '';
        for (const l of lines) if (l) this.add(`${who}[${child.pid}]: ${l}`);
      });
    }
  }

  /** The events that name `dev` (loopN, as a word), and every daemon kill or start. */
  about(dev: string): string[] {
    const name = new RegExp(`\\b${dev}\\b`);
    return this.events.filter((e) => name.test(e) || / daemon (SIGKILL|started)$/.test(e));
  }
}

// ------------------------------------------------------------------ processes

export interface OpResult {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
  /** SIGKILLed by the chaos thread. */
  killed: boolean;
  timedOut: boolean;
}

/** Client commands in flight, each in its own process group, so that chaos can kill one. */
class Clients {
  private readonly live = new Map<number, { child: ChildProcess; killed: boolean }>();

  constructor(private readonly trace: Trace) {}

  run(file: string, args: string[], env: NodeJS.ProcessEnv, cwd: string, timeoutMs = 60_000): Promise<OpResult> {
    return new Promise((resolve, reject) => {
      const started = performance.now();
      const child = spawn(file, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
      const entry = { child, killed: false };
      let out = '';
      let err = '';
      let timedOut = false;
      child.stdout!.setEncoding('utf8').on('data', (s: string) => (out += s));
      child.stderr!.setEncoding('utf8').on('data', (s: string) => (err += s));
      const timer = setTimeout(() => {
        timedOut = true;
        killGroup(child);
      }, timeoutMs);
      child.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      if (child.pid) this.live.set(child.pid, entry);
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        if (child.pid) this.live.delete(child.pid);
        const what = args.filter((a) => !a.startsWith('--re') && a !== '--clear-groups').slice(-4).join(' ');
        this.trace.add(`client[${child.pid}] ${what} -> ${entry.killed ? 'SIGKILL' : `exit ${code}`} ${out.trim()} ${err.trim()}`);
        resolve({ exitCode: code, signal, stdout: out, stderr: err, ms: performance.now() - started, killed: entry.killed, timedOut });
      });
    });
  }

  /** SIGKILL one client in flight (its whole process group); false when none runs. */
  killOne(rng: () => number): boolean {
    const all = [...this.live.values()].filter((e) => !e.killed);
    if (all.length === 0) return false;
    const e = all[Math.floor(rng() * all.length)];
    e.killed = true;
    killGroup(e.child);
    return true;
  }
}

function killGroup(child: ChildProcess): void {
  try {
    process.kill(-child.pid!, 'SIGKILL');
  } catch {
    /* gone */
  }
}

/** A daemon that is restarted after a SIGKILL, as its systemd unit (Restart=on-failure) would. */
class Unit {
  server: Daemon | null = null;
  kills = 0;
  restarts = 0;
  private restarting: Promise<void> | null = null;

  constructor(
    readonly name: string,
    private readonly launch: () => Promise<Daemon>,
    private readonly restartMs: number,
    private readonly trace: Trace,
  ) {}

  async up(): Promise<void> {
    this.server = await this.launch();
    this.trace.follow(this.name, this.server.child);
    this.trace.add(`${this.name}[${this.server.pid}] daemon started`);
  }

  get pid(): number | null {
    return this.server?.alive ? this.server.pid : null;
  }

  /** SIGKILL it now; it comes back after restartMs. False when it is down already. */
  kill(): boolean {
    if (!this.server?.alive || this.restarting) return false;
    this.server.child.kill('SIGKILL');
    this.trace.add(`${this.name}[${this.server.pid}] daemon SIGKILL`);
    this.kills++;
    this.restarting = (async () => {
      await sleep(this.restartMs);
      for (let attempt = 0; ; attempt++) {
        try {
          await this.up();
          break;
        } catch (e) {
          // a unit keeps restarting too; the soak reports it when it never comes back
          if (attempt >= 5) throw e;
          await sleep(this.restartMs);
        }
      }
      this.restarts++;
      this.restarting = null;
    })();
    return true;
  }

  async settled(): Promise<void> {
    await this.restarting;
  }

  async stop(): Promise<void> {
    await this.settled().catch(() => undefined);
    await this.server?.stop();
  }
}

/** What a Unit supervises: a `loopfs serve`/`oci-broker` (the broker fixtures' Server) or a watcher. */
interface Daemon {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly alive: boolean;
  stop(): Promise<void>;
}

/**
 * `loopfs activate DIR --dev D --watch`: ready once it reported its first sync (it prints no
 * "ready", which Server.launch waits for).
 */
class Watcher implements Daemon {
  private out = '';
  private done = false;
  private readonly exited: Promise<void>;
  readonly child: ChildProcess;

  private constructor(sb: BrokerSandbox, dir: string, devDir: string, pool: number) {
    this.child = spawn(LOOPFS, ['activate', dir, '--dev', devDir, '--pool', String(pool), '--watch'], { env: sb.env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.setEncoding('utf8').on('data', (s: string) => (this.out += s));
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => (this.out += s));
    this.exited = new Promise((resolve) => this.child.once('exit', () => {
      this.done = true;
      resolve();
    }));
  }

  static async start(sb: BrokerSandbox, dir: string, devDir: string, pool: number): Promise<Watcher> {
    const w = new Watcher(sb, dir, devDir, pool);
    const end = Date.now() + 20_000;
    while (!/ node\(s\) /.test(w.out)) {
      if (w.done || Date.now() > end) {
        await w.stop();
        throw new Error(`loopfs activate --watch did not start: ${w.out}`);
      }
      await sleep(20);
    }
    return w;
  }

  get pid(): number {
    return this.child.pid!;
  }

  get alive(): boolean {
    return !this.done;
  }

  async stop(): Promise<void> {
    if (this.done) return;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 15_000);
    await this.exited;
    clearTimeout(t);
  }
}

// ------------------------------------------------------------------ /proc

function procStat(pid: number): { ticks: number; rssKiB: number } | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = /^VmRSS:\s+(\d+) kB$/m.exec(status);
    return { ticks: Number(f[11]) + Number(f[12]), rssKiB: rss ? Number(rss[1]) : 0 };
  } catch {
    return null;
  }
}

function fdCount(pid: number): number | null {
  try {
    return fs.readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return null;
  }
}

/** Processes whose environment names this sandbox's runtime dir (hooks run by podman). */
function processesWithEnv(match: (args: string) => boolean, envEntry: string): number[] {
  return processesMatching(match).filter((pid) => {
    try {
      return fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').includes(envEntry);
    } catch {
      return false;
    }
  });
}

function parentOf(pid: number): number | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return null;
  }
}

// ------------------------------------------------------------------ users

function lookupUser(name: string): User | null {
  const r = spawnSync('id', ['-u', name], { encoding: 'utf8' });
  if (r.status !== 0) return null;
  const g = spawnSync('id', ['-g', name], { encoding: 'utf8' });
  return { name, uid: Number(r.stdout.trim()), gid: Number(g.stdout.trim()) };
}

/** The second unprivileged user, created when missing (as test/broker/support.ts makes the first). */
export function secondUser(): User | null {
  const name = 'loopfstest2';
  let u = lookupUser(name);
  if (!u && process.getuid?.() === 0) {
    spawnSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', name], { stdio: 'ignore' });
    u = lookupUser(name);
  }
  return u;
}

// ------------------------------------------------------------------ figures

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

class Stats {
  ops = 0;
  readonly latencies = new Map<string, number[]>();
  readonly failures = new Map<string, number>();
  readonly badFailures: string[] = [];
  readonly lost: string[] = [];
  clientKills = 0;

  /**
   * One finished command. A command the chaos thread killed proves nothing; one that failed
   * on its own must say why in exactly one line and exit non-zero (`oneLine` false: not one
   * of our CLIs, e.g. podman).
   */
  record(pathName: string, r: OpResult, timed: boolean, oneLine = true): boolean {
    if (r.killed) {
      this.clientKills++;
      return false;
    }
    if (r.timedOut) {
      this.badFailures.push(`${pathName}: hung (killed after its timeout)${r.stderr ? `: ${r.stderr.trim()}` : ''}`);
      return false;
    }
    if (r.exitCode === 0) {
      this.ops++;
      if (timed) {
        const l = this.latencies.get(pathName) ?? [];
        l.push(r.ms);
        this.latencies.set(pathName, l);
      }
      return true;
    }
    const lines = r.stderr.split('\n').filter((l) => l !== '');
    const key = `${pathName}: ${oneLine ? lines[0] ?? '(no message)' : (lines.at(-1) ?? '(no message)').slice(0, 200)}`;
    this.failures.set(key, (this.failures.get(key) ?? 0) + 1);
    // a device whose attach was reported, gone before its own detach: somebody released
    // what a client had been given (ENODEV on opening it)
    if (/ detach$/.test(pathName) && /: No such device\.?$/.test(lines[0] ?? '')) this.lost.push(`${pathName}: ${lines[0]}`);
    if (oneLine && (lines.length !== 1 || r.exitCode === null || !clearLine(r.stderr))) {
      this.badFailures.push(`${pathName}: exit ${r.exitCode}${r.signal ? ` (${r.signal})` : ''}, stderr ${JSON.stringify(r.stderr)}`);
    }
    return false;
  }
}

// ------------------------------------------------------------------ the soak

interface World {
  sb: BrokerSandbox;
  user2: User;
  clients: Clients;
  stats: Stats;
  rng: () => number;
  stop: () => boolean;
  opts: SoakOptions;
}

const log = (opts: SoakOptions, s: string) => opts.log?.(`[chaos] ${s}`);

/** Run as `user` inside `unshare -r -m` (the root of its own user namespace), as containers do. */
function asUserArgs(user: User, argv: string[]): [string, string[]] {
  return ['setpriv', ['--reuid', String(user.uid), '--regid', String(user.gid), '--clear-groups', 'unshare', '-r', '-m', ...argv]];
}

/** Local root scripts: losetup --instance DIR -f --show / -d / -D. */
async function localWorker(w: World, dir: string, files: string[]): Promise<void> {
  const held: string[] = [];
  let k = 0;
  while (!w.stop()) {
    const r = w.rng();
    if (held.length < 3 && r < 0.55) {
      const res = await w.clients.run(LOSETUP, ['--instance', dir, '-f', '--show', files[k++ % files.length]], w.sb.env, w.sb.root);
      if (w.stats.record('local attach', res, true)) held.push(res.stdout.trim());
    } else if (held.length && r < 0.92) {
      const dev = held.splice(Math.floor(w.rng() * held.length), 1)[0];
      w.stats.record('local detach', await w.clients.run(LOSETUP, ['--instance', dir, '-d', dev], w.sb.env, w.sb.root), false);
    } else {
      const res = await w.clients.run(LOSETUP, ['--instance', dir, '-D'], w.sb.env, w.sb.root);
      if (w.stats.record('local detach-all', res, false) || res.killed) held.length = 0;
    }
  }
}

/** A brokered client: an unprivileged user as root of its own user namespace. */
async function brokerWorker(w: World, user: User, dir: string, file: string, mount: { image: string; mnt: string } | null): Promise<void> {
  const env = w.sb.userEnv({ LOOPFS_INSTANCE: dir, LOOPFS_BROKER_TIMEOUT: '10' });
  let n = 0;
  while (!w.stop()) {
    n++;
    if (mount && n % 2 === 0) {
      const script = `"$0" "$1" "$2" && cat "$2/hello.txt" >/dev/null && umount "$2"`;
      const [f, a] = asUserArgs(user, ['sh', '-c', script, MOUNT_LOOP, mount.image, mount.mnt]);
      w.stats.record('broker mount', await w.clients.run(f, a, env, w.sb.root), true);
      continue;
    }
    const [f, a] = asUserArgs(user, [LOSETUP, '-f', '--show', file]);
    const res = await w.clients.run(f, a, env, w.sb.root);
    if (!w.stats.record('broker attach', res, true)) {
      if (res.killed || res.exitCode !== 0) await sleep(50); // a broker being restarted
      continue;
    }
    const [f2, a2] = asUserArgs(user, [LOSETUP, '-d', res.stdout.trim()]);
    w.stats.record('broker detach', await w.clients.run(f2, a2, env, w.sb.root), false);
  }
}

/** util-linux losetup in a private mount namespace whose /dev is an activated view. */
async function viewWorker(w: World, devDir: string, file: string): Promise<void> {
  const inView = (args: string[]): [string, string[]] => [
    'unshare',
    ['-m', '--propagation', 'private', 'sh', '-c', 'mount --bind "$0" /dev && exec "$@"', devDir, REF_LOSETUP, ...args],
  ];
  while (!w.stop()) {
    const [f, a] = inView(['-f', '--show', file]);
    const res = await w.clients.run(f, a, w.sb.env, w.sb.root);
    if (!w.stats.record('view attach', res, true)) {
      await sleep(50); // the pool refills once the watcher is back
      continue;
    }
    const [f2, a2] = inView(['-d', res.stdout.trim()]);
    w.stats.record('view detach', await w.clients.run(f2, a2, w.sb.env, w.sb.root), false);
  }
}

/** Containers with the OCI hook: start, losetup -f --show inside, rm -f. */
async function podmanWorker(w: World, podman: Podman, rootful: boolean): Promise<void> {
  const name = rootful ? 'podman rootful' : 'podman rootless';
  const flags = rootful ? [...COMMON_FLAGS, ...ROOTFUL_FLAGS] : [...COMMON_FLAGS];
  while (!w.stop()) {
    let id = '';
    const t0 = performance.now();
    try {
      id = await podman.start(flags, [`${w.sb.image}:/img:ro`]);
    } catch (e) {
      // the hook's own words are at the end of runc's message
      const msg = (String((e as Error).message).split('\n').filter(Boolean).at(-1) ?? '').replace(/^.*error running hook: /, 'hook: ');
      w.stats.failures.set(`${name} start: ${msg.slice(0, 400)}`, (w.stats.failures.get(`${name} start: ${msg.slice(0, 400)}`) ?? 0) + 1);
      await removeAll(podman);
      await sleep(200);
      continue;
    }
    const started = performance.now() - t0;
    w.stats.record(`${name} start`, { exitCode: 0, signal: null, stdout: '', stderr: '', ms: started, killed: false, timedOut: false }, true, false);
    const r = await podman.exec(id, 'losetup -f --show /img');
    const res: OpResult = { exitCode: r.exitCode, signal: r.signal, stdout: r.stdout.toString(), stderr: r.stderr.toString(), ms: 0, killed: false, timedOut: r.timedOut };
    res.ms = performance.now() - t0 - started;
    w.stats.record(`${name} attach`, res, true, false);
    const rm = await podman.rmForce(id);
    if (rm.exitCode !== 0) w.stats.failures.set(`${name} rm -f: ${rm.stderr.toString().trim().split('\n').at(-1)}`, 1);
  }
}

async function removeAll(podman: Podman): Promise<void> {
  const r = await podman.run(['ps', '-aq']);
  for (const id of r.stdout.toString().split('\n').filter(Boolean)) await podman.rmForce(id);
}

/** Mount a small tmpfs at a fresh directory of the sandbox (Sandbox.cleanup unmounts it). */
function tmpfsAt(p: string, opts: string): void {
  fs.mkdirSync(p, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', opts, 'loopfs-chaos', p]);
}

function boundTo(file: string): string[] {
  return boundLoopDevices()
    .filter((s) => s.backingFile === file || s.backingFile === `${file} (deleted)`)
    .map((s) => s.dev);
}

function claimsIn(runtime: string): string[] {
  try {
    return fs.readdirSync(path.join(runtime, 'claims')).filter((n) => /^loop\d+$/.test(n));
  } catch {
    return [];
  }
}

const oneLine = (s: string) => s.split('\n').filter((l) => l !== '').length === 1;

/** Check of a command that must fail under a fault: non-zero, one line. */
function expectOneLineFailure(problems: string[], what: string, r: OpResult): void {
  if (r.timedOut) problems.push(`${what}: hung`);
  else if (r.exitCode === 0) problems.push(`${what}: succeeded (stdout ${JSON.stringify(r.stdout)})`);
  else if (r.exitCode === null || !oneLine(r.stderr)) problems.push(`${what}: exit ${r.exitCode}, stderr ${JSON.stringify(r.stderr)}`);
  else if (!clearLine(r.stderr)) problems.push(`${what}: not a clear line (node's raw error text, no file named): ${JSON.stringify(r.stderr)}`);
}

/**
 * util-linux words an error "PROG: FILE: strerror text". node's own fs errors read
 * "ENOSPC: no space left on device, write": the errno name and the syscall, no file. Seeing
 * one means an error escaped without being given its file.
 */
function clearLine(stderr: string): boolean {
  return !/\bE[A-Z0-9]{2,}: [a-z]/.test(stderr);
}

// ------------------------------------------------------------------ faults

/** The runtime directory's filesystem full. */
async function faultRuntimeFull(w: World): Promise<FaultOutcome> {
  const out: FaultOutcome = { name: 'runtime dir full (tmpfs)', injected: 1, problems: [], notes: [] };
  const run = w.sb.path('fault-run-full');
  tmpfsAt(run, 'size=256k,mode=0755');
  const env = { ...w.sb.env, LOOPFS_RUNTIME_DIR: run };
  const dir = w.sb.path('fault-full');
  const c = await w.clients.run(LOOPFS, ['instance', 'create', dir, '--max', '4'], env, w.sb.root);
  if (c.exitCode !== 0) {
    out.problems.push(`instance create: ${c.stderr.trim()}`);
    return out;
  }
  const file = w.sb.file('fault-full.img');
  // fill the filesystem: big writes, then ever smaller ones, until not one byte fits
  const fd = fs.openSync(path.join(run, 'fill'), 'w');
  for (let chunk = 64 * 1024; chunk >= 1; chunk = Math.floor(chunk / 4)) {
    try {
      for (;;) fs.writeSync(fd, Buffer.alloc(chunk));
    } catch {
      /* ENOSPC at this size */
    }
  }
  fs.closeSync(fd);
  const claimsBefore = claimsIn(run).sort().join(',');
  const r = await w.clients.run(LOSETUP, ['--instance', dir, '-f', '--show', file], env, w.sb.root);
  expectOneLineFailure(out.problems, 'losetup -f --show with a full runtime dir', r);
  out.notes.push(`full: exit ${r.exitCode}: ${r.stderr.trim()}`);
  if (boundTo(file).length) out.problems.push(`a device stayed bound to ${file}: ${boundTo(file).join(' ')}`);
  if (claimsIn(run).sort().join(',') !== claimsBefore) out.problems.push(`claims changed: ${claimsBefore} -> ${claimsIn(run).join(',')}`);
  const recs = Object.keys(readInstanceState(dir)?.devices ?? {});
  if (recs.length) out.problems.push(`records left: ${recs.join(',')}`);
  // space again: the same command works and nothing of the failed one is in its way
  fs.rmSync(path.join(run, 'fill'));
  const ok = await w.clients.run(LOSETUP, ['--instance', dir, '-f', '--show', file], env, w.sb.root);
  if (ok.exitCode !== 0) out.problems.push(`after freeing space: ${ok.stderr.trim()}`);
  const d = await w.clients.run(LOOPFS, ['instance', 'destroy', dir], env, w.sb.root);
  if (d.exitCode !== 0) out.problems.push(`destroy: ${d.stderr.trim()}`);
  execFileSync('umount', [run]);
  return out;
}

/** The instance's filesystem read-only. */
async function faultInstanceReadOnly(w: World): Promise<FaultOutcome> {
  const out: FaultOutcome = { name: 'instance fs read-only', injected: 1, problems: [], notes: [] };
  const fsDir = w.sb.path('fault-ro');
  tmpfsAt(fsDir, 'size=4m,mode=0755');
  const dir = path.join(fsDir, 'inst');
  const c = await w.clients.run(LOOPFS, ['instance', 'create', dir, '--max', '4'], w.sb.env, w.sb.root);
  if (c.exitCode !== 0) {
    out.problems.push(`instance create: ${c.stderr.trim()}`);
    return out;
  }
  const held = w.sb.file('fault-ro-held.img');
  const file = w.sb.file('fault-ro.img');
  const a = await w.clients.run(LOSETUP, ['--instance', dir, '-f', '--show', held], w.sb.env, w.sb.root);
  if (a.exitCode !== 0) out.problems.push(`attach before: ${a.stderr.trim()}`);
  const claimsBefore = claimsIn(w.sb.runtime).sort().join(',');
  execFileSync('mount', ['-o', 'remount,ro', fsDir]);
  const r = await w.clients.run(LOSETUP, ['--instance', dir, '-f', '--show', file], w.sb.env, w.sb.root);
  expectOneLineFailure(out.problems, 'losetup -f --show on a read-only instance', r);
  out.notes.push(`ro attach: exit ${r.exitCode}: ${r.stderr.trim()}`);
  if (boundTo(file).length) out.problems.push(`a device stayed bound to ${file}: ${boundTo(file).join(' ')}`);
  if (claimsIn(w.sb.runtime).sort().join(',') !== claimsBefore) out.problems.push(`claims changed: ${claimsBefore} -> ${claimsIn(w.sb.runtime).sort().join(',')}`);
  const dd = await w.clients.run(LOSETUP, ['--instance', dir, '-d', a.stdout.trim()], w.sb.env, w.sb.root);
  out.notes.push(`ro detach: exit ${dd.exitCode}: ${dd.stderr.trim()}`);
  if (dd.exitCode !== 0) expectOneLineFailure(out.problems, 'losetup -d on a read-only instance', dd);
  execFileSync('mount', ['-o', 'remount,rw', fsDir]);
  const d = await w.clients.run(LOOPFS, ['instance', 'destroy', dir], w.sb.env, w.sb.root);
  if (d.exitCode !== 0) out.problems.push(`destroy after rw: ${d.stderr.trim()}`);
  if (boundTo(held).length) out.problems.push(`destroy left ${held} bound`);
  execFileSync('umount', [fsDir]);
  return out;
}

/**
 * fd exhaustion in `loopfs serve` (ulimit -n lowered on the running daemon) with a flood of
 * silent connections until the listen backlog is full; then a client against the full
 * backlog. The daemon must not spin, the client must give up with one line, and once the
 * flood goes the same daemon serves again.
 */
async function faultFdExhaustion(w: World, user: User, dir: string, file: string): Promise<FaultOutcome> {
  const out: FaultOutcome = { name: 'fd exhaustion + flood + silent clients on a full backlog', injected: 2, problems: [], notes: [] };
  const server = await Server.start(w.sb, [dir]);
  let flood: ChildProcess | null = null;
  try {
    // room for one request (its connection, the client's file, loop-control, the device, the
    // instance's lock and state files) but not for a flood
    const fds = server.fdCount();
    execFileSync('prlimit', ['--pid', String(server.pid), `--nofile=${fds + 16}:${fds + 16}`]);
    let progress = '';
    flood = spawn('setpriv', ['--reuid', String(user.uid), '--regid', String(user.gid), '--clear-groups', process.execPath, FLOOD, ADDON, path.join(dir, 'loop-control'), '2000'], {
      env: w.sb.userEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    flood.stdout!.setEncoding('utf8').on('data', (s: string) => (progress += s));
    // until connect() blocks: no new connection for a second (the backlog is full)
    let last = '';
    for (let i = 0; i < 60; i++) {
      await sleep(1000);
      if (progress === last) break;
      last = progress;
    }
    const connected = progress.split('\n').filter((l) => l.startsWith('connected')).length;
    out.notes.push(`flood: ${connected} connections before connect() blocked${/done/.test(progress) ? ' (never blocked)' : ''}`);
    // an idle daemon that cannot accept must not spin on its readable listener
    const a = procStat(server.pid);
    await sleep(2000);
    const b = procStat(server.pid);
    const cpu = a && b ? ((b.ticks - a.ticks) / CLK_TCK / 2) * 100 : NaN;
    out.notes.push(`daemon CPU while exhausted: ${cpu.toFixed(1)}%`);
    if (!(cpu <= 5)) out.problems.push(`the exhausted daemon used ${cpu.toFixed(1)}% CPU while idle`);
    // a client against the full backlog: one line within its timeout, no hang
    const [f, args] = asUserArgs(user, [LOSETUP, '-f', '--show', file]);
    const r = await w.clients.run(f, args, w.sb.userEnv({ LOOPFS_INSTANCE: dir, LOOPFS_BROKER_TIMEOUT: '2' }), w.sb.root, 30_000);
    out.notes.push(`client on a full backlog: exit ${r.exitCode}${r.timedOut ? ' (hung: killed after 30 s)' : ''}: ${r.stderr.trim()}`);
    expectOneLineFailure(out.problems, 'losetup against a full backlog (LOOPFS_BROKER_TIMEOUT=2)', r);
    if (boundTo(file).length) out.problems.push(`a device stayed bound to ${file}`);
    killGroup(flood);
    flood = null;
    // the same daemon serves again, once it has seen the flood's connections end
    const end = Date.now() + 20_000;
    while ((server.fdCount() ?? 0) > fds + 2 && Date.now() < end) await sleep(100);
    out.notes.push(`daemon fds: ${fds} before, ${server.fdCount()} after the flood`);
    const ok = await w.clients.run(f, args, w.sb.userEnv({ LOOPFS_INSTANCE: dir, LOOPFS_BROKER_TIMEOUT: '10' }), w.sb.root);
    if (ok.exitCode !== 0) out.problems.push(`after the flood the daemon did not serve: ${ok.stderr.trim()}`);
    else {
      const [f2, a2] = asUserArgs(user, [LOSETUP, '-d', ok.stdout.trim()]);
      const d = await w.clients.run(f2, a2, w.sb.userEnv({ LOOPFS_INSTANCE: dir }), w.sb.root);
      if (d.exitCode !== 0) out.problems.push(`detach after the flood: ${d.stderr.trim()}`);
    }
    if (!server.alive) out.problems.push('the daemon died under fd exhaustion');
  } finally {
    if (flood) killGroup(flood);
    await server.stop();
  }
  return out;
}

/**
 * The runtime directory (/run/loopfs: claims, registry) removed under a running `loopfs
 * serve`. In a runtime dir of its own, so that what it leaves is this fault's: the daemon
 * keeps serving (or a command fails with one line), and after `loopfs gc` every device the
 * instance records is claimed again and no device is bound to the fault's file unrecorded.
 */
async function faultRuntimeRemoved(w: World, user: User): Promise<FaultOutcome> {
  const out: FaultOutcome = { name: 'runtime dir removed under a daemon', injected: 1, problems: [], notes: [] };
  const run = w.sb.path('fault-rm-run');
  const rootEnv = { ...w.sb.env, LOOPFS_RUNTIME_DIR: run };
  const dir = w.sb.path('fault-rm');
  const c = await w.clients.run(LOOPFS, ['instance', 'create', dir, '--max', '4', '--owner', `${user.uid}:${user.gid}`], rootEnv, w.sb.root);
  if (c.exitCode !== 0) {
    out.problems.push(`instance create: ${c.stderr.trim()}`);
    return out;
  }
  const file = w.sb.file('fault-rm.img');
  fs.chownSync(file, user.uid, user.gid);
  // Server.launch takes the sandbox only for its environment
  const server = await Server.start(Object.create(w.sb, { env: { value: rootEnv } }) as BrokerSandbox, [dir]);
  try {
    const env = w.sb.userEnv({ LOOPFS_INSTANCE: dir, LOOPFS_BROKER_TIMEOUT: '10' });
    const [f, a] = asUserArgs(user, [LOSETUP, '-f', '--show', file]);
    const before = await w.clients.run(f, a, env, w.sb.root);
    if (before.exitCode !== 0) out.problems.push(`attach before the removal: ${before.stderr.trim()}`);
    fs.rmSync(run, { recursive: true, force: true });
    const r = await w.clients.run(f, a, env, w.sb.root);
    out.notes.push(`attach after: exit ${r.exitCode}: ${r.stdout.trim()}${r.stderr.trim()}`);
    if (r.exitCode !== 0) expectOneLineFailure(out.problems, 'brokered attach with the runtime dir gone', r);
    if (!server.alive) out.problems.push('the daemon died when its runtime dir was removed');
  } finally {
    await server.stop();
  }
  const gc = await w.clients.run(LOOPFS, ['gc'], rootEnv, w.sb.root);
  out.notes.push(`gc: exit ${gc.exitCode}: ${gc.stdout.trim().split('\n').length} line(s)${gc.stderr.trim() ? `, ${gc.stderr.trim()}` : ''}`);
  if (gc.exitCode !== 0) out.problems.push(`loopfs gc: ${gc.stderr.trim()}`);
  const recorded = Object.keys(readInstanceState(dir)?.devices ?? {}).map(Number);
  const claimed = new Set(claimsIn(run).map((n) => Number(n.slice(4))));
  const unclaimed = recorded.filter((m) => !claimed.has(m));
  if (unclaimed.length) out.problems.push(`after gc, devices the instance records have no claim: ${unclaimed.map((m) => `loop${m}`).join(' ')}`);
  const unlisted = boundTo(file).filter((d) => !recorded.includes(Number(d.replace(/^\/dev\/loop/, ''))));
  if (unlisted.length) out.problems.push(`after gc, devices bound to the fault's file that the instance does not list: ${unlisted.join(' ')}`);
  const d = await w.clients.run(LOOPFS, ['instance', 'destroy', '--force', dir], rootEnv, w.sb.root);
  if (d.exitCode !== 0) out.problems.push(`destroy: ${d.stderr.trim()}`);
  if (boundTo(file).length) out.problems.push(`after destroy still bound to the fault's file: ${boundTo(file).join(' ')}`);
  return out;
}

// ------------------------------------------------------------------ the end: gc and counts

/** Everything that may have leaked, each list empty when nothing did. */
function countLeaks(sb: BrokerSandbox): Record<string, string[]> {
  const dirs = instanceDirsUnder(sb.root, 5);
  const listedBy = new Map<number, string[]>();
  const records = new Map<string, Record<string, { state: string }>>();
  for (const d of dirs) {
    const s = readInstanceState(d);
    if (!s) continue;
    records.set(d, s.devices);
    for (const m of Object.keys(s.devices)) listedBy.set(Number(m), [...(listedBy.get(Number(m)) ?? []), d]);
  }
  const leaks: Record<string, string[]> = {
    'devices bound to the run\'s files that no instance lists': [],
    'devices listed twice': [],
    'stray nodes': [],
    'missing nodes': [],
    'leftover claims': [],
    'missing claims': [],
    'leftover registry records': [],
    'mounts left': [],
    'processes left': [],
    'FUSE drivers left': [],
  };
  for (const s of sb.bound()) if (!listedBy.has(s.minor)) leaks['devices bound to the run\'s files that no instance lists'].push(`${s.dev} ${s.backingFile}`);
  for (const [m, ds] of listedBy) if (ds.length > 1) leaks['devices listed twice'].push(`loop${m}: ${ds.join(' ')}`);
  for (const [d, devs] of records) {
    for (const n of fs.readdirSync(d).filter((x) => /^loop\d+$/.test(x))) {
      if (!devs[n.slice(4)]) leaks['stray nodes'].push(path.join(d, n));
    }
    for (const [m, rec] of Object.entries(devs)) {
      const bound = fs.existsSync(`/sys/block/loop${m}/loop/backing_file`);
      if (rec.state === 'held' && bound && !fs.existsSync(path.join(d, `loop${m}`))) leaks['missing nodes'].push(path.join(d, `loop${m}`));
    }
  }
  // claims and the registry of the sandbox's runtime dir
  const claimed = new Map<number, string>();
  for (const n of claimsIn(sb.runtime)) {
    try {
      const c = JSON.parse(fs.readFileSync(path.join(sb.runtime, 'claims', n), 'utf8')) as { minor: number; dir: string };
      claimed.set(c.minor, c.dir);
      if (!records.get(c.dir)?.[String(c.minor)]) leaks['leftover claims'].push(`${n} -> ${c.dir}`);
    } catch {
      leaks['leftover claims'].push(`${n} (unreadable)`);
    }
  }
  for (const [d, devs] of records) {
    if (!d.startsWith(`${sb.root}/`) || d.startsWith(`${sb.path('fault')}`)) continue;
    for (const m of Object.keys(devs)) if (claimed.get(Number(m)) !== d) leaks['missing claims'].push(`loop${m} of ${d}`);
  }
  for (const r of sb.registry()) if (!readInstanceState(r.dir)) leaks['leftover registry records'].push(`${r.id} -> ${r.dir}`);
  leaks['mounts left'] = sb.mounts();
  leaks['processes left'] = processesMatching((args) => args.includes(sb.root)).map((p) => `${p}: ${cmdline(p)}`);
  leaks['FUSE drivers left'] = processesMatching((args) => /(^|\/)(fuse2fs|squashfuse)\b/.test(args) && args.includes(sb.root)).map(String);
  return leaks;
}

function cmdline(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
  } catch {
    return '?';
  }
}

interface Sample {
  t: number;
  fds: number;
  rssKiB: number;
}

type Growth = SoakReport['growth'][string];

/**
 * Growth between the first and the last tenth of the run: the minimum of each (in-flight
 * requests are not growth). RSS is compared only after `rssWarmupMs` (and the first 30 % of
 * the run): a node daemon's heap
 * takes its first ~2000 requests to reach its working size (measured on the watcher: 62 MiB
 * at start, 118 MiB after 2000 view attaches, then flat within 0.5 MiB for 2600 more), which
 * a short run would report as growth. With too few samples after the warm-up, RSS is not
 * judged (rssJudged false); fds always are.
 */
function growth(samples: Sample[], t0: number, rssWarmupMs: number): Growth {
  const tenth = (xs: Sample[]) => Math.max(1, Math.floor(xs.length / 10));
  const min = (xs: number[]) => Math.min(...xs);
  // the warm-up is also at least the first 30 % of the run: under the long profile's load the
  // watcher's heap still grew at 7 minutes (100, 111, 140 MiB in the first three tenths of a
  // 38-minute run), then stayed at 141-142 MiB for the remaining seven
  const span = samples.length ? samples[samples.length - 1].t - samples[0].t : 0;
  const from = Math.max(t0 + rssWarmupMs, (samples[0]?.t ?? t0) + 0.3 * span);
  const warm = samples.filter((x) => x.t >= from);
  const rssJudged = warm.length >= 20;
  const rss = rssJudged ? warm : samples;
  // the lowest RSS of each tenth of the run: a leak climbs through all ten, a heap that
  // reached its working size stays level
  const k = tenth(samples);
  const rssCurveKiB = Array.from({ length: Math.ceil(samples.length / k) }, (_, i) => min(samples.slice(i * k, (i + 1) * k).map((x) => x.rssKiB)));
  return {
    rssCurveKiB,
    fdsFirst: min(samples.slice(0, tenth(samples)).map((x) => x.fds)),
    fdsLast: min(samples.slice(-tenth(samples)).map((x) => x.fds)),
    rssFirstKiB: min(rss.slice(0, tenth(rss)).map((x) => x.rssKiB)),
    rssLastKiB: min(rss.slice(-tenth(rss)).map((x) => x.rssKiB)),
    rssJudged,
  };
}

/** RSS of a node daemon moves with V8's heap: growth is a leak above this much. */
export const RSS_SLACK_KIB = 16 * 1024;

export async function soak(opts: SoakOptions): Promise<SoakReport> {
  const sb = new BrokerSandbox('loopfs-chaos');
  const user2 = secondUser();
  if (!user2) throw new Error('cannot create the second unprivileged user loopfstest2');
  const trace = new Trace();
  const clients = new Clients(trace);
  const stats = new Stats();
  const rng = prng(opts.seed);
  let stopAt = Infinity;
  const w: World = { sb, user2, clients, stats, rng, stop: () => Date.now() >= stopAt, opts };
  const units: Unit[] = [];
  const samples = new Map<string, Sample[]>();
  const faults: FaultOutcome[] = [];
  let podmanRootful: Podman | null = null;
  let podmanRootless: Podman | null = null;
  let ranges: SubIdRanges | null = null;
  let leaks: Record<string, string[]> = {};
  const lostTrace: Record<string, string[]> = {};
  const report = {} as SoakReport;
  try {
    // --- the world: local instances, two brokered users, two activated views, podman
    const locals: string[] = [];
    for (let i = 0; i < 3; i++) {
      const d = sb.path(`local${i}`);
      await sb.create(d, ['--max', '4']);
      locals.push(d);
    }
    const b1 = await sb.instance('broker1', ['--max', '8']);
    const b2 = sb.path('broker2');
    await sb.create(b2, ['--max', '8', '--owner', `${user2.uid}:${user2.gid}`]);
    const fileU1 = sb.file('u1.img');
    sb.giveToUser(fileU1);
    const fileU2 = sb.file('u2.img');
    fs.chownSync(fileU2, user2.uid, user2.gid);
    const mnt1 = sb.userDir('mnt1');
    const views: Array<{ dir: string; dev: string }> = [];
    for (let i = 0; i < 2; i++) {
      const d = sb.path(`view${i}`);
      await sb.create(d, ['--pool', '2']);
      const dev = sb.path(`view${i}-dev`);
      tmpfsAt(dev, 'mode=0755,size=1m');
      views.push({ dir: d, dev });
    }
    // killable daemons, and one of each kind that lives through the run (its fds and RSS are
    // the growth figures: a restarted daemon starts from nothing)
    const serveA = new Unit('serve (killed)', () => Server.start(sb, [b1]), opts.restartMs, trace);
    const serveB = new Unit('serve (steady)', () => Server.start(sb, [b2]), opts.restartMs, trace);
    const watchA = new Unit('activate --watch (killed)', () => Watcher.start(sb, views[0].dir, views[0].dev, 2), opts.restartMs, trace);
    const watchB = new Unit('activate --watch (steady)', () => Watcher.start(sb, views[1].dir, views[1].dev, 2), opts.restartMs, trace);
    units.push(serveA, serveB, watchA, watchB);
    let ociBroker: Unit | null = null;
    if (opts.podman) {
      const hooks = sb.path('hooks.d');
      const r = await installHooks(sb, hooks);
      if (r.exitCode !== 0) throw new Error(`install --oci-hooks: ${r.stderr.toString()}`);
      fs.chmodSync(hooks, 0o755);
      ranges = new SubIdRanges(sb.user);
      ranges.add();
      podmanRootful = new Podman(sb, 'rootful', hooks);
      podmanRootless = new Podman(sb, 'rootless', hooks, { user: sb.user });
      ociBroker = new Unit('oci-broker (killed)', () => Server.launch(sb, ['oci-broker']), opts.restartMs, trace);
      units.push(ociBroker);
    }
    for (const u of units) await u.up();
    log(opts, `world ready in ${sb.root}; running ${opts.seconds} s`);

    // --- the concurrent phase
    const t0 = Date.now();
    stopAt = t0 + opts.seconds * 1000;
    const workers: Promise<void>[] = [
      ...locals.map((d, i) => localWorker(w, d, [0, 1, 2, 3].map((k) => sb.file(`local${i}-${k}.img`)))),
      brokerWorker(w, sb.user, b1, fileU1, { image: sb.image, mnt: mnt1 }),
      brokerWorker(w, user2, b2, fileU2, null),
      ...views.flatMap((v, i) => Array.from({ length: opts.viewWorkers }, (_, k) => viewWorker(w, v.dev, sb.file(`view${i}-${k}.img`)))),
    ];
    if (podmanRootful && podmanRootless) workers.push(podmanWorker(w, podmanRootful, true), podmanWorker(w, podmanRootless, false));
    const kills: Record<string, number> = {};
    const count = (k: string) => (kills[k] = (kills[k] ?? 0) + 1);
    const chaos = (async () => {
      while (!w.stop()) {
        await sleep(opts.killEveryMs * (0.2 + 1.6 * rng()));
        if (w.stop()) break;
        const r = rng();
        if (r < 0.6) {
          if (clients.killOne(rng)) count('client');
        } else if (r < 0.7) {
          if (serveA.kill()) count('loopfs serve');
        } else if (r < 0.8) {
          if (watchA.kill()) count('activate --watch');
        } else if (ociBroker && podmanRootful) {
          const which = rng();
          if (which < 0.25) {
            if (ociBroker.kill()) count('oci-broker');
          } else if (which < 0.5) {
            const hooks = processesWithEnv((a) => a.includes('oci-hook'), `LOOPFS_RUNTIME_DIR=${sb.runtime}`);
            if (hooks.length && kill(hooks[Math.floor(rng() * hooks.length)])) count('oci hook');
          } else if (which < 0.75) {
            const conmons = [...podmanRootful.conmons(), ...podmanRootless!.conmons()];
            if (conmons.length && kill(conmons[Math.floor(rng() * conmons.length)])) count('conmon');
          } else {
            const conmons = new Set([...podmanRootful.conmons(), ...podmanRootless!.conmons()]);
            const inits = processesMatching((a) => a.trim() === 'sleep 600').filter((p) => {
              const pp = parentOf(p);
              return pp !== null && conmons.has(pp);
            });
            if (inits.length && kill(inits[Math.floor(rng() * inits.length)])) count('container init');
          }
        }
      }
    })();
    const sampler = (async () => {
      while (!w.stop()) {
        for (const u of [serveB, watchB]) {
          const pid = u.pid;
          const st = pid ? procStat(pid) : null;
          const fds = pid ? fdCount(pid) : null;
          if (st && fds !== null) samples.set(u.name, [...(samples.get(u.name) ?? []), { t: Date.now(), fds, rssKiB: st.rssKiB }]);
        }
        await sleep(250);
      }
    })();
    let lastLog = Date.now();
    const progress = setInterval(() => {
      if (Date.now() - lastLog < 30_000) return;
      lastLog = Date.now();
      log(opts, `${Math.round((Date.now() - t0) / 1000)} s: ${stats.ops} ops, kills ${JSON.stringify(kills)}`);
    }, 5000);
    await Promise.all([...workers, chaos, sampler]);
    clearInterval(progress);
    const elapsed = (Date.now() - t0) / 1000;
    for (const u of units) await u.settled();
    if (podmanRootful) await removeAll(podmanRootful);
    if (podmanRootless) await removeAll(podmanRootless);
    log(opts, `concurrent phase done: ${stats.ops} ops in ${elapsed.toFixed(0)} s`);

    // --- faults, one at a time, while the steady daemons keep running
    faults.push(await faultRuntimeFull(w));
    faults.push(await faultInstanceReadOnly(w));
    const b3 = await sb.instance('broker3', ['--max', '4']);
    const fileFd = sb.file('fault-fd.img');
    sb.giveToUser(fileFd);
    faults.push(await faultFdExhaustion(w, sb.user, b3, fileFd));
    faults.push(await faultRuntimeRemoved(w, user2));
    log(opts, `faults done: ${faults.map((f) => `${f.name}: ${f.problems.length ? 'FAILED' : 'ok'}`).join('; ')}`);

    // --- the end: stop the daemons (as their units would on shutdown), gc, count
    for (const u of units) await u.stop();
    for (const v of views) execFileSync('umount', [v.dev]);
    const gc = await clients.run(LOOPFS, ['gc'], sb.env, sb.root);
    if (gc.exitCode !== 0) stats.badFailures.push(`loopfs gc: exit ${gc.exitCode}: ${gc.stderr.trim()}`);
    podmanRootless?.stopPause();
    leaks = countLeaks(sb);
    leaks['devices lost after a reported attach'] = stats.lost;
    for (const l of stats.lost) {
      const dev = /loop\d+/.exec(l)?.[0];
      if (dev) lostTrace[l] = trace.about(dev);
    }
    const growthFigures: SoakReport['growth'] = {};
    for (const [name, s] of samples) growthFigures[name] = growth(s, t0, opts.rssWarmupSeconds * 1000);
    for (const [name, g] of Object.entries(growthFigures)) {
      if (g.fdsLast > g.fdsFirst) leaks[`fd growth of ${name}`] = [`${g.fdsFirst} -> ${g.fdsLast}`];
      if (g.rssJudged && g.rssLastKiB > g.rssFirstKiB + RSS_SLACK_KIB) leaks[`RSS growth of ${name}`] = [`${g.rssFirstKiB} -> ${g.rssLastKiB} KiB`];
    }
    const latency: Record<string, PathFigures> = {};
    for (const [p, l] of stats.latencies) {
      const s = [...l].sort((a, b) => a - b);
      latency[p] = { ops: s.length, p50: percentile(s, 50), p99: percentile(s, 99) };
    }
    const restarts: Record<string, number> = {};
    for (const u of units) restarts[u.name] = u.restarts;
    kills.client = stats.clientKills;
    Object.assign(report, {
      seconds: elapsed,
      seed: opts.seed,
      ops: stats.ops,
      opsPerSecond: stats.ops / elapsed,
      latency,
      kills,
      restarts,
      failures: Object.fromEntries(stats.failures),
      badFailures: stats.badFailures,
      faults,
      leaks,
      growth: growthFigures,
      lostTrace,
      podman: opts.podman,
    } satisfies SoakReport);
  } finally {
    stopAt = 0;
    for (const u of units) await u.stop().catch(() => undefined);
    for (const p of [podmanRootful, podmanRootless]) if (p) await removeAll(p).catch(() => undefined);
    podmanRootless?.stopPause();
    ranges?.remove();
    await sb.teardown();
  }
  return report;
}

function kill(pid: number): boolean {
  try {
    process.kill(pid, 'SIGKILL');
    return true;
  } catch {
    return false;
  }
}
