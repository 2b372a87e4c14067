// readFiles(dirs, names, maxBytes): many small files (sysfs attributes) in one call. Listing a
// thousand loop devices reads ~9000 attributes; one N-API round trip per file (and node's
// open/fstat/read/close per readFileSync) made `losetup -l` 4x slower than util-linux.
// Each file is read with open/read/close only; a file that cannot be read is null. Contents
// come back as latin1 strings (one JS char per byte, so any byte sequence survives and the
// caller decodes paths itself): a Buffer per attribute cost a backing store each, and at
// 9000 attributes their allocation and collection took longer than the reads.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "args.h"
#include "errors.h"
#include "exports.h"

namespace loopfs {

namespace {

// Read `names` (relative paths) inside each of `dirs`; result is dirs x names, row-major.
// Each directory is opened once (O_PATH) and its attributes with openat(): the path walk
// through /sys/block's symlink is paid once per device, not once per attribute.
Napi::Value ReadFiles(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsArray()) ThrowArgType(info[0], "readFiles", "dirs", "an array of strings");
  if (!info[1].IsArray()) ThrowArgType(info[1], "readFiles", "names", "an array of strings");
  const uint32_t maxBytes = ToUint32(info[2], "readFiles", "maxBytes");
  Napi::Array dirArg = info[0].As<Napi::Array>();
  Napi::Array nameArg = info[1].As<Napi::Array>();
  // convert every argument before the first syscall, as every function here does
  std::vector<std::string> dirs, names;
  for (uint32_t i = 0; i < dirArg.Length(); i++) dirs.push_back(ToPath(dirArg.Get(i), "readFiles", "dirs[i]"));
  for (uint32_t i = 0; i < nameArg.Length(); i++) names.push_back(ToPath(nameArg.Get(i), "readFiles", "names[i]"));

  Napi::Array result = Napi::Array::New(env, dirs.size() * names.size());
  std::vector<char> buf(maxBytes > 0 ? maxBytes : 1);
  uint32_t k = 0;
  for (const std::string& dir : dirs) {
    const int dfd = open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    for (const std::string& name : names) {
      const int fd = dfd < 0 ? -1 : openat(dfd, name.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) {
        result.Set(k++, env.Null());
        continue;
      }
      size_t len = 0;
      bool failed = false;
      while (len < maxBytes) {
        const ssize_t n = read(fd, buf.data() + len, maxBytes - len);
        if (n < 0) {
          if (errno == EINTR) continue;
          failed = true;
          break;
        }
        if (n == 0) break;
        len += static_cast<size_t>(n);
      }
      close(fd);
      if (failed) {
        result.Set(k++, env.Null());
        continue;
      }
      napi_value str;
      NAPI_THROW_IF_FAILED(env, napi_create_string_latin1(env, buf.data(), len, &str), Napi::Value());
      result.Set(k++, Napi::Value(env, str));
    }
    if (dfd >= 0) close(dfd);
  }
  return result;
}

} // namespace

void RegisterReadFiles(Napi::Env env, Napi::Object exports) {
  exports.Set("readFiles", Napi::Function::New(env, ReadFiles, "readFiles"));
}

} // namespace loopfs
