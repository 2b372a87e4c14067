// Limits and option numbers for the unix-socket calls (socket.cc), shared with constants.cc.
#pragma once

#include <sys/socket.h>

// The most fds one SCM_RIGHTS message may carry (include/net/scm.h; not in UAPI headers).
#ifndef SCM_MAX_FD
#define SCM_MAX_FD 253
#endif

// getsockopt(SO_PEERPIDFD): a pidfd for the peer captured at connect time (Linux 6.5).
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
