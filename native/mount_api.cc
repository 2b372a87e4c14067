// The new mount API (Linux 5.2+): build a filesystem context (fsopen, fsconfig), turn it
// into a detached mount (fsmount) or clone an existing tree (open_tree), change a detached
// mount's attributes (mount_setattr, including an ID mapping) and attach it (move_mount).
// The broker uses these to hand a client a ready-made nosuid,nodev mount as a single fd
// that the client attaches in its own mount namespace; nothing here touches a mount
// namespace until move_mount.
//
// All fds come back close-on-exec (FSOPEN_CLOEXEC, FSMOUNT_CLOEXEC, OPEN_TREE_CLOEXEC are
// always added), like every other fd the addon opens. A detached mount lives as long as
// an fd refers to it: close the fd after attaching or passing it on, or the mount (and
// the loop device under it) stays busy.
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "args.h"
#include "errors.h"
#include "exports.h"
#include "mount_api.h"

namespace loopfs {

namespace {

// Runs `thrower` (a call to one of errors.h's [[noreturn]] throwers) and adds properties
// to the SysError it throws before it propagates.
template <typename Thrower, typename Decorate>
[[noreturn]] void ThrowDecorated(Thrower thrower, Decorate decorate) {
  try {
    thrower();
  } catch (Napi::Error& e) {
    decorate(e.Value());
    throw;
  }
  __builtin_unreachable();
}

// The messages the kernel queued on a filesystem context ("e ext4: Can't find ext4
// filesystem", "w ...", "i ..."): read(2) on the fs fd returns one per call and ENODATA
// once the log is empty. The log keeps the last 8 messages, so draining stops there plus
// a margin. Must run right after the failing call: it changes errno, so the caller saves
// the failing call's errno first.
std::vector<std::string> ReadFsLog(int fsfd) {
  std::vector<std::string> lines;
  char buf[4096];
  for (int i = 0; i < 16; i++) {
    const ssize_t n = read(fsfd, buf, sizeof buf);
    if (n <= 0) break;
    std::string line(buf, static_cast<size_t>(n));
    while (!line.empty() && (line.back() == '\n' || line.back() == '\0')) line.pop_back();
    lines.push_back(line);
  }
  return lines;
}

Napi::Array StringArray(Napi::Env env, const std::vector<std::string>& v) {
  Napi::Array a = Napi::Array::New(env, v.size());
  for (size_t i = 0; i < v.size(); i++) a.Set(static_cast<uint32_t>(i), Napi::String::New(env, v[i]));
  return a;
}

// A failed call on a filesystem context: SysError on the fs fd plus `details` (the
// context's log, possibly empty) and, for fsconfig, the `key` it was setting.
[[noreturn]] void ThrowFsContextError(Napi::Env env, int err, const char* syscall, int fsfd,
                                      const std::string* key = nullptr) {
  const std::vector<std::string> log = ReadFsLog(fsfd);
  ThrowDecorated([&] { ThrowFdError(env, err, syscall, fsfd); },
                 [&](Napi::Object o) {
                   o.Set("details", StringArray(env, log));
                   if (key) o.Set("key", *key);
                   // Node's style puts the specifics into the message too.
                   if (!log.empty()) {
                     std::string joined;
                     for (const std::string& l : log) joined += (joined.empty() ? "" : "; ") + l;
                     o.Set("message", o.Get("message").As<Napi::String>().Utf8Value() + " (" + joined + ")");
                   }
                 });
}

// A failed call that named a path relative to dirfd; an empty path (AT_EMPTY_PATH) means
// the fd itself.
[[noreturn]] void ThrowDirError(Napi::Env env, int err, const char* syscall, int dirfd, const std::string& path) {
  if (path.empty()) ThrowFdError(env, err, syscall, dirfd);
  ThrowAtError(env, err, syscall, dirfd, path);
}

// fsopen(fsname, flags): a new filesystem context, "ext4", "squashfs", ... The only flag is
// FSOPEN_CLOEXEC, which is always added. ENODEV: no such filesystem type (the name is in
// the error's `fsname`).
Napi::Value Fsopen(const Napi::CallbackInfo& info) {
  const std::string fsname = ToPath(info[0], "fsopen", "fsname");
  const uint32_t flags = ToBits(info[1], "fsopen", "flags");
  const long fd = syscall(SYS_fsopen, fsname.c_str(), flags | FSOPEN_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    Napi::Env env = info.Env();
    ThrowDecorated([&] { ThrowFdError(env, err, "fsopen", -1); },
                   [&](Napi::Object o) {
                     o.Set("fsname", fsname);
                     o.Set("message", o.Get("message").As<Napi::String>().Utf8Value() + " '" + fsname + "'");
                   });
  }
  return Napi::Number::New(info.Env(), static_cast<double>(fd));
}

// fsconfigSetString(fsfd, key, value): FSCONFIG_SET_STRING ("source" = "/dev/loop3",
// "errors" = "remount-ro", ...). The kernel resolves "source" as a path in the caller's
// mount namespace at FSCONFIG_CMD_CREATE time.
Napi::Value FsconfigSetString(const Napi::CallbackInfo& info) {
  const char* fn = "fsconfigSetString";
  const int fd = ToFd(info[0], fn, "fsfd");
  const std::string key = ToPath(info[1], fn, "key");
  const std::string value = ToPath(info[2], fn, "value");
  if (syscall(SYS_fsconfig, fd, FSCONFIG_SET_STRING, key.c_str(), value.c_str(), 0) < 0) {
    const int err = errno;
    ThrowFsContextError(info.Env(), err, "fsconfig(FSCONFIG_SET_STRING)", fd, &key);
  }
  return info.Env().Undefined();
}

// fsconfigSetFlag(fsfd, key): FSCONFIG_SET_FLAG ("ro", "noload", ...).
Napi::Value FsconfigSetFlag(const Napi::CallbackInfo& info) {
  const char* fn = "fsconfigSetFlag";
  const int fd = ToFd(info[0], fn, "fsfd");
  const std::string key = ToPath(info[1], fn, "key");
  if (syscall(SYS_fsconfig, fd, FSCONFIG_SET_FLAG, key.c_str(), nullptr, 0) < 0) {
    const int err = errno;
    ThrowFsContextError(info.Env(), err, "fsconfig(FSCONFIG_SET_FLAG)", fd, &key);
  }
  return info.Env().Undefined();
}

// fsconfigCreate(fsfd): FSCONFIG_CMD_CREATE, the step that opens the source and reads the
// superblock; a corrupt or foreign image fails here, with the reason in `details`.
Napi::Value FsconfigCreate(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "fsconfigCreate", "fsfd");
  if (syscall(SYS_fsconfig, fd, FSCONFIG_CMD_CREATE, nullptr, nullptr, 0) < 0) {
    const int err = errno;
    ThrowFsContextError(info.Env(), err, "fsconfig(FSCONFIG_CMD_CREATE)", fd);
  }
  return info.Env().Undefined();
}

// fsmount(fsfd, flags, attrFlags): the detached mount of a created context, as an fd.
// flags: FSMOUNT_CLOEXEC (always added); attrFlags: MOUNT_ATTR_RDONLY|NOSUID|NODEV|NOEXEC|...
Napi::Value Fsmount(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "fsmount", "fsfd");
  const uint32_t flags = ToBits(info[1], "fsmount", "flags");
  const uint32_t attrs = ToBits(info[2], "fsmount", "attrFlags");
  const long mfd = syscall(SYS_fsmount, fd, flags | FSMOUNT_CLOEXEC, attrs);
  if (mfd < 0) {
    const int err = errno;
    ThrowFsContextError(info.Env(), err, "fsmount", fd);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(mfd));
}

// moveMount(fromDirfd, toDirfd, toPath, flags, fromPath = ""): move_mount(2). Attaching a
// detached mount fd: moveMount(mntFd, AT_FDCWD, "/mnt/x", MOVE_MOUNT_F_EMPTY_PATH) — the
// empty from-path needs that flag (else ENOENT). toPath "" with MOVE_MOUNT_T_EMPTY_PATH
// mounts onto toDirfd itself.
Napi::Value MoveMount(const Napi::CallbackInfo& info) {
  const char* fn = "moveMount";
  const int fromDirfd = ToDirFd(info[0], fn, "fromDirfd");
  const int toDirfd = ToDirFd(info[1], fn, "toDirfd");
  const std::string toPath = ToPath(info[2], fn, "toPath");
  const uint32_t flags = ToBits(info[3], fn, "flags");
  const std::string fromPath = info[4].IsUndefined() ? std::string() : ToPath(info[4], fn, "fromPath");
  if (syscall(SYS_move_mount, fromDirfd, fromPath.c_str(), toDirfd, toPath.c_str(), flags) < 0) {
    const int err = errno;
    ThrowDirError(info.Env(), err, "move_mount", toDirfd, toPath);
  }
  return info.Env().Undefined();
}

// openTree(dirfd, path, flags): open_tree(2). With OPEN_TREE_CLONE (| AT_RECURSIVE) a
// detached copy of the mount at path, otherwise an O_PATH-like fd on it. OPEN_TREE_CLOEXEC
// is always added.
Napi::Value OpenTree(const Napi::CallbackInfo& info) {
  const int dirfd = ToDirFd(info[0], "openTree", "dirfd");
  const std::string path = ToPath(info[1], "openTree", "path");
  const uint32_t flags = ToBits(info[2], "openTree", "flags");
  const long fd = syscall(SYS_open_tree, dirfd, path.c_str(), flags | OPEN_TREE_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    ThrowDirError(info.Env(), err, "open_tree", dirfd, path);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(fd));
}

uint64_t OptionalBits(const Napi::Object& o, const char* key, const char* fn) {
  const Napi::Value v = o.Get(key);
  return v.IsUndefined() ? 0 : ToBits(v, fn, key);
}

void MountSetattrCall(const Napi::CallbackInfo& info, int dirfd, const std::string& path, uint32_t flags,
                      const MountAttr& attr) {
  if (syscall(SYS_mount_setattr, dirfd, path.c_str(), flags, &attr, sizeof attr) < 0) {
    const int err = errno;
    ThrowDirError(info.Env(), err, "mount_setattr", dirfd, path);
  }
}

// mountSetattr(dirfd, path, flags, {attrSet, attrClr, propagation, usernsFd}):
// mount_setattr(2). flags: AT_EMPTY_PATH (path "" = dirfd itself), AT_RECURSIVE,
// AT_SYMLINK_NOFOLLOW. usernsFd is only read with MOUNT_ATTR_IDMAP in attrSet.
Napi::Value MountSetattr(const Napi::CallbackInfo& info) {
  const char* fn = "mountSetattr";
  const int dirfd = ToDirFd(info[0], fn, "dirfd");
  const std::string path = ToPath(info[1], fn, "path");
  const uint32_t flags = ToBits(info[2], fn, "flags");
  if (!info[3].IsObject()) ThrowArgType(info[3], fn, "attr", "an object");
  const Napi::Object o = info[3].As<Napi::Object>();
  MountAttr attr;
  std::memset(&attr, 0, sizeof attr);
  attr.attr_set = OptionalBits(o, "attrSet", fn);
  attr.attr_clr = OptionalBits(o, "attrClr", fn);
  attr.propagation = OptionalBits(o, "propagation", fn);
  const Napi::Value userns = o.Get("usernsFd");
  if (!userns.IsUndefined()) attr.userns_fd = static_cast<__u64>(ToFd(userns, fn, "usernsFd"));
  MountSetattrCall(info, dirfd, path, flags, attr);
  return info.Env().Undefined();
}

// mountSetattrIdmap(mntFd, usernsFd): make a detached mount (fsmount, or open_tree with
// OPEN_TREE_CLONE) ID-mapped through a user namespace (an fd on /proc/PID/ns/user): a file
// owned by N on disk then appears owned by whatever N inside that namespace is outside it.
// Linux 6.18 answers EPERM for the initial user namespace (or one we do not control) and
// for a mount that is already ID-mapped; EINVAL for a mount that is attached, or whose
// filesystem does not support ID-mapped mounts, or an fd that is not a user namespace.
Napi::Value MountSetattrIdmap(const Napi::CallbackInfo& info) {
  const int mntFd = ToFd(info[0], "mountSetattrIdmap", "mntFd");
  const int usernsFd = ToFd(info[1], "mountSetattrIdmap", "usernsFd");
  MountAttr attr;
  std::memset(&attr, 0, sizeof attr);
  attr.attr_set = MOUNT_ATTR_IDMAP;
  attr.userns_fd = static_cast<__u64>(usernsFd);
  MountSetattrCall(info, mntFd, std::string(), AT_EMPTY_PATH, attr);
  return info.Env().Undefined();
}

} // namespace

void RegisterMountApi(Napi::Env env, Napi::Object exports) {
  exports.Set("fsopen", Napi::Function::New(env, Fsopen, "fsopen"));
  exports.Set("fsconfigSetString", Napi::Function::New(env, FsconfigSetString, "fsconfigSetString"));
  exports.Set("fsconfigSetFlag", Napi::Function::New(env, FsconfigSetFlag, "fsconfigSetFlag"));
  exports.Set("fsconfigCreate", Napi::Function::New(env, FsconfigCreate, "fsconfigCreate"));
  exports.Set("fsmount", Napi::Function::New(env, Fsmount, "fsmount"));
  exports.Set("moveMount", Napi::Function::New(env, MoveMount, "moveMount"));
  exports.Set("openTree", Napi::Function::New(env, OpenTree, "openTree"));
  exports.Set("mountSetattr", Napi::Function::New(env, MountSetattr, "mountSetattr"));
  exports.Set("mountSetattrIdmap", Napi::Function::New(env, MountSetattrIdmap, "mountSetattrIdmap"));
}

} // namespace loopfs
