// Seccomp user notification for `loopfs run` (src/intercept/): start a command under a
// filter that traps mount(2), receive and answer its notifications, and act inside the
// trapped process's namespaces.
//
// Node cannot run code between fork and exec, and node's process is multi-threaded, so
// the three things that need a single-threaded process happen in a forked child here:
//  - seccompSpawn: the child sets NO_NEW_PRIVS, installs the filter with
//    SECCOMP_FILTER_FLAG_NEW_LISTENER, hands the listener fd to us over a socketpair
//    (SCM_RIGHTS), and execs the command;
//  - nsStat / nsMoveMount: the child joins the target's user and mount namespaces
//    (setns refuses CLONE_NEWNS and CLONE_NEWUSER in a multi-threaded process), takes
//    the target's root and cwd (fds on /proc/TID/root and /proc/TID/cwd), and resolves a
//    path or attaches a detached mount there, with no more privilege than the target's
//    user namespace gives.
// A child of a multi-threaded process may only make async-signal-safe calls: the
// children below use raw syscalls and memory prepared before they start, nothing else,
// and end with _exit. seccompSpawn's child is forked and reports through a socketpair;
// the nsStat/nsMoveMount/nsUmount children share our memory instead of copying it and
// write their report into it (see RunSharedVmChild). The parent reaps each at once
// (waitpid on that pid only: libuv reaps only the processes it started).
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#define LOOPFS_WANT_SECCOMP_IOCTLS
#include "args.h"
#include "errors.h"
#include "exports.h"
#include "ioctls.h"
#include "mount_api.h"

#ifndef SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
#define SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (1UL << 5)
#endif
#ifndef PR_SET_CHILD_SUBREAPER
#define PR_SET_CHILD_SUBREAPER 36
#endif

namespace loopfs {

namespace {

// ------------------------------------------------------------------ the filter

#if defined(__x86_64__)
#define LOOPFS_SECCOMP_SUPPORTED 1
constexpr uint32_t kNativeArch = AUDIT_ARCH_X86_64;
constexpr uint32_t kX32Bit = 0x40000000u; // __X32_SYSCALL_BIT
constexpr uint32_t kNrMount = 165;
constexpr uint32_t kI386Mount = 21;
#else
#define LOOPFS_SECCOMP_SUPPORTED 0
#endif

// Syscall numbers shared by every architecture's table (asm-generic unified numbering).
constexpr uint32_t kNrOpenTree = 428, kNrFspick = 433, kNrMountSetattr = 442;

#if LOOPFS_SECCOMP_SUPPORTED
#define STMT(code, k) BPF_STMT(static_cast<uint16_t>(code), k)
#define JUMP(code, k, jt, jf) BPF_JUMP(static_cast<uint16_t>(code), k, jt, jf)
constexpr uint32_t kRetErrnoEnosys = SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA);

// mount(2) goes to the supervisor. The new mount API (open_tree, move_mount, fsopen,
// fsconfig, fsmount, fspick, mount_setattr) answers ENOSYS at once: the supervisor could
// not judge a mount assembled over several calls (mount_setattr could clear nosuid on a
// mount we made), and tools fall back to mount(2) on ENOSYS. x32 and i386 callers get
// ENOSYS for their mount calls (numbers the x86_64 check below would not see); every
// other syscall passes untouched.
const sock_filter kFilter[] = {
    STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
    JUMP(BPF_JMP | BPF_JEQ | BPF_K, kNativeArch, 0, 10),              // → i386
    STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
    JUMP(BPF_JMP | BPF_JGE | BPF_K, kX32Bit, 0, 1),                   // x32 ABI
    STMT(BPF_RET | BPF_K, kRetErrnoEnosys),
    JUMP(BPF_JMP | BPF_JEQ | BPF_K, kNrMount, 0, 1),
    STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
    JUMP(BPF_JMP | BPF_JEQ | BPF_K, kNrMountSetattr, 2, 0),
    JUMP(BPF_JMP | BPF_JGE | BPF_K, kNrOpenTree, 0, 2),
    JUMP(BPF_JMP | BPF_JGT | BPF_K, kNrFspick, 1, 0),
    STMT(BPF_RET | BPF_K, kRetErrnoEnosys),
    STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    // i386 (or any other architecture the CPU can run): its mount calls answer ENOSYS.
    STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
    JUMP(BPF_JMP | BPF_JEQ | BPF_K, kI386Mount, 3, 0),
    JUMP(BPF_JMP | BPF_JEQ | BPF_K, kNrMountSetattr, 2, 0),
    JUMP(BPF_JMP | BPF_JGE | BPF_K, kNrOpenTree, 0, 2),
    JUMP(BPF_JMP | BPF_JGT | BPF_K, kNrFspick, 1, 0),
    STMT(BPF_RET | BPF_K, kRetErrnoEnosys),
    STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
};
#undef STMT
#undef JUMP
#endif

// A msghdr for one datagram `data` with room for one SCM_RIGHTS fd in `control`.
template <typename T, size_t N>
msghdr OneFdMessage(T* data, iovec* iov, char (&control)[N]) {
  std::memset(control, 0, N);
  *iov = iovec{data, sizeof *data};
  msghdr msg;
  std::memset(&msg, 0, sizeof msg);
  msg.msg_iov = iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = N;
  return msg;
}

// What a spawn child reports before exec, or when exec fails.
struct SpawnReport {
  char stage[24]; // "" for the listener message, else the failed step
  int err;
};

[[noreturn]] void ChildFail(int sock, const char* stage, int err) {
  SpawnReport r;
  std::memset(&r, 0, sizeof r);
  std::strncpy(r.stage, stage, sizeof r.stage - 1);
  r.err = err;
  send(sock, &r, sizeof r, MSG_NOSIGNAL);
  _exit(127);
}

// The child of seccompSpawn: only async-signal-safe calls on memory prepared by the parent.
[[noreturn]] void SpawnChild(int sock, const char* file, char* const* argv, char* const* envp, const char* cwd) {
#if LOOPFS_SECCOMP_SUPPORTED
  // Node ignores SIGPIPE and may block signals in this thread: exec keeps both, the
  // command must start with the defaults.
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  // The command gets our stdin/stdout/stderr, which node may hold close-on-exec.
  for (int fd = 0; fd <= 2; ++fd) fcntl(fd, F_SETFD, 0);
  if (cwd && chdir(cwd) < 0) ChildFail(sock, "chdir", errno);
  // Without NO_NEW_PRIVS an unprivileged process may not install a filter; with it, no
  // exec below can gain privileges (set-user-ID bits and file capabilities are ignored),
  // so nothing under the filter can escape it by becoming root on the host.
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) ChildFail(sock, "prctl(PR_SET_NO_NEW_PRIVS)", errno);
  sock_fprog prog;
  prog.len = static_cast<unsigned short>(sizeof kFilter / sizeof kFilter[0]);
  prog.filter = const_cast<sock_filter*>(kFilter);
  // WAIT_KILLABLE_RECV (5.19): once the supervisor has taken a notification, only a fatal
  // signal interrupts the trapped mount. Otherwise a mere signal would make the kernel
  // restart the syscall as a new notification while we may already have mounted for the
  // first one, and the target would get two mounts.
  long listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                          SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, &prog);
  if (listener < 0 && errno == EINVAL) {
    listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
  }
  if (listener < 0) ChildFail(sock, "seccomp", errno);
  // The listener goes to the supervisor; this process (and the command) must not keep it:
  // a target holding its own listener could answer its own notifications.
  SpawnReport ok;
  std::memset(&ok, 0, sizeof ok);
  char control[CMSG_SPACE(sizeof(int))];
  iovec iov;
  msghdr msg = OneFdMessage(&ok, &iov, control);
  cmsghdr* cm = CMSG_FIRSTHDR(&msg);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  const int lfd = static_cast<int>(listener);
  std::memcpy(CMSG_DATA(cm), &lfd, sizeof lfd);
  if (sendmsg(sock, &msg, MSG_NOSIGNAL) < 0) ChildFail(sock, "sendmsg", errno);
  close(lfd);
  execve(file, argv, envp);
  ChildFail(sock, "execve", errno);
#else
  (void)file;
  (void)argv;
  (void)envp;
  (void)cwd;
  ChildFail(sock, "seccomp", ENOSYS);
#endif
}

// NUL-terminated copies of JS strings and the char* vector pointing into them, built
// before fork (the child may not allocate).
struct CStrings {
  std::vector<std::string> strings;
  std::vector<char*> ptrs;
  char* const* data() { return ptrs.data(); }
};

CStrings ToCStrings(const Napi::Value& v, const char* fn, const char* what) {
  if (!v.IsArray()) ThrowArgType(v, fn, what, "an array of strings");
  const Napi::Array a = v.As<Napi::Array>();
  CStrings out;
  out.strings.reserve(a.Length());
  for (uint32_t i = 0; i < a.Length(); ++i) out.strings.push_back(ToPath(a.Get(i), fn, what));
  for (std::string& s : out.strings) out.ptrs.push_back(s.data());
  out.ptrs.push_back(nullptr);
  return out;
}

// __WALL: also a child whose exit signal is not SIGCHLD (RunSharedVmChild's).
void ReapQuietly(pid_t pid) {
  int status;
  while (waitpid(pid, &status, __WALL) < 0 && errno == EINTR) {
  }
}

// fork(), closing both ends of the channel `fds` and throwing when it fails.
pid_t ForkOrThrow(Napi::Env env, int fds[2]) {
  const pid_t pid = fork();
  if (pid < 0) {
    const int err = errno;
    close(fds[0]);
    close(fds[1]);
    ThrowFdError(env, err, "fork", -1);
  }
  return pid;
}

// seccompSpawn(file, argv, envp, cwd?) → { pid, listenerFd }: fork, and in the child
// NO_NEW_PRIVS + the mount filter + execve(file, argv, envp). file must be a path (no PATH
// search here). Returns once the child has exec'd; a failure before or at exec is thrown
// with the failed step as `syscall` (the child is reaped first).
Napi::Value SeccompSpawn(const Napi::CallbackInfo& info) {
  const char* fn = "seccompSpawn";
  Napi::Env env = info.Env();
  const std::string file = ToPath(info[0], fn, "file");
  CStrings argv = ToCStrings(info[1], fn, "argv");
  CStrings envp = ToCStrings(info[2], fn, "envp");
  const bool hasCwd = !info[3].IsUndefined() && !info[3].IsNull();
  const std::string cwd = hasCwd ? ToPath(info[3], fn, "cwd") : std::string();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
    const int err = errno;
    ThrowFdError(env, err, "socketpair", -1);
  }
  const pid_t pid = ForkOrThrow(env, sv);
  if (pid == 0) {
    close(sv[0]);
    SpawnChild(sv[1], file.c_str(), argv.data(), envp.data(), hasCwd ? cwd.c_str() : nullptr);
  }
  close(sv[1]);
  // First message: the listener (or why there is none); then EOF once exec closed the
  // child's close-on-exec end, or a report that exec failed.
  int listener = -1;
  SpawnReport r;
  std::memset(&r, 0, sizeof r);
  char control[CMSG_SPACE(sizeof(int))];
  iovec iov;
  msghdr msg = OneFdMessage(&r, &iov, control);
  ssize_t n;
  do n = recvmsg(sv[0], &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); n > 0 && cm; cm = CMSG_NXTHDR(&msg, cm)) {
    if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) std::memcpy(&listener, CMSG_DATA(cm), sizeof listener);
  }
  if (n > 0 && r.stage[0] == 0 && listener >= 0) {
    std::memset(&r, 0, sizeof r);
    do n = recv(sv[0], &r, sizeof r, 0);
    while (n < 0 && errno == EINTR);
    if (n == 0) {
      close(sv[0]);
      Napi::Object o = Napi::Object::New(env);
      o.Set("pid", Napi::Number::New(env, pid));
      o.Set("listenerFd", Napi::Number::New(env, listener));
      return o;
    }
  }
  const int err = n > 0 && r.err ? r.err : EIO;
  std::string stage = n > 0 && r.stage[0] ? std::string(r.stage, strnlen(r.stage, sizeof r.stage)) : "fork";
  close(sv[0]);
  if (listener >= 0) close(listener);
  ReapQuietly(pid);
  if (stage == "execve") ThrowPathError(env, err, "execve", file);
  ThrowFdError(env, err, stage.c_str(), -1);
}

// ------------------------------------------------------------------ notifications

seccomp_notif_sizes Sizes(Napi::Env env) {
  static seccomp_notif_sizes sizes{0, 0, 0};
  if (sizes.seccomp_notif == 0 && syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) < 0) {
    const int err = errno;
    ThrowFdError(env, err, "seccomp(SECCOMP_GET_NOTIF_SIZES)", -1);
  }
  return sizes;
}

// seccompNotifSizes() → { notif, resp, data }: the running kernel's struct sizes.
Napi::Value SeccompNotifSizes(const Napi::CallbackInfo& info) {
  const seccomp_notif_sizes s = Sizes(info.Env());
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("notif", s.seccomp_notif);
  o.Set("resp", s.seccomp_notif_resp);
  o.Set("data", s.seccomp_data);
  return o;
}

// seccompNotifRecv(listenerFd) → { id, pid, flags, nr, arch, ip, args[6] } (id, ip and
// args as BigInt), or null when the notification vanished before we took it (ENOENT: its
// process was killed) or none is pending (EAGAIN). Call it when the fd polls readable: the
// kernel's RECV waits otherwise.
Napi::Value SeccompNotifRecv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ToFd(info[0], "seccompNotifRecv", "listenerFd");
  const seccomp_notif_sizes s = Sizes(env);
  // The kernel's struct may be larger than our header's: size the buffer by what it says,
  // and zero it (RECV insists on a zeroed buffer).
  std::vector<unsigned char> buf(std::max<size_t>(s.seccomp_notif, sizeof(seccomp_notif)), 0);
  if (ioctl(fd, kSeccompNotifRecv.request, buf.data()) < 0) {
    const int err = errno;
    if (err == ENOENT || err == EAGAIN || err == EINTR) return env.Null();
    ThrowFdError(env, err, kSeccompNotifRecv.label, fd);
  }
  seccomp_notif n;
  std::memcpy(&n, buf.data(), sizeof n);
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", Napi::BigInt::New(env, static_cast<uint64_t>(n.id)));
  o.Set("pid", Napi::Number::New(env, n.pid));
  o.Set("flags", Napi::Number::New(env, n.flags));
  o.Set("nr", Napi::Number::New(env, n.data.nr));
  o.Set("arch", Napi::Number::New(env, n.data.arch));
  o.Set("ip", Napi::BigInt::New(env, static_cast<uint64_t>(n.data.instruction_pointer)));
  Napi::Array args = Napi::Array::New(env, 6);
  for (uint32_t i = 0; i < 6; ++i) args.Set(i, Napi::BigInt::New(env, static_cast<uint64_t>(n.data.args[i])));
  o.Set("args", args);
  return o;
}

uint64_t ToNotifId(const Napi::Value& v, const char* fn) {
  if (!v.IsBigInt()) ThrowArgType(v, fn, "id", "a BigInt");
  bool lossless = false;
  const uint64_t id = v.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) ThrowArgRange(v, fn, "id", "a u64");
  return id;
}

// seccompNotifSend(listenerFd, id, error, val, flags) → true, or false when the target is
// gone (ENOENT: killed, or it was interrupted by a signal and will retry the syscall).
// error: 0 or a negative errno; flags: SECCOMP_USER_NOTIF_FLAG_CONTINUE or 0.
Napi::Value SeccompNotifSend(const Napi::CallbackInfo& info) {
  const char* fn = "seccompNotifSend";
  Napi::Env env = info.Env();
  const int fd = ToFd(info[0], fn, "listenerFd");
  const uint64_t id = ToNotifId(info[1], fn);
  const int32_t error = ToInt32(info[2], fn, "error");
  const int32_t val = ToInt32(info[3], fn, "val");
  const uint32_t flags = ToBits(info[4], fn, "flags");
  const seccomp_notif_sizes s = Sizes(env);
  std::vector<unsigned char> buf(std::max<size_t>(s.seccomp_notif_resp, sizeof(seccomp_notif_resp)), 0);
  seccomp_notif_resp r;
  std::memset(&r, 0, sizeof r);
  r.id = id;
  r.error = error;
  r.val = val;
  r.flags = flags;
  std::memcpy(buf.data(), &r, sizeof r);
  if (ioctl(fd, kSeccompNotifSend.request, buf.data()) < 0) {
    const int err = errno;
    if (err == ENOENT) return Napi::Boolean::New(env, false);
    ThrowFdError(env, err, kSeccompNotifSend.label, fd);
  }
  return Napi::Boolean::New(env, true);
}

// seccompNotifIdValid(listenerFd, id) → whether the target is still blocked in that very
// syscall. True means every pid-based handle opened before this call (/proc/TID/mem, its
// namespaces) named the target and not a process that reused its pid.
Napi::Value SeccompNotifIdValid(const Napi::CallbackInfo& info) {
  const char* fn = "seccompNotifIdValid";
  Napi::Env env = info.Env();
  const int fd = ToFd(info[0], fn, "listenerFd");
  uint64_t id = ToNotifId(info[1], fn);
  if (ioctl(fd, kSeccompNotifIdValid.request, &id) < 0) {
    const int err = errno;
    if (err == ENOENT) return Napi::Boolean::New(env, false);
    ThrowFdError(env, err, kSeccompNotifIdValid.label, fd);
  }
  return Napi::Boolean::New(env, true);
}

// ------------------------------------------------------------------ acting in the target

// The target's view: namespaces to join (-1: stay) and its root and cwd (O_PATH fds).
struct TargetFds {
  int userns, mntns, root, cwd;
};

TargetFds ToTargetFds(const Napi::Value& v, const char* fn) {
  if (!v.IsObject()) ThrowArgType(v, fn, "target", "an object");
  const Napi::Object o = v.As<Napi::Object>();
  auto opt = [&](const char* key) { return o.Get(key).IsUndefined() || o.Get(key).IsNull() ? -1 : ToFd(o.Get(key), fn, key); };
  return TargetFds{opt("usernsFd"), ToFd(o.Get("mntnsFd"), fn, "mntnsFd"), ToFd(o.Get("rootFd"), fn, "rootFd"),
                   ToFd(o.Get("cwdFd"), fn, "cwdFd")};
}

// What a child in the target reports, written straight into the caller's memory (the
// child shares it: see RunSharedVmChild). `done` is set last: a child that died before it
// reported (killed) leaves it 0.
struct ChildResult {
  char stage[24]; // the failed step, "" on success
  int err;
  struct stat st;
  int declined; // nsUmount: the path is not a mount of one of the devices (nothing done)
  int done;
};

[[noreturn]] void ChildReport(ChildResult* out, const char* stage, int err, const struct stat* st, int declined = 0) {
  // byte copies, not strncpy: nothing in the child may depend on libc state
  size_t i = 0;
  for (; stage[i] && i < sizeof out->stage - 1; ++i) out->stage[i] = stage[i];
  out->stage[i] = 0;
  out->err = err;
  out->declined = declined;
  if (st) out->st = *st;
  out->done = 1;
  _exit(0);
}

// In the child: become a process of the target's namespaces, rooted and placed where it is.
// The user namespace comes first: from then on we hold capabilities only there, so the
// mount namespace (owned by it) can be joined, but nothing the target could not do itself
// becomes possible by path tricks.
void EnterTarget(ChildResult* out, const TargetFds& t) {
  if (t.userns >= 0 && setns(t.userns, CLONE_NEWUSER) < 0) ChildReport(out, "setns(CLONE_NEWUSER)", errno, nullptr);
  if (setns(t.mntns, CLONE_NEWNS) < 0) ChildReport(out, "setns(CLONE_NEWNS)", errno, nullptr);
  if (fchdir(t.root) < 0) ChildReport(out, "fchdir(root)", errno, nullptr);
  if (chroot(".") < 0) ChildReport(out, "chroot", errno, nullptr);
  if (fchdir(t.cwd) < 0) ChildReport(out, "fchdir(cwd)", errno, nullptr);
}

// Whether fd is our own user namespace. setns(2) into the namespace a process is already
// in fails with EINVAL, and a target without a user namespace of its own (a container
// run without one: Docker's and rootful podman's default) is in ours: then only its mount
// namespace is joined, and the child acts with our (the initial namespace's) privilege.
// Ours is looked up once: a multi-threaded process can never change its user namespace.
bool IsOwnUserNs(int fd) {
  static const struct stat mine = [] {
    struct stat s;
    if (stat("/proc/self/ns/user", &s) < 0) std::memset(&s, 0, sizeof s);
    return s;
  }();
  struct stat theirs;
  if (mine.st_ino == 0 || fstat(fd, &theirs) < 0) return false;
  return mine.st_dev == theirs.st_dev && mine.st_ino == theirs.st_ino;
}

template <typename F>
int SharedVmChildMain(void* body) {
  (*static_cast<F*>(body))();
  _exit(0);
}

// The stack the shared-VM children of one calling thread run on: mapped at its first
// child and kept until the thread ends. A fresh mapping per child cost about half of the
// child's price (measured): page faults on every page it touched, and at munmap a TLB
// shootdown on every CPU running one of node's threads. One child at a time uses it (its
// parent thread is suspended until it has exited); the lowest page is a guard, so an
// overflow kills the child instead of writing over our memory.
class ChildStack {
 public:
  static constexpr size_t kSize = 256 * 1024;

  ~ChildStack() {
    if (base_) munmap(base_, kSize);
  }

  // The top of the stack (it grows down), or nullptr with errno set.
  void* Top() {
    if (!base_) {
      void* p = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
      if (p == MAP_FAILED) return nullptr;
      if (mprotect(p, static_cast<size_t>(sysconf(_SC_PAGESIZE)), PROT_NONE) < 0) {
        const int err = errno;
        munmap(p, kSize);
        errno = err;
        return nullptr;
      }
      base_ = p;
    }
    return static_cast<char*>(base_) + kSize;
  }

 private:
  void* base_ = nullptr;
};

// Runs `body` in a child started the way posix_spawn starts one: clone(CLONE_VM |
// CLONE_VFORK) on a stack of its own, so that no page table of node's large address space
// is copied (a fork costs milliseconds here, per mount). The child shares our memory but
// not our files or fs (root, cwd: its own copies), is its own thread group, and this
// thread is suspended until it has exited, so it may touch memory the caller prepared: it
// makes raw syscalls only, reports into that memory and _exits; nothing it does may take a
// lock or allocate (another thread of ours may hold malloc's lock at the clone). setns(2)
// allows a user namespace for such a task (one thread in its group, an fs of its own).
// All signals are blocked around the clone: a handler of node's must never run on the
// child's stack. Its exit signal is none, not SIGCHLD: nothing but this thread waits for
// it (with __WALL), and libuv's SIGCHLD handler need not wake node's loop for a child
// that is not libuv's. Returns once the child is reaped; throws if it could not start.
template <typename F>
void RunSharedVmChild(Napi::Env env, F& body) {
  static thread_local ChildStack stack;
  void* top = stack.Top();
  if (!top) {
    const int err = errno;
    ThrowFdError(env, err, "mmap", -1);
  }
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  // The child starts on this CPU (it inherits the mask), which this thread leaves at once
  // to wait for it. Placed by the kernel instead, it usually went to the other CPU and
  // waited there for its turn: on a busy 2-CPU machine that wait (~1.7 ms) was most of the
  // child's cost, ~0.3 ms pinned (measured in `loopfs run`). Our own mask comes back as
  // soon as the child is gone.
  cpu_set_t mask, here;
  const int cpu = sched_getcpu();
  const bool pinned = cpu >= 0 && cpu < CPU_SETSIZE && sched_getaffinity(0, sizeof mask, &mask) == 0 && [&] {
    CPU_ZERO(&here);
    CPU_SET(cpu, &here);
    return sched_setaffinity(0, sizeof here, &here) == 0;
  }();
  const pid_t pid = clone(SharedVmChildMain<F>, top, CLONE_VM | CLONE_VFORK, &body);
  const int err = errno;
  if (pinned) sched_setaffinity(0, sizeof mask, &mask);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) ThrowFdError(env, err, "clone", -1);
  // Reaped before anything is answered: until the child has fully exited, its copy of our
  // fd table holds the mount fd (the caller's umount would find the mount busy) and its
  // root and cwd pin the target's tree.
  ReapQuietly(pid);
}

template <typename Op>
ChildResult InTargetResult(Napi::Env env, TargetFds t, const std::string& path, int (*before)(), Op op) {
  if (t.userns >= 0 && IsOwnUserNs(t.userns)) t.userns = -1;
  ChildResult r;
  std::memset(&r, 0, sizeof r);
  ChildResult* out = &r;
  auto body = [&]() {
    const int pre = before ? before() : -1;
    EnterTarget(out, t);
    op(out, pre);
  };
  RunSharedVmChild(env, body);
  // The child has exited (and was reaped): what it wrote is in r. The signal fence keeps
  // the compiler from reading r as if nobody else could have written it.
  std::atomic_signal_fence(std::memory_order_seq_cst);
  if (!r.done) ThrowPathError(env, EIO, "clone", path);
  if (r.stage[0]) ThrowPathError(env, r.err ? r.err : EIO, std::string(r.stage, strnlen(r.stage, sizeof r.stage)).c_str(), path);
  return r;
}

template <typename Op>
struct stat InTarget(Napi::Env env, TargetFds t, const std::string& path, Op op) {
  return InTargetResult(env, t, path, nullptr, [op](ChildResult* out, int) { op(out); }).st;
}

// In nsUmount's child, before it leaves our mount namespace: its own fd directory in our
// /proc (the target's /proc, if any, would not show a process outside its PID namespace).
int OpenOwnFdDir() {
  return static_cast<int>(syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
}

// nsStat(target, path) → NativeStat: stat(2) of path (following symlinks, as mount(2)
// does for its source) inside the target's namespaces, root and cwd.
Napi::Value NsStat(const Napi::CallbackInfo& info) {
  const TargetFds t = ToTargetFds(info[0], "nsStat");
  const std::string path = ToPath(info[1], "nsStat", "path");
  const char* cpath = path.c_str();
  const struct stat st = InTarget(info.Env(), t, path, [cpath](ChildResult* out) {
    struct stat s;
    if (stat(cpath, &s) < 0) ChildReport(out, "stat", errno, nullptr);
    ChildReport(out, "", 0, &s);
  });
  return StatObject(info.Env(), st);
}

// nsMoveMount(target, mntFd, path): move_mount(mntFd, "", AT_FDCWD, path,
// MOVE_MOUNT_F_EMPTY_PATH) inside the target's namespaces, root and cwd: the detached
// mount appears at path in the target's mount namespace, attached by a process with the
// target user namespace's privilege only (so the mount is not locked against the target's
// own umount).
Napi::Value NsMoveMount(const Napi::CallbackInfo& info) {
  const TargetFds t = ToTargetFds(info[0], "nsMoveMount");
  const int mntFd = ToFd(info[1], "nsMoveMount", "mntFd");
  const std::string path = ToPath(info[2], "nsMoveMount", "path");
  const char* cpath = path.c_str();
  InTarget(info.Env(), t, path, [mntFd, cpath](ChildResult* out) {
    // T_SYMLINKS: a final symlink in the target is followed, as mount(2) follows it
    if (syscall(SYS_move_mount, mntFd, "", AT_FDCWD, cpath, MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_SYMLINKS) < 0) {
      ChildReport(out, "move_mount", errno, nullptr);
    }
    ChildReport(out, "", 0, nullptr);
  });
  return info.Env().Undefined();
}

// nsUmount(target, path, flags, minors) → true (unmounted) or false (declined): inside
// the target's namespaces, root and cwd, umount2(path) only when path is the root of a
// mount whose device is loop device (major 7) with one of `minors`. The path is opened
// once (O_PATH; O_NOFOLLOW when flags has UMOUNT_NOFOLLOW), checked on that fd (statx:
// STATX_ATTR_MOUNT_ROOT and the device), and the very mount behind the fd is unmounted
// through /proc/self/fd/N, so a path swapped after the check cannot redirect it. That fd
// is itself a reference to the mount, so the unmount is always lazy (MNT_DETACH): the
// mount leaves the namespace at once and the filesystem goes when its last user does.
Napi::Value NsUmount(const Napi::CallbackInfo& info) {
  const char* fn = "nsUmount";
  const TargetFds t = ToTargetFds(info[0], fn);
  const std::string path = ToPath(info[1], fn, "path");
  const uint32_t flags = ToBits(info[2], fn, "flags");
  if (!info[3].IsArray()) ThrowArgType(info[3], fn, "minors", "an array of loop device minors");
  const Napi::Array a = info[3].As<Napi::Array>();
  std::vector<uint32_t> minors;
  for (uint32_t i = 0; i < a.Length(); ++i) minors.push_back(ToUint32(a.Get(i), fn, "minors[i]"));
  const char* cpath = path.c_str();
  const uint32_t* mdata = minors.data();
  const size_t mcount = minors.size();
  const ChildResult r = InTargetResult(info.Env(), t, path, OpenOwnFdDir, [cpath, flags, mdata, mcount](ChildResult* out, int fdDir) {
    if (fdDir < 0) ChildReport(out, "open(/proc/self/fd)", errno, nullptr);
    const int o = O_PATH | O_CLOEXEC | ((flags & UMOUNT_NOFOLLOW) ? O_NOFOLLOW : 0);
    const int fd = static_cast<int>(syscall(SYS_openat, AT_FDCWD, cpath, o));
    if (fd < 0) ChildReport(out, "open", errno, nullptr);
    struct statx sx;
    std::memset(&sx, 0, sizeof sx);
    if (syscall(SYS_statx, fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &sx) < 0) ChildReport(out, "statx", errno, nullptr);
    bool ours = (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) && (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT) && sx.stx_dev_major == 7;
    bool listed = false;
    for (size_t i = 0; i < mcount; ++i) listed = listed || mdata[i] == sx.stx_dev_minor;
    if (!ours || !listed) ChildReport(out, "", 0, nullptr, 1);
    char name[16];
    int len = 0;
    for (int v = fd; v > 0 || len == 0; v /= 10) name[len++] = static_cast<char>('0' + v % 10);
    for (int i = 0; i < len / 2; ++i) std::swap(name[i], name[len - 1 - i]);
    name[len] = 0;
    if (fchdir(fdDir) < 0) ChildReport(out, "fchdir(/proc/self/fd)", errno, nullptr);
    if (syscall(SYS_umount2, name, MNT_DETACH) < 0) ChildReport(out, "umount2", errno, nullptr);
    ChildReport(out, "", 0, nullptr);
  });
  return Napi::Boolean::New(info.Env(), r.declined == 0);
}

// ------------------------------------------------------------------ supervising

// setChildSubreaper(): prctl(PR_SET_CHILD_SUBREAPER, 1): orphaned descendants of our
// children are re-parented to us, so the supervisor can find and end them.
Napi::Value SetChildSubreaper(const Napi::CallbackInfo& info) {
  if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, "prctl(PR_SET_CHILD_SUBREAPER)", -1);
  }
  return info.Env().Undefined();
}

// waitPid(pid, noHang) → { pid, code, signal } or null (noHang and still running; or
// ECHILD: no such child). pid -1 waits for any child: only call it that way when every
// child of this process is ours to reap (libuv reaps only processes it started by pid).
Napi::Value WaitPid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int32_t pid = ToInt32(info[0], "waitPid", "pid");
  const bool noHang = ToBool(info[1], "waitPid", "noHang");
  int status = 0;
  pid_t got;
  do got = waitpid(pid, &status, (noHang ? WNOHANG : 0) | __WALL);
  while (got < 0 && errno == EINTR);
  if (got < 0) {
    const int err = errno;
    if (err == ECHILD) return env.Null();
    ThrowFdError(env, err, "waitpid", -1);
  }
  if (got == 0) return env.Null();
  Napi::Object o = Napi::Object::New(env);
  o.Set("pid", Napi::Number::New(env, got));
  o.Set("code", WIFEXITED(status) ? Napi::Number::New(env, WEXITSTATUS(status)) : env.Null());
  o.Set("signal", WIFSIGNALED(status) ? Napi::Number::New(env, WTERMSIG(status)) : env.Null());
  return o;
}

} // namespace

void RegisterSeccomp(Napi::Env env, Napi::Object exports) {
  exports.Set("seccompSpawn", Napi::Function::New(env, SeccompSpawn, "seccompSpawn"));
  exports.Set("seccompNotifSizes", Napi::Function::New(env, SeccompNotifSizes, "seccompNotifSizes"));
  exports.Set("seccompNotifRecv", Napi::Function::New(env, SeccompNotifRecv, "seccompNotifRecv"));
  exports.Set("seccompNotifSend", Napi::Function::New(env, SeccompNotifSend, "seccompNotifSend"));
  exports.Set("seccompNotifIdValid", Napi::Function::New(env, SeccompNotifIdValid, "seccompNotifIdValid"));
  exports.Set("nsStat", Napi::Function::New(env, NsStat, "nsStat"));
  exports.Set("nsMoveMount", Napi::Function::New(env, NsMoveMount, "nsMoveMount"));
  exports.Set("nsUmount", Napi::Function::New(env, NsUmount, "nsUmount"));
  exports.Set("setChildSubreaper", Napi::Function::New(env, SetChildSubreaper, "setChildSubreaper"));
  exports.Set("waitPid", Napi::Function::New(env, WaitPid, "waitPid"));
}

} // namespace loopfs
