// attach() with an already open backing file (AttachRequest.fileFd, what the broker does with
// the fd a client passed): the device is bound to exactly that open file, read-only when asked
// (the broker asks when the fd is O_RDONLY), and the fd is neither closed nor duplicated. Works
// on high indexes this file adds itself (test/kernel/support.ts OwnedIndexes), detached and
// removed in afterEach.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { attach, AttachError } from '../../src/kernel/attach.js';
import { LoopDevice } from '../../src/kernel/loop-device.js';
import { native } from '../../src/kernel/native.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import { kernelSkipReason, makeImage, MiB, OwnedIndexes, readSys, SHARED_MACHINE, skipTitle } from '../kernel/support.js';

const reason = kernelSkipReason('broker/attach-fd');
const C = native().constants;

/** fds of this process open on `file`. */
function fdsOn(file: string): string[] {
  return fs.readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return fs.readlinkSync(`/proc/self/fd/${fd}`) === file;
    } catch {
      return false;
    }
  });
}

describe.skipIf(reason !== undefined)(skipTitle('attach with fileFd', reason), SHARED_MACHINE, () => {
  let dir: string;
  let owned: OwnedIndexes;
  let file: string;

  beforeEach(() => {
    dir = makeTempDir('loopfs-attachfd');
    owned = new OwnedIndexes().ownBacking(dir);
    file = makeImage(path.join(dir, 'img'), MiB);
  });

  afterEach(async () => {
    try {
      await owned.cleanup();
    } finally {
      removeTree(dir);
    }
  });

  it('binds the open file; read-only when asked; the fd stays open and is not duplicated', () => {
    const n = native();
    for (const [mode, flags, ro] of [
      [C.O_RDONLY, C.LO_FLAGS_READ_ONLY, '1'],
      [C.O_RDWR, 0, '0'],
    ] as const) {
      const idx = owned.add();
      const dev = owned.track(new LoopDevice(`/dev/loop${idx}`));
      const fd = n.open(file, mode);
      try {
        // the name is only recorded (lo_file_name); nothing is opened by it
        const r = attach(dev, { file: '/nonexistent/recorded-name', fileFd: fd, flags });
        expect(r.readOnly).toBe(ro === '1');
        expect(readSys(`/sys/block/loop${idx}/loop/backing_file`)).toBe(file);
        expect(readSys(`/sys/block/loop${idx}/ro`)).toBe(ro);
        expect(n.fstat(fd).ino).toBe(fs.statSync(file, { bigint: true }).ino); // still open
        expect(fdsOn(file)).toEqual([String(fd)]);
        expect(dev.status().fileName.subarray(0, 27).toString()).toBe('/nonexistent/recorded-name\0');
      } finally {
        n.close(fd);
        dev.close();
      }
    }
  });

  it('a failure leaves the device unbound and the fd open', () => {
    const n = native();
    const idx = owned.add();
    const dev = owned.track(new LoopDevice(`/dev/loop${idx}`));
    const fd = n.open(dir, C.O_RDONLY | C.O_DIRECTORY);
    try {
      let err: unknown;
      try {
        attach(dev, { file: dir, fileFd: fd, flags: C.LO_FLAGS_READ_ONLY });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(AttachError);
      expect((err as AttachError).code).toBe('EINVAL');
      expect(readSys(`/sys/block/loop${idx}/loop/backing_file`)).toBeNull();
      expect(n.fstat(fd).mode & C.S_IFMT).toBe(C.S_IFDIR);
    } finally {
      n.close(fd);
    }
  });
});
