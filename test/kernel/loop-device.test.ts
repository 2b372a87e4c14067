// LoopDevice (src/kernel/loop-device.ts) on real devices: configure/status/clear, every
// attribute getter, the ioctls on a bound device, and assertLoopDevice. Every test works on a
// high index it added itself; afterEach closes the test's objects, detaches with util-linux what
// is still bound and removes the index.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { assertLoopDevice, cString, LoopDevice } from '../../src/kernel/loop-device.js';
import { native } from '../../src/kernel/native.js';
import { REF_LOSETUP } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import { kernelSkipReason, makeImage, MiB, mknodLoop, OwnedIndexes, readSys, skipTitle, sysBacking, waitIndexUnbound, NO_RETRY, SHARED_MACHINE } from './support.js';
import { sysErrorOf } from '../helpers/errors.js';

const reason = kernelSkipReason('kernel/loop-device');
const n = native();
const C = n.constants;

describe('cString', () => {
  it('stops at the first NUL and decodes UTF-8', () => {
    expect(cString(Buffer.from('abc\0def'))).toBe('abc');
    expect(cString(Buffer.from('no nul'))).toBe('no nul');
    expect(cString(Buffer.from('ü\0', 'utf8'))).toBe('ü');
    expect(cString(Buffer.alloc(64))).toBe('');
  });
});

describe.skipIf(reason !== undefined)(skipTitle('LoopDevice', reason), SHARED_MACHINE, () => {
  let dir: string;
  let owned: OwnedIndexes;
  let idx: number;
  let node: string;
  const fds: number[] = [];

  /** Open a backing file; closed in afterEach. */
  const openFile = (file: string, flags = C.O_RDWR): number => {
    const fd = n.open(file, flags);
    fds.push(fd);
    return fd;
  };
  const dev = (p = node) => owned.track(new LoopDevice(p));

  beforeAll(() => {
    dir = makeTempDir('loopfs-loopdev');
  });
  afterAll(() => {
    if (dir) removeTree(dir);
  });
  beforeEach(() => {
    owned = new OwnedIndexes().ownBacking(dir);
    idx = owned.add();
    node = `/dev/loop${idx}`;
  });
  afterEach(async () => {
    for (const fd of fds.splice(0)) n.close(fd);
    await owned.cleanup();
  });

  it('locates itself: devno, index, sysfs (also through a node outside /dev)', () => {
    const d = dev();
    expect(d.devno()).toEqual([7, idx]);
    expect(d.index()).toBe(idx);
    expect(d.sysfs()?.dir).toBe(`/sys/dev/block/7:${idx}`);
    const other = dev(mknodLoop(dir, `node-${idx}`, idx));
    expect(other.index()).toBe(idx);
    expect(other.sysfs()?.devno()).toEqual([7, idx]);
    fs.rmSync(other.path);
    const f = dev(makeImage(path.join(dir, 'plain'), 0));
    expect(f.devno()).toBeNull();
    expect(f.index()).toBeNull();
    expect(f.sysfs()).toBeNull();
    expect(dev('/dev/null').index()).toBeNull();
  });

  it('configure() binds with LOOP_CONFIGURE; status() reads it back; clear() unbinds at close', async () => {
    const file = makeImage(path.join(dir, 'cfg.img'), 4 * MiB);
    const d = dev();
    expect(d.isOpen).toBe(false);
    expect(d.open('rw')).toBeGreaterThanOrEqual(0);
    const how = d.configure({ backingFd: openFile(file), offset: 512n, sizelimit: BigInt(MiB), fileName: file, cryptName: 'owner-tag' });
    expect(how).toBe('configure');
    expect(sysBacking(idx)).toBe(file);

    const st = fs.statSync(file, { bigint: true });
    const info = d.status();
    expect(info.offset).toBe(512n);
    expect(info.sizelimit).toBe(BigInt(MiB));
    expect(info.number).toBe(idx);
    expect(info.device).toBe(st.dev);
    expect(info.inode).toBe(st.ino);
    expect(info.flags & C.LO_FLAGS_READ_ONLY).toBe(0);
    expect(cString(info.fileName)).toBe(file.slice(0, 63));
    // kernels since cryptoloop's removal accept lo_crypt_name and read back zeros (6.18 does)
    expect(['owner-tag', '']).toContain(cString(info.cryptName));
    expect(d.sizeBytes()).toBe(BigInt(MiB));
    expect(d.isBound()).toBe(true);
    expect(d.tryStatus()).not.toBeNull();

    d.clear();
    // LOOP_CLR_FD completes when the last opener closes the device (our fd)
    d.close();
    expect(d.isOpen).toBe(false);
    expect(await waitIndexUnbound(idx)).toBe(true);
    const again = dev();
    expect(again.isBound()).toBe(false);
    expect(again.tryStatus()).toBeNull();
    expect(sysErrorOf(() => again.status()).code).toBe('ENXIO');
  });

  it('configure() on a device that is already bound fails with EBUSY', () => {
    const a = makeImage(path.join(dir, 'a.img'), MiB);
    const b = makeImage(path.join(dir, 'b.img'), MiB);
    execFileSync(REF_LOSETUP, [node, a]);
    const d = dev();
    d.open('rw');
    expect(sysErrorOf(() => d.configure({ backingFd: openFile(b) })).code).toBe('EBUSY');
    expect(sysBacking(idx)).toBe(a);
  });

  it('attribute getters on a bound device (set up by util-linux)', () => {
    const file = makeImage(path.join(dir, 'attrs with space.img'), 8 * MiB);
    execFileSync(REF_LOSETUP, ['-o', '8192', '--sizelimit', String(2 * MiB), '-r', '-P', '-b', '4096', '--direct-io=on', node, file]);
    const d = dev();
    expect(d.isBound()).toBe(true);
    expect(d.backingFile()).toBe(file);
    expect(d.offset()).toBe(8192n);
    expect(d.sizelimit()).toBe(BigInt(2 * MiB));
    expect(d.autoclear()).toBe(false);
    expect(d.readOnly()).toBe(true);
    expect(d.directIo()).toBe(true);
    expect(d.partscan()).toBe(true);
    expect(d.logicalBlockSize()).toBe(4096n);
    expect(d.sectorSize()).toBe(4096);
    const st = fs.statSync(file, { bigint: true });
    expect(d.backingIds()).toEqual({ dev: st.dev, ino: st.ino });
    const flags = d.status().flags;
    expect(flags & C.LO_FLAGS_READ_ONLY).toBe(C.LO_FLAGS_READ_ONLY);
    expect(flags & C.LO_FLAGS_PARTSCAN).toBe(C.LO_FLAGS_PARTSCAN);
    expect(flags & C.LO_FLAGS_DIRECT_IO).toBe(C.LO_FLAGS_DIRECT_IO);
    expect(flags & C.LO_FLAGS_AUTOCLEAR).toBe(0);
  });

  it('autoclear() is true for a device configured with LO_FLAGS_AUTOCLEAR (which then clears on close)', async () => {
    const file = makeImage(path.join(dir, 'autoclear.img'), MiB);
    const d = dev();
    d.open('rw');
    d.configure({ backingFd: openFile(file), flags: C.LO_FLAGS_AUTOCLEAR });
    const viewer = dev();
    expect(viewer.autoclear()).toBe(true);
    expect(viewer.readOnly()).toBe(false);
    expect(viewer.directIo()).toBe(false);
    expect(viewer.partscan()).toBe(false);
    viewer.close();
    d.close();
    expect(await waitIndexUnbound(idx)).toBe(true);
  });

  it('without sysfs the getters fall back to LOOP_GET_STATUS64 ("*" marks a truncated name)', () => {
    class NoSysfs extends LoopDevice {
      override sysfs() {
        return null;
      }
    }
    const long = path.join(dir, `${'x'.repeat(80)}.img`);
    makeImage(long, 2 * MiB);
    execFileSync(REF_LOSETUP, ['-o', '1024', '--sizelimit', String(MiB), '-r', node, long]);
    const d = owned.track(new NoSysfs(node));
    expect(d.backingFile()).toBe(`${long.slice(0, 62)}*`);
    expect(d.offset()).toBe(1024n);
    expect(d.sizelimit()).toBe(BigInt(MiB));
    expect(d.readOnly()).toBe(true);
    expect(d.autoclear()).toBe(false);
    expect(d.directIo()).toBe(false);
    expect(d.logicalBlockSize()).toBe(512n); // BLKSSZGET
    expect(d.isBound()).toBe(true);
    expect(dev().backingFile()).toBe(long); // sysfs has it in full
    d.close();

    const unbound = owned.track(new NoSysfs(`/dev/loop${owned.add()}`));
    expect(unbound.isBound()).toBe(false);
    expect(unbound.backingFile()).toBeNull();
    expect(unbound.offset()).toBeNull();
  });

  it('getters on an unbound device: null / false', () => {
    const d = dev();
    expect(d.isBound()).toBe(false);
    expect(d.backingFile()).toBeNull();
    expect(d.offset()).toBeNull();
    expect(d.sizelimit()).toBeNull();
    expect(d.autoclear()).toBe(false);
    expect(d.readOnly()).toBe(false);
    expect(d.directIo()).toBe(false);
    // util-linux loopcxt_is_partscan(): without loop/partscan, "does the kernel support it": yes
    expect(d.partscan()).toBe(true);
    expect(d.backingIds()).toBeNull();
    expect(d.logicalBlockSize()).toBe(512n);
  });

  it('setCapacity() picks up a grown backing file', () => {
    const file = makeImage(path.join(dir, 'grow.img'), MiB);
    execFileSync(REF_LOSETUP, [node, file]);
    const d = dev();
    expect(d.sizeBytes()).toBe(BigInt(MiB));
    fs.truncateSync(file, 3 * MiB);
    expect(d.sizeBytes()).toBe(BigInt(MiB)); // not before LOOP_SET_CAPACITY
    d.setCapacity();
    expect(d.sizeBytes()).toBe(BigInt(3 * MiB));
    expect(readSys(`/sys/block/loop${idx}/size`)).toBe(String((3 * MiB) / 512));
  });

  it('setDirectIo() toggles direct I/O (sysfs and getter)', () => {
    const file = makeImage(path.join(dir, 'dio.img'), MiB);
    execFileSync(REF_LOSETUP, [node, file]);
    const d = dev();
    expect(d.directIo()).toBe(false);
    d.setDirectIo(true);
    expect(readSys(`/sys/block/loop${idx}/loop/dio`)).toBe('1');
    expect(d.directIo()).toBe(true);
    d.setDirectIo(false);
    expect(readSys(`/sys/block/loop${idx}/loop/dio`)).toBe('0');
    expect(d.directIo()).toBe(false);
  });

  // BUG (loop-device.ts:97-100 with :159-161): status() is cached and setDirectIo() does not
  // drop the cache, so status().flags keeps reporting the old LO_FLAGS_DIRECT_IO.
  it('status() reflects LOOP_SET_DIRECT_IO done through the same object', NO_RETRY, () => {
    const file = makeImage(path.join(dir, 'dio-cache.img'), MiB);
    execFileSync(REF_LOSETUP, [node, file]);
    const d = dev();
    expect(d.status().flags & C.LO_FLAGS_DIRECT_IO).toBe(0);
    d.setDirectIo(true);
    expect(readSys(`/sys/block/loop${idx}/loop/dio`)).toBe('1');
    expect(d.status().flags & C.LO_FLAGS_DIRECT_IO).toBe(C.LO_FLAGS_DIRECT_IO);
  });

  it('setBlockSize() changes the logical block size; 1000 is EINVAL', () => {
    const file = makeImage(path.join(dir, 'bs.img'), MiB);
    execFileSync(REF_LOSETUP, [node, file]);
    const d = dev();
    expect(d.logicalBlockSize()).toBe(512n);
    d.setBlockSize(4096);
    expect(d.logicalBlockSize()).toBe(4096n);
    expect(d.sectorSize()).toBe(4096);
    expect(readSys(`/sys/block/loop${idx}/queue/logical_block_size`)).toBe('4096');
    const e = sysErrorOf(() => d.setBlockSize(1000));
    expect(e.code).toBe('EINVAL');
    expect(d.logicalBlockSize()).toBe(4096n);
  });

  it('setStatus() changes autoclear on a bound device', () => {
    const file = makeImage(path.join(dir, 'status.img'), MiB);
    execFileSync(REF_LOSETUP, [node, file]);
    const d = dev();
    const info = d.status();
    d.setStatus({ ...info, flags: info.flags | C.LO_FLAGS_AUTOCLEAR });
    expect(readSys(`/sys/block/loop${idx}/loop/autoclear`)).toBe('1');
    d.setStatus({ ...d.status(), flags: d.status().flags & ~C.LO_FLAGS_AUTOCLEAR });
    expect(readSys(`/sys/block/loop${idx}/loop/autoclear`)).toBe('0');
  });

  it('open() reuses the fd for the same mode and reopens for another', () => {
    const d = dev();
    const r1 = d.open('r');
    expect(d.open('r')).toBe(r1);
    d.open('rw');
    expect(d.isOpen).toBe(true);
    const flagsOf = (fd: number) => Number(/flags:\s+([0-7]+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]);
    expect(flagsOf(d.open('rw')) & 3).toBe(C.O_RDWR);
    d.close();
    d.close();
    expect(d.isOpen).toBe(false);
  });

  // BUG (loop-device.ts:118): configure() keeps whatever mode the object is already open in
  // (`this.mode ?? 'rw'`). Any earlier read (isBound(), status(), a getter) on an unbound device
  // opens it O_RDONLY, and the kernel then binds read-only (loop_configure() sets
  // LO_FLAGS_READ_ONLY when the loop device was not opened for writing), although no
  // LO_FLAGS_READ_ONLY was asked for. util-linux's loopcxt_setup_device() re-opens the device
  // "to fix read/write mode". attach() is not affected (it reopens first).
  it('configure() without LO_FLAGS_READ_ONLY gives a writable device even after a read', NO_RETRY, () => {
    const file = makeImage(path.join(dir, 'rw.img'), MiB);
    const d = dev();
    expect(d.isBound()).toBe(false); // opens the device read-only (ioctl fallback)
    d.configure({ backingFd: openFile(file) });
    expect(readSys(`/sys/block/loop${idx}/ro`)).toBe('0');
  });
});

describe.skipIf(reason !== undefined)(skipTitle('assertLoopDevice', reason), () => {
  let dir: string;
  let owned: OwnedIndexes;
  beforeAll(() => {
    dir = makeTempDir('loopfs-assert');
    owned = new OwnedIndexes().ownBacking(dir);
  });
  afterAll(async () => {
    await owned?.cleanup();
    if (dir) removeTree(dir);
  });

  const expectEnodev = (p: string) => {
    const e = sysErrorOf(() => assertLoopDevice(p));
    expect(e.code).toBe('ENODEV');
    expect(e.errno).toBe(19);
    expect(e.description).toBe('No such device');
    expect(e.path).toBe(p);
  };

  it('throws ENODEV for a regular file', () => {
    expectEnodev(makeImage(path.join(dir, 'regular'), MiB));
  });
  it('throws ENODEV for a missing path', () => {
    expectEnodev(path.join(dir, 'missing'));
  });
  it('throws ENODEV for a character device (/dev/null) and for a directory', () => {
    expectEnodev('/dev/null');
    expectEnodev(dir);
  });
  it('throws ENODEV for /dev/loop-control (char device, misc major)', () => {
    expectEnodev('/dev/loop-control');
  });
  it('throws ENODEV for a non-loop block device (/dev/vda-style)', (ctx) => {
    const other = fs
      .readdirSync('/sys/block')
      .filter((x) => !x.startsWith('loop'))
      .map((x) => `/dev/${x}`)
      .find((p) => fs.existsSync(p));
    if (!other) {
      console.warn('[skip] no non-loop block device node');
      return ctx.skip();
    }
    expectEnodev(other);
  });
  it('passes for /dev/loopN, a symlink to it and a node outside /dev', () => {
    const idx = owned.add();
    expect(() => assertLoopDevice(`/dev/loop${idx}`)).not.toThrow();
    const link = path.join(dir, 'link');
    fs.symlinkSync(`/dev/loop${idx}`, link);
    expect(() => assertLoopDevice(link)).not.toThrow();
    expect(() => assertLoopDevice(mknodLoop(dir, 'loopnode', idx))).not.toThrow();
  });
});
