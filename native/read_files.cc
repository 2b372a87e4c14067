// readFiles(dirs, names, maxBytes[, flags]): many small files (sysfs attributes) in one call. Listing a
// thousand loop devices reads ~9000 attributes; one N-API round trip per file (and node's
// open/fstat/read/close per readFileSync) made `losetup -l` 4x slower than util-linux.
// Each file is read with open/read/close only; a file that cannot be read is null. Contents
// come back as latin1 strings (one JS char per byte, so any byte sequence survives and the
// caller decodes paths itself): a Buffer per attribute cost a backing store each, and at
// 9000 attributes their allocation and collection took longer than the reads.
// A read shorter than asked is the end of the file: sysfs returns an attribute whole in the
// first read (its show() buffer is one page, and maxBytes is larger), so the read() that
// would only confirm EOF is skipped (a third of the syscalls of a listing).
// flags & READ_FILES_FIRST_GATES: names[0] gates its directory; when it cannot be read,
// the directory's other names are null without being tried (a loop device's loop/
// attributes exist only while it is bound, so one call both finds the bound devices and
// reads their attributes, and an idle device costs one failed open()).
// flags & READ_FILES_NO_FOLLOW: for files inside a directory that may be hostile (an
// instance's state): no symlink is followed in a file's own name (O_NOFOLLOW), opening
// cannot block (O_NONBLOCK: a FIFO), and only a regular file is read (fstat); anything
// else is null. An instance listing reads its thousand device records in one call this way.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "args.h"
#include "errors.h"
#include "exports.h"
#include "parallel.h"

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
  const uint32_t flags = info[3].IsUndefined() ? 0 : ToBits(info[3], "readFiles", "flags");
  if (flags & ~(READ_FILES_FIRST_GATES | READ_FILES_NO_FOLLOW)) {
    ThrowArgRange(info[3], "readFiles", "flags", "READ_FILES_FIRST_GATES, READ_FILES_NO_FOLLOW or both");
  }
  Napi::Array dirArg = info[0].As<Napi::Array>();
  Napi::Array nameArg = info[1].As<Napi::Array>();
  // convert every argument before the first syscall, as every function here does
  std::vector<std::string> dirs, names;
  for (uint32_t i = 0; i < dirArg.Length(); i++) dirs.push_back(ToPath(dirArg.Get(i), "readFiles", "dirs[i]"));
  for (uint32_t i = 0; i < nameArg.Length(); i++) names.push_back(ToPath(nameArg.Get(i), "readFiles", "names[i]"));

  const bool gated = (flags & READ_FILES_FIRST_GATES) != 0;
  const bool noFollow = (flags & READ_FILES_NO_FOLLOW) != 0;
  const int openFlags = O_RDONLY | O_CLOEXEC | (noFollow ? O_NOFOLLOW | O_NONBLOCK : 0);
  const size_t width = names.size();

  // Where each file's bytes went: worker w's text at [off, off + len), len -1 when unread.
  struct Slot {
    uint32_t worker;
    size_t off;
    ssize_t len;
  };
  std::vector<Slot> slots(dirs.size() * width);
  // A big listing is read on several threads: the reads are the kernel's work (kernfs, one
  // show() per attribute), which runs on every CPU at once. Measured on 2 CPUs, 1000 bound
  // devices: ~130 ms on one thread, ~57 ms on two (most of `losetup -l`'s time after node's
  // start-up). A small one stays on this thread (a thread's start costs ~100 reads).
  const size_t threads = ListingThreads(dirs.size());
  std::vector<std::string> texts(threads);
  std::vector<std::vector<char>> bufs(threads, std::vector<char>(maxBytes > 0 ? maxBytes : 1));

  // One file into worker w's buffer: its length, or -1 when it cannot be opened or read.
  auto readOne = [&](size_t w, int fd) -> ssize_t {
    if (fd < 0) return -1;
    struct stat st;
    if (noFollow && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
      close(fd);
      return -1;
    }
    std::vector<char>& buf = bufs[w];
    size_t len = 0;
    bool failed = false;
    while (len < maxBytes) {
      const size_t want = maxBytes - len;
      const ssize_t n = read(fd, buf.data() + len, want);
      if (n < 0) {
        if (errno == EINTR) continue;
        failed = true;
        break;
      }
      len += static_cast<size_t>(n);
      if (static_cast<size_t>(n) < want) break;  // short read: the end (see above)
    }
    close(fd);
    return failed ? -1 : static_cast<ssize_t>(len);
  };
  auto put = [&](size_t w, size_t k, ssize_t len) {
    slots[k] = Slot{static_cast<uint32_t>(w), texts[w].size(), len};
    if (len > 0) texts[w].append(bufs[w].data(), static_cast<size_t>(len));
  };
  ParallelFor(dirs.size(), threads, [&](size_t w, size_t d) {
    const std::string& dir = dirs[d];
    const size_t row = d * width;
    size_t first = 0;
    if (gated && width > 0) {
      // the gate by its full path: an idle device costs this one failed open(), as in
      // util-linux, and no directory fd
      const ssize_t len = readOne(w, open((dir + "/" + names[0]).c_str(), openFlags));
      put(w, row, len);
      first = 1;
      if (len < 0) {
        for (size_t j = 1; j < width; j++) put(w, row + j, -1);
        return;
      }
    }
    if (first == width) return;
    const int dfd = open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    for (size_t j = first; j < width; j++) put(w, row + j, readOne(w, dfd < 0 ? -1 : openat(dfd, names[j].c_str(), openFlags)));
    if (dfd >= 0) close(dfd);
  });

  Napi::Array result = Napi::Array::New(env, slots.size());
  for (size_t k = 0; k < slots.size(); k++) {
    const Slot& sl = slots[k];
    if (sl.len < 0) {
      result.Set(static_cast<uint32_t>(k), env.Null());
      continue;
    }
    napi_value str;
    NAPI_THROW_IF_FAILED(env, napi_create_string_latin1(env, texts[sl.worker].data() + sl.off, static_cast<size_t>(sl.len), &str), Napi::Value());
    result.Set(static_cast<uint32_t>(k), Napi::Value(env, str));
  }
  return result;
}

} // namespace

void RegisterReadFiles(Napi::Env env, Napi::Object exports) {
  exports.Set("readFiles", Napi::Function::New(env, ReadFiles, "readFiles"));
}

} // namespace loopfs
