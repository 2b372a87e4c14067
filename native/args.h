// Argument checks shared by every exported function. Each function converts all of its
// arguments with these at the top, before its syscall, so a bad call never reaches the
// kernel. Wrong JS type → TypeError (code ERR_INVALID_ARG_TYPE); right type, bad value →
// RangeError (ERR_OUT_OF_RANGE) or TypeError (ERR_INVALID_ARG_VALUE), as Node does.
// `fn` and `what` name the function and argument in the message.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

namespace loopfs {

[[noreturn]] void ThrowArgType(const Napi::Value& v, const char* fn, const char* what, const char* expected);
[[noreturn]] void ThrowArgRange(const Napi::Value& v, const char* fn, const char* what, const char* expected);

// A file descriptor: integer 0..INT32_MAX.
int ToFd(const Napi::Value& v, const char* fn, const char* what);
// A directory fd for *at() calls: a file descriptor or AT_FDCWD.
int ToDirFd(const Napi::Value& v, const char* fn, const char* what);
// Any int32 (errno numbers, flock operations).
int32_t ToInt32(const Napi::Value& v, const char* fn, const char* what);
// A bit mask: int32 or uint32, since JS `|` yields signed results.
uint32_t ToBits(const Napi::Value& v, const char* fn, const char* what);
uint32_t ToUint32(const Napi::Value& v, const char* fn, const char* what);
// uid/gid for chown: 0..2^32-1, or -1 meaning "leave unchanged".
uint32_t ToOwnerId(const Napi::Value& v, const char* fn, const char* what);
// A non-negative safe integer (0..2^53-1).
uint64_t ToSafeUint(const Napi::Value& v, const char* fn, const char* what);
// A u64 carried as BigInt (offsets may exceed 2^53).
uint64_t ToU64(const Napi::Value& v, const char* fn, const char* what);
bool ToBool(const Napi::Value& v, const char* fn, const char* what);
// A path or file name: a string without NUL bytes (C would silently cut it short).
std::string ToPath(const Napi::Value& v, const char* fn, const char* what);

} // namespace loopfs
