/**
 * Where the compiled FUSE driver launcher is: native/fuse_exec.c, built next to the addon
 * by native/build.mjs (binding.gyp target loopfs-fuse-exec). It is a program, not part of
 * the addon: it runs where node must not (between fork and a FUSE driver's exec, and as
 * the driver's fusermount). src/mounting/fuse-driver.ts runs it.
 */
import { fileURLToPath } from 'node:url';

export const FUSE_EXEC = fileURLToPath(new URL('../../native/build/Release/loopfs-fuse-exec', import.meta.url));
