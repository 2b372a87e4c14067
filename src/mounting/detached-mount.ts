/**
 * The kernel side of a loopfs mount: a detached mount (an fd, attached nowhere yet) of a
 * loop device, built by root with nosuid,nodev forced, optionally ID-mapped to the user
 * namespace of the process it is for. The broker sends the fd to its client; `loopfs run`
 * and the OCI seccomp agent move it into the trapped caller's namespace. The FUSE
 * counterpart is fuse-driver.ts.
 */
import { readSync } from 'node:fs';
import { hasCode, isSysError } from '../kernel/errors.js';
import { native } from '../kernel/native.js';
import { ownUserNamespaceIno, pidOfPidfd } from '../kernel/process.js';
import type { MountAttrName } from '../protocol/broker.js';

/** A mount refused or failed, with the errno name to answer and one line saying why. */
export class MountError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'MountError';
  }
}

/**
 * The filesystem on a device, from its superblock magic, for the types loopfs may
 * mount. Done here (a few reads) rather than with blkid: no process per mount, and only
 * types that could be allowed are recognised at all. ext2/ext3 are mounted by ext4.
 */
export function probeFilesystem(fd: number): string | null {
  const buf = Buffer.alloc(64 * 1024);
  let len: number;
  try {
    len = readSync(fd, buf, 0, buf.length, 0);
  } catch {
    // any read error (EIO of a broken image, …) leaves the type unknown: refused as such
    return null;
  }
  const at = (off: number, bytes: number) => (off + bytes <= len ? buf.subarray(off, off + bytes) : null);
  if (at(0, 4)?.toString('latin1') === 'hsqs') return 'squashfs';
  if (at(1024, 4)?.readUInt32LE(0) === 0xe0f5e1e2) return 'erofs';
  if (at(1024 + 56, 2)?.readUInt16LE(0) === 0xef53) return 'ext4';
  if (at(32769, 5)?.toString('latin1') === 'CD001') return 'iso9660';
  const sig = at(510, 2);
  if (sig && sig[0] === 0x55 && sig[1] === 0xaa) {
    if (at(54, 3)?.toString('latin1') === 'FAT' || at(82, 3)?.toString('latin1') === 'FAT') return 'vfat';
  }
  return null;
}

const ATIME = (c: ReturnType<typeof native>['constants']) => ({
  noatime: c.MOUNT_ATTR_NOATIME,
  relatime: c.MOUNT_ATTR_RELATIME,
  strictatime: c.MOUNT_ATTR_STRICTATIME,
});

/** MOUNT_ATTR_* for a loopfs mount: nosuid and nodev always, the asked-for attributes, ro. */
export function mountAttrFlags(readOnly: boolean, attrs: MountAttrName[]): number {
  const c = native().constants;
  let flags = c.MOUNT_ATTR_NOSUID | c.MOUNT_ATTR_NODEV | (readOnly ? c.MOUNT_ATTR_RDONLY : 0);
  let atime: number | null = null;
  for (const a of attrs) {
    if (a === 'noexec') flags |= c.MOUNT_ATTR_NOEXEC;
    else if (a === 'nodiratime') flags |= c.MOUNT_ATTR_NODIRATIME;
    else if (a === 'nosymfollow') flags |= c.MOUNT_ATTR_NOSYMFOLLOW;
    else if (a === 'noatime' || a === 'relatime' || a === 'strictatime') atime = ATIME(c)[a];
  }
  if (atime !== null) flags = (flags & ~c.MOUNT_ATTR__ATIME) | atime;
  return flags;
}

/**
 * The detached nosuid,nodev mount (an fd) of `source` as `fstype`: fsopen/fsconfig/
 * CMD_CREATE/fsmount. A kernel refusal is a MountError carrying fsconfig's log.
 */
export function createMount(source: string, fstype: string, readOnly: boolean, attrs: MountAttrName[]): number {
  const n = native();
  const c = n.constants;
  const flags = mountAttrFlags(readOnly, attrs);
  const fsfd = n.fsopen(fstype, c.FSOPEN_CLOEXEC);
  try {
    n.fsconfigSetString(fsfd, 'source', source);
    if (readOnly) n.fsconfigSetFlag(fsfd, 'ro');
    n.fsconfigCreate(fsfd);
    return n.fsmount(fsfd, c.FSMOUNT_CLOEXEC, flags);
  } catch (e) {
    if (isSysError(e)) {
      const details = (e as { details?: string[] }).details ?? [];
      const why = details.length ? ` (${details.join('; ')})` : '';
      throw new MountError(e.code, `${source}: cannot mount ${fstype}: ${e.description}${why}`);
    }
    throw e;
  } finally {
    n.close(fsfd);
  }
}

/**
 * ID-map the mount to the user namespace `usernsFd`, so that its root sees the image's
 * root-owned files as its own. Returns whether it is mapped: a filesystem without
 * ID-mapped mount support (EINVAL) is mounted unmapped (its files then show as the
 * overflow id inside the namespace). Other failures are thrown as they are.
 */
export function idmapToUserNamespace(mntFd: number, usernsFd: number): boolean {
  try {
    native().mountSetattrIdmap(mntFd, usernsFd);
    return true;
  } catch (e) {
    if (hasCode(e, 'EINVAL')) return false;
    throw e;
  }
}

/** The process a broker mount is for: who connected (SO_PEERCRED) and a pidfd for it. */
export interface MountPeer {
  pid: number;
  pidfd: number;
  uid: number;
  gid: number;
}

/**
 * ID-map the mount to the peer's user namespace, if it is not ours. The namespace comes
 * from /proc/PID/ns/user of the SO_PEERCRED pid; the pidfd proves afterwards that PID
 * still named the process that connected when we opened it (a pid is reused only after
 * its process is reaped, and fdinfo of a pidfd says `Pid: -1` from then on). Returns
 * whether the mount is ID-mapped (see idmapToUserNamespace).
 */
export function idmapToPeer(mntFd: number, peer: MountPeer): boolean {
  const n = native();
  if (peer.pid <= 0) return false;
  let nsFd: number;
  try {
    nsFd = n.open(`/proc/${peer.pid}/ns/user`, n.constants.O_RDONLY);
  } catch {
    throw new MountError('ESRCH', 'the connecting process has exited');
  }
  try {
    if (pidOfPidfd(peer.pidfd) !== peer.pid) throw new MountError('ESRCH', 'the connecting process has exited');
    // the inode of a namespace file identifies the namespace
    if (n.fstat(nsFd).ino === ownUserNamespaceIno()) return false;
    return idmapToUserNamespace(mntFd, nsFd);
  } finally {
    n.close(nsFd);
  }
}
