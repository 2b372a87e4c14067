// SysError construction: the single way a failing syscall becomes a JS exception.
#pragma once

#include <napi.h>

#include <string>

namespace loopfs {

// Symbolic name of an errno ("EBUSY"), or "E<number>" for values the table lacks.
std::string ErrnoName(int err);

// glibc's strerror(3) text ("Device or resource busy").
std::string ErrnoDescription(int err);

// Each thrower builds an Error shaped like Node's system errors (code, errno, syscall,
// path, fd) plus `description`, and throws it as a C++ exception that node-addon-api
// turns into a JS exception. `err` must be read from errno immediately after the
// failing call: any N-API call in between may clobber errno.

// A call on a path (open, statfs, mknod).
[[noreturn]] void ThrowPathError(Napi::Env env, int err, const char* syscall, const std::string& path);

// A call on an fd (ioctl, close, flock, fstat). The fd's path is looked up via
// /proc/self/fd only now, on the failure path, so messages can name the device
// ("'/dev/loop3'") without costing the success path a second syscall. Pass
// lookupPath = false when the fd no longer names the file (after close()).
[[noreturn]] void ThrowFdError(Napi::Env env, int err, const char* syscall, int fd, bool lookupPath = true);

// A call relative to a directory fd (openat, mknodat): path is dir + "/" + name when
// the directory's path is known, else name as given.
[[noreturn]] void ThrowAtError(Napi::Env env, int err, const char* syscall, int dirfd, const std::string& name);

// `strerror(errno)` for JS.
Napi::Value Strerror(const Napi::CallbackInfo& info);

} // namespace loopfs
