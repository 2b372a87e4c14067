// spawnVm (native/spawn.cc): a program started as posix_spawn starts one, checked against
// what the kernel says of the child: /proc/self/fd of the program (fds[i] is its fd i,
// -1 closed, nothing else of ours but close-on-exec fds), /proc/self/status (no signal
// ignored or blocked although node ignores SIGPIPE), its cwd, the pidfd that turns readable
// at exit, and the failed steps thrown with their syscall after the child was reaped.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { native } from '../../src/kernel/native.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';

/** Everything the child wrote to the socket `fd` until it closed it. */
function readAll(fd: number): string {
  const n = native();
  let out = '';
  for (;;) {
    const m = n.recvMsg(fd, 65536, 0);
    if (!m || m.eof) return out;
    out += m.data.toString('utf8');
  }
}

describe('spawnVm', () => {
  let tmp = '';
  beforeAll(() => {
    tmp = makeTempDir('loopfs-spawn');
  });
  afterAll(() => removeTree(tmp));

  it('gives the program fds[i] as fd i (-1: closed), its cwd, default signals and an empty mask; the pidfd turns readable at its exit', async () => {
    const n = native();
    const [mine, theirs] = n.socketPair(false);
    const devNull = n.open('/dev/null', n.constants.O_RDWR);
    const marker = n.open(path.join(tmp, 'marker'), n.constants.O_RDWR | n.constants.O_CREAT, 0o600);
    try {
      const script = 'readlink /proc/self/fd/0 /proc/self/fd/3 /proc/self/fd/4 /proc/self/fd/5; pwd; grep -E "^Sig(Ign|Blk):" /proc/self/status; exit 7';
      // fd 4 of ours is whatever it is: -1 leaves the child's fd 4 closed
      const s = n.spawnVm('/bin/sh', ['sh', '-c', script], ['PATH=/usr/bin:/bin'], [devNull, theirs, theirs, marker, -1, marker], tmp);
      n.close(theirs);
      expect(readAll(mine)).toBe(`/dev/null\n${tmp}/marker\n${tmp}/marker\n${tmp}\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n`);
      // the socket's end of stream comes when the child's fds are released, a moment before
      // the exit the pidfd reports: wait for it (bounded)
      const end = Date.now() + 10_000;
      while (!n.pollNow(s.pidfd).readable && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
      expect(n.pollNow(s.pidfd).readable).toBe(true);
      expect(n.waitPid(s.pid, false)).toEqual({ pid: s.pid, code: 7, signal: null });
      n.close(s.pidfd);
    } finally {
      for (const fd of [mine, devNull, marker]) n.close(fd);
    }
  });

  it('throws the failed step, execve with the path or chdir, and leaves no child behind', () => {
    const n = native();
    const children = () => fs.readFileSync(`/proc/self/task/${process.pid}/children`, 'utf8').trim();
    const before = children();
    expect(() => n.spawnVm(path.join(tmp, 'missing'), ['missing'], [], [], '/')).toThrow(
      expect.objectContaining({ code: 'ENOENT', syscall: 'execve', path: path.join(tmp, 'missing') }),
    );
    expect(() => n.spawnVm('/bin/true', ['true'], [], [], path.join(tmp, 'nodir'))).toThrow(expect.objectContaining({ code: 'ENOENT', syscall: 'chdir' }));
    expect(children()).toBe(before);
  });
});
