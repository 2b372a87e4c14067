/**
 * Whether this kernel has the loopfs filesystem (the never-merged patches): then an
 * instance can be a loopfs mount whose devices the kernel itself scopes. Stock kernels
 * do not: loopfs keeps instances in userspace, which is the normal case, not a problem.
 */
import { readFileSync } from 'node:fs';
import type { Check } from './check.js';

export const kernelLoopfsCheck: Check = {
  id: 'kernel-loopfs',
  title: 'kernel loopfs',
  run() {
    let text = '';
    try {
      text = readFileSync('/proc/filesystems', 'utf8');
    } catch {
      // no /proc mounted: skipped, and said so
      return { status: 'skip', detail: 'no /proc/filesystems' };
    }
    const has = text.split('\n').some((l) => l.split('\t').pop() === 'loopfs');
    return has
      ? { status: 'ok', detail: 'the kernel has loopfs: instances may be loopfs mounts' }
      : { status: 'skip', detail: 'not in this kernel: instances are kept by loopfs in userspace' };
  },
};
