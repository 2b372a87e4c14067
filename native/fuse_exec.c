/*
 * loopfs-fuse-exec: starts a FUSE driver (fuse2fs, squashfuse) for a mount loopfs has
 * already made (src/broker/fuse.ts), and is the `fusermount` that libfuse 2 runs inside it.
 * A compiled program, not node: it sits on the path of every FUSE mount, where a node
 * start-up (~70 ms) cost 20x the kernel's whole mount.
 *
 *   loopfs-fuse-exec UID GID MODE PROGRAM [ARG...]
 *       Run as root by fuse.ts with fd 3 = the /dev/fuse connection, fd 4 = the image.
 *       MODE "fusermount" (libfuse 2): first a private mount namespace (propagation
 *       private, so nothing reaches the caller's) with this very program bind-mounted over
 *       /bin/fusermount, the path libfuse 2 runs. MODE "plain" (libfuse 3, which serves a
 *       mount point of /dev/fd/3 by itself): no namespace.
 *       Then every fd above 4 is closed (the driver gets nothing but the two fds, whatever
 *       the caller forgot to mark close-on-exec), no supplementary groups, GID and UID as
 *       real, effective and saved ids, no capability and no way back to one (also for
 *       UID 0), no_new_privs (a set-uid program the driver might run gains nothing), and
 *       exec PROGRAM.
 *
 *   fusermount [-o OPTIONS] [--] MOUNTPOINT      (argv[0] "fusermount": libfuse 2)
 *       Instead of mounting, hand libfuse the connection loopfs made (fd 3, inherited
 *       through the driver) as one byte with SCM_RIGHTS over the socket in $_FUSE_COMMFD,
 *       which is what the real fusermount sends. The options and the mount point are
 *       ignored on purpose: the mount and its options are the kernel's and loopfs's.
 *   fusermount -u ...
 *       What libfuse 2 runs at exit to unmount: nothing here is the driver's to unmount
 *       (the mount is the client's), so succeed without doing anything.
 *
 * Errors: one line on stderr, "loopfs-fuse-exec: WHAT: strerror", and exit status 127
 * (fuse.ts reports a driver's last stderr line).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define FUSE_FD 3
#define IMAGE_FD 4
/* /dev/fuse is the misc character device 10:229 (Documentation/admin-guide/devices.txt) */
#define FUSE_MAJOR 10
#define FUSE_MINOR 229
/* the path Debian's libfuse 2 runs first (FUSERMOUNT_DIR "/bin"; then fusermount on PATH) */
#define LIBFUSE2_FUSERMOUNT "/bin/fusermount"

static const char *prog = "loopfs-fuse-exec";

static int fail(const char *what, int err) {
  fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(err));
  return 127;
}

/* A decimal id that fits uid_t/gid_t, nothing else; -1 when it is not one. */
static long parse_id(const char *s) {
  if (*s < '0' || *s > '9') return -1;
  errno = 0;
  char *end;
  unsigned long v = strtoul(s, &end, 10);
  if (errno || *end || v >= UINT_MAX) return -1;
  return (long)v;
}

/* fusermount's part: send fd 3 (it must be a /dev/fuse connection) over $_FUSE_COMMFD. */
static int fusermount(int argc, char **argv) {
  prog = "loopfs fusermount";
  for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
    if (strcmp(argv[i], "-u") == 0) return 0;
  const char *env = getenv("_FUSE_COMMFD");
  long comm = env ? parse_id(env) : -1;
  if (comm < 0) {
    fprintf(stderr, "%s: _FUSE_COMMFD is not set\n", prog);
    return 1;
  }
  struct stat st;
  if (fstat(FUSE_FD, &st) != 0) return fail("fd 3", errno);
  if (!S_ISCHR(st.st_mode) || major(st.st_rdev) != FUSE_MAJOR || minor(st.st_rdev) != FUSE_MINOR) {
    fprintf(stderr, "%s: fd 3 is not /dev/fuse\n", prog);
    return 1;
  }
  char byte = 0;
  struct iovec iov = {.iov_base = &byte, .iov_len = 1};
  union {
    struct cmsghdr h;
    char buf[CMSG_SPACE(sizeof(int))];
  } control;
  memset(&control, 0, sizeof control);
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf};
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  const int fd = FUSE_FD;
  memcpy(CMSG_DATA(c), &fd, sizeof fd);
  ssize_t n;
  do n = sendmsg((int)comm, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n != 1) return fail("sendmsg on $_FUSE_COMMFD", n < 0 ? errno : EIO);
  return 0;
}

/* Close every fd above IMAGE_FD (close_range, Linux 5.9; a loop before that). */
static int close_others(void) {
#ifdef SYS_close_range
  if (syscall(SYS_close_range, IMAGE_FD + 1, ~0U, 0) == 0) return 0;
  if (errno != ENOSYS) return -1;
#endif
  long max = sysconf(_SC_OPEN_MAX);
  for (long fd = IMAGE_FD + 1; fd < (max > 0 ? max : 65536); fd++) close((int)fd);
  return 0;
}

/*
 * So that no exec can give capabilities back, also to a driver running as uid 0 (an
 * instance owned by root): an empty bounding set, no ambient set, and SECBIT_NOROOT (uid 0
 * gets no capabilities at execve), locked. Needs CAP_SETPCAP, so before setresuid.
 */
static int drop_capabilities_for_good(void) {
  for (int cap = 0; prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; cap++)
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) return -1;
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) return -1;
  return prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_KEEP_CAPS_LOCKED, 0, 0, 0);
}

static int launch(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s UID GID fusermount|plain PROGRAM [ARG...]\n", prog);
    return 127;
  }
  const long uid = parse_id(argv[1]), gid = parse_id(argv[2]);
  const int bind = strcmp(argv[3], "fusermount") == 0;
  if (uid < 0 || gid < 0 || (!bind && strcmp(argv[3], "plain") != 0)) {
    fprintf(stderr, "usage: %s UID GID fusermount|plain PROGRAM [ARG...]\n", prog);
    return 127;
  }
  if (bind) {
    /* our own path, looked up again in the new namespace: /proc/self/exe itself is a file
       of the old namespace's mount, which mount(2) refuses to bind (EINVAL) */
    char self[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len < 0) return fail("/proc/self/exe", errno);
    self[len] = 0;
    if (unshare(CLONE_NEWNS) != 0) return fail("unshare(CLONE_NEWNS)", errno);
    /* before anything is mounted: a shared / would carry the bind to the caller's namespace */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) return fail("make / private", errno);
    if (mount(self, LIBFUSE2_FUSERMOUNT, NULL, MS_BIND, NULL) != 0) return fail("bind over " LIBFUSE2_FUSERMOUNT, errno);
  }
  if (close_others() != 0) return fail("close_range", errno);
  if (setgroups(0, NULL) != 0) return fail("setgroups", errno);
  if (setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) != 0) return fail("setresgid", errno);
  if (drop_capabilities_for_good() != 0) return fail("dropping capabilities", errno);
  if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0) return fail("setresuid", errno);
  /* setresuid to a uid other than 0 cleared them already; to 0 it did not */
  struct __user_cap_header_struct head = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
  struct __user_cap_data_struct none[_LINUX_CAPABILITY_U32S_3];
  memset(none, 0, sizeof none);
  if (syscall(SYS_capset, &head, none) != 0) return fail("capset", errno);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return fail("PR_SET_NO_NEW_PRIVS", errno);
  execv(argv[4], argv + 4);
  return fail(argv[4], errno);
}

int main(int argc, char **argv) {
  const char *base = argc > 0 ? strrchr(argv[0], '/') : NULL;
  base = base ? base + 1 : argc > 0 ? argv[0] : "";
  if (strcmp(base, "fusermount") == 0) return fusermount(argc, argv);
  return launch(argc, argv);
}
