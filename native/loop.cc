// /dev/loopN ioctls: binding (LOOP_CONFIGURE, LOOP_SET_FD, LOOP_CLR_FD), status
// (LOOP_GET/SET_STATUS64) and live tuning (capacity, direct I/O, block size).
// Policy — fallbacks from LOOP_CONFIGURE, retries after EBUSY, waiting out an
// asynchronous clear — belongs to src/kernel/, not here.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "args.h"
#include "errors.h"
#include "exports.h"
#include "ioctls.h"
#include "loop_info.h"
#include "parallel.h"

namespace loopfs {

namespace {

// Issues a loop ioctl whose argument is a plain integer (or unused) and throws on failure.
void IoctlValue(const Napi::CallbackInfo& info, int fd, const Ioctl& req, unsigned long arg) {
  if (ioctl(fd, req.request, arg) < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, req.label, fd);
  }
}

// loopConfigure(fd, backingFd, info, blockSize): bind and configure in one ioctl, so no
// other process can observe (or grab) a bound-but-unconfigured device.
Napi::Value LoopConfigure(const Napi::CallbackInfo& info) {
  const char* fn = "loopConfigure";
  const int fd = ToFd(info[0], fn, "fd");
  const int backingFd = ToFd(info[1], fn, "backingFd");
  loop_config config;
  // All of it, __reserved included: the kernel ignores those bytes today, but a later
  // kernel may give them a meaning, and stack garbage must not opt us into it.
  std::memset(&config, 0, sizeof config);
  ToLoopInfo(info[2], fn, "info", &config.info);
  config.block_size = ToUint32(info[3], fn, "blockSize");
  config.fd = static_cast<__u32>(backingFd);
  if (ioctl(fd, kLoopConfigure.request, &config) < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, kLoopConfigure.label, fd);
  }
  return info.Env().Undefined();
}

// loopSetFd(fd, backingFd): the pre-5.8 bind; status is then set with LOOP_SET_STATUS64.
Napi::Value LoopSetFd(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "loopSetFd", "fd");
  const int backingFd = ToFd(info[1], "loopSetFd", "backingFd");
  IoctlValue(info, fd, kLoopSetFd, static_cast<unsigned long>(backingFd));
  return info.Env().Undefined();
}

// loopClrFd(fd): on current kernels the clear completes when the last opener closes the
// device, so it can still look bound right after this returns.
Napi::Value LoopClrFd(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "loopClrFd", "fd");
  IoctlValue(info, fd, kLoopClrFd, 0);
  return info.Env().Undefined();
}

// loopGetStatus64(fd): ENXIO when unbound.
Napi::Value LoopGetStatus64(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "loopGetStatus64", "fd");
  struct loop_info64 li;
  std::memset(&li, 0, sizeof li);
  if (ioctl(fd, kLoopGetStatus64.request, &li) < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, kLoopGetStatus64.label, fd);
  }
  return FromLoopInfo(info.Env(), li);
}

// loopStatusMany(paths) → for each path its LOOP_GET_STATUS64 (an object as
// loopGetStatus64's) or the errno of the open or the ioctl that failed (ENXIO: unbound).
// Each node is opened O_RDONLY, asked and closed, as util-linux's `losetup -a` does one
// device after another; a listing of a thousand does them on as many threads as CPUs
// (parallel.h): the opens and ioctls are the kernel's work, ~30 ms of `-a` on one thread.
Napi::Value LoopStatusMany(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) ThrowArgType(info[0], "loopStatusMany", "paths", "an array of strings");
  const Napi::Array arg = info[0].As<Napi::Array>();
  std::vector<std::string> paths;
  for (uint32_t i = 0; i < arg.Length(); i++) paths.push_back(ToPath(arg.Get(i), "loopStatusMany", "paths[i]"));
  std::vector<struct loop_info64> infos(paths.size());
  std::vector<int> errs(paths.size(), 0);
  ParallelFor(paths.size(), ListingThreads(paths.size()), [&](size_t, size_t i) {
    std::memset(&infos[i], 0, sizeof infos[i]);
    const int fd = open(paths[i].c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      errs[i] = errno;
      return;
    }
    if (ioctl(fd, kLoopGetStatus64.request, &infos[i]) < 0) errs[i] = errno;
    close(fd);
  });
  Napi::Array out = Napi::Array::New(env, paths.size());
  for (size_t i = 0; i < paths.size(); i++) {
    out.Set(static_cast<uint32_t>(i), errs[i] ? Napi::Number::New(env, errs[i]) : Napi::Value(FromLoopInfo(env, infos[i])));
  }
  return out;
}

// loopSetStatus64(fd, info): fields left out are sent as zero (flags included: the
// kernel then clears the clearable flags), so callers read-modify-write.
Napi::Value LoopSetStatus64(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "loopSetStatus64", "fd");
  struct loop_info64 li;
  ToLoopInfo(info[1], "loopSetStatus64", "info", &li);
  if (ioctl(fd, kLoopSetStatus64.request, &li) < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, kLoopSetStatus64.label, fd);
  }
  return info.Env().Undefined();
}

// loopSetCapacity(fd): re-read the backing file's size after it changed.
Napi::Value LoopSetCapacity(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "loopSetCapacity", "fd");
  IoctlValue(info, fd, kLoopSetCapacity, 0);
  return info.Env().Undefined();
}

// loopSetDirectIo(fd, on): EINVAL when the backing file or alignment cannot do O_DIRECT.
Napi::Value LoopSetDirectIo(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "loopSetDirectIo", "fd");
  const bool on = ToBool(info[1], "loopSetDirectIo", "on");
  IoctlValue(info, fd, kLoopSetDirectIo, on ? 1UL : 0UL);
  return info.Env().Undefined();
}

// loopSetBlockSize(fd, size): logical block size, a power of two in 512..PAGE_SIZE.
Napi::Value LoopSetBlockSize(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "loopSetBlockSize", "fd");
  const uint32_t size = ToUint32(info[1], "loopSetBlockSize", "size");
  IoctlValue(info, fd, kLoopSetBlockSize, size);
  return info.Env().Undefined();
}

} // namespace

void RegisterLoop(Napi::Env env, Napi::Object exports) {
  exports.Set("loopConfigure", Napi::Function::New(env, LoopConfigure, "loopConfigure"));
  exports.Set("loopSetFd", Napi::Function::New(env, LoopSetFd, "loopSetFd"));
  exports.Set("loopClrFd", Napi::Function::New(env, LoopClrFd, "loopClrFd"));
  exports.Set("loopGetStatus64", Napi::Function::New(env, LoopGetStatus64, "loopGetStatus64"));
  exports.Set("loopSetStatus64", Napi::Function::New(env, LoopSetStatus64, "loopSetStatus64"));
  exports.Set("loopStatusMany", Napi::Function::New(env, LoopStatusMany, "loopStatusMany"));
  exports.Set("loopSetCapacity", Napi::Function::New(env, LoopSetCapacity, "loopSetCapacity"));
  exports.Set("loopSetDirectIo", Napi::Function::New(env, LoopSetDirectIo, "loopSetDirectIo"));
  exports.Set("loopSetBlockSize", Napi::Function::New(env, LoopSetBlockSize, "loopSetBlockSize"));
}

} // namespace loopfs
