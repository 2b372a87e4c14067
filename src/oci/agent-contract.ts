/**
 * The contract between the two halves of loopfs's seccomp agent for OCI engines:
 *
 *  - the writers, which put the agent into a container's seccomp profile: the runtime
 *    wrapper (bin/loopfs-runtime edits config.json) and `loopfs seccomp-profile` (a
 *    profile file for `--security-opt seccomp=FILE`);
 *  - the reader, the agent in `loopfs oci-broker`, which the runtime (runc, crun) connects
 *    to at `linux.seccomp.listenerPath` and hands the listener fd with
 *    `linux.seccomp.listenerMetadata` in its handshake.
 *
 * What is trapped mirrors `loopfs run` (native/seccomp.cc): mount(2) is notified; the new
 * mount API answers ENOSYS, because a mount assembled over several calls cannot be judged
 * (mount_setattr could clear the nosuid of a mount the agent made) and tools fall back to
 * mount(2) on ENOSYS.
 *
 * The metadata carries the engine's own verdict on mount(2), which the notify rule
 * replaces: the agent applies it to every mount it does not perform itself (anything but
 * an instance device), so a container gains the instance's mounts and nothing else. The
 * metadata is written by whoever writes the config (the container's owner), so it may only
 * ever tighten: "allow" means "continue to the kernel", which still checks the caller's own
 * privilege.
 */
import { runtimeDir } from '../instance/runtime.js';

export const SECCOMP_SOCKET = 'seccomp.sock';

export function seccompSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  return `${runtimeDir(env)}/${SECCOMP_SOCKET}`;
}

/** Sent to the agent (SCMP_ACT_NOTIFY). */
export const NOTIFIED_SYSCALLS = ['mount'] as const;
/**
 * What the agent can also judge when a profile sends it: umount2(2). Without
 * CAP_SYS_ADMIN (Docker's and podman's default capabilities) the container's root cannot
 * unmount what the agent mounted for it; for it the agent unmounts the root of a mount of
 * one of the container's instance devices, and gives every other umount2 the engine's
 * verdict on mount(2) (the engines' default profiles gate both on CAP_SYS_ADMIN alike).
 */
export const JUDGED_SYSCALLS = ['mount', 'umount2'] as const;
/** Answered with ENOSYS by the filter itself (SCMP_ACT_ERRNO, errnoRet 38). */
export const ENOSYS_SYSCALLS = ['open_tree', 'move_mount', 'fsopen', 'fsconfig', 'fsmount', 'fspick', 'mount_setattr'] as const;
export const ENOSYS = 38;

/** Linux capability number of CAP_SYS_ADMIN (the one the engines' profiles tie mount(2) to). */
export const CAP_SYS_ADMIN = 21;

/**
 * The engine's verdict on a mount(2) the agent does not perform:
 *  - allow: continue it to the kernel;
 *  - errno: refuse it with that errno (the profile's errnoRet, EPERM by default);
 *  - cap:   continue it when the caller holds capability `cap` in its effective set, else
 *           refuse it with `errno` (a profile file's `includes.caps`, which the engine
 *           resolves per container from its capabilities).
 */
export type EngineVerdict =
  | { kind: 'allow' }
  | { kind: 'errno'; errno: number }
  | { kind: 'cap'; cap: number; errno: number };

const PREFIX = 'loopfs/1';

/** `loopfs/1 mount=allow`, `loopfs/1 mount=errno:1`, `loopfs/1 mount=cap:21:1`. */
export function formatMetadata(v: EngineVerdict): string {
  switch (v.kind) {
    case 'allow':
      return `${PREFIX} mount=allow`;
    case 'errno':
      return `${PREFIX} mount=errno:${v.errno}`;
    case 'cap':
      return `${PREFIX} mount=cap:${v.cap}:${v.errno}`;
  }
}

const ERRNO_MAX = 4095;

/** The verdict in metadata written by formatMetadata; null for anything else. */
export function parseMetadata(s: unknown): EngineVerdict | null {
  if (typeof s !== 'string') return null;
  const m = /^loopfs\/1 mount=(?:(allow)|errno:(\d{1,4})|cap:(\d{1,2}):(\d{1,4}))$/.exec(s);
  if (!m) return null;
  if (m[1]) return { kind: 'allow' };
  const errno = Number(m[2] ?? m[4]);
  if (errno < 1 || errno > ERRNO_MAX) return null;
  if (m[2]) return { kind: 'errno', errno };
  const cap = Number(m[3]);
  if (cap > 63) return null;
  return { kind: 'cap', cap, errno };
}
