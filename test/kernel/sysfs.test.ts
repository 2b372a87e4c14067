// src/kernel/sysfs.ts against the kernel: listing order is the kernel's readdir() order (what
// `ls -U` prints), and the SysfsLoop readers on a device this file set up with util-linux
// (an independent witness) on an index it added itself.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loopNamesInSysfs, readdirRaw, SysfsLoop, SYS_BLOCK, sysfsAvailable } from '../../src/kernel/sysfs.js';
import { REF_LOSETUP } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import { kernelSkipReason, makeImage, MiB, OwnedIndexes, skipTitle, SHARED_MACHINE } from './support.js';

const reason = kernelSkipReason('kernel/sysfs');

function losetup(...args: string[]): void {
  execFileSync(REF_LOSETUP, args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

describe('sysfs: listing', () => {
  const noSys = fs.existsSync(SYS_BLOCK) ? undefined : 'no /sys/block';
  it.skipIf(noSys !== undefined)('loopNamesInSysfs() is `ls -U /sys/block | grep ^loop`, in kernel order', async () => {
    // with root, add a dozen devices of our own so that there is an order to get wrong
    const extra = reason === undefined ? new OwnedIndexes() : undefined;
    try {
      for (let k = 0; extra && k < 12; k++) extra.add(400);
      // other suites add and remove loop devices concurrently: read both again (bounded) while
      // they differ; an ordering bug would differ every time
      const lsLoops = () =>
        execFileSync('sh', ['-c', 'ls -U /sys/block | grep ^loop || true'], { encoding: 'utf8' })
          .split('\n')
          .filter(Boolean);
      let ours: string[] = [];
      let ls: string[] = [];
      for (let attempt = 0; attempt < 10; attempt++) {
        ours = loopNamesInSysfs();
        ls = lsLoops();
        if (JSON.stringify(ours) === JSON.stringify(ls)) break;
      }
      expect(ours).toEqual(ls);
      // kernfs hands out names in hash order: with this many names a numeric or alphabetical
      // order would mean someone sorted them
      if (ours.length >= 8) {
        expect(ours).not.toEqual([...ours].sort((a, b) => Number(a.slice(4)) - Number(b.slice(4))));
        expect(ours).not.toEqual([...ours].sort());
      }
    } finally {
      await extra?.cleanup();
    }
  });

  it.skipIf(noSys !== undefined)('readdirRaw() is `ls -U` (no dot entries, not sorted)', () => {
    let ours: string[] = [];
    let ls: string[] = [];
    for (let attempt = 0; attempt < 10; attempt++) {
      ours = readdirRaw(SYS_BLOCK);
      ls = execFileSync('ls', ['-U', SYS_BLOCK], { encoding: 'utf8' }).split('\n').filter(Boolean);
      if (JSON.stringify(ours) === JSON.stringify(ls)) break;
    }
    expect(ours).toEqual(ls);
    if (ours.length > 2) {
      const sorted = [...ours].sort();
      // informational: on this kernel /sys/block is hashed, not alphabetical
      if (JSON.stringify(sorted) === JSON.stringify(ours)) console.warn('[note] /sys/block readdir order happens to be sorted here');
    }
  });

  it('readdirRaw() of a missing directory is []', () => {
    expect(readdirRaw('/nonexistent-loopfs-dir')).toEqual([]);
  });

  it('readdirRaw() keeps readdir order of a plain directory (compared with ls -U)', () => {
    const dir = makeTempDir('loopfs-readdir');
    try {
      for (const n of ['b', 'a', 'loop10', 'loop2', 'c d', 'z']) fs.writeFileSync(path.join(dir, n), '');
      const ls = execFileSync('ls', ['-U', dir], { encoding: 'utf8' }).split('\n').filter(Boolean);
      expect(readdirRaw(dir)).toEqual(ls);
    } finally {
      removeTree(dir);
    }
  });

  it.skipIf(noSys !== undefined)('sysfsAvailable() is true with sysfs mounted', () => {
    expect(sysfsAvailable()).toBe(true);
  });
});

describe.skipIf(reason !== undefined)(skipTitle('sysfs: SysfsLoop readers', reason), SHARED_MACHINE, () => {
  let dir: string;
  let owned: OwnedIndexes;

  beforeAll(() => {
    dir = makeTempDir('loopfs-sysfs');
  });
  afterAll(() => {
    if (dir) removeTree(dir);
  });
  afterEach(async () => {
    await owned?.cleanup();
  });

  it('reads every attribute of a bound device (file name with spaces)', () => {
    owned = new OwnedIndexes().ownBacking(dir);
    const idx = owned.add();
    const file = makeImage(path.join(dir, 'disk image with spaces.img'), 8 * MiB);
    losetup('-o', '4096', '--sizelimit', String(2 * MiB), '-r', '-P', '-b', '4096', '--direct-io=on', `/dev/loop${idx}`, file);

    for (const s of [SysfsLoop.forName(`loop${idx}`), SysfsLoop.forDevno(7, idx)]) {
      expect(s.isBound()).toBe(true);
      expect(s.backingFile()).toBe(file);
      expect(s.offset()).toBe(4096n);
      expect(s.sizelimit()).toBe(BigInt(2 * MiB));
      expect(s.autoclear()).toBe(false);
      expect(s.partscan()).toBe(true);
      expect(s.dio()).toBe(true);
      expect(s.readOnly()).toBe(true);
      expect(s.logicalBlockSize()).toBe(4096n);
      expect(s.sizeSectors()).toBe(BigInt((2 * MiB) / 512));
      expect(s.devno()).toEqual([7, idx]);
    }
    expect(SysfsLoop.forName(`loop${idx}`).dir).toBe(`/sys/block/loop${idx}`);
    expect(SysfsLoop.forDevno(7, idx).dir).toBe(`/sys/dev/block/7:${idx}`);
  });

  it('keeps trailing spaces and UTF-8 in the backing file name', () => {
    owned = new OwnedIndexes().ownBacking(dir);
    const idx = owned.add();
    const file = makeImage(path.join(dir, 'ünïcødé ends in space '), MiB);
    losetup(`/dev/loop${idx}`, file);
    const s = SysfsLoop.forName(`loop${idx}`);
    expect(s.backingFile()).toBe(file);
    expect(s.readOnly()).toBe(false);
    expect(s.dio()).toBe(false);
    expect(s.partscan()).toBe(false);
    expect(s.offset()).toBe(0n);
    expect(s.sizelimit()).toBe(0n);
    expect(s.logicalBlockSize()).toBe(512n);
  });

  it('shows " (deleted)" after the backing file is unlinked', () => {
    owned = new OwnedIndexes().ownBacking(dir);
    const idx = owned.add();
    const file = makeImage(path.join(dir, 'to be deleted.img'), MiB);
    losetup(`/dev/loop${idx}`, file);
    fs.unlinkSync(file);
    const s = SysfsLoop.forName(`loop${idx}`);
    expect(s.backingFile()).toBe(`${file} (deleted)`);
    expect(s.isBound()).toBe(true);
  });

  it('returns null for the loop/ attributes of an unbound device', () => {
    owned = new OwnedIndexes().ownBacking(dir);
    const idx = owned.add();
    const s = SysfsLoop.forName(`loop${idx}`);
    expect(s.isBound()).toBe(false);
    expect(s.backingFile()).toBeNull();
    expect(s.offset()).toBeNull();
    expect(s.sizelimit()).toBeNull();
    expect(s.autoclear()).toBeNull();
    expect(s.partscan()).toBeNull();
    expect(s.dio()).toBeNull();
    // the block-layer attributes exist for any device
    expect(s.readOnly()).toBe(false);
    expect(s.sizeSectors()).toBe(0n);
    expect(s.logicalBlockSize()).toBe(512n);
    expect(s.devno()).toEqual([7, idx]);
  });

  it('prefetchBound() keeps the bound devices in order, read in one call as the readers read them', () => {
    owned = new OwnedIndexes().ownBacking(dir);
    const bound = owned.add();
    const idle = owned.add();
    const gone = owned.add();
    owned.removeNow(gone);
    // a long name: the attribute still comes back whole from a single read
    const deep = path.join(dir, 'd'.repeat(200), 'e'.repeat(200), 'f'.repeat(200));
    fs.mkdirSync(deep, { recursive: true });
    const file = makeImage(path.join(deep, `${'g'.repeat(200)} end `), 2 * MiB);
    losetup('-o', '512', '-r', `/dev/loop${bound}`, file);

    const loops = [gone, bound, idle].map((i) => SysfsLoop.forName(`loop${i}`));
    const found = SysfsLoop.prefetchBound(loops, ['loop/backing_file', 'ro', 'loop/offset', 'queue/logical_block_size']);
    expect(found).toEqual([loops[1]]);
    const fresh = SysfsLoop.forName(`loop${bound}`);
    for (const s of [found[0], fresh]) {
      expect(s.backingFile()).toBe(file);
      expect(s.offset()).toBe(512n);
      expect(s.readOnly()).toBe(true);
      expect(s.logicalBlockSize()).toBe(512n);
    }
    // an idle or missing device: only loop/offset was tried, anything else reads on demand
    expect(loops[2].offset()).toBeNull();
    expect(loops[2].readOnly()).toBe(false);
    expect(loops[0].offset()).toBeNull();
    expect(loops[0].readOnly()).toBeNull();
  });

  it('returns null for everything when the device does not exist', () => {
    owned = new OwnedIndexes().ownBacking(dir);
    const idx = owned.add();
    // remove it again right away: we now probe a number that certainly has no device
    owned.removeNow(idx);
    for (const s of [SysfsLoop.forName(`loop${idx}`), SysfsLoop.forDevno(7, idx)]) {
      expect(s.isBound()).toBe(false);
      expect(s.readOnly()).toBeNull();
      expect(s.sizeSectors()).toBeNull();
      expect(s.logicalBlockSize()).toBeNull();
      expect(s.devno()).toBeNull();
    }
  });
});
