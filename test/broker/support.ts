// Shared fixtures for the broker tests (test/broker/*.test.ts): a real `loopfs serve` process
// on private instances, a real unprivileged user acting as the root of its own user namespace,
// and an asynchronous raw protocol client for hostile traffic.
//
// Hygiene, on top of test/instance/support.ts's Sandbox (private runtime dir and limits file,
// every backing file under the sandbox, cleanup that unmounts, detaches with util-linux and
// removes only indexes the sandbox's instances claimed):
//  - every test starts its own server and stops it in `finally` (SIGTERM, then SIGKILL): its
//    sessions are released as it stops, and what a kill leaves is settled by `instance destroy
//    --force` and `instance gc` run in the sandbox's runtime dir;
//  - mounts happen only inside the unprivileged user's own mount namespaces (`unshare -r -m`),
//    which die with the command; the host namespace's mountinfo is checked to hold nothing of
//    the sandbox;
//  - the unprivileged user is `loopfstest`, created with useradd when missing (a system user
//    without home or shell); processes run as it with `setpriv --reuid --regid --clear-groups`,
//    so they are really unprivileged outside their user namespace.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';
import { native, type FdWatcher, type RecvMsgResult } from '../../src/kernel/native.js';
import { announceSkip, firstReason, REPO_ROOT } from '../helpers/env.js';
import { runProgram, type RunResult } from '../helpers/run.js';
import { instanceSkipReason, LOOPFS, Sandbox, sleep, text } from '../instance/support.js';

export { LOOPFS, sleep, text };
export const LOSETUP = path.join(REPO_ROOT, 'bin', 'losetup');
export const MOUNT_LOOP = path.join(REPO_ROOT, 'bin', 'mount.loop');
export const ADDON = path.join(REPO_ROOT, 'native', 'build', 'Release', 'loopfs.node');
export const CLIENT = path.join(REPO_ROOT, 'test', 'broker', 'fixtures', 'client.cjs');
export const TEST_USER = 'loopfstest';

export interface User {
  name: string;
  uid: number;
  gid: number;
}

function lookupUser(name: string): User | null {
  const r = spawnSync('id', ['-u', name], { encoding: 'utf8' });
  if (r.status !== 0) return null;
  const g = spawnSync('id', ['-g', name], { encoding: 'utf8' });
  return { name, uid: Number(r.stdout.trim()), gid: Number(g.stdout.trim()) };
}

let user: User | null | undefined;

/** The unprivileged test user, created when missing; null when that is impossible. */
export function testUser(): User | null {
  if (user !== undefined) return user;
  user = lookupUser(TEST_USER);
  if (!user && process.getuid?.() === 0) {
    spawnSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', TEST_USER], { stdio: 'ignore' });
    user = lookupUser(TEST_USER);
  }
  return user;
}

function which(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/** Why the broker tests cannot run here (printed once per file), or undefined. */
export function brokerSkipReason(what: string): string | undefined {
  const reason = firstReason(
    instanceSkipReason(what),
    fs.existsSync(path.join(REPO_ROOT, 'dist', 'commands', 'serve.js')) ? undefined : 'dist/commands/serve.js missing (run npm run build)',
    ...['setpriv', 'unshare', 'mkfs.ext4', 'useradd'].map((t) => (which(t) ? undefined : `${t} not installed`)),
    fs.readFileSync('/proc/filesystems', 'utf8').includes('\text4') ? undefined : 'no ext4 in /proc/filesystems',
    Number(fs.readFileSync('/proc/sys/user/max_user_namespaces', 'utf8')) > 0 ? undefined : 'user namespaces are disabled',
    testUser() ? undefined : `cannot create the unprivileged user ${TEST_USER}`,
  );
  announceSkip(what, reason);
  return reason;
}

// ------------------------------------------------------------------ sandbox

export const HELLO = 'hello from a brokered mount\n';

/** A Sandbox whose files the unprivileged user can reach, with an ext4 image in it. */
export class BrokerSandbox extends Sandbox {
  readonly user: User;
  readonly image: string;

  constructor(prefix: string) {
    super(prefix);
    this.user = testUser()!;
    fs.chmodSync(this.root, 0o755);
    const src = this.path('src');
    fs.mkdirSync(src);
    fs.writeFileSync(path.join(src, 'hello.txt'), HELLO);
    this.image = path.join(this.files, 'ext4.img');
    execFileSync('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', '-d', src, this.image, '8M'], { stdio: 'pipe' });
    this.giveToUser(this.files);
    this.giveToUser(this.image);
  }

  giveToUser(p: string): void {
    fs.chownSync(p, this.user.uid, this.user.gid);
  }

  /** A directory the user owns (a mount point). */
  userDir(name: string): string {
    const p = this.path(name);
    fs.mkdirSync(p, { recursive: true });
    this.giveToUser(p);
    return p;
  }

  /** `loopfs instance create` owned by the unprivileged user. */
  async instance(name: string, flags: string[] = []): Promise<string> {
    const dir = this.path(name);
    await this.create(dir, ['--owner', `${this.user.uid}:${this.user.gid}`, ...flags]);
    return dir;
  }

  /**
   * Run a shell script as the unprivileged user, as root of a new user namespace with its own
   * mount namespace (setpriv drops to the user first: the namespace is the user's, not root's).
   */
  asUser(script: string, env: Record<string, string> = {}, timeoutMs = 60_000): Promise<RunResult> {
    return runProgram(
      'setpriv',
      ['--reuid', String(this.user.uid), '--regid', String(this.user.gid), '--clear-groups', 'unshare', '-r', '-m', 'sh', '-c', script],
      { env: this.userEnv(env), cwd: this.root, timeoutMs },
    );
  }

  /** The same, without a user namespace: the plain unprivileged user. */
  asPlainUser(argv: string[], env: Record<string, string> = {}, uid = this.user.uid, gid = this.user.gid): Promise<RunResult> {
    return runProgram('setpriv', ['--reuid', String(uid), '--regid', String(gid), '--clear-groups', ...argv], {
      env: this.userEnv(env),
      cwd: this.root,
    });
  }

  userEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
    return { PATH: '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin', LANG: 'C.UTF-8', HOME: '/', ...extra };
  }

  /** Run the raw protocol client (fixtures/client.cjs) as the user in a user namespace. */
  async rawClient(socket: string, steps: unknown[]): Promise<RawReply[]> {
    const r = await runProgram(
      'setpriv',
      ['--reuid', String(this.user.uid), '--regid', String(this.user.gid), '--clear-groups', 'unshare', '-r', '-m', process.execPath, CLIENT, ADDON, 'steps', socket, JSON.stringify(steps)],
      { env: this.userEnv(), cwd: this.root, timeoutMs: 60_000 },
    );
    if (r.exitCode !== 0) throw new Error(`raw client failed (${r.exitCode}): ${text(r.stderr)}`);
    return JSON.parse(text(r.stdout)) as RawReply[];
  }

  /** Mount points of this (the host) namespace under the sandbox. */
  hostMounts(): string[] {
    return this.mounts();
  }

  /** Destroy every instance (--force) and gc, then the Sandbox cleanup. Never throws before all ran. */
  async teardown(): Promise<void> {
    const errors: string[] = [];
    for (const dir of this.instanceDirs()) {
      const r = await this.loopfs(['instance', 'destroy', '--force', dir]);
      if (r.exitCode !== 0 && this.state(dir)) errors.push(`destroy ${dir}: ${text(r.stderr)}`);
    }
    await this.loopfs(['instance', 'gc']);
    try {
      await this.cleanup();
    } catch (e) {
      errors.push(String((e as Error).message));
    }
    if (errors.length) throw new Error(errors.join('\n'));
  }
}

export interface RawReply {
  reply?: Record<string, unknown> & { ok?: boolean; error?: { code: string; message: string; kind?: string } };
  fds?: number;
  eof?: boolean;
  error?: string;
}

// ------------------------------------------------------------------ the server

export class Server {
  readonly stdout: string[] = [];
  readonly stderr: string[] = [];
  private exited: Promise<void>;
  private done = false;

  private constructor(readonly child: ChildProcess) {
    this.exited = new Promise((resolve) => child.once('exit', () => {
      this.done = true;
      resolve();
    }));
    child.stdout!.setEncoding('utf8').on('data', (s: string) => this.stdout.push(s));
    child.stderr!.setEncoding('utf8').on('data', (s: string) => this.stderr.push(s));
  }

  get pid(): number {
    return this.child.pid!;
  }

  get alive(): boolean {
    return !this.done;
  }

  /** `loopfs serve DIR… FLAGS` in the sandbox's environment; resolves once it printed "ready". */
  static start(sb: Sandbox, dirs: string[], flags: string[] = [], timeoutMs = 20_000): Promise<Server> {
    return Server.launch(sb, ['serve', ...dirs, ...flags], timeoutMs);
  }

  /** Any `loopfs` daemon (`serve`, `oci-broker`) as root in the sandbox's environment, once it printed "ready". */
  static async launch(sb: Sandbox, args: string[], timeoutMs = 20_000): Promise<Server> {
    const child = spawn(LOOPFS, args, { env: sb.env, stdio: ['ignore', 'pipe', 'pipe'] });
    const s = new Server(child);
    const end = Date.now() + timeoutMs;
    while (!s.stdout.join('').includes('ready\n')) {
      if (!s.alive || Date.now() > end) {
        await s.stop();
        throw new Error(`loopfs ${args[0]} did not start: ${s.stdout.join('')}${s.stderr.join('')}`);
      }
      await sleep(20);
    }
    return s;
  }

  /** Open fds of the server process. */
  fdCount(): number {
    return fs.readdirSync(`/proc/${this.pid}/fd`).length;
  }

  fdTargets(): string[] {
    return fs.readdirSync(`/proc/${this.pid}/fd`).map((fd) => {
      try {
        return fs.readlinkSync(`/proc/${this.pid}/fd/${fd}`);
      } catch {
        return '?';
      }
    });
  }

  /** SIGTERM (sessions are released), SIGKILL after `graceMs`. */
  async stop(graceMs = 15_000): Promise<void> {
    if (this.done) return;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(t);
  }
}

/** Wait until `cond` holds (polling), or fail with `what`. */
export async function waitFor(what: string, cond: () => boolean, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await sleep(25);
  }
}

export interface BrokerCtx {
  sb: BrokerSandbox;
  server: Server;
  inst: string;
  more: string[];
}

/**
 * A sandbox (`prefix`), an instance owned by the user (`--max 8` unless `flags.instance`),
 * more instances named in `flags.more`, a server for all of them (`flags.serve`); stopped,
 * destroyed and checked to have left no host mount in finally.
 */
export async function withBroker(
  flags: { instance?: string[]; serve?: string[]; more?: string[]; prefix?: string },
  body: (ctx: BrokerCtx) => Promise<void>,
): Promise<void> {
  const sb = new BrokerSandbox(flags.prefix ?? 'loopfs-broker');
  let server: Server | null = null;
  try {
    const inst = await sb.instance('inst', flags.instance ?? ['--max', '8']);
    const more: string[] = [];
    for (const name of flags.more ?? []) more.push(await sb.instance(name, ['--max', '8']));
    server = await Server.start(sb, [inst, ...more], flags.serve ?? []);
    await body({ sb, server, inst, more });
  } finally {
    try {
      await server?.stop();
    } finally {
      const mounts = sb.hostMounts();
      await sb.teardown();
      expect(mounts, 'nothing of the sandbox is mounted in the host namespace').toEqual([]);
    }
  }
}

/** Minors the instance holds (its state file). */
export const heldMinors = (sb: BrokerSandbox, inst: string): number[] => Object.keys(sb.state(inst)?.devices ?? {}).map(Number);

// ------------------------------------------------------------------ async raw client (in-process)

/**
 * A protocol client in the test process that never blocks it: the socket is watched with
 * watchFd (which makes it non-blocking), replies are awaited with a timeout.
 */
export class AsyncClient {
  private watcher: FdWatcher | null;
  private readonly queue: RecvMsgResult[] = [];
  private waiter: (() => void) | null = null;
  private failure: Error | null = null;
  closed = false;

  private constructor(readonly fd: number) {
    this.watcher = native().watchFd(fd, () => this.drain());
  }

  static connect(socket: string): AsyncClient {
    return new AsyncClient(native().seqpacketConnect(socket));
  }

  private drain(): void {
    for (;;) {
      let m: RecvMsgResult | null;
      try {
        m = native().recvMsg(this.fd, 256 * 1024, 8);
      } catch (e) {
        this.failure = e as Error;
        this.stopWatching();
        break;
      }
      if (m === null) break;
      this.queue.push(m);
      if (m.eof) {
        this.stopWatching();
        break;
      }
    }
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  private stopWatching(): void {
    this.watcher?.close();
    this.watcher = null;
  }

  /** Send; false when the server is gone (EPIPE/ECONNRESET). */
  send(data: Buffer, fds: number[] = []): boolean {
    try {
      native().sendMsg(this.fd, data, fds);
      return true;
    } catch (e) {
      if ((e as { code?: string }).code === 'EPIPE' || (e as { code?: string }).code === 'ECONNRESET') return false;
      throw e;
    }
  }

  /** The next datagram (or eof), within timeoutMs. */
  async recv(timeoutMs = 10_000): Promise<RecvMsgResult> {
    const end = Date.now() + timeoutMs;
    while (this.queue.length === 0) {
      if (this.failure) return { data: Buffer.alloc(0), fds: [], truncated: false, ctrlTruncated: false, eof: true };
      if (this.watcher === null) return { data: Buffer.alloc(0), fds: [], truncated: false, ctrlTruncated: false, eof: true };
      const left = end - Date.now();
      if (left <= 0) throw new Error('no reply from the broker within the timeout');
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    return this.queue.shift()!;
  }

  /** Send a request object and return the parsed reply (null on eof); closes received fds. */
  async request(msg: object, fds: number[] = []): Promise<Record<string, unknown> | null> {
    if (!this.send(Buffer.from(JSON.stringify(msg)), fds)) return null;
    const m = await this.recv();
    for (const fd of m.fds) native().close(fd);
    if (m.eof) return null;
    return JSON.parse(m.data.toString('utf8')) as Record<string, unknown>;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopWatching();
    for (const m of this.queue) for (const fd of m.fds) native().close(fd);
    native().close(this.fd);
  }
}

/** Number of entries in a directory (fds of a process). */
export function countDir(dir: string): number {
  return fs.readdirSync(dir).length;
}
