// Fixtures for the OCI hook tests: real podman (runc) with a busybox rootfs built at test
// time, rootful and rootless, in storage that belongs to the test.
//
// Hygiene:
//  - podman runs with a private --root/--runroot (rootful) or a private HOME,
//    XDG_RUNTIME_DIR, --root and --runroot (rootless) under the sandbox, CONTAINERS_CONF
//    pointing to the sandbox's containers.conf, and --hooks-dir pointing to the directory
//    written by the real `loopfs install --oci-hooks`: the machine's podman storage and
//    hooks directories are never read or written;
//  - the hooks carry the sandbox's LOOPFS_RUNTIME_DIR/LOOPFS_LIMITS (install pins them), so
//    every instance, claim and registry entry lives in the sandbox;
//  - every container is removed with `podman rm -f` in `finally`; a rootless run leaves
//    podman's pause process, which is stopped by its pid (from XDG_RUNTIME_DIR); the
//    subuid/subgid lines added for the test user are removed again, exactly those lines;
//  - cleanup then checks that nothing is left: no instance directory, no claim, no device
//    bound to a sandbox file, no mount under the sandbox, no conmon of ours.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { announceSkip, firstReason, REPO_ROOT } from '../helpers/env.js';
import { runProgram, type RunResult } from '../helpers/run.js';
import { LOOPFS, text } from '../instance/support.js';
import { BrokerSandbox, brokerSkipReason, type User } from '../broker/support.js';

export { text };

/**
 * Why the podman tests cannot run here (printed once), or undefined: the broker tests'
 * needs (root, loop, the unprivileged test user, user namespaces), then podman's.
 */
export function podmanSkipReason(what: string): string | undefined {
  const missing = ['podman', 'runc', 'nsenter', 'newuidmap', 'newgidmap'].find(
    (t) => spawnSync('sh', ['-c', `command -v ${t}`], { stdio: 'ignore' }).status !== 0,
  );
  const reason = firstReason(
    brokerSkipReason(what),
    fs.existsSync(path.join(REPO_ROOT, 'dist', 'commands', 'oci-hook.js')) ? undefined : 'dist/commands/oci-hook.js missing (run npm run build)',
    missing ? `${missing} not installed` : undefined,
    fs.existsSync('/bin/busybox') ? undefined : '/bin/busybox missing (busybox-static)',
  );
  announceSkip(what, reason);
  return reason;
}

/** A busybox rootfs: /bin/busybox and a link per applet; /usr comes from the host (ro). */
export function buildRootfs(dir: string): void {
  for (const d of ['bin', 'dev', 'proc', 'sys', 'tmp', 'etc', 'usr', 'mnt']) fs.mkdirSync(path.join(dir, d), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(dir, 'bin', 'busybox'));
  fs.chmodSync(path.join(dir, 'bin', 'busybox'), 0o755);
  const applets = execFileSync('/bin/busybox', ['--list'], { encoding: 'utf8' }).split('\n').filter((a) => a && a !== 'busybox');
  for (const a of applets) fs.symlinkSync('busybox', path.join(dir, 'bin', a));
  // util-linux (losetup, mount) from the host's /usr, bound read-only: merged-/usr links
  fs.symlinkSync('usr/lib', path.join(dir, 'lib'));
  fs.symlinkSync('usr/lib64', path.join(dir, 'lib64'));
  fs.symlinkSync('usr/sbin', path.join(dir, 'sbin'));
  // mount points podman binds files to: a runtime in a user namespace cannot create them
  // in a rootfs owned by the host's root
  fs.mkdirSync(path.join(dir, 'run'));
  for (const f of ['img', 'etc/hosts', 'etc/hostname', 'etc/resolv.conf', 'run/.containerenv']) fs.writeFileSync(path.join(dir, f), '');
  // rootless podman cannot create it in a rootfs owned by root
  fs.symlinkSync('../proc/self/mounts', path.join(dir, 'etc', 'mtab'));
  // where REPO_VOLUME binds this checkout (our own losetup): a runtime in a user namespace
  // cannot create the mount point either
  fs.mkdirSync(path.join(dir, REPO_ROOT), { recursive: true });
}

/** This checkout, read-only at the same path in a container, so that OUR_LOSETUP runs there (node is in /usr). */
export const REPO_VOLUME = `${REPO_ROOT}:${REPO_ROOT}:ro`;
export const OUR_LOSETUP = path.join(REPO_ROOT, 'bin', 'losetup');

const CONTAINERS_CONF = `[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
`;

/**
 * What the documentation tells operators to pass (README, loopfs(8) OCI HOOK): the
 * annotation and /sys/dev/block unmasked (so util-linux finds the devices' sysfs
 * attributes); rootful on cgroup v2 also every loop device in the device cgroup without
 * CAP_MKNOD (tested here on v1 too: the hook then adds no rules of its own).
 */
export const ROOTFUL_FLAGS = ['--device-cgroup-rule=b 7:* rw', '--cap-drop=MKNOD'];
export const COMMON_FLAGS = ['--annotation', 'io.loopfs.instance=true', '--security-opt', 'unmask=/sys/dev/block'];

export interface PodmanOptions {
  /** Run as this unprivileged user (rootless podman). */
  user?: User;
}

/** A podman of our own: storage, configuration and hooks in the sandbox. */
export class Podman {
  readonly base: string;
  readonly rootfs: string;
  readonly hooks: string;
  readonly user: User | null;

  constructor(
    readonly sb: BrokerSandbox,
    name: string,
    hooks: string,
    opts: PodmanOptions = {},
  ) {
    this.user = opts.user ?? null;
    this.base = sb.path(name);
    this.hooks = hooks;
    this.rootfs = path.join(this.base, 'rootfs');
    for (const d of ['home', 'xdg', 'root', 'runroot', 'tmp']) fs.mkdirSync(path.join(this.base, d), { recursive: true });
    fs.writeFileSync(path.join(this.base, 'containers.conf'), CONTAINERS_CONF);
    buildRootfs(this.rootfs);
    if (this.user) {
      // the container's root is the user: podman creates files (etc/hostname) in the rootfs
      execFileSync('chown', ['-R', '-h', `${this.user.uid}:${this.user.gid}`, this.rootfs]);
      for (const d of ['home', 'xdg', 'root', 'runroot', 'tmp']) fs.chownSync(path.join(this.base, d), this.user.uid, this.user.gid);
      fs.chmodSync(path.join(this.base, 'xdg'), 0o700);
      fs.chmodSync(this.base, 0o755);
    }
  }

  private env(): NodeJS.ProcessEnv {
    return {
      PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      HOME: path.join(this.base, 'home'),
      XDG_RUNTIME_DIR: path.join(this.base, 'xdg'),
      TMPDIR: path.join(this.base, 'tmp'),
      CONTAINERS_CONF: path.join(this.base, 'containers.conf'),
      LANG: 'C.UTF-8',
    };
  }

  /** podman ARGS with our storage and hooks (as the user when rootless). */
  run(args: string[], timeoutMs = 120_000): Promise<RunResult> {
    const podman = [
      'podman',
      '--root',
      path.join(this.base, 'root'),
      '--runroot',
      path.join(this.base, 'runroot'),
      '--hooks-dir',
      this.hooks,
      ...args,
    ];
    if (!this.user) return runProgram(podman[0], podman.slice(1), { env: this.env(), cwd: this.base, timeoutMs });
    return runProgram(
      'setpriv',
      ['--reuid', String(this.user.uid), '--regid', String(this.user.gid), '--clear-groups', ...podman],
      { env: this.env(), cwd: this.base, timeoutMs },
    );
  }

  /** Start a container that sleeps; returns its id. `flags` go before --rootfs. */
  async start(flags: string[], volumes: string[] = []): Promise<string> {
    const r = await this.run([
      'run',
      '-d',
      '--network',
      'none',
      ...flags,
      '-v',
      '/usr:/usr:ro',
      ...volumes.flatMap((v) => ['-v', v]),
      '--rootfs',
      this.rootfs,
      'sleep',
      '600',
    ]);
    if (r.exitCode !== 0) throw new PodmanError(`podman run failed (${r.exitCode}): ${text(r.stderr)}`, r);
    return text(r.stdout).trim();
  }

  /** `sh -c SCRIPT` in the container, util-linux first in PATH. */
  exec(id: string, script: string): Promise<RunResult> {
    return this.run(['exec', id, 'sh', '-c', `export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n${script}`]);
  }

  async rmForce(id: string): Promise<RunResult> {
    return this.run(['rm', '-f', '-t', '0', id]);
  }

  /** Our conmon processes (their command line names our storage). */
  conmons(): number[] {
    return processesMatching((args) => args.startsWith('/usr/bin/conmon') && args.includes(this.base));
  }

  /** Stop rootless podman's pause process, by the pid it recorded. */
  stopPause(): void {
    const file = path.join(this.base, 'xdg', 'libpod', 'tmp', 'pause.pid');
    let pid = 0;
    try {
      pid = Number(fs.readFileSync(file, 'utf8').trim());
    } catch {
      return;
    }
    if (pid > 1 && this.user && ownerOf(pid) === this.user.uid) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
}

export class PodmanError extends Error {
  constructor(
    message: string,
    readonly result: RunResult,
  ) {
    super(message);
  }
}

function ownerOf(pid: number): number | null {
  try {
    return fs.statSync(`/proc/${pid}`).uid;
  } catch {
    return null;
  }
}

export function processesMatching(match: (args: string) => boolean): number[] {
  const out: number[] = [];
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const args = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').join(' ');
      if (match(args)) out.push(Number(p));
    } catch {
      /* exited */
    }
  }
  return out;
}

/**
 * subuid/subgid ranges for the test user, added for the test and removed after: a range
 * above every range already given out.
 */
export class SubIdRanges {
  private added: Array<{ file: string; line: string }> = [];

  constructor(readonly user: User) {}

  add(): void {
    for (const file of ['/etc/subuid', '/etc/subgid']) {
      let text = '';
      try {
        text = fs.readFileSync(file, 'utf8');
      } catch {
        /* none yet */
      }
      if (text.split('\n').some((l) => l.startsWith(`${this.user.name}:`) || l.startsWith(`${this.user.uid}:`))) continue;
      let top = 100000;
      for (const l of text.split('\n')) {
        const f = l.split(':');
        if (f.length === 3) top = Math.max(top, Number(f[1]) + Number(f[2]));
      }
      const line = `${this.user.name}:${top}:65536`;
      fs.writeFileSync(file, `${text}${text && !text.endsWith('\n') ? '\n' : ''}${line}\n`);
      this.added.push({ file, line });
    }
  }

  remove(): void {
    for (const { file, line } of this.added) {
      const text = fs.readFileSync(file, 'utf8');
      fs.writeFileSync(file, text.split('\n').filter((l) => l !== line).join('\n'));
    }
    this.added = [];
  }
}

/** `loopfs install --oci-hooks DIR` (the real command), in scratch places of the sandbox. */
export async function installHooks(sb: BrokerSandbox, hooks: string): Promise<RunResult> {
  return sb.loopfs([
    'install',
    '--oci-hooks',
    hooks,
    '--no-losetup',
    '--prefix',
    sb.path('prefix'),
    '--helper-dir',
    sb.path('helpers'),
    '--record',
    sb.path('install.json'),
  ]);
}

export { LOOPFS };

