/**
 * The typed face of the native addon (`native/*.cc`, entry point `native/addon.cc`;
 * built into `native/build/Release/loopfs.node` by `native/build.mjs`).
 *
 * The addon is syscalls and ioctls only: no policy, no retries, no printing. Every
 * function is synchronous (each call is one short syscall) and throws a {@link SysError}
 * on failure. The loop devices themselves are reached through `src/kernel/`
 * (`LoopControl`, `LoopDevice`, attach, allocate); the other syscalls (file and directory
 * fds, sockets, the mount API, seccomp, namespaces) are imported from here by the layers
 * that use them. Only `src/kernel/` reaches `native/` (the lint's layer rule).
 *
 * The addon is loaded lazily on first use so that commands which can answer from
 * sysfs alone (`losetup -l` as non-root, `losetup -f` via sysfs) never pay for dlopen().
 */
import { createRequire } from 'node:module';

/** `struct loop_info64` (linux/loop.h). 64-bit fields are bigint: offsets may exceed 2^53. */
export interface LoopInfo64 {
  device: bigint; // lo_device: st_dev of the backing file (read-only)
  inode: bigint; // lo_inode: st_ino of the backing file (read-only)
  rdevice: bigint; // lo_rdevice (read-only)
  offset: bigint;
  sizelimit: bigint; // 0 == up to the end of the file
  number: number; // lo_number (read-only)
  encryptType: number; // obsolete, ignored by the kernel
  encryptKeySize: number;
  flags: number; // LO_FLAGS_*
  fileName: Buffer; // lo_file_name: exactly 64 bytes, NUL padded
  cryptName: Buffer; // lo_crypt_name: exactly 64 bytes, NUL padded
}

/** Input form of loop_info64: omitted fields are zero; names are truncated to 63 bytes + NUL. */
export interface LoopInfo64Input {
  offset?: bigint;
  sizelimit?: bigint;
  flags?: number;
  fileName?: Buffer | string;
  cryptName?: Buffer | string;
}

/** Subset of `struct stat` (from fstat(2)); dev_t split with glibc's major()/minor(). */
export interface NativeStat {
  dev: bigint;
  ino: bigint;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
  rdev: bigint;
  size: bigint;
  devMajor: number;
  devMinor: number;
  rdevMajor: number;
  rdevMinor: number;
}

export interface NativeStatfs {
  type: number; // f_type (filesystem magic)
  bsize: number;
  blocks: bigint;
  bfree: bigint;
  bavail: bigint;
}

export interface NativeConstants {
  O_RDONLY: number;
  O_WRONLY: number;
  O_RDWR: number;
  O_CREAT: number;
  O_EXCL: number;
  O_DIRECT: number;
  O_NOFOLLOW: number;
  O_DIRECTORY: number;
  O_PATH: number;
  RESOLVE_IN_ROOT: number;
  RESOLVE_NO_MAGICLINKS: number;
  O_NONBLOCK: number;
  O_TRUNC: number;
  AT_FDCWD: number;
  AT_REMOVEDIR: number;
  LO_FLAGS_READ_ONLY: number;
  LO_FLAGS_AUTOCLEAR: number;
  LO_FLAGS_PARTSCAN: number;
  LO_FLAGS_DIRECT_IO: number;
  LOCK_SH: number;
  LOCK_EX: number;
  LOCK_UN: number;
  LOCK_NB: number;
  S_IFMT: number;
  S_IFBLK: number;
  S_IFCHR: number;
  S_IFREG: number;
  S_IFDIR: number;
  S_IFLNK: number;
  S_IFSOCK: number;
  LOOP_MAJOR: number;
  /** readFiles flag: names[0] gates each directory (see {@link NativeAddon.readFiles}). */
  READ_FILES_FIRST_GATES: number;
  /** readFiles flag: O_NOFOLLOW | O_NONBLOCK, regular files only (see {@link NativeAddon.readFiles}). */
  READ_FILES_NO_FOLLOW: number;
  // Sockets (native/socket.cc)
  SHUT_RD: number;
  SHUT_WR: number;
  SHUT_RDWR: number;
  /** Most fds one SCM_RIGHTS message can carry (253). */
  SCM_MAX_FD: number;
  // The new mount API (native/mount_api.cc)
  AT_EMPTY_PATH: number;
  AT_RECURSIVE: number;
  AT_SYMLINK_NOFOLLOW: number;
  FSOPEN_CLOEXEC: number;
  FSMOUNT_CLOEXEC: number;
  OPEN_TREE_CLONE: number;
  OPEN_TREE_CLOEXEC: number;
  MOVE_MOUNT_F_SYMLINKS: number;
  MOVE_MOUNT_F_AUTOMOUNTS: number;
  MOVE_MOUNT_F_EMPTY_PATH: number;
  MOVE_MOUNT_T_SYMLINKS: number;
  MOVE_MOUNT_T_AUTOMOUNTS: number;
  MOVE_MOUNT_T_EMPTY_PATH: number;
  MOUNT_ATTR_RDONLY: number;
  MOUNT_ATTR_NOSUID: number;
  MOUNT_ATTR_NODEV: number;
  MOUNT_ATTR_NOEXEC: number;
  MOUNT_ATTR__ATIME: number;
  MOUNT_ATTR_RELATIME: number;
  MOUNT_ATTR_NOATIME: number;
  MOUNT_ATTR_STRICTATIME: number;
  MOUNT_ATTR_NODIRATIME: number;
  MOUNT_ATTR_IDMAP: number;
  MOUNT_ATTR_NOSYMFOLLOW: number;
  /** Propagation values for mountSetattr's `propagation`. */
  MS_PRIVATE: number;
  MS_SLAVE: number;
  MS_SHARED: number;
  MS_UNBINDABLE: number;
  // Namespaces (native/ns.cc)
  CLONE_NEWNS: number;
  CLONE_NEWUSER: number;
  CLONE_NEWPID: number;
  CLONE_NEWNET: number;
  CLONE_NEWUTS: number;
  CLONE_NEWIPC: number;
  CLONE_NEWCGROUP: number;
  PIDFD_NONBLOCK: number;
}

/**
 * One datagram from {@link NativeAddon.recvMsg}. Exactly one shape, whatever happened:
 *  - a whole message: `data` (1..maxBytes bytes), `fds` (owned by the caller, close-on-exec);
 *  - `truncated` (MSG_TRUNC: longer than maxBytes, the rest is lost) or `ctrlTruncated`
 *    (MSG_CTRUNC: more than maxFds fds): every fd that arrived is already closed and `fds` is
 *    []; `data` holds what fit. Treat either as a protocol violation;
 *  - `eof`: the peer closed or shut down its end and nothing is left to read; `data` is empty.
 */
export interface RecvMsgResult {
  data: Buffer;
  fds: number[];
  truncated: boolean;
  ctrlTruncated: boolean;
  eof: boolean;
}

/** SO_PEERCRED, translated into our namespaces (pid 0 / uid 65534 when not visible/mapped). */
export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

/**
 * A uv_poll_t on node's event loop (native/fdwatch.cc), from {@link NativeAddon.watchFd}.
 * While open it keeps itself (and, unless unref()'d, the process) alive; close() releases both.
 */
export interface FdWatcher {
  readonly fd: number;
  /** True once close() ran (or the environment is shutting down). */
  readonly closed: boolean;
  /** Stops watching. Idempotent; safe inside the callback. Call it before closing the fd. */
  close(): void;
  /** Keep the process alive while this watcher is open (the default). */
  ref(): this;
  /** Do not keep the process alive for this watcher. */
  unref(): this;
}

/** struct mount_attr for {@link NativeAddon.mountSetattr}; omitted fields are 0. */
export interface MountAttrInput {
  attrSet?: number; // MOUNT_ATTR_*
  attrClr?: number; // MOUNT_ATTR_*
  propagation?: number; // MS_PRIVATE | MS_SLAVE | MS_SHARED | MS_UNBINDABLE
  usernsFd?: number; // with MOUNT_ATTR_IDMAP in attrSet
}

/**
 * What fsconfig*() and fsmount() throw: a SysError plus the filesystem context's log, e.g.
 * ["e /dev/loop3: Can't lookup blockdev"] ("e"rror, "w"arning, "i"nfo lines; possibly empty).
 * The log is also appended to `message`.
 */
export interface FsContextError extends SysError {
  details: string[];
  /** The fsconfig key being set (not for FSCONFIG_CMD_CREATE or fsmount). */
  key?: string;
}

export interface NativeAddon {
  constants: NativeConstants;
  /** strerror(3) text of an errno, as glibc prints it ("No such device or address"). */
  strerror(errno: number): string;
  /** open(2); O_CLOEXEC is always added. Mode used only with O_CREAT. */
  open(path: string, flags: number, mode?: number): number;
  /** openat(2) relative to a directory fd; O_CLOEXEC is always added. */
  openat(dirfd: number, name: string, flags: number, mode?: number): number;
  /** openat2(2) with RESOLVE_* flags (RESOLVE_IN_ROOT: resolve inside dirfd as its root); O_CLOEXEC is always added. */
  openat2(dirfd: number, name: string, flags: number, resolve: number): number;
  close(fd: number): void;

  /** ioctl(LOOP_CTL_GET_FREE): index of a free device (the kernel adds one if needed). */
  ctlGetFree(ctlFd: number): number;
  /** ioctl(LOOP_CTL_ADD, n): returns n. EEXIST when it exists. */
  ctlAdd(ctlFd: number, index: number): number;
  /** ioctl(LOOP_CTL_REMOVE, n): returns n. EBUSY while bound or open elsewhere. */
  ctlRemove(ctlFd: number, index: number): number;
  /**
   * LOOP_CTL_REMOVE of every index, on up to `threads` threads at once (the kernel spends
   * most of a removal waiting, so they overlap). Returns the errno of each (0: removed).
   */
  ctlRemoveMany(ctlFd: number, indices: number[], threads: number): number[];

  /** ioctl(LOOP_CONFIGURE) with struct loop_config { fd, block_size, info }. */
  loopConfigure(fd: number, backingFd: number, info: LoopInfo64Input, blockSize: number): void;
  /** ioctl(LOOP_SET_FD, backingFd). */
  loopSetFd(fd: number, backingFd: number): void;
  /** ioctl(LOOP_CLR_FD). */
  loopClrFd(fd: number): void;
  /** ioctl(LOOP_GET_STATUS64). ENXIO when the device is not bound. */
  loopGetStatus64(fd: number): LoopInfo64;
  /**
   * LOOP_GET_STATUS64 of many device nodes (each opened O_RDONLY, asked, closed; on several
   * threads for a big batch): per path the status, or the errno number of the failed open
   * or ioctl (ENXIO: unbound).
   */
  loopStatusMany(paths: string[]): Array<LoopInfo64 | number>;
  /** ioctl(LOOP_SET_STATUS64). */
  loopSetStatus64(fd: number, info: LoopInfo64Input): void;
  /** ioctl(LOOP_SET_CAPACITY). */
  loopSetCapacity(fd: number): void;
  /** ioctl(LOOP_SET_DIRECT_IO, on ? 1 : 0). */
  loopSetDirectIo(fd: number, on: boolean): void;
  /** ioctl(LOOP_SET_BLOCK_SIZE, size). */
  loopSetBlockSize(fd: number, size: number): void;

  /** ioctl(BLKGETSIZE64): device size in bytes. */
  blkGetSize64(fd: number): bigint;
  /** ioctl(BLKSSZGET): logical sector size. */
  blkSszGet(fd: number): number;
  /** ioctl(BLKRAGET) / ioctl(BLKRASET): read-ahead in 512-byte sectors. */
  blkRaGet(fd: number): number;
  blkRaSet(fd: number, sectors: number): void;

  /** flock(2); op is LOCK_SH|LOCK_EX|LOCK_UN, optionally | LOCK_NB (EWOULDBLOCK then: code 'EAGAIN', same errno 11). */
  flock(fd: number, op: number): void;
  fstat(fd: number): NativeStat;
  /** stat(2) of many paths: st_rdev of each that is a block device, else -1. */
  blockRdevs(paths: string[]): number[];
  /** statfs(2) of a path, or fstatfs(2) when given a number. */
  statfs(pathOrFd: string | number): NativeStatfs;
  /** mknod(2): mode includes the file type bits (S_IFBLK | 0660). */
  mknod(path: string, mode: number, major: number, minor: number): void;
  /** mknodat(2) relative to a directory fd. */
  mknodat(dirfd: number, name: string, mode: number, major: number, minor: number): void;
  /** fchown(2). */
  fchown(fd: number, uid: number, gid: number): void;
  /**
   * Read many small files (sysfs attributes) in one call: each of `names` inside each of
   * `dirs` (result row-major, dirs x names), up to maxBytes each; null when unreadable.
   * Contents are latin1 strings (one char per byte). A read shorter than asked ends a file,
   * as it does for sysfs attributes and regular files. With `flags` READ_FILES_FIRST_GATES,
   * a directory whose names[0] cannot be read gets null for every name without more
   * syscalls (a loop device's `loop/` attributes exist only while it is bound). With
   * READ_FILES_NO_FOLLOW, a file's own name is not followed if it is a symlink, opening it
   * cannot block, and only a regular file is read: anything else is null (state files
   * inside an instance directory).
   */
  readFiles(dirs: string[], names: string[], maxBytes: number, flags?: number): Array<string | null>;

  // Directory-relative calls for instance directories (native/fs_at.cc): a pinned
  // directory fd, and never a followed symlink in the last component.
  /** renameat(2). */
  renameat(olddirfd: number, oldname: string, newdirfd: number, newname: string): void;
  /** unlinkat(2); flags 0 or AT_REMOVEDIR. */
  unlinkat(dirfd: number, name: string, flags: number): void;
  /** mkdirat(2). */
  mkdirat(dirfd: number, name: string, mode: number): void;
  /** fchownat(2) with AT_SYMLINK_NOFOLLOW. */
  fchownat(dirfd: number, name: string, uid: number, gid: number): void;
  /** fchmodat(2) (follows a final symlink: lstatat first). */
  fchmodat(dirfd: number, name: string, mode: number): void;
  /** fstatat(2) with AT_SYMLINK_NOFOLLOW. */
  lstatat(dirfd: number, name: string): NativeStat;

  // Unix SOCK_SEQPACKET sockets for the broker (native/socket.cc). Every fd is close-on-exec.
  /**
   * socket + bind + listen: a non-blocking listening socket at `path` whose file has exactly
   * `mode` (set before bind, so never wider, then re-applied past the umask). EADDRINUSE when
   * `path` exists (unlink a stale socket first); ENAMETOOLONG beyond 107 bytes.
   */
  seqpacketListen(path: string, backlog: number, mode: number): number;
  /**
   * socket + connect: a *blocking* socket connected to `path` (ECONNREFUSED: nobody listens).
   * While the listener's backlog is full connect waits: for ever, or with `timeoutMs` > 0 at
   * most that long, then EAGAIN.
   */
  seqpacketConnect(path: string, timeoutMs?: number): number;
  /** accept4(NONBLOCK|CLOEXEC): the next connection, or null when none is pending. */
  seqpacketAccept(listenFd: number): number | null;
  /**
   * The same three for AF_UNIX SOCK_STREAM (the OCI seccomp agent: runc and crun connect
   * with a stream socket). On a stream socket recvMsg returns the bytes queued so far (a
   * message may come in pieces; never `truncated`), fds arrive with the first piece of
   * the write that carried them, and `eof` is the end of the stream. accept throws EMFILE
   * / ENFILE with the connection still queued: back off rather than retry at once.
   */
  streamListen(path: string, backlog: number, mode: number): number;
  streamConnect(path: string, timeoutMs?: number): number;
  streamAccept(listenFd: number): number | null;
  /** socketpair(AF_UNIX, SOCK_SEQPACKET): a connected pair, non-blocking when asked. */
  socketPair(nonblock?: boolean): [number, number];
  /**
   * sendmsg(MSG_NOSIGNAL): one datagram (1 byte at least: an empty one would read as eof),
   * with `fds` (at most SCM_MAX_FD) as SCM_RIGHTS when non-empty. Returns data.length.
   * Throws code 'EAGAIN' when a non-blocking socket is full, EPIPE when the peer is gone,
   * EMSGSIZE above the socket buffer size. The fds stay open on our side.
   */
  sendMsg(fd: number, data: Uint8Array, fds: number[]): number;
  /**
   * recvmsg(MSG_CMSG_CLOEXEC): the next datagram, or null when none is waiting (non-blocking
   * socket; a blocking one waits). maxBytes 1..2^26, maxFds 0..253. See {@link RecvMsgResult}:
   * on truncation every received fd is closed before this returns.
   */
  recvMsg(fd: number, maxBytes: number, maxFds: number): RecvMsgResult | null;
  /** getsockopt(SO_PEERCRED). */
  peerCred(fd: number): PeerCred;
  /**
   * getsockopt(SO_PEERPIDFD) (Linux 6.5+): a pidfd for the process that connected. Older
   * kernels: pidfd_open(SO_PEERCRED pid), racy against pid reuse once the peer has exited.
   */
  peerPidfd(fd: number): number;
  /** shutdown(2), SHUT_RDWR by default: the peer's recvMsg sees eof. */
  shutdown(fd: number, how?: number): void;
  /**
   * setsockopt(SO_RCVTIMEO): a blocking recvMsg on `fd` returns null (EAGAIN) after `ms`
   * milliseconds without a message; 0 waits for ever.
   */
  setRecvTimeout(fd: number, ms: number): void;

  /**
   * Calls `onReadable` (this = the watcher) on node's event loop whenever `fd` is readable or
   * hung up (level-triggered: drain it or close the watcher). Puts `fd` in O_NONBLOCK mode.
   * EEXIST when this loop already watches `fd`, EPERM for regular files. An exception thrown
   * by the callback goes to process 'uncaughtException'. If polling itself fails, the
   * callback gets that SysError once and the watcher stops firing.
   */
  watchFd(fd: number, onReadable: (this: FdWatcher, error?: SysError) => void): FdWatcher;
  /**
   * poll(2) with a zero timeout: whether fd is readable now, hung up (POLLHUP), or in
   * error (POLLERR/POLLNVAL). For a watchFd callback that must tell readable from hung up
   * (a seccomp listener: its RECV blocks when nothing is pending).
   */
  pollNow(fd: number): { readable: boolean; hangup: boolean; error: boolean };

  // The new mount API (native/mount_api.cc). fds come back close-on-exec. A detached mount
  // lives while any fd refers to it: close mount fds once attached or sent.
  /** fsopen(2): a filesystem context ("ext4"); ENODEV (with `fsname`) for an unknown type. */
  fsopen(fsname: string, flags: number): number;
  /** fsconfig(FSCONFIG_SET_STRING), e.g. ("source", "/dev/loop3"). Throws {@link FsContextError}. */
  fsconfigSetString(fsfd: number, key: string, value: string): void;
  /** fsconfig(FSCONFIG_SET_FLAG), e.g. "ro". Throws {@link FsContextError}. */
  fsconfigSetFlag(fsfd: number, key: string): void;
  /** fsconfig(FSCONFIG_CMD_CREATE): opens the source, reads the superblock. Throws {@link FsContextError}. */
  fsconfigCreate(fsfd: number): void;
  /** fsmount(2): the detached mount (an fd) of a created context; attrFlags MOUNT_ATTR_*. */
  fsmount(fsfd: number, flags: number, attrFlags: number): number;
  /**
   * move_mount(fromDirfd, fromPath, toDirfd, toPath, flags). Attach a mount fd with
   * moveMount(mntFd, AT_FDCWD, '/target', MOVE_MOUNT_F_EMPTY_PATH) (fromPath defaults to "",
   * which needs that flag).
   */
  moveMount(fromDirfd: number, toDirfd: number, toPath: string, flags: number, fromPath?: string): void;
  /** open_tree(2); OPEN_TREE_CLONE (| AT_RECURSIVE) gives a detached copy. */
  openTree(dirfd: number, path: string, flags: number): number;
  /** mount_setattr(2); flags AT_EMPTY_PATH (path "" = dirfd), AT_RECURSIVE, AT_SYMLINK_NOFOLLOW. */
  mountSetattr(dirfd: number, path: string, flags: number, attr: MountAttrInput): void;
  /**
   * mount_setattr(mntFd, "", AT_EMPTY_PATH, {MOUNT_ATTR_IDMAP, usernsFd}): ID-map a detached,
   * not yet attached mount through a user namespace (fd of /proc/PID/ns/user). EPERM for the
   * initial user namespace and for an already mapped mount; EINVAL for an attached mount or a
   * filesystem without ID-mapped mount support.
   */
  mountSetattrIdmap(mntFd: number, usernsFd: number): void;

  // Processes, namespaces and per-thread credentials (native/ns.cc).
  /** pidfd_open(2); flags 0 or PIDFD_NONBLOCK. ESRCH (with `pid`) when there is no such process. */
  pidfdOpen(pid: number, flags?: number): number;
  /**
   * setns(2). Node is multi-threaded, so CLONE_NEWNS and CLONE_NEWUSER always fail with
   * EINVAL here: never use this to enter a mount namespace (use detached mounts instead).
   */
  setns(fd: number, nstype: number): void;
  /**
   * setfsuid(2)/setfsgid(2) for the calling thread only (seteuid would change every thread
   * of the process, a daemon's workers included); returns the previous [uid, gid]. EPERM
   * when the kernel did not take them.
   */
  setfsids(uid: number, gid: number): [number, number];

  // Kernel uevents (native/uevent.cc): read-only, kernel-sent messages only.
  /** socket(NETLINK_KOBJECT_UEVENT) bound to the kernel's group: non-blocking, close-on-exec. */
  ueventOpen(): number;
  /**
   * Drain what is queued (at most 1024 messages per call), dropping anything the kernel did
   * not send itself. `overflow`: the queue overflowed (ENOBUFS), events were lost.
   */
  ueventRecv(fd: number): { messages: Buffer[]; overflow: boolean };

  // Seccomp user notification for `loopfs run` (native/seccomp.cc).
  /**
   * fork; in the child NO_NEW_PRIVS, a filter that traps mount(2) (SECCOMP_RET_USER_NOTIF)
   * and answers ENOSYS to the new mount API, then execve(file, argv, envp) in `cwd`.
   * Returns after the exec with the child's pid and the filter's listener fd (close-on-exec).
   * A failed step throws with that step as `syscall` (execve: ENOENT/EACCES with `path`).
   */
  seccompSpawn(file: string, argv: string[], envp: string[], cwd?: string | null): { pid: number; listenerFd: number };
  /** seccomp(SECCOMP_GET_NOTIF_SIZES): the kernel's struct sizes. */
  seccompNotifSizes(): { notif: number; resp: number; data: number };
  /**
   * SECCOMP_IOCTL_NOTIF_RECV: the next notification, or null when it vanished (its process
   * was killed) or all targets are gone. Call only when the listener polls readable.
   */
  seccompNotifRecv(listenerFd: number): SeccompNotif | null;
  /** SECCOMP_IOCTL_NOTIF_SEND; error 0 or -errno; flags SECCOMP_USER_NOTIF_FLAG_CONTINUE (1) or 0. False: target gone. */
  seccompNotifSend(listenerFd: number, id: bigint, error: number, val: number, flags: number): boolean;
  /** SECCOMP_IOCTL_NOTIF_ID_VALID: the target is still blocked in that very syscall. */
  seccompNotifIdValid(listenerFd: number, id: bigint): boolean;
  /**
   * stat(2) (following symlinks) of path inside a target's user+mount namespaces, root and
   * cwd (forked child). A usernsFd that is our own user namespace is not joined (setns
   * would fail): the child then acts with our privilege in the target's mount namespace.
   */
  nsStat(target: TargetFds, path: string): NativeStat;
  /** move_mount(mntFd → path) inside a target's user+mount namespaces, root and cwd (forked child); usernsFd as for nsStat. */
  nsMoveMount(target: TargetFds, mntFd: number, path: string): void;
  /**
   * umount2(path) inside a target's namespaces (as nsMoveMount), only when path (opened
   * once, O_NOFOLLOW with UMOUNT_NOFOLLOW in flags) is the root of a mount of loop device
   * 7:M for M in `minors`; it unmounts the very mount it checked (through /proc/self/fd),
   * always lazily (MNT_DETACH: the checked fd itself keeps the mount busy). False:
   * declined (not such a mount), nothing done.
   */
  nsUmount(target: TargetFds, path: string, flags: number, minors: number[]): boolean;
  /** prctl(PR_SET_CHILD_SUBREAPER, 1). */
  setChildSubreaper(): void;
  /** waitpid(pid, WNOHANG?|__WALL): null when still running (noHang) or no such child. */
  waitPid(pid: number, noHang: boolean): { pid: number; code: number | null; signal: number | null } | null;

  /**
   * Start a program as posix_spawn does (native/spawn.cc): clone(CLONE_VM | CLONE_VFORK |
   * CLONE_PIDFD), no copy of node's page tables. fds[i] becomes the child's fd i (-1:
   * closed), signals default, cwd, execve(file, argv, envp). The pidfd (close-on-exec)
   * becomes readable when the child exits: reap it with waitPid. Throws the failed step
   * (execve with the path), the child reaped.
   */
  spawnVm(file: string, argv: string[], envp: string[], fds: number[], cwd: string): { pid: number; pidfd: number };
}

/** One seccomp notification: a trapped syscall of thread `pid` (in our PID namespace). */
export interface SeccompNotif {
  id: bigint;
  pid: number;
  flags: number;
  nr: number;
  arch: number;
  ip: bigint;
  args: bigint[];
}

/** fds of a trapped process's view: /proc/TID/ns/user (omit: stay), ns/mnt, root and cwd (O_PATH). */
export interface TargetFds {
  usernsFd?: number | null;
  mntnsFd: number;
  rootFd: number;
  cwdFd: number;
}

/**
 * Every failing native call throws an Error carrying these fields (like Node's own
 * system errors, but `errno` is the positive C value).
 */
export interface SysError extends Error {
  code: string; // "EBUSY"
  errno: number; // 16
  syscall: string; // "ioctl(LOOP_CONFIGURE)", "open", ...
  path?: string;
  fd?: number;
  description: string; // strerror text: "Device or resource busy"
}

let addon: NativeAddon | undefined;

/** The addon, loaded on first use from `native/build/Release/loopfs.node`. */
export function native(): NativeAddon {
  if (!addon) {
    const require = createRequire(import.meta.url);
    addon = require('../../native/build/Release/loopfs.node') as NativeAddon;
  }
  return addon;
}

export function isSysError(e: unknown): e is SysError {
  return e instanceof Error && typeof (e as SysError).errno === 'number' && typeof (e as SysError).code === 'string';
}
