// /dev/loop-control ioctls: LOOP_CTL_GET_FREE, LOOP_CTL_ADD, LOOP_CTL_REMOVE.
// Each returns the device index the kernel reports (the ioctl's return value).
#include <sys/ioctl.h>

#include <cerrno>
#include <vector>

#include "args.h"
#include "errors.h"
#include "exports.h"
#include "ioctls.h"
#include "parallel.h"

namespace loopfs {

namespace {

// ctlGetFree(ctlFd): the lowest unbound device, which the kernel creates if none exists.
Napi::Value CtlGetFree(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "ctlGetFree", "ctlFd");
  const int index = ioctl(fd, kLoopCtlGetFree.request);
  if (index < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, kLoopCtlGetFree.label, fd);
  }
  return Napi::Number::New(info.Env(), index);
}

// ctlAdd / ctlRemove share their shape: (ctlFd, index) → index.
Napi::Value CtlIndexCall(const Napi::CallbackInfo& info, const Ioctl& req, const char* fn) {
  const int fd = ToFd(info[0], fn, "ctlFd");
  // The kernel takes the index as an unsigned long and bounds it by the minor range
  // itself (EINVAL above it), so only negative values are ours to refuse.
  const int32_t index = ToInt32(info[1], fn, "index");
  if (index < 0) ThrowArgRange(info[1], fn, "index", "an integer >= 0");
  const int rc = ioctl(fd, req.request, static_cast<unsigned long>(index));
  if (rc < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, req.label, fd);
  }
  return Napi::Number::New(info.Env(), rc);
}

// ctlAdd(ctlFd, n): EEXIST when loopN exists.
Napi::Value CtlAdd(const Napi::CallbackInfo& info) { return CtlIndexCall(info, kLoopCtlAdd, "ctlAdd"); }

// ctlRemove(ctlFd, n): EBUSY while bound or open anywhere, ENODEV when absent.
Napi::Value CtlRemove(const Napi::CallbackInfo& info) { return CtlIndexCall(info, kLoopCtlRemove, "ctlRemove"); }

// ctlRemoveMany(ctlFd, indices, threads) → errno per index (0: removed). LOOP_CTL_REMOVE
// spends most of its ~35 ms in the kernel waiting (del_gendisk: queue freeze, RCU grace
// periods) outside loop-control's own mutex, so removals on several threads overlap: 256
// threads take a device about every 0.25 ms instead of 35 (figures: LoopControl.removeMany).
// The calling thread blocks until every index was tried; nothing else is touched (no JS runs
// on the worker threads).
Napi::Value CtlRemoveMany(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "ctlRemoveMany", "ctlFd");
  if (!info[1].IsArray()) ThrowArgRange(info[1], "ctlRemoveMany", "indices", "an array of integers >= 0");
  const Napi::Array arr = info[1].As<Napi::Array>();
  std::vector<unsigned long> indices(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    const int32_t index = ToInt32(arr.Get(i), "ctlRemoveMany", "indices[i]");
    if (index < 0) ThrowArgRange(arr.Get(i), "ctlRemoveMany", "indices[i]", "an integer >= 0");
    indices[i] = static_cast<unsigned long>(index);
  }
  const int32_t threads = ToInt32(info[2], "ctlRemoveMany", "threads");
  std::vector<int> result(indices.size(), 0);
  ParallelFor(indices.size(), threads < 1 ? 1 : static_cast<size_t>(threads), [&](size_t, size_t i) {
    result[i] = ioctl(fd, kLoopCtlRemove.request, indices[i]) < 0 ? errno : 0;
  });
  Napi::Array out = Napi::Array::New(info.Env(), result.size());
  for (size_t i = 0; i < result.size(); i++) out.Set(static_cast<uint32_t>(i), Napi::Number::New(info.Env(), result[i]));
  return out;
}

} // namespace

void RegisterLoopControl(Napi::Env env, Napi::Object exports) {
  exports.Set("ctlGetFree", Napi::Function::New(env, CtlGetFree, "ctlGetFree"));
  exports.Set("ctlAdd", Napi::Function::New(env, CtlAdd, "ctlAdd"));
  exports.Set("ctlRemove", Napi::Function::New(env, CtlRemove, "ctlRemove"));
  exports.Set("ctlRemoveMany", Napi::Function::New(env, CtlRemoveMany, "ctlRemoveMany"));
}

} // namespace loopfs
