// The native batches a listing of a thousand devices uses, on real devices of our own:
// loopStatusMany (LOOP_GET_STATUS64 of many nodes, on several threads for a big batch) and
// blockRdevs (stat of many /dev nodes), and LoopDevice.prefetchStatus / areLoopDevices on
// top of them: each answer is the one the single call gives, in the order asked.
// Devices touched: only indexes this file adds itself (OwnedIndexes).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { areLoopDevices, LoopDevice } from '../../src/kernel/loop-device.js';
import { native } from '../../src/kernel/native.js';
import { REF_LOSETUP } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import { kernelSkipReason, makeImage, MiB, OwnedIndexes, skipTitle, SHARED_MACHINE } from './support.js';

const reason = kernelSkipReason('kernel/batches');
const ENXIO = 6;
const ENOENT = 2;

describe.skipIf(reason !== undefined)(skipTitle('native batches of a listing', reason), SHARED_MACHINE, () => {
  let dir: string;
  let file: string;
  let owned: OwnedIndexes;
  beforeAll(() => {
    dir = makeTempDir('loopfs-batches');
    file = makeImage(`${dir}/a.img`, MiB);
  });
  afterAll(() => {
    if (dir) removeTree(dir);
  });
  afterEach(async () => {
    await owned?.cleanup();
  });

  it('loopStatusMany: the status of a bound device (the inode of its file), ENXIO for an unbound one, ENOENT for no node; the same in a batch of 600', () => {
    owned = new OwnedIndexes().ownBacking(dir);
    const bound = owned.add();
    const idle = owned.add();
    execFileSync(REF_LOSETUP, ['-o', '4096', `/dev/loop${bound}`, file]);
    const n = native();
    const [info, unbound, none] = n.loopStatusMany([`/dev/loop${bound}`, `/dev/loop${idle}`, `${dir}/none`]);
    const st = fs.statSync(file, { bigint: true });
    expect(typeof info).toBe('object');
    const li = info as Exclude<typeof info, number>;
    expect([li.inode, li.device, li.offset, li.number]).toEqual([st.ino, st.dev, 4096n, bound]);
    expect([unbound, none]).toEqual([ENXIO, ENOENT]);
    // the single call gives the same status
    const fd = n.open(`/dev/loop${bound}`, n.constants.O_RDONLY);
    try {
      expect(li).toEqual(n.loopGetStatus64(fd));
    } finally {
      n.close(fd);
    }
    // above the threshold for threads: every answer in its place
    const paths = Array.from({ length: 600 }, (_, i) => (i % 2 ? `/dev/loop${bound}` : `/dev/loop${idle}`));
    const many = n.loopStatusMany(paths);
    expect(many.map((r) => (typeof r === 'number' ? r : r.inode))).toEqual(paths.map((_, i) => (i % 2 ? st.ino : ENXIO)));
  });

  it('prefetchStatus gives each device the status it would ask for itself, and leaves a failed one to fail itself', () => {
    owned = new OwnedIndexes().ownBacking(dir);
    const bound = owned.add();
    const idle = owned.add();
    execFileSync(REF_LOSETUP, [`/dev/loop${bound}`, file]);
    const devs = [new LoopDevice(`/dev/loop${bound}`), new LoopDevice(`/dev/loop${idle}`)];
    LoopDevice.prefetchStatus(devs);
    // prefetched: no fd was opened for the bound one, and its ids are the file's
    expect(devs.map((d) => d.isOpen)).toEqual([false, false]);
    const st = fs.statSync(file, { bigint: true });
    expect(devs[0].backingIds()).toEqual({ dev: st.dev, ino: st.ino });
    expect(devs[0].isOpen).toBe(false);
    // the unbound one asks itself, and gets ENXIO as before
    expect(devs[1].backingIds()).toBeNull();
    expect(() => devs[1].status()).toThrow(expect.objectContaining({ code: 'ENXIO' }));
    for (const d of devs) d.close();
  });

  it('blockRdevs / areLoopDevices: a loop node (also through a symlink) is one; a character device, a file and a missing path are not', () => {
    owned = new OwnedIndexes().ownBacking(dir);
    const index = owned.add();
    fs.symlinkSync(`/dev/loop${index}`, `${dir}/link`);
    const paths = [`/dev/loop${index}`, `${dir}/link`, '/dev/null', file, `${dir}/none`];
    const rdev = fs.statSync(`/dev/loop${index}`).rdev;
    expect(native().blockRdevs(paths)).toEqual([rdev, rdev, -1, -1, -1]);
    expect(areLoopDevices(paths)).toEqual([true, true, false, false, false]);
  });
});
