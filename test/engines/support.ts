// Fixtures for the engine tests (issue 12): real Docker (dockerd from docker.io), real
// containerd (driven with ctr) and real podman, each pointed at bin/loopfs-runtime through a
// shim script, with daemons, storage and configuration that belong to the test.
//
// Hygiene:
//  - every daemon is started by the test with its own roots, sockets, pidfile and config file
//    under the sandbox (dockerd: --data-root, --exec-root, --pidfile, -H, --config-file;
//    containerd: root, state, grpc/ttrpc addresses, the CRI plugin off) and stopped by its pid
//    (SIGTERM, then SIGKILL) in afterAll, also after a failure; dockerd's own containerd
//    (started under its exec-root) is stopped by the pid it recorded if it outlives dockerd.
//    /etc/docker, /etc/containerd, /var/lib/docker and the machine's daemons are never used;
//  - the runtime wrapper gets the sandbox's LOOPFS_RUNTIME_DIR/LOOPFS_LIMITS from a runtime
//    config file in the sandbox (engines do not pass their environment to runtimes), so every
//    instance, claim and socket lives in the sandbox;
//  - containers are removed (`docker rm -f`, `ctr task kill` + `ctr container rm`) before the
//    daemon stops; the sandbox's teardown then unmounts, detaches and removes what is left,
//    and the tests check that nothing was left to remove.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { announceSkip, firstReason, REPO_ROOT } from '../helpers/env.js';
import { runProgram, type RunResult } from '../helpers/run.js';
import { BrokerSandbox, brokerSkipReason, sleep, text } from '../broker/support.js';
import { buildRootfs, processesMatching } from '../oci/support.js';

export { text, sleep };

export const WRAPPER = path.join(REPO_ROOT, 'bin', 'loopfs-runtime');
export const RUNC = '/usr/sbin/runc';
/** docker.io's client (a newer one elsewhere on PATH would do too, but this is the pair CI installs). */
export const DOCKER = fs.existsSync('/usr/bin/docker') ? '/usr/bin/docker' : 'docker';

const PATH_ENV = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

function which(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/**
 * Why engine tests cannot run here (printed once), or undefined: the broker tests' needs
 * (root, loop, the unprivileged test user, user namespaces), the build, busybox for the
 * image, runc behind the wrapper, the wrapper itself, and the engine's own `tools`.
 */
export function engineSkipReason(what: string, tools: string[]): string | undefined {
  const missing = ['runc', ...tools].find((t) => !which(t));
  const reason = firstReason(
    brokerSkipReason(what),
    fs.existsSync(path.join(REPO_ROOT, 'dist', 'oci', 'runtime-main.js')) ? undefined : 'dist/oci/runtime-main.js missing (run npm run build)',
    fs.existsSync('/bin/busybox') ? undefined : '/bin/busybox missing (busybox-static)',
    fs.existsSync(WRAPPER) ? undefined : `${WRAPPER} missing`,
    missing ? `${missing} not installed` : undefined,
  );
  announceSkip(what, reason);
  return reason;
}

/** Wrapper shim and its runtime config in the sandbox: what every engine is pointed at. */
export class RuntimeShim {
  readonly path: string;
  readonly config: string;

  constructor(
    readonly sb: BrokerSandbox,
    name = 'loopfs-runtime',
  ) {
    const dir = sb.path('shims');
    fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
    this.path = path.join(dir, name);
    this.config = path.join(dir, `${name}.json`);
    fs.writeFileSync(
      this.config,
      `${JSON.stringify({ runtime: RUNC, env: { LOOPFS_RUNTIME_DIR: sb.runtime, LOOPFS_LIMITS: sb.limits } })}\n`,
      { mode: 0o644 },
    );
    fs.writeFileSync(this.path, `#!/bin/sh\nLOOPFS_RUNTIME_CONFIG=${this.config} exec ${WRAPPER} "$@"\n`, { mode: 0o755 });
  }
}

/** A busybox rootfs (test/oci/support.ts buildRootfs) and its tarball, for `docker import`. */
export function rootfsTarball(sb: BrokerSandbox, name = 'rootfs'): { dir: string; tar: string } {
  const dir = sb.path(name);
  buildRootfs(dir);
  const tar = sb.path(`${name}.tar`);
  execFileSync('tar', ['-C', dir, '-cf', tar, '.']);
  return { dir, tar };
}

/** Wait until `ok()` or the deadline; returns the last answer. */
async function until(ok: () => boolean | Promise<boolean>, timeoutMs: number, stepMs = 50): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await ok()) return true;
    if (Date.now() > end) return false;
    await sleep(stepMs);
  }
}

function alive(pid: number): boolean {
  if (!(pid > 1)) return false;
  try {
    // a zombie is dead for our purposes
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** SIGTERM, then SIGKILL after `graceMs`, of one pid we started; resolves once it is gone. */
async function stopPid(pid: number, graceMs: number): Promise<void> {
  if (!alive(pid)) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  if (await until(() => !alive(pid), graceMs)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* gone */
  }
  await until(() => !alive(pid), 5_000);
}

function readPid(file: string): number {
  try {
    return Number(fs.readFileSync(file, 'utf8').trim());
  } catch {
    return 0;
  }
}

/**
 * A daemon process of ours, its output in a log file (a pipe left undrained while the test
 * process is busy would stop dockerd at its next log line).
 */
class Daemon {
  readonly child: ChildProcess;

  constructor(
    cmd: string,
    args: string[],
    env: NodeJS.ProcessEnv,
    readonly logFile: string,
  ) {
    const fd = fs.openSync(logFile, 'a');
    try {
      this.child = spawn(cmd, args, { env, stdio: ['ignore', fd, fd] });
    } finally {
      fs.closeSync(fd);
    }
  }

  get pid(): number {
    return this.child.pid ?? 0;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  log(lines = 20): string {
    let out = '';
    try {
      out = fs.readFileSync(this.logFile, 'utf8');
    } catch {
      /* not written */
    }
    return out.trim().split('\n').slice(-lines).join('\n');
  }

  async stop(graceMs = 20_000): Promise<void> {
    if (!this.running) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(t);
  }
}

// ------------------------------------------------------------------ Docker

export interface DockerdOptions {
  /** The runtime registered as `loopfs`. */
  shim: string;
  /** dockerd's "userns-remap" (a user with /etc/subuid and /etc/subgid ranges). */
  usernsRemap?: string;
}

/** A dockerd of our own. */
export class Dockerd {
  readonly base: string;
  readonly sock: string;
  private daemon: Daemon | null = null;

  private constructor(
    readonly sb: BrokerSandbox,
    name: string,
    readonly opts: DockerdOptions,
  ) {
    this.base = sb.path(name);
    this.sock = path.join(this.base, 'docker.sock');
    for (const d of ['data', 'exec', 'client']) fs.mkdirSync(path.join(this.base, d), { recursive: true });
    fs.chmodSync(this.base, 0o755);
  }

  static async start(sb: BrokerSandbox, name: string, opts: DockerdOptions): Promise<Dockerd> {
    const d = new Dockerd(sb, name, opts);
    try {
      await d.launch();
    } catch (e) {
      await d.stop();
      throw e;
    }
    return d;
  }

  private async launch(): Promise<void> {
    const config: Record<string, unknown> = {
      iptables: false,
      ip6tables: false,
      bridge: 'none',
      runtimes: { loopfs: { path: this.opts.shim } },
    };
    if (this.opts.usernsRemap) config['userns-remap'] = this.opts.usernsRemap;
    const file = path.join(this.base, 'daemon.json');
    fs.writeFileSync(file, `${JSON.stringify(config)}\n`);
    this.daemon = new Daemon(
      'dockerd',
      [
        '--data-root',
        path.join(this.base, 'data'),
        '--exec-root',
        path.join(this.base, 'exec'),
        '--pidfile',
        path.join(this.base, 'docker.pid'),
        '-H',
        `unix://${this.sock}`,
        '--config-file',
        file,
      ],
      { PATH: PATH_ENV, LANG: 'C.UTF-8', HOME: path.join(this.base, 'client') },
      path.join(this.base, 'dockerd.log'),
    );
    const up = await until(async () => {
      if (!this.daemon!.running) return true;
      if (!fs.existsSync(this.sock)) return false;
      return (await this.docker(['version', '--format', '{{.Server.Version}}'])).exitCode === 0;
    }, 60_000, 100);
    if (!up || !this.daemon.running) throw new Error(`dockerd did not start: ${this.daemon.log()}`);
  }

  /** Our daemon's own containerd (dockerd starts one under its exec-root). */
  private containerdPid(): number {
    return readPid(path.join(this.base, 'exec', 'containerd', 'containerd.pid'));
  }

  docker(args: string[], timeoutMs = 120_000): Promise<RunResult> {
    return runProgram(DOCKER, ['-H', `unix://${this.sock}`, ...args], {
      env: { PATH: PATH_ENV, LANG: 'C.UTF-8', HOME: path.join(this.base, 'client'), DOCKER_CONFIG: path.join(this.base, 'client') },
      cwd: this.base,
      timeoutMs,
    });
  }

  /** `docker import` of a rootfs tarball as TAG. */
  async importImage(tar: string, tag: string): Promise<void> {
    const r = await this.docker(['import', tar, tag]);
    if (r.exitCode !== 0) throw new Error(`docker import failed (${r.exitCode}): ${text(r.stderr)}`);
  }

  /** `docker run --rm --network none FLAGS IMAGE sh -c SCRIPT`. */
  run(flags: string[], image: string, script: string, timeoutMs = 120_000): Promise<RunResult> {
    return this.docker(['run', '--rm', '--network', 'none', ...flags, image, 'sh', '-c', script], timeoutMs);
  }

  /** Containers of this daemon's runc/wrapper processes still alive (shims name our exec-root). */
  shims(): number[] {
    return processesMatching((args) => args.includes('containerd-shim') && args.includes(this.base));
  }

  /** Remove every container, stop dockerd by pid, then its containerd if it outlived it. */
  async stop(): Promise<void> {
    if (this.daemon?.running) {
      const ps = await this.docker(['ps', '-aq'], 30_000);
      const ids = text(ps.stdout).split('\n').filter(Boolean);
      if (ids.length) await this.docker(['rm', '-f', ...ids], 60_000);
    }
    await this.daemon?.stop();
    await stopPid(this.containerdPid(), 10_000);
    // shims of ours that outlived both (a SIGKILLed containerd leaves them)
    for (const pid of this.shims()) await stopPid(pid, 5_000);
  }
}

// ------------------------------------------------------------------ containerd

const CONTAINERD_CONFIG = (base: string) => `version = 2
root = "${base}/root"
state = "${base}/state"
# no Kubernetes CRI here: ctr talks to the core services only
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "${base}/containerd.sock"
[ttrpc]
  address = "${base}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
`;

/** A containerd of our own, driven with ctr. */
export class Containerd {
  readonly base: string;
  readonly sock: string;
  private daemon: Daemon | null = null;

  private constructor(readonly sb: BrokerSandbox, name: string) {
    this.base = sb.path(name);
    this.sock = path.join(this.base, 'containerd.sock');
    for (const d of ['root', 'state', 'fifo', 'runc']) fs.mkdirSync(path.join(this.base, d), { recursive: true });
  }

  static async start(sb: BrokerSandbox, name: string): Promise<Containerd> {
    const c = new Containerd(sb, name);
    try {
      const file = path.join(c.base, 'config.toml');
      fs.writeFileSync(file, CONTAINERD_CONFIG(c.base));
      c.daemon = new Daemon('containerd', ['--config', file], { PATH: PATH_ENV, LANG: 'C.UTF-8' }, path.join(c.base, 'containerd.log'));
      const up = await until(async () => !c.daemon!.running || (fs.existsSync(c.sock) && (await c.ctr(['version'])).exitCode === 0), 30_000, 50);
      if (!up || !c.daemon.running) throw new Error(`containerd did not start: ${c.daemon.log()}`);
    } catch (e) {
      await c.stop();
      throw e;
    }
    return c;
  }

  ctr(args: string[], timeoutMs = 120_000): Promise<RunResult> {
    return runProgram('ctr', ['-a', this.sock, ...args], { env: { PATH: PATH_ENV, LANG: 'C.UTF-8' }, cwd: this.base, timeoutMs });
  }

  /**
   * `ctr run --rm` of ROOTFS as ID with `sh -c SCRIPT`, through `runtime` (--runc-binary);
   * `flags` (--env, --annotation, --mount, ...) go before --rootfs. runc's state and the IO
   * fifos stay under our base too.
   */
  run(id: string, runtime: string, rootfs: string, flags: string[], script: string, timeoutMs = 120_000): Promise<RunResult> {
    return this.ctr(
      [
        'run',
        '--rm',
        '--fifo-dir',
        path.join(this.base, 'fifo'),
        '--runc-root',
        path.join(this.base, 'runc'),
        '--runc-binary',
        runtime,
        ...flags,
        '--rootfs',
        rootfs,
        id,
        '/bin/sh',
        '-c',
        `export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n${script}`,
      ],
      timeoutMs,
    );
  }

  /** Containers (and their tasks) that `--rm` left, e.g. after a failed start. */
  async removeAll(): Promise<void> {
    const ls = await this.ctr(['containers', 'ls', '-q'], 30_000);
    for (const id of text(ls.stdout).split('\n').filter(Boolean)) {
      await this.ctr(['task', 'kill', '-s', 'SIGKILL', id], 30_000);
      await this.ctr(['task', 'delete', '-f', id], 30_000);
      await this.ctr(['containers', 'rm', id], 30_000);
    }
  }

  shims(): number[] {
    return processesMatching((args) => args.includes('containerd-shim') && args.includes(this.sock));
  }

  async stop(): Promise<void> {
    if (this.daemon?.running) await this.removeAll();
    await this.daemon?.stop();
    for (const pid of this.shims()) await stopPid(pid, 5_000);
  }
}

// ------------------------------------------------------------------ one interface per engine

/** Start, exec into and remove a long-running container, whatever the engine. */
export interface Engine {
  readonly name: string;
  /** Start `sleep 600` detached with FLAGS (engine syntax) and the volumes `host:container[:ro]`; returns the id. */
  start(flags: string[], volumes: string[]): Promise<string>;
  /** `sh -c SCRIPT` in the container, util-linux first in PATH. */
  exec(id: string, script: string): Promise<RunResult>;
  remove(id: string): Promise<void>;
  /** Engine processes of ours still alive for containers (shims, conmon). */
  processes(): number[];
}

const IN_CONTAINER_PATH = 'export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n';

export function dockerEngine(d: Dockerd, image: string, runtime = 'loopfs'): Engine {
  return {
    name: 'docker',
    async start(flags, volumes) {
      const r = await d.docker([
        'run', '-d', '--rm', '--network', 'none', '--runtime', runtime, ...flags,
        ...volumes.flatMap((v) => ['-v', v]), image, 'sleep', '600',
      ]);
      if (r.exitCode !== 0) throw new Error(`docker run failed (${r.exitCode}): ${text(r.stderr).trim()}`);
      return text(r.stdout).trim();
    },
    exec: (id, script) => d.docker(['exec', id, '/bin/sh', '-c', IN_CONTAINER_PATH + script]),
    async remove(id) {
      await d.docker(['rm', '-f', id]);
    },
    processes: () => d.shims(),
  };
}

export function containerdEngine(c: Containerd, runtime: string, rootfs: string): Engine {
  let execs = 0;
  return {
    name: 'containerd',
    async start(flags, volumes) {
      const id = `loopfs-test-${process.pid}-${++execs}`;
      const mounts = volumes.flatMap((v) => {
        const [src, dst, ro] = v.split(':');
        return ['--mount', `type=bind,src=${src},dst=${dst},options=rbind:${ro === 'ro' ? 'ro' : 'rw'}`];
      });
      const r = await c.ctr([
        'run', '-d', '--null-io', '--fifo-dir', path.join(c.base, 'fifo'), '--runc-root', path.join(c.base, 'runc'),
        '--runc-binary', runtime, ...flags, ...mounts, '--rootfs', rootfs, id, '/bin/sleep', '600',
      ]);
      if (r.exitCode !== 0) {
        await this.remove(id);
        throw new Error(`ctr run failed (${r.exitCode}): ${text(r.stderr).trim()}`);
      }
      return id;
    },
    exec: (id, script) =>
      c.ctr(['task', 'exec', '--fifo-dir', path.join(c.base, 'fifo'), '--exec-id', `x${++execs}`, id, '/bin/sh', '-c', IN_CONTAINER_PATH + script]),
    async remove(id) {
      await c.ctr(['task', 'kill', '-s', 'SIGKILL', id], 30_000);
      await until(async () => !/RUNNING/.test(text((await c.ctr(['task', 'ls'], 30_000)).stdout).split('\n').find((l) => l.startsWith(`${id} `)) ?? ''), 10_000, 100);
      await c.ctr(['task', 'delete', '-f', id], 30_000);
      await c.ctr(['containers', 'rm', id], 30_000);
    },
    processes: () => c.shims(),
  };
}

// ------------------------------------------------------------------ what the tests check

/** Instance directories of containers in the sandbox's runtime dir: RUNTIME/oci/UID/ID. */
export function containerInstances(sb: BrokerSandbox): string[] {
  const root = path.join(sb.runtime, 'oci');
  const out: string[] = [];
  for (const uid of safeList(root)) for (const id of safeList(path.join(root, uid))) out.push(path.join(root, uid, id));
  return out;
}

function safeList(d: string): string[] {
  try {
    return fs.readdirSync(d);
  } catch {
    return [];
  }
}

/** The instance of container ID (made by the rootful hook or the OCI broker for `requester`). */
export function instanceOf(sb: BrokerSandbox, id: string, requester = 0): { dir: string; minors: number[]; owner: { uid: number; gid: number } | undefined } {
  const dir = path.join(sb.runtime, 'oci', String(requester), id.slice(0, 32));
  const state = sb.state(dir);
  return { dir, minors: Object.keys(state?.devices ?? {}).map(Number).sort((a, b) => a - b), owner: state?.owner };
}

/** A block node for loop MINOR in the sandbox (bound into a container to name a device it must not get). */
export function deviceNode(sb: BrokerSandbox, name: string, minor: number): string {
  const p = sb.path('nodes', name);
  fs.mkdirSync(path.dirname(p), { recursive: true, mode: 0o755 });
  fs.rmSync(p, { force: true });
  execFileSync('mknod', ['-m', '0666', p, 'b', '7', String(minor)]);
  return p;
}

/** Everything a container's instance may leave behind, for "nothing is left" checks. */
export function leftovers(sb: BrokerSandbox, engine: Engine, keepFiles: string[]): Record<string, unknown> {
  return {
    instances: containerInstances(sb),
    claims: sb.claims().map((c) => c.minor),
    registry: sb.registry().map((e) => e.dir),
    bound: sb.bound().filter((s) => !keepFiles.includes(s.backingFile)).map((s) => `${s.dev} ${s.backingFile}`),
    // the daemons' storage mounts are theirs; the instances' live under the runtime dir (a
    // mount of an instance device anywhere keeps it bound: see "bound")
    mounts: sb.mounts().filter((m) => m.startsWith(`${sb.runtime}/`)),
    processes: engine.processes(),
  };
}

export const NOTHING = { instances: [], claims: [], registry: [], bound: [], mounts: [], processes: [] };

/** Wait until the engine's cleanup (poststop, shim exit) has run: it follows the removal asynchronously. */
export async function waitNothingLeft(sb: BrokerSandbox, engine: Engine, keepFiles: string[]): Promise<Record<string, unknown>> {
  let now = leftovers(sb, engine, keepFiles);
  for (let i = 0; i < 150 && JSON.stringify(now) !== JSON.stringify(NOTHING); i++) {
    await sleep(100);
    now = leftovers(sb, engine, keepFiles);
  }
  return now;
}

/** Lines `KEY VALUE...` of a script's output, by key (the first such line). */
export function answers(r: RunResult): (key: string) => string | undefined {
  const lines = text(r.stdout).split('\n');
  return (key) => {
    const l = lines.find((x) => x === key || x.startsWith(`${key} `));
    return l === undefined ? undefined : l.slice(key.length + 1);
  };
}

export function describeRun(r: RunResult): string {
  return `exit ${r.exitCode}\n--- stdout\n${text(r.stdout)}--- stderr\n${text(r.stderr)}`;
}

/** Minor of a node as `stat -c %t:%T` prints it (hex). */
export function hexMinor(s: string | undefined): number {
  const m = /^([0-9a-f]+):([0-9a-f]+)$/.exec((s ?? '').trim());
  return m ? parseInt(m[2], 16) : -1;
}
