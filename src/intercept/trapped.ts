/**
 * The process behind one seccomp notification, read with care: it is blocked in mount(2)
 * now, but another of its threads may rewrite the syscall's strings at any moment, and
 * once it is killed its thread id may name some other process.
 *
 * Every handle is opened by thread id (/proc/TID/…) *before* the notification is checked
 * with SECCOMP_IOCTL_NOTIF_ID_VALID: a valid id afterwards proves TID still was the trapped
 * thread when they were opened (a TID is reused only after its thread is gone, and a
 * thread that is gone has no valid notification). The same check follows every read of
 * its memory, and the strings read are the only copy used: nothing is re-read from the
 * target, so a racing writer can change what the target's memory says but never what we
 * act on.
 */
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { native, type SeccompNotif, type TargetFds } from '../kernel/native.js';

const PAGE = 4096;
/** The kernel's own limit for a mount(2) path or type string (PATH_MAX). */
const MAX_STRING = 4096;
const CAP_SYS_ADMIN = 21n;

let ownUserNs: bigint | null = null;

function ownUserNamespace(): bigint {
  if (ownUserNs === null) {
    const n = native();
    const fd = n.open('/proc/self/ns/user', n.constants.O_RDONLY);
    try {
      ownUserNs = n.fstat(fd).ino;
    } finally {
      n.close(fd);
    }
  }
  return ownUserNs;
}

export class TrappedProcess {
  private constructor(
    readonly notif: SeccompNotif,
    private readonly listenerFd: number,
    private readonly memFd: number,
    readonly fds: Required<TargetFds> & { usernsFd: number },
    /** Capabilities in effect (CapEff) of the trapped thread. */
    private readonly capEff: bigint,
    /** Its effective uid and gid, as our (the initial) user namespace sees them. */
    readonly euid: number,
    readonly egid: number,
    /** Inode of its PID namespace (which container it is in). */
    readonly pidNs: bigint,
  ) {}

  /**
   * Open the trapped thread's memory, namespaces, root and cwd. Null when it is gone
   * already (killed while we were busy): there is nothing left to answer.
   */
  static open(listenerFd: number, notif: SeccompNotif): TrappedProcess | null {
    const n = native();
    const c = n.constants;
    const base = `/proc/${notif.pid}`;
    const opened: number[] = [];
    let memFd = -1;
    try {
      memFd = openSync(`${base}/mem`, 'r');
      const usernsFd = n.open(`${base}/ns/user`, c.O_RDONLY);
      opened.push(usernsFd);
      const mntnsFd = n.open(`${base}/ns/mnt`, c.O_RDONLY);
      opened.push(mntnsFd);
      const rootFd = n.open(`${base}/root`, c.O_PATH | c.O_DIRECTORY);
      opened.push(rootFd);
      const cwdFd = n.open(`${base}/cwd`, c.O_PATH | c.O_DIRECTORY);
      opened.push(cwdFd);
      const pidnsFd = n.open(`${base}/ns/pid`, c.O_RDONLY);
      let pidNs: bigint;
      try {
        pidNs = n.fstat(pidnsFd).ino;
      } finally {
        n.close(pidnsFd);
      }
      const status = readFileSync(`${base}/status`, 'utf8');
      const cap = /^CapEff:\s+([0-9a-f]+)$/m.exec(status);
      const id = (key: string) => Number(new RegExp(`^${key}:\\s+\\d+\\s+(\\d+)`, 'm').exec(status)?.[1] ?? -1);
      const t = new TrappedProcess(notif, listenerFd, memFd, { usernsFd, mntnsFd, rootFd, cwdFd }, cap ? BigInt(`0x${cap[1]}`) : 0n, id('Uid'), id('Gid'), pidNs);
      if (!t.valid()) {
        t.close();
        return null;
      }
      return t;
    } catch {
      // the caller vanished or its /proc entries are out of reach meanwhile: nothing to answer
      for (const fd of opened) n.close(fd);
      if (memFd >= 0) closeSync(memFd);
      return null;
    }
  }

  /** Whether the target is still blocked in this very syscall. */
  valid(): boolean {
    return native().seccompNotifIdValid(this.listenerFd, this.notif.id);
  }

  /** In our (the initial) user namespace: no user namespace of its own. */
  get inOurUserNamespace(): boolean {
    return native().fstat(this.fds.usernsFd).ino === ownUserNamespace();
  }

  /** CAP_SYS_ADMIN in effect, in the thread's own user namespace. */
  get hasSysAdmin(): boolean {
    return this.hasCap(Number(CAP_SYS_ADMIN));
  }

  /** Capability number `cap` in effect (CapEff), in the thread's own user namespace. */
  hasCap(cap: number): boolean {
    return cap >= 0 && cap < 64 && (this.capEff & (1n << BigInt(cap))) !== 0n;
  }

  /**
   * Privileged on the host (CAP_SYS_ADMIN in the initial user namespace): it could mount
   * anything itself, so its mounts continue unjudged (the kernel checks them again).
   */
  get privileged(): boolean {
    return this.inOurUserNamespace && this.hasSysAdmin;
  }

  /**
   * The NUL-terminated string at addr (up to PATH_MAX), page by page so that a string
   * ending just before an unmapped page reads fine. null: a NULL pointer. Throws
   * BadAddressError for memory the target could not have passed either (EFAULT), or a
   * string without NUL within the limit (ENAMETOOLONG).
   */
  readString(addr: bigint): string | null {
    if (addr === 0n) return null;
    const buf = Buffer.alloc(MAX_STRING);
    let got = 0;
    let pos = Number(addr);
    while (got < MAX_STRING) {
      const len = Math.min(PAGE - (pos % PAGE), MAX_STRING - got);
      let n: number;
      try {
        n = readSync(this.memFd, buf, got, len, pos);
      } catch {
        // EIO/EFAULT: an unmapped page of the caller; answered EFAULT below, as the kernel would
        n = 0;
      }
      if (n <= 0) throw new BadStringError('EFAULT');
      const nul = buf.subarray(got, got + n).indexOf(0);
      if (nul >= 0) return buf.subarray(0, got + nul).toString('utf8');
      got += n;
      pos += n;
    }
    throw new BadStringError('ENAMETOOLONG');
  }

  close(): void {
    const n = native();
    for (const fd of [this.fds.usernsFd, this.fds.mntnsFd, this.fds.rootFd, this.fds.cwdFd]) n.close(fd);
    closeSync(this.memFd);
  }
}

/** A syscall string argument the kernel itself would have refused. */
export class BadStringError extends Error {
  constructor(readonly code: 'EFAULT' | 'ENAMETOOLONG') {
    super(code);
    this.name = 'BadStringError';
  }
}
