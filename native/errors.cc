// errno → SysError. Names come from our own table rather than glibc's
// strerrorname_np(3) (glibc ≥ 2.32 only, absent from musl), so the addon builds and
// reports the same codes on any Linux libc.
#include "errors.h"

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <unistd.h>

#include "args.h"

namespace loopfs {

// Every Linux errno userspace can see (asm-generic/errno-base.h and errno.h), each under
// its canonical name. Aliases that share a number on Linux (EWOULDBLOCK = EAGAIN,
// EDEADLOCK = EDEADLK on most architectures, ENOTSUP = EOPNOTSUPP) are left out so the
// name matches what glibc's strerrorname_np() and the kernel sources call it.
#define LOOPFS_ERRNO_NAMES(X)                                                                 \
  X(EPERM) X(ENOENT) X(ESRCH) X(EINTR) X(EIO) X(ENXIO) X(E2BIG) X(ENOEXEC) X(EBADF)          \
  X(ECHILD) X(EAGAIN) X(ENOMEM) X(EACCES) X(EFAULT) X(ENOTBLK) X(EBUSY) X(EEXIST) X(EXDEV)   \
  X(ENODEV) X(ENOTDIR) X(EISDIR) X(EINVAL) X(ENFILE) X(EMFILE) X(ENOTTY) X(ETXTBSY)          \
  X(EFBIG) X(ENOSPC) X(ESPIPE) X(EROFS) X(EMLINK) X(EPIPE) X(EDOM) X(ERANGE) X(EDEADLK)     \
  X(ENAMETOOLONG) X(ENOLCK) X(ENOSYS) X(ENOTEMPTY) X(ELOOP) X(ENOMSG) X(EIDRM) X(ECHRNG)    \
  X(EL2NSYNC) X(EL3HLT) X(EL3RST) X(ELNRNG) X(EUNATCH) X(ENOCSI) X(EL2HLT) X(EBADE)         \
  X(EBADR) X(EXFULL) X(ENOANO) X(EBADRQC) X(EBADSLT) X(EBFONT) X(ENOSTR) X(ENODATA)        \
  X(ETIME) X(ENOSR) X(ENONET) X(ENOPKG) X(EREMOTE) X(ENOLINK) X(EADV) X(ESRMNT) X(ECOMM)   \
  X(EPROTO) X(EMULTIHOP) X(EDOTDOT) X(EBADMSG) X(EOVERFLOW) X(ENOTUNIQ) X(EBADFD)          \
  X(EREMCHG) X(ELIBACC) X(ELIBBAD) X(ELIBSCN) X(ELIBMAX) X(ELIBEXEC) X(EILSEQ) X(ERESTART) \
  X(ESTRPIPE) X(EUSERS) X(ENOTSOCK) X(EDESTADDRREQ) X(EMSGSIZE) X(EPROTOTYPE)              \
  X(ENOPROTOOPT) X(EPROTONOSUPPORT) X(ESOCKTNOSUPPORT) X(EOPNOTSUPP) X(EPFNOSUPPORT)       \
  X(EAFNOSUPPORT) X(EADDRINUSE) X(EADDRNOTAVAIL) X(ENETDOWN) X(ENETUNREACH) X(ENETRESET)   \
  X(ECONNABORTED) X(ECONNRESET) X(ENOBUFS) X(EISCONN) X(ENOTCONN) X(ESHUTDOWN)             \
  X(ETOOMANYREFS) X(ETIMEDOUT) X(ECONNREFUSED) X(EHOSTDOWN) X(EHOSTUNREACH) X(EALREADY)    \
  X(EINPROGRESS) X(ESTALE) X(EUCLEAN) X(ENOTNAM) X(ENAVAIL) X(EISNAM) X(EREMOTEIO)         \
  X(EDQUOT) X(ENOMEDIUM) X(EMEDIUMTYPE) X(ECANCELED) X(ENOKEY) X(EKEYEXPIRED)              \
  X(EKEYREVOKED) X(EKEYREJECTED) X(EOWNERDEAD) X(ENOTRECOVERABLE)

std::string ErrnoName(int err) {
  switch (err) {
#define LOOPFS_ERRNO_CASE(name) \
  case name:                    \
    return #name;
    LOOPFS_ERRNO_NAMES(LOOPFS_ERRNO_CASE)
#undef LOOPFS_ERRNO_CASE
// Newer than some libc headers (Linux 2.6.31 / 3.x).
#ifdef ERFKILL
    case ERFKILL:
      return "ERFKILL";
#endif
#ifdef EHWPOISON
    case EHWPOISON:
      return "EHWPOISON";
#endif
// A separate number only on a few architectures (mips, powerpc, sparc).
#if defined(EDEADLOCK) && EDEADLOCK != EDEADLK
    case EDEADLOCK:
      return "EDEADLOCK";
#endif
    default:
      return "E" + std::to_string(err);
  }
}

namespace {

// strerror_r comes in two shapes: GNU returns char* (maybe not buf), XSI returns int and
// fills buf. Overloading on the return type picks the right reading for either libc,
// and unlike strerror() it is safe from worker threads.
[[maybe_unused]] const char* StrerrorResult(const char* result, const char*) { return result; }
[[maybe_unused]] const char* StrerrorResult(int result, const char* buf) {
  return result == 0 ? buf : nullptr;
}

// Best-effort path of an fd, for error messages only. Pipes, sockets and anonymous
// inodes read as "pipe:[123]" and the like: those are not paths, so they are dropped.
bool FdPath(int fd, std::string* out) {
  if (fd < 0) return false;
  char link[64];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  char buf[PATH_MAX];
  ssize_t n = readlink(link, buf, sizeof buf);
  if (n <= 0 || n >= static_cast<ssize_t>(sizeof buf) || buf[0] != '/') return false;
  out->assign(buf, static_cast<size_t>(n));
  return true;
}

[[noreturn]] void ThrowSysError(Napi::Env env, int err, const char* syscall, const std::string* path,
                                int fd) {
  const std::string code = ErrnoName(err);
  const std::string description = ErrnoDescription(err);
  // Node's layout: "ENOENT: no such file or directory, open '/x'", with glibc's text.
  std::string message = code + ": " + description + ", " + syscall;
  if (path) message += " '" + *path + "'";

  Napi::Error error = Napi::Error::New(env, message);
  Napi::Object obj = error.Value();
  obj.Set("code", code);
  obj.Set("errno", Napi::Number::New(env, err));
  obj.Set("syscall", syscall);
  if (path) obj.Set("path", *path);
  if (fd >= 0) obj.Set("fd", Napi::Number::New(env, fd));
  obj.Set("description", description);
  throw error;
}

} // namespace

std::string ErrnoDescription(int err) {
  char buf[256];
  const char* text = StrerrorResult(strerror_r(err, buf, sizeof buf), buf);
  return text ? std::string(text) : "Unknown error " + std::to_string(err);
}

void ThrowPathError(Napi::Env env, int err, const char* syscall, const std::string& path) {
  ThrowSysError(env, err, syscall, &path, -1);
}

void ThrowFdError(Napi::Env env, int err, const char* syscall, int fd, bool lookupPath) {
  std::string path;
  ThrowSysError(env, err, syscall, lookupPath && FdPath(fd, &path) ? &path : nullptr, fd);
}

void ThrowAtError(Napi::Env env, int err, const char* syscall, int dirfd, const std::string& name) {
  std::string path;
  if (!name.empty() && name[0] != '/' && FdPath(dirfd, &path)) {
    if (path.back() != '/') path += '/';
    path += name;
  } else {
    path = name;
  }
  ThrowSysError(env, err, syscall, &path, dirfd);
}

Napi::Value Strerror(const Napi::CallbackInfo& info) {
  const int err = ToInt32(info[0], "strerror", "errno");
  return Napi::String::New(info.Env(), ErrnoDescription(err));
}

} // namespace loopfs
