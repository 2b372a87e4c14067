/**
 * Facts about processes that the kernel publishes in /proc: which user namespace we run in,
 * and which process a pidfd refers to.
 */
import { readFileSync, statSync } from 'node:fs';

/** The inode of the initial user namespace's nsfs file: PROC_USER_INIT_INO, fixed by the kernel. */
const PROC_USER_INIT_INO = 0xeffffffdn;

let ownUserNs: bigint | null = null;

/** The inode of this process's user namespace (/proc/self/ns/user), looked up once. */
export function ownUserNamespaceIno(): bigint {
  ownUserNs ??= statSync('/proc/self/ns/user', { bigint: true }).ino;
  return ownUserNs;
}

/**
 * Whether this process runs in the initial user namespace (where root is the host's root
 * and mount(2) of a block device can work); false in any user namespace, also one that maps
 * every uid, and when /proc cannot tell.
 */
export function inInitialUserNamespace(): boolean {
  try {
    return ownUserNamespaceIno() === PROC_USER_INIT_INO;
  } catch {
    // no /proc/self/ns/user (no procfs): cannot tell, so not assumed initial
    return false;
  }
}

/**
 * Whether /proc says this process runs in a user namespace other than the initial one: the
 * other side of inInitialUserNamespace() for a caller that only words a message by it, and
 * so assumes nothing when /proc cannot tell (false).
 */
export function knownInUserNamespace(): boolean {
  try {
    return ownUserNamespaceIno() !== PROC_USER_INIT_INO;
  } catch {
    // no /proc/self/ns/user (no procfs): cannot tell, so not said to be in one
    return false;
  }
}

/**
 * The pid (in our pid namespace) of the process a pidfd refers to, from its fdinfo "Pid:"
 * line: -1 once that process has exited, 0 when it is outside our pid namespace; null
 * when `fd` is no pidfd.
 */
export function pidOfPidfd(fd: number): number | null {
  let info: string;
  try {
    info = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  } catch {
    // no such fd (EBADF, ENOENT): not a pidfd
    return null;
  }
  const m = /^Pid:\s*(-?\d+)$/m.exec(info);
  return m ? Number(m[1]) : null;
}
