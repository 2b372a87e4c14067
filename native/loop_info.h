// Conversion between JS objects and struct loop_info64 (LoopInfo64 / LoopInfo64Input in
// src/kernel/native.ts).
#pragma once

#include <napi.h>

#include "ioctls.h"

namespace loopfs {

// Zeroes *out, then fills offset, sizelimit, flags, fileName and cryptName from `v`
// (omitted or undefined fields stay zero). Other properties are ignored, so a
// LoopInfo64 read with loopGetStatus64 can be modified and passed back.
void ToLoopInfo(const Napi::Value& v, const char* fn, const char* what, struct loop_info64* out);

// Every field except the write-only key; u64 fields as BigInt, names as 64-byte Buffers.
Napi::Object FromLoopInfo(Napi::Env env, const struct loop_info64& li);

} // namespace loopfs
