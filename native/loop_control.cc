// /dev/loop-control ioctls: LOOP_CTL_GET_FREE, LOOP_CTL_ADD, LOOP_CTL_REMOVE.
// Each returns the device index the kernel reports (the ioctl's return value).
#include <sys/ioctl.h>

#include <cerrno>

#include "args.h"
#include "errors.h"
#include "exports.h"
#include "ioctls.h"

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

} // namespace

void RegisterLoopControl(Napi::Env env, Napi::Object exports) {
  exports.Set("ctlGetFree", Napi::Function::New(env, CtlGetFree, "ctlGetFree"));
  exports.Set("ctlAdd", Napi::Function::New(env, CtlAdd, "ctlAdd"));
  exports.Set("ctlRemove", Napi::Function::New(env, CtlRemove, "ctlRemove"));
}

} // namespace loopfs
