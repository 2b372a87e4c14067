/**
 * One trapped mount(2), judged and answered: the code `loopfs run`'s supervisor and the
 * OCI seccomp agent (src/oci/seccomp-agent.ts) share, so that both have one policy and
 * one performer. What differs between them are parameters, never copies:
 *
 *  - `notPerformed`: the answer for every mount this module does not perform itself (a
 *    bind, move or propagation change, a remount keeping nosuid,nodev, a source that is
 *    not a block device, a caller privileged on the host). `loopfs run` continues them to
 *    the kernel; the agent applies the container engine's own verdict on mount(2), which
 *    its notify rule replaced.
 *  - `admit`: a check of the trapped process before anything else (the agent: it must
 *    still be a process of the container the listener was handed over for).
 *  - the performer's options (the agent also performs for a container without a user
 *    namespace; see MountPerformer).
 *
 * Notifications are judged each to its end on node's event loop; only a FUSE mount waits.
 */
import { constants as osConstants } from 'node:os';
import { hasCode } from '../kernel/errors.js';
import { native, type NativeStat, type SeccompNotif } from '../kernel/native.js';
import { classify, mountFlags, remountKeepsNosuidNodev } from './policy.js';
import type { MountPerformer, Outcome } from './perform.js';
import { BadStringError, TrappedProcess } from './trapped.js';

const SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1;
const NR_MOUNT = 165;
/** Trapped only by profiles that send it to the OCI agent (agent-contract JUDGED_SYSCALLS). */
const NR_UMOUNT2 = 166;

/** Continue to the kernel, an outcome (0 or an errno), or null: the caller is gone. */
export type Answer = 'continue' | Outcome | null;

export interface JudgeOptions {
  performer: MountPerformer;
  /** The answer for a mount not performed here (see the header); `loopfs run`: continue. */
  notPerformed: (t: TrappedProcess) => 'continue' | Outcome;
  /** A refusal for a trapped process that may not be served at all, else null. */
  admit?: (t: TrappedProcess) => Outcome | null;
  /** One line per answer that is not a plain continue. */
  log?: (line: string) => void;
}

export class MountJudge {
  constructor(private readonly opts: JudgeOptions) {}

  /**
   * Judge `notif` and answer it on `listenerFd`, unless `open()` says the listener was
   * closed meanwhile (its fd number may then name something else: answer nothing).
   */
  async answer(listenerFd: number, notif: SeccompNotif, open: () => boolean): Promise<void> {
    const n = native();
    let answer: Answer;
    try {
      answer = await this.judge(listenerFd, notif);
    } catch (e) {
      // an unexpected failure refuses the mount: never continue what was not judged
      answer = { code: 'EPERM', why: `internal error: ${(e as Error).message}` };
    }
    if (answer === null || !open()) return;
    if (answer === 'continue') {
      n.seccompNotifSend(listenerFd, notif.id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE);
      return;
    }
    const delivered = n.seccompNotifSend(listenerFd, notif.id, answer.code === null ? 0 : -errnoOf(answer), 0, 0);
    this.opts.log?.(`pid ${notif.pid}: ${answer.code ?? 'ok'}: ${answer.why}${delivered ? '' : ' (caller gone)'}`);
  }

  /** The answer for one notification; null when its process is gone. */
  async judge(listenerFd: number, notif: SeccompNotif): Promise<Answer> {
    if (notif.nr !== NR_MOUNT && notif.nr !== NR_UMOUNT2) return { code: 'ENOSYS', why: `unexpected syscall ${notif.nr}` };
    const t = TrappedProcess.open(listenerFd, notif);
    if (!t) return null;
    try {
      const refused = this.opts.admit?.(t);
      if (refused) return refused;
      if (t.privileged) return this.opts.notPerformed(t);
      if (notif.nr === NR_UMOUNT2) return await this.judgeUmount(t);
      const flags = mountFlags(notif.args[3]);
      switch (classify(flags)) {
        case 'remount':
          return remountKeepsNosuidNodev(flags) ? this.opts.notPerformed(t) : { code: 'EPERM', why: 'a remount must keep nosuid,nodev' };
        case 'passthrough':
          return this.opts.notPerformed(t);
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
      if (source === null || target === null) return this.opts.notPerformed(t);
      const st = statSource(t, source);
      if (!st) return this.opts.notPerformed(t); // no such source: not a device, the kernel answers
      const c = native().constants;
      // Not a block device: the kernel judges it with the caller's own privilege (tmpfs,
      // proc, fuse in a user namespace…). Should a racing thread turn the source into a
      // device meanwhile, the kernel refuses the caller a block filesystem by itself.
      if ((st.mode & c.S_IFMT) !== c.S_IFBLK) return this.opts.notPerformed(t);
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
      return await this.opts.performer.mount(t, { source: st, sourcePath: source, target, fstype, flags, data });
    } finally {
      t.close();
    }
  }

  /** umount2(target, flags): performed for a mount of an instance device, else notPerformed. */
  private async judgeUmount(t: TrappedProcess): Promise<Answer> {
    let target: string | null;
    try {
      target = t.readString(t.notif.args[0]);
    } catch (e) {
      if (e instanceof BadStringError) return t.valid() ? { code: e.code, why: 'unreadable umount argument' } : null;
      throw e;
    }
    if (!t.valid()) return null;
    if (target === null) return this.opts.notPerformed(t);
    const done = this.opts.performer.umount(t, target, Number(t.notif.args[1] & 0xffffffffn));
    return done ?? this.opts.notPerformed(t);
  }
}

/**
 * stat(2) of mount(2)'s source as the caller resolves it; null when there is none. An
 * absolute path is resolved here, inside the caller's root (RESOLVE_IN_ROOT on its
 * /proc/TID/root: its mount namespace, absolute symlinks kept inside) without a fork,
 * which costs milliseconds in a process node's size; relative paths and magic links
 * (/proc/self/fd/N) take nsStat, a child in the caller's namespaces. Only a block device
 * matters, and it is checked again by the performer on the host's own node.
 */
function statSource(t: TrappedProcess, source: string): NativeStat | null {
  const n = native();
  const c = n.constants;
  if (source.startsWith('/')) {
    let fd = -1;
    try {
      fd = n.openat2(t.fds.rootFd, source, c.O_PATH, c.RESOLVE_IN_ROOT | c.RESOLVE_NO_MAGICLINKS);
      return n.fstat(fd);
    } catch (e) {
      // ELOOP: a magic link; ENOSYS: no openat2 (before 5.6): ask a child instead
      if (!hasCode(e, 'ELOOP', 'ENOSYS', 'EXDEV', 'EAGAIN')) return null;
    } finally {
      if (fd >= 0) n.close(fd);
    }
  }
  try {
    return n.nsStat(t.fds, source);
  } catch {
    // the caller cannot resolve the source (its ENOENT, EACCES, …): no block device to perform for
    return null;
  }
}

/** The positive errno of an outcome: its number when it has one, else its name's. */
function errnoOf(o: Outcome): number {
  if (o.errno !== undefined) return o.errno;
  return (osConstants.errno as Record<string, number>)[o.code ?? ''] || 1;
}
