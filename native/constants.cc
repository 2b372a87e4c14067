// `constants`: the numeric values JS needs to build flags and read modes, taken from the
// C headers so they are right for the architecture the addon was built on (O_DIRECT and
// O_DIRECTORY differ between x86 and arm64, for instance).
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "exports.h"
#include "ioctls.h"

namespace loopfs {

void RegisterConstants(Napi::Env env, Napi::Object exports) {
  Napi::Object c = Napi::Object::New(env);
#define LOOPFS_CONSTANT(name) c.Set(#name, Napi::Number::New(env, static_cast<double>(name)))
  LOOPFS_CONSTANT(O_RDONLY);
  LOOPFS_CONSTANT(O_WRONLY);
  LOOPFS_CONSTANT(O_RDWR);
  LOOPFS_CONSTANT(O_CREAT);
  LOOPFS_CONSTANT(O_EXCL);
  LOOPFS_CONSTANT(O_DIRECT);
  LOOPFS_CONSTANT(O_NOFOLLOW);
  LOOPFS_CONSTANT(O_DIRECTORY);
  LOOPFS_CONSTANT(O_PATH);
  LOOPFS_CONSTANT(O_NONBLOCK);
  LOOPFS_CONSTANT(O_TRUNC);
  LOOPFS_CONSTANT(AT_FDCWD);
  LOOPFS_CONSTANT(AT_REMOVEDIR);
  LOOPFS_CONSTANT(LO_FLAGS_READ_ONLY);
  LOOPFS_CONSTANT(LO_FLAGS_AUTOCLEAR);
  LOOPFS_CONSTANT(LO_FLAGS_PARTSCAN);
  LOOPFS_CONSTANT(LO_FLAGS_DIRECT_IO);
  LOOPFS_CONSTANT(LOCK_SH);
  LOOPFS_CONSTANT(LOCK_EX);
  LOOPFS_CONSTANT(LOCK_UN);
  LOOPFS_CONSTANT(LOCK_NB);
  LOOPFS_CONSTANT(S_IFMT);
  LOOPFS_CONSTANT(S_IFBLK);
  LOOPFS_CONSTANT(S_IFCHR);
  LOOPFS_CONSTANT(S_IFREG);
  LOOPFS_CONSTANT(S_IFDIR);
  LOOPFS_CONSTANT(S_IFLNK);
  LOOPFS_CONSTANT(S_IFSOCK);
  LOOPFS_CONSTANT(LOOP_MAJOR);
#undef LOOPFS_CONSTANT
  // Frozen: a caller mutating a shared flag value would corrupt every later open().
  c.Freeze();
  exports.Set("constants", c);
}

} // namespace loopfs
