/**
 * Run a program to its end, its stderr collected, without node:child_process: for the
 * one-shot mount.loop helper, whose `mount -i` child is on the path of every `mount -t loop`.
 * node's spawn loads child_process, net and the stream modules and forks (a copy of node's
 * page tables): ~20 ms of the helper's ~75 ms of JavaScript (a --cpu-prof of one mount).
 * native spawnVm (posix_spawn's way, native/spawn.cc) costs none of that. This process
 * waits, blocked, until the program ends: only for a caller with nothing else to do.
 */
import { accessSync, constants as fsConstants, statSync } from 'node:fs';
import { join } from 'node:path';
import { native } from './native.js';

export interface ProgramResult {
  /** The exit status, null when a signal ended it. */
  code: number | null;
  signal: number | null;
  stderr: string;
}

/** What glibc's execvp searches when PATH is unset. */
const DEFAULT_PATH = '/bin:/usr/bin';

/**
 * execvp's search: NAME itself when it holds a slash, else the first executable regular
 * file NAME in the directories of `pathVar` (an empty entry is the working directory);
 * null when there is none.
 */
export function findInPath(name: string, pathVar: string | undefined): string | null {
  if (name.includes('/')) return name;
  for (const dir of (pathVar ?? DEFAULT_PATH).split(':')) {
    const p = join(dir || '.', name);
    try {
      accessSync(p, fsConstants.X_OK);
      if (statSync(p).isFile()) return p;
    } catch {
      /* not here: the next directory */
    }
  }
  return null;
}

/**
 * Run `file` (a path) with argv and env: stdin /dev/null, stdout our fd `stdoutFd`,
 * stderr collected. Throws the SysError of the step that failed to start it (clone when
 * the kernel or a seccomp filter refuses CLONE_VM|CLONE_VFORK|CLONE_PIDFD, execve with
 * the path), nothing left running.
 */
export function runProgram(file: string, argv: string[], env: NodeJS.ProcessEnv, stdoutFd: number): ProgramResult {
  const n = native();
  const envp = Object.entries(env)
    .filter((kv): kv is [string, string] => kv[1] !== undefined)
    .map(([k, v]) => `${k}=${v}`);
  // a seqpacket pair: each of the program's writes is one record, read whole below
  const [errRead, errWrite] = n.socketPair(false);
  let started: { pid: number; pidfd: number };
  let devNull = -1;
  try {
    devNull = n.open('/dev/null', n.constants.O_RDONLY);
    started = n.spawnVm(file, argv, envp, [devNull, stdoutFd, errWrite], process.cwd());
  } catch (e) {
    n.close(errRead);
    throw e;
  } finally {
    n.close(errWrite);
    if (devNull >= 0) n.close(devNull);
  }
  const chunks: Buffer[] = [];
  let status: ReturnType<typeof n.waitPid> = null;
  try {
    // until every holder of the write end is gone: the program and whatever it started
    for (;;) {
      const m = n.recvMsg(errRead, 1 << 16, 0);
      if (!m || m.eof) break;
      if (m.data) chunks.push(m.data);
    }
  } finally {
    n.close(errRead);
    // reaped even when reading failed: the caller undoes its work only once mount(8) is done
    status = n.waitPid(started.pid, false);
    n.close(started.pidfd);
  }
  return { code: status?.code ?? null, signal: status?.signal ?? null, stderr: Buffer.concat(chunks).toString('utf8') };
}
