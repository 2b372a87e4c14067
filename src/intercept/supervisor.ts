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
 * Notifications are judged on node's event loop, each to its end (no threads, nothing to
 * cancel); only a FUSE mount waits (for its driver to start), and meanwhile other
 * notifications are served. As a child subreaper it also reaps the orphans of CMD's tree.
 */
import { constants as osConstants } from 'node:os';
import { readdirSync, readFileSync } from 'node:fs';
import { runningFuseDrivers, stopFuseDrivers } from '../broker/fuse.js';
import { native, type FdWatcher, type SeccompNotif } from '../kernel/native.js';
import { classify, mountFlags, remountKeepsNosuidNodev } from './policy.js';
import { MountPerformer, type Outcome } from './perform.js';
import { BadStringError, TrappedProcess } from './trapped.js';

const SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1;
const NR_MOUNT = 165;

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

type Answer = 'continue' | Outcome | null;

export class Supervisor {
  private readonly performer: MountPerformer;
  private listener: FdWatcher | null = null;
  private reaper: NodeJS.Timeout | null = null;
  /** Set once CMD ended: the listener fd is closed (its number may be reused), answer nothing. */
  private finished = false;
  private exitWatcher: FdWatcher | null = null;

  private constructor(
    private readonly opts: RunOptions,
    readonly pid: number,
    private readonly listenerFd: number,
    private readonly pidfd: number,
  ) {
    this.performer = new MountPerformer(opts.instanceDir, opts.allowFs, opts.fuse, opts.env);
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
    const n = native();
    const notif = n.seccompNotifRecv(this.listenerFd);
    if (!notif) return; // its process was killed, or none is left (then CMD's exit ends us)
    void this.answer(notif);
  }

  private async answer(notif: SeccompNotif): Promise<void> {
    const n = native();
    let answer: Answer;
    try {
      answer = await this.judge(notif);
    } catch (e) {
      // an unexpected failure refuses the mount: never continue what was not judged
      answer = { code: 'EPERM', why: `internal error: ${(e as Error).message}` };
    }
    if (answer === null || this.finished) return;
    if (answer === 'continue') {
      n.seccompNotifSend(this.listenerFd, notif.id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE);
      return;
    }
    const errno = answer.code === null ? 0 : -(osConstants.errno as Record<string, number>)[answer.code] || -1;
    const delivered = n.seccompNotifSend(this.listenerFd, notif.id, errno, 0, 0);
    this.opts.log?.(`pid ${notif.pid}: ${answer.code ?? 'ok'}: ${answer.why}${delivered ? '' : ' (caller gone)'}`);
  }

  /** The answer for one notification; null when its process is gone. */
  private async judge(notif: SeccompNotif): Promise<Answer> {
    if (notif.nr !== NR_MOUNT) return { code: 'ENOSYS', why: `unexpected syscall ${notif.nr}` };
    const t = TrappedProcess.open(this.listenerFd, notif);
    if (!t) return null;
    try {
      if (t.privileged) return 'continue';
      const flags = mountFlags(notif.args[3]);
      switch (classify(flags)) {
        case 'remount':
          return remountKeepsNosuidNodev(flags) ? 'continue' : { code: 'EPERM', why: 'a remount must keep nosuid,nodev' };
        case 'passthrough':
          return 'continue';
        case 'new':
          break;
      }
      let source: string | null, target: string | null, fstype: string | null;
      try {
        source = t.readString(notif.args[0]);
        target = t.readString(notif.args[1]);
        fstype = t.readString(notif.args[2]);
      } catch (e) {
        if (e instanceof BadStringError) return t.valid() ? { code: e.code, why: 'unreadable mount argument' } : null;
        throw e;
      }
      // the strings are ours now; they were read from the trapped thread, not a successor
      if (!t.valid()) return null;
      if (source === null || target === null) return 'continue';
      let st;
      try {
        st = native().nsStat(t.fds, source);
      } catch {
        return 'continue'; // no such source: not a device, the kernel answers
      }
      const c = native().constants;
      // Not a block device: the kernel judges it with the caller's own privilege (tmpfs,
      // proc, fuse in a user namespace…). Should a racing thread turn the source into a
      // device meanwhile, the kernel refuses the caller a block filesystem by itself.
      if ((st.mode & c.S_IFMT) !== c.S_IFBLK) return 'continue';
      // Filesystem options: read only now, for a block device (other filesystems may take
      // binary data there), and only to refuse them: any that is not a string is refused too.
      let data: string | null;
      try {
        data = t.readString(notif.args[4]);
      } catch (e) {
        if (e instanceof BadStringError) data = `(${e.code})`;
        else throw e;
      }
      if (!t.valid()) return null;
      return await this.performer.mount(t, { source: st, sourcePath: source, target, fstype, flags, data });
    } finally {
      t.close();
    }
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
