// Generic block-device ioctls used on loop devices: size, sector size, read-ahead.
#include <sys/ioctl.h>

#include <cerrno>
#include <cstdint>

#include "args.h"
#include "errors.h"
#include "exports.h"
#include "ioctls.h"

namespace loopfs {

namespace {

// blkGetSize64(fd): bytes, as BigInt (devices may exceed 2^53 bytes).
Napi::Value BlkGetSize64(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "blkGetSize64", "fd");
  uint64_t size = 0;
  if (ioctl(fd, kBlkGetSize64.request, &size) < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, kBlkGetSize64.label, fd);
  }
  return Napi::BigInt::New(info.Env(), size);
}

// blkSszGet(fd): logical sector size in bytes (the kernel writes an int).
Napi::Value BlkSszGet(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "blkSszGet", "fd");
  int size = 0;
  if (ioctl(fd, kBlkSszGet.request, &size) < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, kBlkSszGet.label, fd);
  }
  return Napi::Number::New(info.Env(), size);
}

// blkRaGet(fd): read-ahead in 512-byte sectors (the kernel writes a long).
Napi::Value BlkRaGet(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "blkRaGet", "fd");
  long sectors = 0;
  if (ioctl(fd, kBlkRaGet.request, &sectors) < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, kBlkRaGet.label, fd);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(sectors));
}

// blkRaSet(fd, sectors): the value is passed directly, not through a pointer, and needs
// CAP_SYS_ADMIN.
Napi::Value BlkRaSet(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "blkRaSet", "fd");
  const uint64_t sectors = ToSafeUint(info[1], "blkRaSet", "sectors");
  if (ioctl(fd, kBlkRaSet.request, static_cast<unsigned long>(sectors)) < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, kBlkRaSet.label, fd);
  }
  return info.Env().Undefined();
}

} // namespace

void RegisterBlk(Napi::Env env, Napi::Object exports) {
  exports.Set("blkGetSize64", Napi::Function::New(env, BlkGetSize64, "blkGetSize64"));
  exports.Set("blkSszGet", Napi::Function::New(env, BlkSszGet, "blkSszGet"));
  exports.Set("blkRaGet", Napi::Function::New(env, BlkRaGet, "blkRaGet"));
  exports.Set("blkRaSet", Napi::Function::New(env, BlkRaSet, "blkRaSet"));
}

} // namespace loopfs
