// Directory-relative syscalls for instance directories. An instance directory may be
// writable by its (untrusted) owner, who could swap any name in it for a symlink; every
// operation therefore works on a pinned directory fd and never follows a symlink in the
// last component.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>

#include "args.h"
#include "errors.h"
#include "exports.h"

namespace loopfs {

namespace {

// renameat(olddirfd, oldname, newdirfd, newname): atomic replace of a state file.
Napi::Value Renameat(const Napi::CallbackInfo& info) {
  const int olddir = ToDirFd(info[0], "renameat", "olddirfd");
  const std::string oldname = ToPath(info[1], "renameat", "oldname");
  const int newdir = ToDirFd(info[2], "renameat", "newdirfd");
  const std::string newname = ToPath(info[3], "renameat", "newname");
  if (renameat(olddir, oldname.c_str(), newdir, newname.c_str()) < 0) {
    const int err = errno;
    ThrowAtError(info.Env(), err, "renameat", olddir, oldname);
  }
  return info.Env().Undefined();
}

// unlinkat(dirfd, name, flags): flags 0 or AT_REMOVEDIR. unlink never follows symlinks.
Napi::Value Unlinkat(const Napi::CallbackInfo& info) {
  const int dirfd = ToDirFd(info[0], "unlinkat", "dirfd");
  const std::string name = ToPath(info[1], "unlinkat", "name");
  const uint32_t flags = ToBits(info[2], "unlinkat", "flags");
  if (unlinkat(dirfd, name.c_str(), static_cast<int>(flags)) < 0) {
    const int err = errno;
    ThrowAtError(info.Env(), err, "unlinkat", dirfd, name);
  }
  return info.Env().Undefined();
}

// mkdirat(dirfd, name, mode).
Napi::Value Mkdirat(const Napi::CallbackInfo& info) {
  const int dirfd = ToDirFd(info[0], "mkdirat", "dirfd");
  const std::string name = ToPath(info[1], "mkdirat", "name");
  const uint32_t mode = ToUint32(info[2], "mkdirat", "mode");
  if (mkdirat(dirfd, name.c_str(), static_cast<mode_t>(mode)) < 0) {
    const int err = errno;
    ThrowAtError(info.Env(), err, "mkdirat", dirfd, name);
  }
  return info.Env().Undefined();
}

// fchownat(dirfd, name, uid, gid) with AT_SYMLINK_NOFOLLOW: a symlink planted in
// place of a node gets chowned itself, never its target.
Napi::Value Fchownat(const Napi::CallbackInfo& info) {
  const int dirfd = ToDirFd(info[0], "fchownat", "dirfd");
  const std::string name = ToPath(info[1], "fchownat", "name");
  const uint32_t uid = ToOwnerId(info[2], "fchownat", "uid");
  const uint32_t gid = ToOwnerId(info[3], "fchownat", "gid");
  if (fchownat(dirfd, name.c_str(), static_cast<uid_t>(uid), static_cast<gid_t>(gid), AT_SYMLINK_NOFOLLOW) < 0) {
    const int err = errno;
    ThrowAtError(info.Env(), err, "fchownat", dirfd, name);
  }
  return info.Env().Undefined();
}

// fchmodat(dirfd, name, mode): Linux cannot chmod without following a final symlink, so
// callers lstat (fstatat below) first and refuse anything that is not their node.
Napi::Value Fchmodat(const Napi::CallbackInfo& info) {
  const int dirfd = ToDirFd(info[0], "fchmodat", "dirfd");
  const std::string name = ToPath(info[1], "fchmodat", "name");
  const uint32_t mode = ToUint32(info[2], "fchmodat", "mode");
  if (fchmodat(dirfd, name.c_str(), static_cast<mode_t>(mode), 0) < 0) {
    const int err = errno;
    ThrowAtError(info.Env(), err, "fchmodat", dirfd, name);
  }
  return info.Env().Undefined();
}

// fstatat(dirfd, name) with AT_SYMLINK_NOFOLLOW: what a name in the directory really is.
Napi::Value Lstatat(const Napi::CallbackInfo& info) {
  const int dirfd = ToDirFd(info[0], "lstatat", "dirfd");
  const std::string name = ToPath(info[1], "lstatat", "name");
  struct stat st;
  if (fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) {
    const int err = errno;
    ThrowAtError(info.Env(), err, "fstatat", dirfd, name);
  }
  return StatObject(info.Env(), st);
}

} // namespace

void RegisterFsAt(Napi::Env env, Napi::Object exports) {
  exports.Set("renameat", Napi::Function::New(env, Renameat, "renameat"));
  exports.Set("unlinkat", Napi::Function::New(env, Unlinkat, "unlinkat"));
  exports.Set("mkdirat", Napi::Function::New(env, Mkdirat, "mkdirat"));
  exports.Set("fchownat", Napi::Function::New(env, Fchownat, "fchownat"));
  exports.Set("fchmodat", Napi::Function::New(env, Fchmodat, "fchmodat"));
  exports.Set("lstatat", Napi::Function::New(env, Lstatat, "lstatat"));
}

} // namespace loopfs
