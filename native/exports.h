// Each concern registers its own functions on the module's exports (see addon.cc).
#pragma once

#include <napi.h>
#include <sys/stat.h>

namespace loopfs {

void RegisterConstants(Napi::Env env, Napi::Object exports); // constants.cc
void RegisterFs(Napi::Env env, Napi::Object exports);        // fs.cc
void RegisterFsAt(Napi::Env env, Napi::Object exports);      // fs_at.cc
void RegisterReadFiles(Napi::Env env, Napi::Object exports); // read_files.cc
void RegisterLoopControl(Napi::Env env, Napi::Object exports); // loop_control.cc
void RegisterLoop(Napi::Env env, Napi::Object exports);      // loop.cc
void RegisterBlk(Napi::Env env, Napi::Object exports);       // blk.cc
void RegisterSocket(Napi::Env env, Napi::Object exports);    // socket.cc
void RegisterFdWatch(Napi::Env env, Napi::Object exports);   // fdwatch.cc
void RegisterMountApi(Napi::Env env, Napi::Object exports);  // mount_api.cc
void RegisterNs(Napi::Env env, Napi::Object exports);        // ns.cc
void RegisterSeccomp(Napi::Env env, Napi::Object exports);   // seccomp.cc
void RegisterUevent(Napi::Env env, Napi::Object exports);    // uevent.cc
void RegisterSpawn(Napi::Env env, Napi::Object exports);     // spawn.cc

// readFiles flags (read_files.cc): names[0] gates each directory; no symlink followed and
// regular files only. In `constants`.
constexpr uint32_t READ_FILES_FIRST_GATES = 1;
constexpr uint32_t READ_FILES_NO_FOLLOW = 2;

// struct stat as the JS NativeStat object (fs.cc); shared by fstat and lstatat.
Napi::Object StatObject(Napi::Env env, const struct stat& st);

} // namespace loopfs
