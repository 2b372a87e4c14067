/**
 * What `loopfs run` does with a trapped mount(2), decided from what the kernel passed in
 * registers (the flags: a racing thread cannot change them) before any string is read.
 *
 *  - remount: continues when it keeps nosuid and nodev, else EPERM. A mount we made is
 *    not flag-locked by the kernel (it was moved in, not copied from a more privileged
 *    namespace), so a `remount,bind,suid` by the container's root would otherwise clear
 *    the nosuid we forced. (Superblock remounts of our mounts the kernel refuses itself:
 *    their superblocks belong to the initial user namespace.)
 *  - bind, move and propagation changes: continue; they copy or move mounts with their
 *    flags, and the kernel checks the caller's own privilege.
 *  - a new mount: the source decides (supervisor.ts): a block device is ours to judge,
 *    anything else continues to the kernel.
 */
import type { MountAttrName } from '../protocol/broker.js';

export const MS = {
  RDONLY: 0x1,
  NOSUID: 0x2,
  NODEV: 0x4,
  NOEXEC: 0x8,
  REMOUNT: 0x20,
  NOSYMFOLLOW: 0x100,
  NOATIME: 0x400,
  NODIRATIME: 0x800,
  BIND: 0x1000,
  MOVE: 0x2000,
  UNBINDABLE: 1 << 17,
  PRIVATE: 1 << 18,
  SLAVE: 1 << 19,
  SHARED: 1 << 20,
  RELATIME: 1 << 21,
  STRICTATIME: 1 << 24,
} as const;

/** The old "magic" in the upper 16 bits some callers still pass (MS_MGC_VAL). */
const MS_MGC_MSK = 0xffff0000;
const MS_MGC_VAL = 0xc0ed0000;

export type MountKind = 'remount' | 'passthrough' | 'new';

/** mount(2)'s flags argument (a register) as the kernel reads it. */
export function mountFlags(arg: bigint): number {
  let flags = Number(arg & 0xffffffffn) >>> 0;
  if ((flags & MS_MGC_MSK) >>> 0 === MS_MGC_VAL) flags &= ~MS_MGC_MSK;
  return flags >>> 0;
}

export function classify(flags: number): MountKind {
  if (flags & MS.REMOUNT) return 'remount';
  if (flags & (MS.BIND | MS.MOVE | MS.UNBINDABLE | MS.PRIVATE | MS.SLAVE | MS.SHARED)) return 'passthrough';
  return 'new';
}

/** A remount an unprivileged caller may pass on to the kernel. */
export function remountKeepsNosuidNodev(flags: number): boolean {
  return (flags & (MS.NOSUID | MS.NODEV)) === (MS.NOSUID | MS.NODEV);
}

/** Per-mount attributes (the broker's names) a new mount asks for; nosuid,nodev are forced anyway. */
export function requestedAttrs(flags: number): MountAttrName[] {
  const attrs: MountAttrName[] = [];
  if (flags & MS.NOEXEC) attrs.push('noexec');
  if (flags & MS.NODIRATIME) attrs.push('nodiratime');
  if (flags & MS.NOSYMFOLLOW) attrs.push('nosymfollow');
  if (flags & MS.NOATIME) attrs.push('noatime');
  else if (flags & MS.STRICTATIME) attrs.push('strictatime');
  else if (flags & MS.RELATIME) attrs.push('relatime');
  return attrs;
}
