// spawnVm(file, argv, envp, fds, cwd): start a program the way posix_spawn does, for the
// FUSE drivers the broker starts on every FUSE mount (src/broker/fuse.ts). node's
// child_process forks: a copy of the page tables of node's large address space, about
// 3 ms here per start, more than the whole driver start-up. Here the child is
// clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD) on a stack of its own: it shares our memory
// but has its own copy of the fd table and of the signal handlers, this thread waits
// until it has exec'd (or died), and it makes plain syscalls only until execve.
//
// In the child: fds[i] becomes its fd i (all of them moved above the table first, so a
// source that is also a target is never overwritten; -1 leaves fd i closed), every other
// fd of ours is close-on-exec already (the addon opens everything O_CLOEXEC, as node
// does), every signal back to its default with an empty mask (node ignores SIGPIPE, and
// an ignored signal would survive execve), chdir(cwd), execve(file). A failed step reports
// its errno through a close-on-exec pipe and _exits with 127.
//
// Returns { pid, pidfd }: the pidfd (close-on-exec) becomes readable when the child exits;
// reap it with waitPid. Throws a SysError whose syscall names the step that failed
// ("execve" with the path, "chdir", "dup2", ...), after reaping the child.
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "args.h"
#include "errors.h"
#include "exports.h"

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

namespace loopfs {

namespace {

struct Report {
  int err;
  int step; // index into kSteps
};
const char* const kSteps[] = {"execve", "dup", "dup2", "close", "chdir", "sigaction"};

struct Child {
  const char* file;
  char* const* argv;
  char* const* envp;
  const std::vector<int>* fds;
  std::vector<int>* moved; // scratch, allocated by the parent (no allocation in the child)
  const char* cwd;
  int report; // write end of the error pipe
};

[[noreturn]] void ChildFail(const Child& c, int step) {
  Report r{errno, step};
  ssize_t n;
  do n = write(c.report, &r, sizeof r);
  while (n < 0 && errno == EINTR);
  _exit(127);
}

int ChildMain(void* arg) {
  const Child& c = *static_cast<Child*>(arg);
  const int count = static_cast<int>(c.fds->size());
  // above every target, close-on-exec: the temporaries vanish at execve
  for (int i = 0; i < count; i++) {
    const int src = (*c.fds)[i];
    (*c.moved)[i] = src < 0 ? -1 : fcntl(src, F_DUPFD_CLOEXEC, count);
    if (src >= 0 && (*c.moved)[i] < 0) ChildFail(c, 1);
  }
  for (int i = 0; i < count; i++) {
    if ((*c.moved)[i] < 0) {
      if (close(i) < 0 && errno != EBADF) ChildFail(c, 3);
    } else if (dup2((*c.moved)[i], i) < 0) { // dup2's copy is not close-on-exec
      ChildFail(c, 2);
    }
  }
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; sig++) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    if (sigaction(sig, &dfl, nullptr) < 0 && errno != EINVAL) ChildFail(c, 5);
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  if (chdir(c.cwd) < 0) ChildFail(c, 4);
  execve(c.file, c.argv, c.envp);
  ChildFail(c, 0);
}

std::vector<std::string> ToStrings(const Napi::Value& v, const char* fn, const char* what) {
  if (!v.IsArray()) ThrowArgType(v, fn, what, "an array of strings");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<std::string> out;
  for (uint32_t i = 0; i < a.Length(); i++) out.push_back(ToPath(a.Get(i), fn, what));
  return out;
}

std::vector<char*> CStrings(std::vector<std::string>& s) {
  std::vector<char*> out;
  for (auto& x : s) out.push_back(x.data());
  out.push_back(nullptr);
  return out;
}

Napi::Value SpawnVm(const Napi::CallbackInfo& info) {
  const char* fn = "spawnVm";
  Napi::Env env = info.Env();
  const std::string file = ToPath(info[0], fn, "file");
  std::vector<std::string> argv = ToStrings(info[1], fn, "argv");
  std::vector<std::string> envp = ToStrings(info[2], fn, "envp");
  if (argv.empty()) ThrowArgRange(info[1], fn, "argv", "a non-empty array (argv[0])");
  if (!info[3].IsArray()) ThrowArgType(info[3], fn, "fds", "an array of file descriptors or -1");
  Napi::Array fdArray = info[3].As<Napi::Array>();
  if (fdArray.Length() > 1024) ThrowArgRange(info[3], fn, "fds", "at most 1024 entries");
  std::vector<int> fds(fdArray.Length());
  for (uint32_t i = 0; i < fds.size(); i++) {
    const Napi::Value v = fdArray.Get(i);
    fds[i] = v.IsNumber() && v.As<Napi::Number>().Int32Value() == -1 ? -1 : ToFd(v, fn, "fds[i]");
  }
  const std::string cwd = ToPath(info[4], fn, "cwd");
  std::vector<char*> cargv = CStrings(argv);
  std::vector<char*> cenvp = CStrings(envp);
  std::vector<int> moved(fds.size(), -1);

  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) {
    const int err = errno;
    ThrowFdError(env, err, "pipe2", -1);
  }
  // the child's fds 0..count-1 are replaced: its report channel must live above them
  if (p[1] < static_cast<int>(fds.size())) {
    const int high = fcntl(p[1], F_DUPFD_CLOEXEC, static_cast<int>(fds.size()));
    const int err = errno;
    close(p[1]);
    if (high < 0) {
      close(p[0]);
      ThrowFdError(env, err, "fcntl(F_DUPFD_CLOEXEC)", -1);
    }
    p[1] = high;
  }
  Child c{file.c_str(), cargv.data(), cenvp.data(), &fds, &moved, cwd.c_str(), p[1]};
  constexpr size_t kStack = 64 * 1024;
  void* stack = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) {
    const int err = errno;
    close(p[0]);
    close(p[1]);
    ThrowFdError(env, err, "mmap", -1);
  }
  // no handler of node's may run on the child's stack: every signal blocked around clone
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int pidfd = -1;
  const pid_t pid = clone(ChildMain, static_cast<char*>(stack) + kStack, CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &c, &pidfd);
  const int cloneErr = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  munmap(stack, kStack);
  close(p[1]);
  if (pid < 0) {
    close(p[0]);
    ThrowFdError(env, cloneErr, "clone", -1);
  }
  Report r;
  ssize_t n;
  do n = read(p[0], &r, sizeof r);
  while (n < 0 && errno == EINTR);
  close(p[0]);
  if (n == static_cast<ssize_t>(sizeof r)) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    close(pidfd);
    if (r.step == 0) ThrowPathError(env, r.err, "execve", file);
    ThrowFdError(env, r.err, kSteps[r.step], -1);
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", Napi::Number::New(env, pid));
  out.Set("pidfd", Napi::Number::New(env, pidfd));
  return out;
}

} // namespace

void RegisterSpawn(Napi::Env env, Napi::Object exports) {
  exports.Set("spawnVm", Napi::Function::New(env, SpawnVm, "spawnVm"));
}

} // namespace loopfs
