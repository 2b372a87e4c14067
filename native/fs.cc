// File-level syscalls the loop layer needs around its ioctls: opening device nodes and
// backing files, locking, stat/statfs, creating instance device nodes and handing them
// to their owner.
//
// No EINTR loops: libuv installs its signal handlers with SA_RESTART, so a blocking
// flock() or open() is restarted by the kernel, and close() must never be retried.
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "args.h"
#include "errors.h"
#include "exports.h"

namespace loopfs {

Napi::Object StatObject(Napi::Env env, const struct stat& st) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("dev", Napi::BigInt::New(env, static_cast<uint64_t>(st.st_dev)));
  o.Set("ino", Napi::BigInt::New(env, static_cast<uint64_t>(st.st_ino)));
  o.Set("mode", Napi::Number::New(env, st.st_mode));
  o.Set("nlink", Napi::Number::New(env, static_cast<double>(st.st_nlink)));
  o.Set("uid", Napi::Number::New(env, st.st_uid));
  o.Set("gid", Napi::Number::New(env, st.st_gid));
  o.Set("rdev", Napi::BigInt::New(env, static_cast<uint64_t>(st.st_rdev)));
  o.Set("size", Napi::BigInt::New(env, static_cast<int64_t>(st.st_size)));
  // glibc's split of the 64-bit dev_t (12+20 bit major/minor layout and its extension);
  // JS must not re-derive it from the bigint by hand.
  o.Set("devMajor", Napi::Number::New(env, major(st.st_dev)));
  o.Set("devMinor", Napi::Number::New(env, minor(st.st_dev)));
  o.Set("rdevMajor", Napi::Number::New(env, major(st.st_rdev)));
  o.Set("rdevMinor", Napi::Number::New(env, minor(st.st_rdev)));
  return o;
}

namespace {

// Node's default for files it creates; umask applies.
constexpr uint32_t kDefaultCreateMode = 0666;

uint32_t OptionalMode(const Napi::Value& v, const char* fn) {
  return v.IsUndefined() ? kDefaultCreateMode : ToUint32(v, fn, "mode");
}

// open(path, flags, mode?): O_CLOEXEC always, so device and control fds never leak
// into children we spawn (mkfs, mount helpers) and keep a device busy there.
Napi::Value Open(const Napi::CallbackInfo& info) {
  const std::string path = ToPath(info[0], "open", "path");
  const uint32_t flags = ToBits(info[1], "open", "flags");
  const uint32_t mode = OptionalMode(info[2], "open");
  const int fd = open(path.c_str(), static_cast<int>(flags) | O_CLOEXEC, static_cast<mode_t>(mode));
  if (fd < 0) {
    const int err = errno;
    ThrowPathError(info.Env(), err, "open", path);
  }
  return Napi::Number::New(info.Env(), fd);
}

// openat(dirfd, name, flags, mode?): lets an instance directory be pinned by one fd
// and its nodes opened without re-resolving the directory's path.
Napi::Value Openat(const Napi::CallbackInfo& info) {
  const int dirfd = ToDirFd(info[0], "openat", "dirfd");
  const std::string name = ToPath(info[1], "openat", "name");
  const uint32_t flags = ToBits(info[2], "openat", "flags");
  const uint32_t mode = OptionalMode(info[3], "openat");
  const int fd = openat(dirfd, name.c_str(), static_cast<int>(flags) | O_CLOEXEC, static_cast<mode_t>(mode));
  if (fd < 0) {
    const int err = errno;
    ThrowAtError(info.Env(), err, "openat", dirfd, name);
  }
  return Napi::Number::New(info.Env(), fd);
}

// openat2(dirfd, name, flags, resolve): openat(2) with RESOLVE_* flags (Linux 5.6), e.g.
// RESOLVE_IN_ROOT to resolve a path inside another process's root (a dirfd on
// /proc/TID/root) the way that process would, absolute symlinks included.
Napi::Value Openat2(const Napi::CallbackInfo& info) {
  const int dirfd = ToDirFd(info[0], "openat2", "dirfd");
  const std::string name = ToPath(info[1], "openat2", "name");
  const uint32_t flags = ToBits(info[2], "openat2", "flags");
  const uint32_t resolve = ToBits(info[3], "openat2", "resolve");
  open_how how;
  std::memset(&how, 0, sizeof how);
  how.flags = static_cast<uint64_t>(flags) | O_CLOEXEC;
  how.resolve = resolve;
  const long fd = syscall(SYS_openat2, dirfd, name.c_str(), &how, sizeof how);
  if (fd < 0) {
    const int err = errno;
    ThrowAtError(info.Env(), err, "openat2", dirfd, name);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(fd));
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "close", "fd");
  if (close(fd) < 0) {
    const int err = errno;
    // No path lookup: after close() the fd number is gone (or already reused).
    ThrowFdError(info.Env(), err, "close", fd, false);
  }
  return info.Env().Undefined();
}

// flock(fd, op): with LOCK_NB a held lock gives EWOULDBLOCK, reported as EAGAIN (same
// number on Linux).
Napi::Value Flock(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "flock", "fd");
  const int op = ToInt32(info[1], "flock", "op");
  if (flock(fd, op) < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, "flock", fd);
  }
  return info.Env().Undefined();
}

Napi::Value Fstat(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "fstat", "fd");
  struct stat st;
  if (fstat(fd, &st) < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, "fstat", fd);
  }
  return StatObject(info.Env(), st);
}

// blockRdevs(paths) → for each path, st_rdev as stat(2) sees it (symlinks followed) when
// it is a block device, else -1 (missing, not a block device, no permission). A listing
// asks this of a thousand /dev/loopN at once (util-linux lists only devices with a node):
// one call instead of a thousand fs.statSync() and their Stats objects.
Napi::Value BlockRdevs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) ThrowArgType(info[0], "blockRdevs", "paths", "an array of strings");
  const Napi::Array arg = info[0].As<Napi::Array>();
  std::vector<std::string> paths;
  for (uint32_t i = 0; i < arg.Length(); i++) paths.push_back(ToPath(arg.Get(i), "blockRdevs", "paths[i]"));
  Napi::Array out = Napi::Array::New(env, paths.size());
  for (size_t i = 0; i < paths.size(); i++) {
    struct stat st;
    const bool block = stat(paths[i].c_str(), &st) == 0 && S_ISBLK(st.st_mode);
    out.Set(static_cast<uint32_t>(i), Napi::Number::New(env, block ? static_cast<double>(st.st_rdev) : -1));
  }
  return out;
}

// statfs(pathOrFd): fstatfs when given a number. The instance code uses f_type to spot
// a real loopfs mount.
Napi::Value Statfs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct statfs sf;
  if (info[0].IsNumber()) {
    const int fd = ToFd(info[0], "statfs", "pathOrFd");
    if (fstatfs(fd, &sf) < 0) {
      const int err = errno;
      ThrowFdError(env, err, "fstatfs", fd);
    }
  } else {
    if (!info[0].IsString()) ThrowArgType(info[0], "statfs", "pathOrFd", "a string or a file descriptor");
    const std::string path = ToPath(info[0], "statfs", "pathOrFd");
    if (statfs(path.c_str(), &sf) < 0) {
      const int err = errno;
      ThrowPathError(env, err, "statfs", path);
    }
  }
  Napi::Object o = Napi::Object::New(env);
  // f_type is a signed word; magics such as btrfs' 0x9123683E must read as unsigned on
  // 32-bit builds too.
  o.Set("type", Napi::Number::New(env, static_cast<uint32_t>(sf.f_type)));
  o.Set("bsize", Napi::Number::New(env, static_cast<double>(sf.f_bsize)));
  o.Set("blocks", Napi::BigInt::New(env, static_cast<uint64_t>(sf.f_blocks)));
  o.Set("bfree", Napi::BigInt::New(env, static_cast<uint64_t>(sf.f_bfree)));
  o.Set("bavail", Napi::BigInt::New(env, static_cast<uint64_t>(sf.f_bavail)));
  return o;
}

// mknod(path, mode, major, minor): mode carries the type bits (S_IFBLK | 0660).
Napi::Value Mknod(const Napi::CallbackInfo& info) {
  const std::string path = ToPath(info[0], "mknod", "path");
  const uint32_t mode = ToUint32(info[1], "mknod", "mode");
  const uint32_t maj = ToUint32(info[2], "mknod", "major");
  const uint32_t min = ToUint32(info[3], "mknod", "minor");
  if (mknod(path.c_str(), static_cast<mode_t>(mode), makedev(maj, min)) < 0) {
    const int err = errno;
    ThrowPathError(info.Env(), err, "mknod", path);
  }
  return info.Env().Undefined();
}

// mknodat(dirfd, name, mode, major, minor): creates nodes inside a pinned instance
// directory, immune to the directory being renamed or replaced meanwhile.
Napi::Value Mknodat(const Napi::CallbackInfo& info) {
  const int dirfd = ToDirFd(info[0], "mknodat", "dirfd");
  const std::string name = ToPath(info[1], "mknodat", "name");
  const uint32_t mode = ToUint32(info[2], "mknodat", "mode");
  const uint32_t maj = ToUint32(info[3], "mknodat", "major");
  const uint32_t min = ToUint32(info[4], "mknodat", "minor");
  if (mknodat(dirfd, name.c_str(), static_cast<mode_t>(mode), makedev(maj, min)) < 0) {
    const int err = errno;
    ThrowAtError(info.Env(), err, "mknodat", dirfd, name);
  }
  return info.Env().Undefined();
}

// fchown(fd, uid, gid): on the fd of a node just created, so ownership lands on that
// node even if its name is swapped under us; -1 leaves an id unchanged.
Napi::Value Fchown(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "fchown", "fd");
  const uint32_t uid = ToOwnerId(info[1], "fchown", "uid");
  const uint32_t gid = ToOwnerId(info[2], "fchown", "gid");
  if (fchown(fd, static_cast<uid_t>(uid), static_cast<gid_t>(gid)) < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, "fchown", fd);
  }
  return info.Env().Undefined();
}

} // namespace

void RegisterFs(Napi::Env env, Napi::Object exports) {
  exports.Set("open", Napi::Function::New(env, Open, "open"));
  exports.Set("openat", Napi::Function::New(env, Openat, "openat"));
  exports.Set("openat2", Napi::Function::New(env, Openat2, "openat2"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("flock", Napi::Function::New(env, Flock, "flock"));
  exports.Set("fstat", Napi::Function::New(env, Fstat, "fstat"));
  exports.Set("blockRdevs", Napi::Function::New(env, BlockRdevs, "blockRdevs"));
  exports.Set("statfs", Napi::Function::New(env, Statfs, "statfs"));
  exports.Set("mknod", Napi::Function::New(env, Mknod, "mknod"));
  exports.Set("mknodat", Napi::Function::New(env, Mknodat, "mknodat"));
  exports.Set("fchown", Napi::Function::New(env, Fchown, "fchown"));
}

} // namespace loopfs
