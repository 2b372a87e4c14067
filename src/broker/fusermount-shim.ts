/**
 * What libfuse 2 runs as `fusermount` for a FUSE driver started by fuse.ts (bind-mounted
 * over /bin/fusermount in the driver's private mount namespace): instead of mounting, it
 * hands libfuse the /dev/fuse fd of the mount loopfs already made (fd 3, inherited) over
 * the socket libfuse names in $_FUSE_COMMFD, as one byte with SCM_RIGHTS, which is what
 * the real fusermount sends. Arguments (-o OPTIONS -- MOUNTPOINT) are ignored on purpose:
 * the mount and its options are the kernel's and loopfs's, not the driver's.
 */
import { native } from '../kernel/native.js';

const FUSE_FD = 3;
const commFd = Number(process.env._FUSE_COMMFD);
if (!Number.isInteger(commFd) || commFd < 0) {
  process.stderr.write('loopfs fusermount shim: _FUSE_COMMFD is not set\n');
  process.exit(1);
}
try {
  native().sendMsg(commFd, Buffer.from([0]), [FUSE_FD]);
} catch (e) {
  process.stderr.write(`loopfs fusermount shim: ${(e as Error).message}\n`);
  process.exit(1);
}
