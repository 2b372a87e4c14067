/**
 * `loopfs run`'s supervisor: starts CMD under the mount filter (native seccompSpawn),
 * answers every trapped mount(2) from node's event loop, and ends with CMD.
 *
 * Why a supervisor beside CMD and not the broker: the listener must be served by a
 * process with CAP_SYS_ADMIN over the caller's namespaces for as long as the filtered
 * processes live, and no longer. Here its lifetime is CMD's: when the supervisor dies the
 * listener closes and every later mount(2) under the filter fails with ENOSYS (closed, not
 * open); when CMD ends, the supervisor (a child subreaper) kills what CMD left behind, so no
 * trapped process outlives it. Nothing crosses a socket, so no protocol is needed.
 *
 * Notifications are judged and answered by judge.ts (shared with the OCI seccomp agent) on
 * node's event loop, each to its end (no threads, nothing to cancel); only a FUSE mount
 * waits (for its driver to start), and meanwhile other notifications are served. As a
 * child subreaper it also reaps the orphans of CMD's tree.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { runningFuseDrivers, stopFuseDrivers } from '../mounting/fuse-driver.js';
import { native, type FdWatcher } from '../kernel/native.js';
import { MountJudge } from './judge.js';
import { MountPerformer } from './perform.js';

export interface RunOptions {
  file: string;
  argv: string[];
  env: NodeJS.ProcessEnv;
  cwd?: string;
  instanceDir: string;
  allowFs: string[];
  /** Mount through fuse2fs/squashfuse instead of the kernel's filesystem drivers. */
  fuse: boolean;
  /** One line per judged mount (not for the ones continued untouched). */
  log?: (line: string) => void;
}

export interface RunResult {
  code: number | null;
  signal: number | null;
}

export class Supervisor {
  private readonly judge: MountJudge;
  private listener: FdWatcher | null = null;
  private reaper: NodeJS.Timeout | null = null;
  /** Set once CMD ended: the listener fd is closed (its number may be reused), answer nothing. */
  private finished = false;
  private exitWatcher: FdWatcher | null = null;

  private constructor(
    opts: RunOptions,
    readonly pid: number,
    private readonly listenerFd: number,
    private readonly pidfd: number,
  ) {
    // Everything not performed goes to the kernel unchanged, which checks the caller's own
    // privilege; callers without a user namespace of their own are refused (CMD may run
    // processes as host root before it drops privileges: they must not be served).
    this.judge = new MountJudge({
      performer: new MountPerformer(opts.instanceDir, opts.allowFs, opts.fuse, opts.env),
      notPerformed: () => 'continue',
      log: opts.log,
    });
  }

  /** Start CMD; resolves with how it ended, after everything it left behind is gone. */
  static run(opts: RunOptions, started?: (s: Supervisor) => void): Promise<RunResult> {
    const n = native();
    // orphans of CMD come to us, so that nothing under the filter outlives the supervisor
    n.setChildSubreaper();
    const env = Object.entries(opts.env)
      .filter((e): e is [string, string] => e[1] !== undefined)
      .map(([k, v]) => `${k}=${v}`);
    const child = n.seccompSpawn(opts.file, opts.argv, env, opts.cwd ?? null);
    const pidfd = n.pidfdOpen(child.pid); // our unreaped child: the pid cannot be reused yet
    const s = new Supervisor(opts, child.pid, child.listenerFd, pidfd);
    started?.(s);
    return s.serve();
  }

  private serve(): Promise<RunResult> {
    const n = native();
    return new Promise<RunResult>((resolve) => {
      this.listener = n.watchFd(this.listenerFd, () => this.onNotification());
      this.exitWatcher = n.watchFd(this.pidfd, () => {
        const status = n.waitPid(this.pid, true);
        if (!status) return;
        void this.finish({ code: status.code, signal: status.signal }).then(resolve);
      });
      this.reaper = setInterval(() => reapOrphans(this.pid), 500).unref();
    });
  }

  /** Forward a signal to CMD (the command decides what it means). */
  signal(sig: NodeJS.Signals): void {
    try {
      process.kill(this.pid, sig);
    } catch {
      /* already gone */
    }
  }

  /** CMD ended: end its leftovers, stop listening, release everything. */
  private async finish(result: RunResult): Promise<RunResult> {
    const n = native();
    this.exitWatcher?.close();
    if (this.reaper) clearInterval(this.reaper);
    n.close(this.pidfd);
    // answering is over: what is still trapped is killed below (its notification dies with it)
    this.finished = true;
    this.listener?.close();
    // FUSE drivers are children node spawned (and reaps): stop them first
    await stopFuseDrivers();
    killDescendants();
    n.close(this.listenerFd);
    return result;
  }

  private onNotification(): void {
    const notif = native().seccompNotifRecv(this.listenerFd);
    if (!notif) return; // its process was killed, or none is left (then CMD's exit ends us)
    void this.judge.answer(this.listenerFd, notif, () => !this.finished);
  }
}

/** Our children, i.e. CMD and its orphans re-parented to us (the children file of each of our threads). */
function childrenOfSelf(): number[] {
  const out: number[] = [];
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      for (const pid of readFileSync(`/proc/self/task/${tid}/children`, 'utf8').split(' ')) if (pid.trim()) out.push(Number(pid));
    } catch {
      /* thread gone */
    }
  }
  return out;
}

/**
 * Reap the orphans of CMD's tree that have exited (they are ours as subreaper), one by one
 * by pid: never CMD (its exit is watched through its pidfd) and never a process node itself
 * started (a FUSE driver), which libuv reaps.
 */
function reapOrphans(cmd: number): void {
  const n = native();
  for (const pid of childrenOfSelf()) {
    if (pid === cmd) continue;
    let state = '';
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    } catch {
      // the child was reaped meanwhile (ENOENT): nothing to reap
      continue;
    }
    if (state === 'Z' && !isNodeChild(pid)) n.waitPid(pid, true);
  }
}

/** Whether pid is a FUSE driver node spawned (its exit is libuv's to reap). */
function isNodeChild(pid: number): boolean {
  return runningFuseDrivers().some((d) => d.pid === pid);
}

/**
 * SIGKILL and reap every child until none is left: each kill re-parents the victim's
 * children to us (subreaper), so repeat. Only processes of CMD's tree become our children:
 * `loopfs run` starts nothing else.
 */
function killDescendants(): void {
  const n = native();
  for (let round = 0; round < 1000; round++) {
    while (n.waitPid(-1, true)) {
      /* reap what already ended */
    }
    const kids = childrenOfSelf();
    if (kids.length === 0) return;
    for (const pid of kids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    // wait (blocking) for one of them: then look again
    n.waitPid(-1, false);
  }
}
