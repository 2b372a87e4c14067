// Processes and namespaces: pidfd_open(2) and setns(2).
//
// setns caveat: node is multi-threaded (libuv's thread pool, V8's platform threads), and
// the kernel refuses to move a multi-threaded process into another mount namespace
// (CLONE_NEWNS) or user namespace (CLONE_NEWUSER) with EINVAL. So setns here is good for
// the namespace types that are per-thread (network, UTS, IPC, and time/PID for children
// only) and for pidfds with those types, never for entering a client's mount namespace:
// the broker builds detached mounts (fsmount) and lets the client attach them instead.
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "args.h"
#include "errors.h"
#include "exports.h"
#include "ns.h"

namespace loopfs {

namespace {

// pidfdOpen(pid, flags = 0): a pidfd (always close-on-exec) for a process we can see in
// our PID namespace; flags 0 or PIDFD_NONBLOCK (= O_NONBLOCK). ESRCH: no such process.
// A pid may be reused once its process is reaped, so open the pidfd while the process is
// known to be alive (our child not yet waited for, or the peer of a live connection), and
// prefer peerPidfd() for socket peers.
Napi::Value PidfdOpen(const Napi::CallbackInfo& info) {
  const int32_t pid = ToInt32(info[0], "pidfdOpen", "pid");
  if (pid <= 0) ThrowArgRange(info[0], "pidfdOpen", "pid", "a process id (integer > 0)");
  const uint32_t flags = info[1].IsUndefined() ? 0 : ToBits(info[1], "pidfdOpen", "flags");
  const long fd = syscall(SYS_pidfd_open, static_cast<pid_t>(pid), flags);
  if (fd < 0) {
    const int err = errno;
    Napi::Env env = info.Env();
    try {
      ThrowFdError(env, err, "pidfd_open", -1);
    } catch (Napi::Error& e) {
      e.Value().Set("pid", Napi::Number::New(env, pid));
      throw;
    }
  }
  return Napi::Number::New(info.Env(), static_cast<double>(fd));
}

// setns(fd, nstype): join the namespace behind fd (/proc/PID/ns/*, or a pidfd with a
// combination of CLONE_NEW* types); nstype 0 accepts any type. See the caveat above:
// CLONE_NEWNS and CLONE_NEWUSER fail with EINVAL in node.
Napi::Value Setns(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "setns", "fd");
  const uint32_t nstype = ToBits(info[1], "setns", "nstype");
  if (setns(fd, static_cast<int>(nstype)) < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, "setns", fd);
  }
  return info.Env().Undefined();
}

} // namespace

void RegisterNs(Napi::Env env, Napi::Object exports) {
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen, "pidfdOpen"));
  exports.Set("setns", Napi::Function::New(env, Setns, "setns"));
}

} // namespace loopfs
