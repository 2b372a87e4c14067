// Unix SOCK_SEQPACKET sockets for the broker: listen/connect/accept on a path, one
// datagram per sendMsg/recvMsg with file descriptors passed as SCM_RIGHTS, and the
// peer's kernel-attested identity (SO_PEERCRED, SO_PEERPIDFD). The same calls serve
// SOCK_STREAM sockets (streamListen/streamConnect) for the OCI seccomp agent, whose
// peers (runc, crun) speak a byte stream: there recvMsg returns whatever bytes are
// queued (a message may arrive in pieces) and eof is a real end of stream.
//
// Every socket is close-on-exec; listening and accepted sockets are non-blocking (the
// server drives them from watchFd in fdwatch.cc), a connecting client's socket blocks.
// recvMsg is the one place fds from an untrusted peer enter this process, so it always
// receives them close-on-exec (MSG_CMSG_CLOEXEC) and closes every one of them whenever
// the message did not arrive whole.
//
// No EINTR loops, as in fs.cc: libuv's signal handlers use SA_RESTART, and sockets here
// have no SO_RCVTIMEO/SO_SNDTIMEO, so the kernel restarts interrupted calls itself.
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <memory>
#include <vector>

#include "args.h"
#include "errors.h"
#include "exports.h"
#include "ns.h"
#include "socket.h"

namespace loopfs {

namespace {

// The largest datagram recvMsg will allocate for; far above any sane protocol message
// (and above the default socket buffer limit, ~208 KiB, that bounds a datagram anyway).
constexpr uint32_t kMaxRecvBytes = 64u << 20;

// sockaddr_un for a filesystem path. Abstract names (leading NUL) are refused by ToPath;
// an empty path would mean autobind for bind(2), so it is refused here as ENOENT.
socklen_t UnixAddress(Napi::Env env, const std::string& path, const char* syscall, sockaddr_un* sa) {
  std::memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  if (path.empty()) ThrowPathError(env, ENOENT, syscall, path);
  if (path.size() >= sizeof sa->sun_path) ThrowPathError(env, ENAMETOOLONG, syscall, path);
  std::memcpy(sa->sun_path, path.data(), path.size());
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
}

// Closes fd on the way out of a failed multi-step call, keeping the first error's errno.
void CloseQuietly(int fd) {
  const int saved = errno;
  close(fd);
  errno = saved;
}

// seqpacketListen(path, backlog, mode): a non-blocking listening socket bound at path,
// whose file has exactly `mode` permissions. The mode is set on the socket before bind
// (the kernel creates the file with that mode minus the umask, so it is never wider than
// asked for, not even for an instant) and set again on the file afterwards (adding back
// what the umask took; AT_SYMLINK_NOFOLLOW so a name swapped for a symlink is not
// followed). EADDRINUSE when path exists: unlinking a stale socket is the caller's choice.
Napi::Value ListenOn(const Napi::CallbackInfo& info, int type, const char* fn) {
  Napi::Env env = info.Env();
  const std::string path = ToPath(info[0], fn, "path");
  const int32_t backlog = ToInt32(info[1], fn, "backlog");
  if (backlog < 0) ThrowArgRange(info[1], fn, "backlog", "an integer >= 0");
  const uint32_t mode = ToUint32(info[2], fn, "mode");
  if (mode > 07777) ThrowArgRange(info[2], fn, "mode", "a permission mode in 0..0o7777");
  sockaddr_un sa;
  const socklen_t len = UnixAddress(env, path, "bind", &sa);

  const int fd = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    const int err = errno;
    ThrowPathError(env, err, "socket", path);
  }
  const char* failed = nullptr;
  if (fchmod(fd, static_cast<mode_t>(mode)) < 0) {
    failed = "fchmod";
  } else if (bind(fd, reinterpret_cast<const sockaddr*>(&sa), len) < 0) {
    failed = "bind";
  } else if (fchmodat(AT_FDCWD, path.c_str(), static_cast<mode_t>(mode), AT_SYMLINK_NOFOLLOW) < 0) {
    failed = "fchmodat";
  } else if (listen(fd, backlog) < 0) {
    failed = "listen";
  }
  if (failed) {
    // The socket file (if bind made one) stays: it may no longer be ours to remove.
    CloseQuietly(fd);
    const int err = errno;
    ThrowPathError(env, err, failed, path);
  }
  return Napi::Number::New(env, fd);
}

Napi::Value SeqpacketListen(const Napi::CallbackInfo& info) {
  return ListenOn(info, SOCK_SEQPACKET, "seqpacketListen");
}

// streamListen(path, backlog, mode): the same for SOCK_STREAM (the OCI seccomp agent).
Napi::Value StreamListen(const Napi::CallbackInfo& info) {
  return ListenOn(info, SOCK_STREAM, "streamListen");
}

// SO_SNDTIMEO of fd: ms (0: wait for ever).
static int SetSendTimeout(int fd, uint32_t ms) {
  struct timeval tv;
  tv.tv_sec = static_cast<time_t>(ms / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms % 1000) * 1000);
  return setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

// seqpacketConnect(path, timeoutMs = 0): a blocking, close-on-exec socket connected to path.
// ECONNREFUSED when nobody listens there (a stale socket file). While the listener's backlog
// is full (a daemon out of fds, stopped or hung) connect(2) waits: for ever with no timeout,
// else at most timeoutMs and then EAGAIN. The kernel bounds that wait of an AF_UNIX connect
// by the socket's SO_SNDTIMEO, so it is set for the connect and cleared again after it (the
// socket's sends keep blocking as before).
Napi::Value ConnectTo(const Napi::CallbackInfo& info, int type, const char* fn) {
  Napi::Env env = info.Env();
  const std::string path = ToPath(info[0], fn, "path");
  const uint32_t timeoutMs = info.Length() > 1 && !info[1].IsUndefined() ? ToBits(info[1], fn, "timeoutMs") : 0;
  sockaddr_un sa;
  const socklen_t len = UnixAddress(env, path, "connect", &sa);
  const int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    const int err = errno;
    ThrowPathError(env, err, "socket", path);
  }
  if (timeoutMs > 0 && SetSendTimeout(fd, timeoutMs) < 0) {
    const int err = errno;
    CloseQuietly(fd);
    ThrowPathError(env, err, "setsockopt(SO_SNDTIMEO)", path);
  }
  if (connect(fd, reinterpret_cast<const sockaddr*>(&sa), len) < 0) {
    const int err = errno;
    CloseQuietly(fd);
    ThrowPathError(env, err, "connect", path);
  }
  if (timeoutMs > 0 && SetSendTimeout(fd, 0) < 0) {
    const int err = errno;
    CloseQuietly(fd);
    ThrowPathError(env, err, "setsockopt(SO_SNDTIMEO)", path);
  }
  return Napi::Number::New(env, fd);
}

Napi::Value SeqpacketConnect(const Napi::CallbackInfo& info) {
  return ConnectTo(info, SOCK_SEQPACKET, "seqpacketConnect");
}

// streamConnect(path): the same for SOCK_STREAM.
Napi::Value StreamConnect(const Napi::CallbackInfo& info) {
  return ConnectTo(info, SOCK_STREAM, "streamConnect");
}

// seqpacketAccept(listenFd) / streamAccept(listenFd): the next pending connection as a
// non-blocking, close-on-exec fd, or null when none is pending (EAGAIN on a non-blocking
// listener). accept4 takes the socket type from the listener: one function, two names.
// EMFILE/ENFILE are thrown (the connection stays queued): the caller must back off, not
// spin on a listener that stays readable.
Napi::Value Accept(const Napi::CallbackInfo& info) {
  const int lfd = ToFd(info[0], "accept", "listenFd");
  const int fd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK) return info.Env().Null();
    ThrowFdError(info.Env(), err, "accept4", lfd);
  }
  return Napi::Number::New(info.Env(), fd);
}

// socketPair(nonblock = false): [fd, fd], a connected SOCK_SEQPACKET pair, close-on-exec.
Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  const bool nonblock = info[0].IsUndefined() ? false : ToBool(info[0], "socketPair", "nonblock");
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0, sv) < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, "socketpair", -1);
  }
  Napi::Array a = Napi::Array::New(info.Env(), 2);
  a.Set(0u, Napi::Number::New(info.Env(), sv[0]));
  a.Set(1u, Napi::Number::New(info.Env(), sv[1]));
  return a;
}

// sendMsg(fd, data, fds): one datagram of data (at least one byte: an empty datagram
// would read as end-of-file at the other end) carrying fds as SCM_RIGHTS when fds is not
// empty (at most SCM_MAX_FD). Returns the bytes sent, always data.length: a SEQPACKET
// datagram goes whole or not at all. A full non-blocking socket throws code 'EAGAIN';
// EMSGSIZE when data exceeds the socket buffer; EPIPE once the peer is gone (MSG_NOSIGNAL:
// never SIGPIPE). The fds stay open here: the peer gets its own copies.
Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  const char* fn = "sendMsg";
  const int fd = ToFd(info[0], fn, "fd");
  if (!info[1].IsBuffer()) ThrowArgType(info[1], fn, "data", "a Buffer or Uint8Array");
  Napi::Buffer<uint8_t> data = info[1].As<Napi::Buffer<uint8_t>>();
  if (data.Length() == 0) ThrowArgRange(info[1], fn, "data", "a non-empty Buffer (0 bytes would read as end-of-file)");
  if (!info[2].IsArray()) ThrowArgType(info[2], fn, "fds", "an array of file descriptors");
  Napi::Array fdArray = info[2].As<Napi::Array>();
  const uint32_t nfds = fdArray.Length();
  if (nfds > SCM_MAX_FD) ThrowArgRange(info[2], fn, "fds", "an array of at most 253 (SCM_MAX_FD) file descriptors");
  std::vector<int> fds(nfds);
  for (uint32_t i = 0; i < nfds; i++) fds[i] = ToFd(fdArray.Get(i), fn, "fds[i]");

  iovec iov;
  iov.iov_base = data.Data();
  iov.iov_len = data.Length();
  msghdr msg;
  std::memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<uint64_t> control; // uint64_t: cmsghdr alignment
  if (nfds > 0) {
    const size_t space = CMSG_SPACE(nfds * sizeof(int));
    control.assign((space + sizeof(uint64_t) - 1) / sizeof(uint64_t), 0);
    msg.msg_control = control.data();
    msg.msg_controllen = space;
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    std::memcpy(CMSG_DATA(cmsg), fds.data(), nfds * sizeof(int));
  }
  const ssize_t n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  if (n < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, "sendmsg", fd);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(n));
}

void CloseAll(const std::vector<int>& fds) {
  for (int fd : fds) close(fd);
}

// recvMsg(fd, maxBytes, maxFds): the next datagram, or null when none is waiting
// (EAGAIN on a non-blocking socket; a blocking one waits).
//   { data, fds, truncated, ctrlTruncated, eof }
// data: the bytes received (at most maxBytes). fds: the descriptors it carried, each
// close-on-exec and now owned by the caller. truncated (MSG_TRUNC): the datagram was
// longer than maxBytes and the rest is lost. ctrlTruncated (MSG_CTRUNC): it carried more
// than maxFds descriptors (maxFds 0: any); the kernel dropped those beyond the limit. In
// either case every descriptor that did arrive has already been closed and fds is [],
// so a hostile peer cannot park descriptors in this process. eof: the peer closed its end
// (or shut it down) and every datagram has been read; data is empty then. Since sendMsg
// never sends an empty datagram, a zero-length read is taken as end-of-file, whoever sent
// it. ECONNRESET is thrown as is (the peer went away with data unread).
Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  const char* fn = "recvMsg";
  Napi::Env env = info.Env();
  const int fd = ToFd(info[0], fn, "fd");
  const uint32_t maxBytes = ToUint32(info[1], fn, "maxBytes");
  if (maxBytes == 0 || maxBytes > kMaxRecvBytes) ThrowArgRange(info[1], fn, "maxBytes", "an integer in 1..2^26");
  const uint32_t maxFds = ToUint32(info[2], fn, "maxFds");
  if (maxFds > SCM_MAX_FD) ThrowArgRange(info[2], fn, "maxFds", "an integer in 0..253 (SCM_MAX_FD)");

  std::unique_ptr<uint8_t[]> buf(new uint8_t[maxBytes]);
  iovec iov;
  iov.iov_base = buf.get();
  iov.iov_len = maxBytes;
  msghdr msg;
  std::memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<uint64_t> control;
  if (maxFds > 0) {
    control.assign((CMSG_SPACE(maxFds * sizeof(int)) + sizeof(uint64_t) - 1) / sizeof(uint64_t), 0);
    msg.msg_control = control.data();
    // CMSG_LEN, not CMSG_SPACE: the kernel fits as many fds as the length allows, and the
    // padding in CMSG_SPACE would make room for one more than maxFds when maxFds is odd.
    msg.msg_controllen = CMSG_LEN(maxFds * sizeof(int));
  }
  const ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  if (n < 0) {
    const int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK) return env.Null();
    ThrowFdError(env, err, "recvmsg", fd);
  }

  std::vector<int> fds;
  if (msg.msg_controllen > 0) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0)) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const size_t at = fds.size();
      fds.resize(at + count);
      std::memcpy(fds.data() + at, CMSG_DATA(c), count * sizeof(int));
    }
  }
  const bool truncated = (msg.msg_flags & MSG_TRUNC) != 0;
  const bool ctrlTruncated = (msg.msg_flags & MSG_CTRUNC) != 0 || fds.size() > maxFds;
  if (truncated || ctrlTruncated) {
    CloseAll(fds);
    fds.clear();
  }
  const bool eof = n == 0 && fds.empty() && !truncated && !ctrlTruncated;

  try {
    Napi::Object o = Napi::Object::New(env);
    o.Set("data", Napi::Buffer<uint8_t>::Copy(env, buf.get(), static_cast<size_t>(n)));
    Napi::Array a = Napi::Array::New(env, fds.size());
    for (size_t i = 0; i < fds.size(); i++) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, fds[i]));
    o.Set("fds", a);
    o.Set("truncated", Napi::Boolean::New(env, truncated));
    o.Set("ctrlTruncated", Napi::Boolean::New(env, ctrlTruncated));
    o.Set("eof", Napi::Boolean::New(env, eof));
    return o;
  } catch (...) {
    // The caller never saw these numbers: nobody else could close them.
    CloseAll(fds);
    throw;
  }
}

// peerCred(fd): SO_PEERCRED, the peer's {pid, uid, gid} as the kernel recorded them at
// connect (for socketPair: at creation), translated into our namespaces: pid 0 when the
// peer's process is outside our PID namespace, ids the overflow id (65534) when unmapped
// in our user namespace.
Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "peerCred", "fd");
  ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, "getsockopt(SO_PEERCRED)", fd);
  }
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("pid", Napi::Number::New(info.Env(), cred.pid));
  o.Set("uid", Napi::Number::New(info.Env(), cred.uid));
  o.Set("gid", Napi::Number::New(info.Env(), cred.gid));
  return o;
}

// peerPidfd(fd): a pidfd (close-on-exec) for the peer process. SO_PEERPIDFD (Linux 6.5)
// names exactly the process that connected. Older kernels answer ENOPROTOOPT and we fall
// back to pidfd_open(SO_PEERCRED pid), which is racy: if the peer exited and was reaped,
// its pid may already belong to an unrelated process and the pidfd names that one.
// Callers on such kernels should re-check SO_PEERCRED/the process after opening. ESRCH
// (or, on some kernels, EINVAL) when the peer process is gone.
Napi::Value PeerPidfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ToFd(info[0], "peerPidfd", "fd");
  int pidfd = -1;
  socklen_t len = sizeof pidfd;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) == 0) return Napi::Number::New(env, pidfd);
  int err = errno;
  if (err != ENOPROTOOPT) ThrowFdError(env, err, "getsockopt(SO_PEERPIDFD)", fd);

  ucred cred;
  len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
    err = errno;
    ThrowFdError(env, err, "getsockopt(SO_PEERCRED)", fd);
  }
  if (cred.pid <= 0) ThrowFdError(env, ESRCH, "pidfd_open", fd); // peer outside our PID namespace
  const long pfd = syscall(SYS_pidfd_open, cred.pid, 0);
  if (pfd < 0) {
    err = errno;
    ThrowFdError(env, err, "pidfd_open", fd);
  }
  return Napi::Number::New(env, static_cast<double>(pfd));
}

// shutdown(fd, how = SHUT_RDWR): the peer's recvMsg then sees eof, even while other
// processes still hold copies of this socket.
Napi::Value Shutdown(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "shutdown", "fd");
  const int how = info[1].IsUndefined() ? SHUT_RDWR : ToInt32(info[1], "shutdown", "how");
  if (shutdown(fd, how) < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, "shutdown", fd);
  }
  return info.Env().Undefined();
}

// setRecvTimeout(fd, ms): setsockopt(SO_RCVTIMEO). A blocking recvmsg then fails with
// EAGAIN after `ms` milliseconds without a message (0 = wait for ever): how a synchronous
// client bounds its wait for a peer that never answers.
Napi::Value SetRecvTimeout(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "setRecvTimeout", "fd");
  const uint32_t ms = ToBits(info[1], "setRecvTimeout", "ms");
  struct timeval tv;
  tv.tv_sec = static_cast<time_t>(ms / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms % 1000) * 1000);
  if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, "setsockopt(SO_RCVTIMEO)", fd);
  }
  return info.Env().Undefined();
}

} // namespace

void RegisterSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("seqpacketListen", Napi::Function::New(env, SeqpacketListen, "seqpacketListen"));
  exports.Set("seqpacketConnect", Napi::Function::New(env, SeqpacketConnect, "seqpacketConnect"));
  exports.Set("seqpacketAccept", Napi::Function::New(env, Accept, "seqpacketAccept"));
  exports.Set("streamListen", Napi::Function::New(env, StreamListen, "streamListen"));
  exports.Set("streamConnect", Napi::Function::New(env, StreamConnect, "streamConnect"));
  exports.Set("streamAccept", Napi::Function::New(env, Accept, "streamAccept"));
  exports.Set("socketPair", Napi::Function::New(env, SocketPair, "socketPair"));
  exports.Set("sendMsg", Napi::Function::New(env, SendMsg, "sendMsg"));
  exports.Set("recvMsg", Napi::Function::New(env, RecvMsg, "recvMsg"));
  exports.Set("peerCred", Napi::Function::New(env, PeerCred, "peerCred"));
  exports.Set("peerPidfd", Napi::Function::New(env, PeerPidfd, "peerPidfd"));
  exports.Set("shutdown", Napi::Function::New(env, Shutdown, "shutdown"));
  exports.Set("setRecvTimeout", Napi::Function::New(env, SetRecvTimeout, "setRecvTimeout"));
}

} // namespace loopfs
