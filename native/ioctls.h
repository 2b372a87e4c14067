// The one place where loop and block ioctl numbers (and the kernel structs they carry)
// enter the addon. Every other file names a request through the Ioctl values below, so
// the number and the label used in error messages ("ioctl(LOOP_CONFIGURE)") can never
// drift apart.
#pragma once

#include <linux/fs.h>
#include <linux/loop.h>
#include <linux/major.h>
#include <linux/types.h>

namespace loopfs {

// The build host's UAPI headers may predate the running kernel (containers built on old
// distributions). Requests missing from them are defined with their fixed ABI values so
// the addon can still issue them; an old kernel then answers EINVAL/ENOTTY, which callers
// treat as "not supported" and fall back.
#ifndef LOOP_SET_CAPACITY
#define LOOP_SET_CAPACITY 0x4C07 // Linux 2.6.30
#endif
#ifndef LOOP_SET_DIRECT_IO
#define LOOP_SET_DIRECT_IO 0x4C08 // Linux 4.4
#endif
#ifndef LOOP_SET_BLOCK_SIZE
#define LOOP_SET_BLOCK_SIZE 0x4C09 // Linux 4.14
#endif
#ifndef LOOP_CTL_ADD
#define LOOP_CTL_ADD 0x4C80 // Linux 3.1, with /dev/loop-control
#define LOOP_CTL_REMOVE 0x4C81
#define LOOP_CTL_GET_FREE 0x4C82
#endif

#ifndef LOOP_CONFIGURE
// LOOP_CONFIGURE and struct loop_config arrived together (Linux 5.8), so a header without
// the request also lacks the struct: mirror its ABI layout here.
#define LOOP_CONFIGURE 0x4C0A
struct loop_config {
  __u32 fd;
  __u32 block_size;
  struct loop_info64 info;
  __u64 __reserved[8];
};
#else
using ::loop_config;
#endif

// Guard the ABI: a wrong layout would make the kernel read garbage offsets or names.
static_assert(sizeof(struct loop_info64) == 232, "struct loop_info64 ABI size");
static_assert(sizeof(loop_config) == 304, "struct loop_config ABI size");

// An ioctl request and the label reported as SysError.syscall when it fails.
struct Ioctl {
  unsigned long request;
  const char* label;
};

#define LOOPFS_IOCTL(req) Ioctl{static_cast<unsigned long>(req), "ioctl(" #req ")"}

// /dev/loop-control
inline constexpr Ioctl kLoopCtlAdd = LOOPFS_IOCTL(LOOP_CTL_ADD);
inline constexpr Ioctl kLoopCtlRemove = LOOPFS_IOCTL(LOOP_CTL_REMOVE);
inline constexpr Ioctl kLoopCtlGetFree = LOOPFS_IOCTL(LOOP_CTL_GET_FREE);

// /dev/loopN
inline constexpr Ioctl kLoopSetFd = LOOPFS_IOCTL(LOOP_SET_FD);
inline constexpr Ioctl kLoopClrFd = LOOPFS_IOCTL(LOOP_CLR_FD);
inline constexpr Ioctl kLoopSetStatus64 = LOOPFS_IOCTL(LOOP_SET_STATUS64);
inline constexpr Ioctl kLoopGetStatus64 = LOOPFS_IOCTL(LOOP_GET_STATUS64);
inline constexpr Ioctl kLoopSetCapacity = LOOPFS_IOCTL(LOOP_SET_CAPACITY);
inline constexpr Ioctl kLoopSetDirectIo = LOOPFS_IOCTL(LOOP_SET_DIRECT_IO);
inline constexpr Ioctl kLoopSetBlockSize = LOOPFS_IOCTL(LOOP_SET_BLOCK_SIZE);
inline constexpr Ioctl kLoopConfigure = LOOPFS_IOCTL(LOOP_CONFIGURE);

// Any block device
inline constexpr Ioctl kBlkGetSize64 = LOOPFS_IOCTL(BLKGETSIZE64);
inline constexpr Ioctl kBlkSszGet = LOOPFS_IOCTL(BLKSSZGET);
inline constexpr Ioctl kBlkRaGet = LOOPFS_IOCTL(BLKRAGET);
inline constexpr Ioctl kBlkRaSet = LOOPFS_IOCTL(BLKRASET);

// A seccomp listener fd (seccomp.cc). <linux/seccomp.h> is included here, not beside the
// loop headers above, so only files that need the notification structs pull it in.
#ifdef LOOPFS_WANT_SECCOMP_IOCTLS
inline constexpr Ioctl kSeccompNotifRecv = LOOPFS_IOCTL(SECCOMP_IOCTL_NOTIF_RECV);
inline constexpr Ioctl kSeccompNotifSend = LOOPFS_IOCTL(SECCOMP_IOCTL_NOTIF_SEND);
inline constexpr Ioctl kSeccompNotifIdValid = LOOPFS_IOCTL(SECCOMP_IOCTL_NOTIF_ID_VALID);
#endif

#undef LOOPFS_IOCTL

} // namespace loopfs
