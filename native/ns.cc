// Processes, namespaces and per-thread credentials: pidfd_open(2), setns(2) and
// setfsuid(2)/setfsgid(2).
//
// setns caveat: node is multi-threaded (libuv's thread pool, V8's platform threads), and
// the kernel refuses to move a multi-threaded process into another mount namespace
// (CLONE_NEWNS) or user namespace (CLONE_NEWUSER) with EINVAL. So setns here is good for
// the namespace types that are per-thread (network, UTS, IPC, and time/PID for children
// only) and for pidfds with those types, never for entering a client's mount namespace:
// the broker builds detached mounts (fsmount) and lets the client attach them instead.
#include <sched.h>
#include <sys/fsuid.h>
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

// setfsids(uid, gid): the calling thread's filesystem uid and gid (the ids that own what it
// creates and that permission checks use); returns the previous [uid, gid]. Why not
// seteuid: glibc applies set*id to every thread of the process, and a daemon's worker
// threads must keep acting as root while one thread acts as a container's user. Leaving
// fsuid 0 drops the thread's CAP_DAC_* and friends; going back to 0 raises them again.
// The kernel reports no error from setfsuid(2): a second call tells whether it took.
Napi::Value Setfsids(const Napi::CallbackInfo& info) {
  const uint32_t uid = ToUint32(info[0], "setfsids", "uid");
  const uint32_t gid = ToUint32(info[1], "setfsids", "gid");
  const int oldUid = setfsuid(static_cast<uid_t>(-1));
  const int oldGid = setfsgid(static_cast<gid_t>(-1));
  // leaving root: the gid while CAP_SETGID is certainly effective, then the uid; back to
  // root: the uid first, which brings the capabilities back
  if (static_cast<uid_t>(oldUid) == 0) {
    setfsgid(static_cast<gid_t>(gid));
    setfsuid(static_cast<uid_t>(uid));
  } else {
    setfsuid(static_cast<uid_t>(uid));
    setfsgid(static_cast<gid_t>(gid));
  }
  if (static_cast<uint32_t>(setfsuid(static_cast<uid_t>(-1))) != uid || static_cast<uint32_t>(setfsgid(static_cast<gid_t>(-1))) != gid) {
    setfsuid(static_cast<uid_t>(oldUid));
    setfsgid(static_cast<gid_t>(oldGid));
    ThrowFdError(info.Env(), EPERM, "setfsuid", -1, false);
  }
  Napi::Array prev = Napi::Array::New(info.Env(), 2);
  prev.Set(0u, Napi::Number::New(info.Env(), static_cast<uint32_t>(oldUid)));
  prev.Set(1u, Napi::Number::New(info.Env(), static_cast<uint32_t>(oldGid)));
  return prev;
}

} // namespace

void RegisterNs(Napi::Env env, Napi::Object exports) {
  exports.Set("pidfdOpen", Napi::Function::New(env, PidfdOpen, "pidfdOpen"));
  exports.Set("setns", Napi::Function::New(env, Setns, "setns"));
  exports.Set("setfsids", Napi::Function::New(env, Setfsids, "setfsids"));
}

} // namespace loopfs
