#include "loop_info.h"

#include <cstring>
#include <string>

#include "args.h"

namespace loopfs {

namespace {

// lo_file_name / lo_crypt_name: at most LO_NAME_SIZE-1 bytes and always NUL-terminated,
// cut on a byte boundary like util-linux does; the kernel itself only forces the last
// byte to NUL, so an unterminated name would otherwise lose its 64th byte silently.
void ToLoopName(const Napi::Value& v, const char* fn, const char* what, __u8 (&dst)[LO_NAME_SIZE]) {
  std::memset(dst, 0, sizeof dst);
  if (v.IsUndefined()) return;
  const unsigned char* bytes = nullptr;
  size_t len = 0;
  std::string utf8;
  if (v.IsString()) {
    utf8 = v.As<Napi::String>().Utf8Value();
    bytes = reinterpret_cast<const unsigned char*>(utf8.data());
    len = utf8.size();
  } else if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_uint8_array) {
    // Buffer is a Uint8Array; other typed arrays would be ambiguous about byte order.
    Napi::Uint8Array arr = v.As<Napi::Uint8Array>();
    bytes = arr.Data();
    len = arr.ByteLength();
  } else {
    ThrowArgType(v, fn, what, "a string or Buffer");
  }
  if (len > LO_NAME_SIZE - 1) len = LO_NAME_SIZE - 1;
  std::memcpy(dst, bytes, len);
}

} // namespace

void ToLoopInfo(const Napi::Value& v, const char* fn, const char* what, struct loop_info64* out) {
  std::memset(out, 0, sizeof *out);
  if (!v.IsObject() || v.IsNull()) ThrowArgType(v, fn, what, "an object");
  Napi::Object o = v.As<Napi::Object>();
  Napi::Value offset = o.Get("offset");
  Napi::Value sizelimit = o.Get("sizelimit");
  Napi::Value flags = o.Get("flags");
  if (!offset.IsUndefined()) out->lo_offset = ToU64(offset, fn, "info.offset");
  if (!sizelimit.IsUndefined()) out->lo_sizelimit = ToU64(sizelimit, fn, "info.sizelimit");
  if (!flags.IsUndefined()) out->lo_flags = ToBits(flags, fn, "info.flags");
  ToLoopName(o.Get("fileName"), fn, "info.fileName", out->lo_file_name);
  ToLoopName(o.Get("cryptName"), fn, "info.cryptName", out->lo_crypt_name);
}

Napi::Object FromLoopInfo(Napi::Env env, const struct loop_info64& li) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("device", Napi::BigInt::New(env, static_cast<uint64_t>(li.lo_device)));
  o.Set("inode", Napi::BigInt::New(env, static_cast<uint64_t>(li.lo_inode)));
  o.Set("rdevice", Napi::BigInt::New(env, static_cast<uint64_t>(li.lo_rdevice)));
  o.Set("offset", Napi::BigInt::New(env, static_cast<uint64_t>(li.lo_offset)));
  o.Set("sizelimit", Napi::BigInt::New(env, static_cast<uint64_t>(li.lo_sizelimit)));
  o.Set("number", Napi::Number::New(env, li.lo_number));
  o.Set("encryptType", Napi::Number::New(env, li.lo_encrypt_type));
  o.Set("encryptKeySize", Napi::Number::New(env, li.lo_encrypt_key_size));
  o.Set("flags", Napi::Number::New(env, li.lo_flags));
  o.Set("fileName", Napi::Buffer<__u8>::Copy(env, li.lo_file_name, LO_NAME_SIZE));
  o.Set("cryptName", Napi::Buffer<__u8>::Copy(env, li.lo_crypt_name, LO_NAME_SIZE));
  return o;
}

} // namespace loopfs
