// watchFd(fd, onReadable): call a JS function whenever fd is readable, from node's own
// event loop (a uv_poll_t on the loop of the calling environment), so a server can accept
// and read non-blocking sockets without threads. The callback runs on the JS thread like
// any I/O callback: through MakeCallback (so process.nextTick and promise jobs queued in
// it run right after it, and async_hooks see it), and an exception it throws goes to
// process 'uncaughtException' exactly like one thrown from a socket's 'data' handler.
//
// Lifetime, the rules that keep this safe:
//  - An open watcher holds a strong reference to its JS object (like a listening server,
//    it keeps working with no JS reference to it) and keeps the event loop alive unless
//    unref()'d. close() stops it at once, releases both, and is idempotent, so it is safe
//    to call twice and from inside the callback.
//  - The uv handle lives in its own allocation (PollHandle), freed by uv_close's callback,
//    never by the JS object's finalizer: libuv may still hold the handle after close().
//  - At environment teardown (process exit, worker termination) an async cleanup hook
//    closes handles that were never closed, so a worker's loop can close cleanly.
//
// Polling is level-triggered: the callback fires on every loop iteration while fd stays
// readable, so it must drain fd (or close the watcher). "Readable" includes the peer
// hanging up. uv_poll_init puts fd in non-blocking mode. Close the watcher before closing
// fd: libuv must not watch an fd number that may be reused.
#include <node_api.h>
#include <poll.h>
#include <uv.h>

#include <cerrno>
#include <memory>
#include <vector>

#include "args.h"
#include "errors.h"
#include "exports.h"

namespace loopfs {

namespace {

class FdWatcher;

// The libuv side of a watcher; outlives the FdWatcher when libuv still needs it.
struct PollHandle {
  uv_poll_t poll;
  FdWatcher* owner = nullptr; // null once closed or the JS object is finalized
  napi_async_cleanup_hook_handle cleanup = nullptr; // registered while open
};

// uv_close callback: the last use of a PollHandle. When the handle was closed by the
// environment's cleanup hook, the hook is still registered and must be removed now to
// tell node the asynchronous cleanup is done.
void FreePollHandle(uv_handle_t* handle) {
  PollHandle* h = static_cast<PollHandle*>(handle->data);
  if (h->cleanup) napi_remove_async_cleanup_hook(h->cleanup);
  delete h;
}

class FdWatcher : public Napi::ObjectWrap<FdWatcher> {
 public:
  static Napi::Function Class(Napi::Env env) {
    return DefineClass(env, "FdWatcher",
                       {
                           InstanceMethod<&FdWatcher::CloseMethod>("close"),
                           InstanceMethod<&FdWatcher::RefMethod>("ref"),
                           InstanceMethod<&FdWatcher::UnrefMethod>("unref"),
                           InstanceAccessor<&FdWatcher::FdGetter>("fd"),
                           InstanceAccessor<&FdWatcher::ClosedGetter>("closed"),
                       });
  }

  // Constructed by watchFd(fd, onReadable) (JS cannot reach the class otherwise, and
  // `new` on it would only do the same).
  explicit FdWatcher(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdWatcher>(info) {
    Napi::Env env = info.Env();
    fd_ = ToFd(info[0], "watchFd", "fd");
    if (!info[1].IsFunction()) ThrowArgType(info[1], "watchFd", "onReadable", "a function");

    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      throw Napi::Error::New(env, "watchFd(): no libuv event loop for this environment");
    }
    std::unique_ptr<PollHandle> h(new PollHandle);
    h->poll.data = h.get();
    // Checks the fd: EBADF, EPERM (regular files cannot be polled), EEXIST (this loop
    // already watches it).
    int rc = uv_poll_init(loop, &h->poll, fd_);
    if (rc < 0) ThrowFdError(env, -rc, "uv_poll_init", fd_);
    rc = uv_poll_start(&h->poll, UV_READABLE, OnPoll);
    if (rc < 0) {
      // Initialized handles must go through uv_close.
      uv_close(reinterpret_cast<uv_handle_t*>(&h.release()->poll), FreePollHandle);
      ThrowFdError(env, -rc, "uv_poll_start", fd_);
    }
    PollHandle* raw = h.release();
    raw->owner = this;
    if (napi_add_async_cleanup_hook(env, OnEnvCleanup, raw, &raw->cleanup) != napi_ok) raw->cleanup = nullptr;
    handle_ = raw;
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    context_ = std::make_unique<Napi::AsyncContext>(env, "loopfs:FdWatcher", info.This().As<Napi::Object>());
    Ref(); // dropped by Close()
  }

  // Runs when the JS object is collected: after close(), or at environment teardown.
  ~FdWatcher() override {
    if (handle_) handle_->owner = nullptr; // teardown: the cleanup hook closes it
  }

 private:
  // Stops polling and lets go of everything that kept the watcher (and the loop) alive.
  // fromCleanupHook: the environment is going away and the hook stays registered until
  // the handle is really closed (FreePollHandle removes it).
  void Close(bool fromCleanupHook = false) {
    PollHandle* h = handle_;
    if (!h) return;
    handle_ = nullptr;
    h->owner = nullptr;
    if (!fromCleanupHook && h->cleanup) {
      napi_remove_async_cleanup_hook(h->cleanup);
      h->cleanup = nullptr;
    }
    uv_poll_stop(&h->poll);
    uv_close(reinterpret_cast<uv_handle_t*>(&h->poll), FreePollHandle);
    callback_.Reset();
    // The async context is in use while the callback runs; Fire() drops it afterwards.
    if (!firing_) context_.reset();
    Unref();
  }

  static void OnEnvCleanup(napi_async_cleanup_hook_handle, void* arg) {
    PollHandle* h = static_cast<PollHandle*>(arg);
    if (h->owner) {
      h->owner->Close(true);
    } else {
      // The JS object is already gone (finalized before this hook ran).
      uv_poll_stop(&h->poll);
      uv_close(reinterpret_cast<uv_handle_t*>(&h->poll), FreePollHandle);
    }
  }

  static void OnPoll(uv_poll_t* poll, int status, int /*events*/) {
    PollHandle* h = static_cast<PollHandle*>(poll->data);
    if (h->owner) h->owner->Fire(status);
  }

  void Fire(int status) {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    // The local handle keeps the object alive even if the callback closes the watcher.
    Napi::Object self = Value();
    Napi::Function callback = callback_.Value();
    std::vector<napi_value> args;
    if (status < 0) {
      // libuv stops the handle after reporting an error: say why, once. The callback's
      // next read on fd usually reports the real problem too.
      try {
        ThrowFdError(env, -status, "uv_poll", fd_);
      } catch (const Napi::Error& e) {
        args.push_back(e.Value());
      }
    }
    firing_ = true;
    try {
      callback.MakeCallback(self, args, *context_);
    } catch (const Napi::Error& e) {
      // Same path as an exception thrown in any I/O callback: 'uncaughtException', or
      // print and exit when nothing handles it.
      napi_fatal_exception(env, e.Value());
    }
    firing_ = false;
    if (!handle_) context_.reset(); // closed from inside the callback
  }

  Napi::Value CloseMethod(const Napi::CallbackInfo& info) {
    Close();
    return info.Env().Undefined();
  }

  // ref()/unref(): whether an open watcher keeps the process alive (it does by default,
  // like a server). No-ops once closed. Both return the watcher.
  Napi::Value RefMethod(const Napi::CallbackInfo& info) {
    if (handle_) uv_ref(reinterpret_cast<uv_handle_t*>(&handle_->poll));
    return info.This();
  }

  Napi::Value UnrefMethod(const Napi::CallbackInfo& info) {
    if (handle_) uv_unref(reinterpret_cast<uv_handle_t*>(&handle_->poll));
    return info.This();
  }

  Napi::Value FdGetter(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), fd_); }

  Napi::Value ClosedGetter(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), handle_ == nullptr); }

  int fd_ = -1;
  PollHandle* handle_ = nullptr; // null once closed
  bool firing_ = false;
  Napi::FunctionReference callback_;
  std::unique_ptr<Napi::AsyncContext> context_;
};

// watchFd(fd, onReadable) → FdWatcher. The class constructor rides along as the
// function's data.
Napi::Value WatchFd(const Napi::CallbackInfo& info) {
  Napi::FunctionReference* ctor = static_cast<Napi::FunctionReference*>(info.Data());
  return ctor->New({info[0], info[1]});
}

// pollNow(fd) → { readable, hangup, error }: poll(2) with a zero timeout, for a watcher's
// callback that must tell "readable" from "hung up" (watchFd fires for both). The seccomp
// listener needs it: its RECV ioctl blocks when nothing is pending, and it reports
// POLLHUP once every filtered process is gone.
Napi::Value PollNow(const Napi::CallbackInfo& info) {
  const int fd = ToFd(info[0], "pollNow", "fd");
  pollfd p{fd, POLLIN, 0};
  int n;
  do n = poll(&p, 1, 0);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    const int err = errno;
    ThrowFdError(info.Env(), err, "poll", fd);
  }
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("readable", Napi::Boolean::New(info.Env(), (p.revents & POLLIN) != 0));
  o.Set("hangup", Napi::Boolean::New(info.Env(), (p.revents & POLLHUP) != 0));
  o.Set("error", Napi::Boolean::New(info.Env(), (p.revents & (POLLERR | POLLNVAL)) != 0));
  return o;
}

} // namespace

void RegisterFdWatch(Napi::Env env, Napi::Object exports) {
  Napi::FunctionReference* ctor = new Napi::FunctionReference(Napi::Persistent(FdWatcher::Class(env)));
  env.AddCleanupHook([ctor] { delete ctor; });
  exports.Set("watchFd", Napi::Function::New(env, WatchFd, "watchFd", ctor));
  exports.Set("pollNow", Napi::Function::New(env, PollNow, "pollNow"));
}

} // namespace loopfs
