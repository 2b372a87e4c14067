// Module entry point for loopfs.node: the typed contract is src/kernel/native.ts.
// Every export is synchronous and issues exactly one syscall, because each one is short
// and callers (allocation under a lock) need the calls strictly ordered.
#include <napi.h>

#include "errors.h"
#include "exports.h"

namespace loopfs {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  RegisterConstants(env, exports);
  exports.Set("strerror", Napi::Function::New(env, Strerror, "strerror"));
  RegisterFs(env, exports);
  RegisterFsAt(env, exports);
  RegisterReadFiles(env, exports);
  RegisterLoopControl(env, exports);
  RegisterLoop(env, exports);
  RegisterBlk(env, exports);
  RegisterSocket(env, exports);
  RegisterFdWatch(env, exports);
  RegisterMountApi(env, exports);
  RegisterNs(env, exports);
  RegisterSeccomp(env, exports);
  RegisterUevent(env, exports);
  RegisterSpawn(env, exports);
  return exports;
}

} // namespace loopfs

// NODE_API_MODULE pastes the name into an identifier, so it needs an unqualified one.
static Napi::Object InitLoopfs(Napi::Env env, Napi::Object exports) { return loopfs::Init(env, exports); }

NODE_API_MODULE(loopfs, InitLoopfs)
