#include "args.h"

#include <fcntl.h>

#include <cmath>
#include <cstring>

namespace loopfs {

namespace {

const char* TypeName(const Napi::Value& v) {
  switch (v.Type()) {
    case napi_undefined: return "undefined";
    case napi_null: return "null";
    case napi_boolean: return "boolean";
    case napi_number: return "number";
    case napi_string: return "string";
    case napi_symbol: return "symbol";
    case napi_object: return "object";
    case napi_function: return "function";
    case napi_external: return "external";
    case napi_bigint: return "bigint";
  }
  return "unknown";
}

[[noreturn]] void ThrowWithCode(Napi::Error error, const char* code) {
  error.Value().Set("code", code);
  throw error;
}

std::string Message(const Napi::Value& v, const char* fn, const char* what, const char* expected) {
  return std::string(fn) + "(): \"" + what + "\" must be " + expected + " (received " + TypeName(v) + ")";
}

// An integral number within [lo, hi]; the bounds are exact doubles (|x| ≤ 2^53).
double ToIntegerIn(const Napi::Value& v, const char* fn, const char* what, double lo, double hi,
                   const char* expected) {
  if (!v.IsNumber()) ThrowArgType(v, fn, what, expected);
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::trunc(d) != d || d < lo || d > hi) ThrowArgRange(v, fn, what, expected);
  return d;
}

constexpr double kInt32Min = -2147483648.0;
constexpr double kInt32Max = 2147483647.0;
constexpr double kUint32Max = 4294967295.0;
constexpr double kSafeMax = 9007199254740991.0;

} // namespace

void ThrowArgType(const Napi::Value& v, const char* fn, const char* what, const char* expected) {
  ThrowWithCode(Napi::TypeError::New(v.Env(), Message(v, fn, what, expected)), "ERR_INVALID_ARG_TYPE");
}

void ThrowArgRange(const Napi::Value& v, const char* fn, const char* what, const char* expected) {
  ThrowWithCode(Napi::RangeError::New(v.Env(), Message(v, fn, what, expected)), "ERR_OUT_OF_RANGE");
}

int ToFd(const Napi::Value& v, const char* fn, const char* what) {
  return static_cast<int>(ToIntegerIn(v, fn, what, 0, kInt32Max, "a file descriptor (integer >= 0)"));
}

int ToDirFd(const Napi::Value& v, const char* fn, const char* what) {
  const char* expected = "a directory file descriptor (integer >= 0) or AT_FDCWD";
  const double d = ToIntegerIn(v, fn, what, kInt32Min, kInt32Max, expected);
  if (d < 0 && d != AT_FDCWD) ThrowArgRange(v, fn, what, expected);
  return static_cast<int>(d);
}

int32_t ToInt32(const Napi::Value& v, const char* fn, const char* what) {
  return static_cast<int32_t>(ToIntegerIn(v, fn, what, kInt32Min, kInt32Max, "a 32-bit integer"));
}

uint32_t ToBits(const Napi::Value& v, const char* fn, const char* what) {
  const double d = ToIntegerIn(v, fn, what, kInt32Min, kUint32Max, "a 32-bit integer bit mask");
  // Two's complement: -2^31..-1 map onto the same bits as 2^31..2^32-1.
  return d < 0 ? static_cast<uint32_t>(static_cast<int32_t>(d)) : static_cast<uint32_t>(d);
}

uint32_t ToUint32(const Napi::Value& v, const char* fn, const char* what) {
  return static_cast<uint32_t>(ToIntegerIn(v, fn, what, 0, kUint32Max, "an integer in 0..2^32-1"));
}

uint32_t ToOwnerId(const Napi::Value& v, const char* fn, const char* what) {
  const double d = ToIntegerIn(v, fn, what, -1, kUint32Max, "an id in 0..2^32-1 or -1 (unchanged)");
  return d < 0 ? static_cast<uint32_t>(-1) : static_cast<uint32_t>(d);
}

uint64_t ToSafeUint(const Napi::Value& v, const char* fn, const char* what) {
  return static_cast<uint64_t>(ToIntegerIn(v, fn, what, 0, kSafeMax, "an integer in 0..2^53-1"));
}

uint64_t ToU64(const Napi::Value& v, const char* fn, const char* what) {
  const char* expected = "a bigint in 0n..2n**64n-1n";
  if (!v.IsBigInt()) ThrowArgType(v, fn, what, expected);
  bool lossless = false;
  const uint64_t u = v.As<Napi::BigInt>().Uint64Value(&lossless);
  // Negative or wider than 64 bits: lossless is false.
  if (!lossless) ThrowArgRange(v, fn, what, expected);
  return u;
}

bool ToBool(const Napi::Value& v, const char* fn, const char* what) {
  if (!v.IsBoolean()) ThrowArgType(v, fn, what, "a boolean");
  return v.As<Napi::Boolean>().Value();
}

std::string ToPath(const Napi::Value& v, const char* fn, const char* what) {
  if (!v.IsString()) ThrowArgType(v, fn, what, "a string");
  std::string s = v.As<Napi::String>().Utf8Value();
  // An empty string is passed on: the kernel answers ENOENT, as for Node's fs.
  if (s.find('\0') != std::string::npos) {
    std::string msg = std::string(fn) + "(): \"" + what + "\" must be a string without NUL bytes";
    ThrowWithCode(Napi::TypeError::New(v.Env(), msg), "ERR_INVALID_ARG_VALUE");
  }
  return s;
}

} // namespace loopfs
