// pidfd_open(2)'s number and flag, shared by ns.cc, socket.cc (peerPidfd's fallback) and
// constants.cc. glibc's wrapper is 2.36+ and musl has none, so callers use syscall(2).
#pragma once

#include <fcntl.h>
#include <sys/syscall.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 // Linux 5.3, the same number on every architecture
#endif
#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK // Linux 5.10
#endif
