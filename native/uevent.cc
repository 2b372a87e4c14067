// Kernel uevents: a NETLINK_KOBJECT_UEVENT socket bound to the kernel's multicast group,
// and a bounded, non-blocking drain of it. Read-only: nothing here sends.
//
// Why these checks: the socket is a multicast listener, and the same protocol carries
// udevd's re-broadcasts (group 2, "libudev" magic header) and, for a process with
// CAP_NET_ADMIN, forged messages to group 1. Only messages the kernel itself sent count:
// sender port id 0, destination group 1, and SCM_CREDENTIALS uid 0. Anything else is
// dropped here, before JS sees it, so a local user cannot fake a device event.
//
// Receiving needs no privilege: the kernel marks this protocol's group as readable by
// anyone (NL_CFG_F_NONROOT_RECV in lib/kobject_uevent.c). Since Linux 4.18 untagged
// events (block devices are untagged) reach only sockets in network namespaces owned by
// the initial user namespace, so a process in a private user+network namespace (rootless
// podman's container) opens the socket fine but hears nothing: its broker must listen.
//
// No EINTR loop in ueventOpen (setsockopt/bind do not block). recvmsg with MSG_DONTWAIT
// never blocks either, but is retried on EINTR anyway since it costs nothing.
#include <linux/netlink.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "args.h"
#include "errors.h"
#include "exports.h"

namespace loopfs {

namespace {

// The kernel's multicast group for uevents (udevd re-broadcasts on group 2).
constexpr uint32_t kKernelGroup = 1;

// Receive buffer asked for: a burst of partition or device changes (hundreds of events of
// ~300 bytes, each charged as a full skb of a few KiB) must not overflow it between two
// loop iterations. SO_RCVBUFFORCE ignores net.core.rmem_max but needs CAP_NET_ADMIN;
// without it SO_RCVBUF gives what rmem_max allows.
constexpr int kRcvBuf = 4 << 20;

// A uevent is at most UEVENT_BUFFER_SIZE (2048) bytes of environment plus "ACTION@DEVPATH"
// (a sysfs path, < PATH_MAX): 8 KiB holds any; a longer one is MSG_TRUNC and dropped.
constexpr size_t kMaxMessage = 8192;

// Messages returned per ueventRecv call: the watcher's callback runs on the JS thread, and
// a flood must not keep it there; the rest stays queued and polls readable again.
constexpr int kMaxPerCall = 1024;

// udevd's re-broadcast header magic starts with this string (libudev's wire format).
constexpr char kLibudevPrefix[] = "libudev";

void CloseQuietly(int fd) {
  const int saved = errno;
  close(fd);
  errno = saved;
}

// ueventOpen() → fd: non-blocking, close-on-exec, bound to the kernel group, SO_PASSCRED on.
Napi::Value UeventOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_KOBJECT_UEVENT);
  if (fd < 0) {
    const int err = errno;
    ThrowFdError(env, err, "socket(AF_NETLINK, NETLINK_KOBJECT_UEVENT)", -1, false);
  }
  const char* failed = nullptr;
  const int on = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &kRcvBuf, sizeof kRcvBuf) < 0 &&
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &kRcvBuf, sizeof kRcvBuf) < 0) {
    failed = "setsockopt(SO_RCVBUF)";
  } else if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) < 0) {
    failed = "setsockopt(SO_PASSCRED)";
  } else {
    sockaddr_nl sa;
    std::memset(&sa, 0, sizeof sa);
    sa.nl_family = AF_NETLINK;
    sa.nl_pid = 0; // the kernel picks a unique port id
    sa.nl_groups = kKernelGroup;
    if (bind(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof sa) < 0) failed = "bind(AF_NETLINK)";
  }
  if (failed) {
    CloseQuietly(fd);
    const int err = errno;
    ThrowFdError(env, err, failed, fd, false);
  }
  return Napi::Number::New(env, fd);
}

// Whether one received datagram is a genuine kernel uevent (see the file comment).
bool FromKernel(const msghdr& msg, const sockaddr_nl& from, ssize_t len, const char* data) {
  if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) return false;
  if (msg.msg_namelen != sizeof from || from.nl_family != AF_NETLINK) return false;
  if (from.nl_pid != 0 || from.nl_groups != kKernelGroup) return false;
  bool rootCred = false;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(const_cast<msghdr*>(&msg), c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len >= CMSG_LEN(sizeof(ucred))) {
      ucred cred;
      std::memcpy(&cred, CMSG_DATA(c), sizeof cred);
      rootCred = cred.uid == 0;
    }
  }
  if (!rootCred) return false;
  const size_t prefix = sizeof kLibudevPrefix - 1;
  if (static_cast<size_t>(len) >= prefix && std::memcmp(data, kLibudevPrefix, prefix) == 0) return false;
  return len > 0;
}

// ueventRecv(fd) → { messages: Buffer[], overflow }: everything queued (up to kMaxPerCall),
// kernel messages only. ENOBUFS means the receive queue overflowed and events were lost:
// reported as overflow (the caller must resynchronise from sysfs), and draining goes on.
Napi::Value UeventRecv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = ToFd(info[0], "ueventRecv", "fd");
  std::vector<char> buf(kMaxMessage);
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred))];
  Napi::Array messages = Napi::Array::New(env);
  uint32_t count = 0;
  bool overflow = false;
  for (int i = 0; i < kMaxPerCall; i++) {
    sockaddr_nl from;
    std::memset(&from, 0, sizeof from);
    iovec iov{buf.data(), buf.size()};
    msghdr msg;
    std::memset(&msg, 0, sizeof msg);
    msg.msg_name = &from;
    msg.msg_namelen = sizeof from;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN) break;
      if (err == ENOBUFS) {
        overflow = true;
        continue;
      }
      ThrowFdError(env, err, "recvmsg", fd, false);
    }
    if (!FromKernel(msg, from, n, buf.data())) continue;
    messages.Set(count++, Napi::Buffer<char>::Copy(env, buf.data(), static_cast<size_t>(n)));
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("messages", messages);
  o.Set("overflow", Napi::Boolean::New(env, overflow));
  return o;
}

} // namespace

void RegisterUevent(Napi::Env env, Napi::Object exports) {
  exports.Set("ueventOpen", Napi::Function::New(env, UeventOpen, "ueventOpen"));
  exports.Set("ueventRecv", Napi::Function::New(env, UeventRecv, "ueventRecv"));
}

} // namespace loopfs
