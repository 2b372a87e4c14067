// The native addon against the real kernel: every function in NativeAddon, its success
// path checked against an independent witness (sysfs, node:fs, coreutils) and its error
// path checked for the SysError shape.
//
// Device hygiene: the only loop devices touched are ones this file bound (through
// LOOP_CONFIGURE/LOOP_SET_FD on a device LOOP_CTL_GET_FREE offered) or created (LOOP_CTL_ADD of
// an unused high index). Each is recorded the moment the kernel accepts it and released in
// afterEach, whether the test passed or not.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { isSysError, native } from '../../src/kernel/native.js';
import { loopSkipReason } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import { sysErrorOf } from '../helpers/errors.js';

const addon = native();
const C = addon.constants;
const MiB = 1024 * 1024;
const TMPFS_MAGIC = 0x01021994;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function readSys(p: string): string | undefined {
  try {
    return fs.readFileSync(p, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** The process umask, read without changing it (process.umask() with no argument is deprecated). */
function umask(): number {
  const m = /^Umask:\s+([0-7]+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? parseInt(m[1], 8) : 0o022;
}

/** The bytes of a NUL-padded loop_info64 name up to its first NUL. */
function cName(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.subarray(0, nul < 0 ? b.length : nul).toString('utf8');
}

let tmp: string;

beforeAll(() => {
  tmp = makeTempDir('loopfs-native');
});

afterAll(() => {
  if (tmp) removeTree(tmp);
});

describe('native addon: constants, strerror, argument checks', () => {
  it('exports the header values, frozen', () => {
    const fsc = fs.constants;
    expect(C.O_RDONLY).toBe(fsc.O_RDONLY);
    expect(C.O_WRONLY).toBe(fsc.O_WRONLY);
    expect(C.O_RDWR).toBe(fsc.O_RDWR);
    expect(C.O_CREAT).toBe(fsc.O_CREAT);
    expect(C.O_EXCL).toBe(fsc.O_EXCL);
    expect(C.O_DIRECT).toBe(fsc.O_DIRECT);
    expect(C.O_NOFOLLOW).toBe(fsc.O_NOFOLLOW);
    expect(C.O_DIRECTORY).toBe(fsc.O_DIRECTORY);
    expect(C.O_NONBLOCK).toBe(fsc.O_NONBLOCK);
    expect(C.O_PATH).toBe(0o10000000); // same on every Linux architecture node runs on
    expect(C.S_IFMT).toBe(fsc.S_IFMT);
    expect(C.S_IFBLK).toBe(fsc.S_IFBLK);
    expect(C.S_IFCHR).toBe(fsc.S_IFCHR);
    expect(C.S_IFREG).toBe(fsc.S_IFREG);
    expect(C.S_IFDIR).toBe(fsc.S_IFDIR);
    expect(C.S_IFLNK).toBe(fsc.S_IFLNK);
    expect(C.S_IFSOCK).toBe(fsc.S_IFSOCK);
    expect([C.LOCK_SH, C.LOCK_EX, C.LOCK_NB, C.LOCK_UN]).toEqual([1, 2, 4, 8]);
    expect([C.LO_FLAGS_READ_ONLY, C.LO_FLAGS_AUTOCLEAR, C.LO_FLAGS_PARTSCAN, C.LO_FLAGS_DIRECT_IO]).toEqual([
      1, 4, 8, 16,
    ]);
    expect(C.LOOP_MAJOR).toBe(7);
    expect(Object.isFrozen(C)).toBe(true);
  });

  it('strerror gives glibc text', () => {
    expect(addon.strerror(6)).toBe('No such device or address');
    expect(addon.strerror(16)).toBe('Device or resource busy');
    expect(addon.strerror(99999)).toBe('Unknown error 99999');
  });

  it('rejects wrong argument types with TypeError and bad values with RangeError', () => {
    const typeErr = (fn: () => unknown) => expect(fn).toThrow(TypeError);
    const rangeErr = (fn: () => unknown) => expect(fn).toThrow(RangeError);
    const a = addon as unknown as Record<string, (...args: unknown[]) => unknown>;
    typeErr(() => a.open(42, 0));
    typeErr(() => a.open('/x'));
    typeErr(() => a.open('/x', 0, '0644'));
    typeErr(() => a.close('3'));
    typeErr(() => a.close());
    rangeErr(() => a.close(-1));
    rangeErr(() => a.close(1.5));
    typeErr(() => a.strerror('EBUSY'));
    typeErr(() => a.ctlGetFree(null));
    rangeErr(() => a.ctlAdd(0, -1));
    typeErr(() => a.loopConfigure(0, 0, null, 0));
    typeErr(() => a.loopConfigure(0, 0, {}, undefined));
    typeErr(() => a.loopConfigure(0, 0, { offset: 512 }, 0)); // u64 fields are bigint
    rangeErr(() => a.loopConfigure(0, 0, { offset: -1n }, 0));
    rangeErr(() => a.loopConfigure(0, 0, { sizelimit: 1n << 64n }, 0));
    typeErr(() => a.loopSetStatus64(0, { fileName: 7 }));
    typeErr(() => a.loopSetStatus64(0, { cryptName: new Uint16Array(4) }));
    typeErr(() => a.loopSetDirectIo(0, 1));
    rangeErr(() => a.loopSetBlockSize(0, -512));
    rangeErr(() => a.blkRaSet(0, -1));
    typeErr(() => a.statfs(true));
    typeErr(() => a.mknod('/x', 0o60660, 7));
    rangeErr(() => a.fchown(0, -2, 0));
    rangeErr(() => a.openat(-5, 'x', 0));
    // A NUL would cut the path short in C: refused, like node:fs does.
    const nul = (() => {
      try {
        a.open('/tmp/a\0b', 0);
      } catch (e) {
        return e as Error & { code?: string };
      }
    })();
    expect(nul).toBeInstanceOf(TypeError);
    expect(nul?.code).toBe('ERR_INVALID_ARG_VALUE');
  });
});

describe('native addon: files, locks, stat (any user)', () => {
  it('open: ENOENT carries code, errno, syscall, path, description', () => {
    const missing = path.join(tmp, 'does-not-exist');
    const e = sysErrorOf(() => addon.open(missing, C.O_RDONLY));
    expect(e).toBeInstanceOf(Error);
    expect(e.code).toBe('ENOENT');
    expect(e.errno).toBe(os.constants.errno.ENOENT);
    expect(e.syscall).toBe('open');
    expect(e.path).toBe(missing);
    expect(e.fd).toBeUndefined();
    expect(e.description).toBe('No such file or directory');
    expect(e.message).toBe(`ENOENT: No such file or directory, open '${missing}'`);
  });

  it('open and openat always set O_CLOEXEC; openat resolves against the directory fd', () => {
    const file = path.join(tmp, 'cloexec');
    const fd = addon.open(file, C.O_RDWR | C.O_CREAT, 0o600);
    const dirfd = addon.open(tmp, C.O_RDONLY | C.O_DIRECTORY);
    let fd2 = -1;
    let fd3 = -1;
    try {
      fd2 = addon.openat(dirfd, 'cloexec', C.O_RDONLY);
      fd3 = addon.openat(-100 /* AT_FDCWD */, file, C.O_RDONLY);
      for (const f of [fd, dirfd, fd2, fd3]) {
        const flags = /^flags:\s+([0-7]+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${f}`, 'utf8'))?.[1];
        expect(parseInt(flags ?? '0', 8) & 0o2000000, `fd ${f} has O_CLOEXEC`).toBe(0o2000000);
      }
      expect(fs.statSync(file).mode & 0o777).toBe(0o600);
      expect(addon.fstat(fd2).ino).toBe(addon.fstat(fd).ino);

      const e = sysErrorOf(() => addon.openat(dirfd, 'nope', C.O_RDONLY));
      expect(e.code).toBe('ENOENT');
      expect(e.syscall).toBe('openat');
      expect(e.path).toBe(path.join(fs.realpathSync(tmp), 'nope'));
      expect(e.fd).toBe(dirfd);
    } finally {
      for (const f of [fd, dirfd, fd2, fd3]) if (f >= 0) addon.close(f);
    }
  });

  it('close: EBADF on a closed fd, with fd and no path', () => {
    const fd = addon.open(tmp, C.O_RDONLY | C.O_DIRECTORY);
    addon.close(fd);
    const e = sysErrorOf(() => addon.close(fd));
    expect(e.code).toBe('EBADF');
    expect(e.errno).toBe(os.constants.errno.EBADF);
    expect(e.syscall).toBe('close');
    expect(e.fd).toBe(fd);
    expect(e.path).toBeUndefined();
    expect(e.message).toBe('EBADF: Bad file descriptor, close');
  });

  it('flock: LOCK_NB contention between two open file descriptions', () => {
    const file = path.join(tmp, 'lock');
    fs.writeFileSync(file, '');
    const a = addon.open(file, C.O_RDONLY);
    const b = addon.open(file, C.O_RDONLY);
    try {
      addon.flock(a, C.LOCK_EX);
      const e = sysErrorOf(() => addon.flock(b, C.LOCK_EX | C.LOCK_NB));
      expect(e.errno).toBe(os.constants.errno.EWOULDBLOCK);
      expect(e.code).toBe('EAGAIN'); // EWOULDBLOCK's canonical name on Linux
      expect(e.syscall).toBe('flock');
      expect(e.fd).toBe(b);
      expect(e.path).toBe(fs.realpathSync(file));
      expect(sysErrorOf(() => addon.flock(b, C.LOCK_SH | C.LOCK_NB)).code).toBe('EAGAIN');
      addon.flock(a, C.LOCK_UN);
      addon.flock(b, C.LOCK_SH | C.LOCK_NB);
      addon.flock(a, C.LOCK_SH | C.LOCK_NB); // shared locks coexist
      expect(sysErrorOf(() => addon.flock(a, C.LOCK_SH | C.LOCK_EX)).code).toBe('EINVAL');
    } finally {
      addon.close(a);
      addon.close(b);
    }
  });

  it('fstat matches node:fs and splits dev_t with major()/minor()', () => {
    const file = path.join(tmp, 'stat');
    fs.writeFileSync(file, 'x'.repeat(1234));
    const fd = addon.open(file, C.O_RDONLY);
    const nullFd = addon.open('/dev/null', C.O_RDONLY);
    try {
      const st = addon.fstat(fd);
      const ref = fs.fstatSync(fd, { bigint: true });
      expect(st.dev).toBe(ref.dev);
      expect(st.ino).toBe(ref.ino);
      expect(st.mode).toBe(Number(ref.mode));
      expect(st.nlink).toBe(Number(ref.nlink));
      expect(st.uid).toBe(Number(ref.uid));
      expect(st.gid).toBe(Number(ref.gid));
      expect(st.rdev).toBe(0n);
      expect(st.size).toBe(1234n);
      expect(st.mode & C.S_IFMT).toBe(C.S_IFREG);
      // coreutils prints the same split in hex.
      const [maj, min] = execFileSync('stat', ['-c', '%Hd %Ld', file], { encoding: 'utf8' }).trim().split(' ');
      expect([st.devMajor, st.devMinor]).toEqual([Number(maj), Number(min)]);

      const dn = addon.fstat(nullFd);
      expect(dn.mode & C.S_IFMT).toBe(C.S_IFCHR);
      expect([dn.rdevMajor, dn.rdevMinor]).toEqual([1, 3]);
      expect(sysErrorOf(() => addon.fstat(999_999)).code).toBe('EBADF');
    } finally {
      addon.close(fd);
      addon.close(nullFd);
    }
  });

  it('statfs by path and fstatfs by fd agree with coreutils stat -f', () => {
    const magic = (p: string) => parseInt(execFileSync('stat', ['-f', '-c', '%t', p], { encoding: 'utf8' }).trim(), 16);
    const s = addon.statfs(tmp);
    expect(s.type).toBe(magic(tmp));
    expect(s.bsize).toBeGreaterThan(0);
    expect(s.blocks).toBeGreaterThan(0n);
    expect(s.bfree).toBeLessThanOrEqual(s.blocks);
    expect(s.bavail).toBeLessThanOrEqual(s.bfree);
    const fd = addon.open(tmp, C.O_RDONLY | C.O_DIRECTORY);
    try {
      expect(addon.statfs(fd).type).toBe(s.type);
    } finally {
      addon.close(fd);
    }
    if (fs.existsSync('/dev/shm')) expect(addon.statfs('/dev/shm').type).toBe(TMPFS_MAGIC);
    if (magic('/') === 0xef53) expect(addon.statfs('/').type).toBe(0xef53); // ext2/3/4

    const e = sysErrorOf(() => addon.statfs(path.join(tmp, 'nope')));
    expect([e.code, e.syscall]).toEqual(['ENOENT', 'statfs']);
    const f = sysErrorOf(() => addon.statfs(999_999));
    expect([f.code, f.syscall, f.fd]).toEqual(['EBADF', 'fstatfs', 999_999]);
  });
});

const skipReason = loopSkipReason();
if (skipReason) console.warn(`[test/native] skipping kernel loop-device tests: ${skipReason}`);

describe.skipIf(skipReason !== undefined)('native addon: loop devices (root, real kernel)', () => {
  /** A device this file bound: `fd` is our open /dev/loopN, the only handle we use on it. */
  interface Bound {
    index: number;
    fd: number;
    backingFd: number;
    backing: string;
  }
  const bound: Bound[] = [];
  /** High indexes this file created with LOOP_CTL_ADD and must remove. */
  const added = new Set<number>();
  let ctl = -1;

  beforeAll(() => {
    ctl = addon.open('/dev/loop-control', C.O_RDWR);
  });

  afterAll(() => {
    if (ctl >= 0) addon.close(ctl);
  });

  afterEach(async () => {
    const failures: string[] = [];
    for (const b of bound.splice(0)) {
      const err = await release(b);
      if (err) failures.push(err);
    }
    for (const index of [...added]) {
      const err = await removeAdded(index);
      if (err) failures.push(err);
    }
    if (failures.length) throw new Error(`cleanup: ${failures.join('; ')}`);
  });

  /**
   * Detach a device we bound and wait for the kernel to finish. Since Linux 5.x the clear
   * completes on the last close (ours, or udev's probe), so the device can look bound for a
   * moment: bounded wait, then report.
   */
  async function release(b: Bound): Promise<string | undefined> {
    let problem: string | undefined;
    for (let i = 0; i < 20; i++) {
      try {
        addon.loopClrFd(b.fd);
        break;
      } catch (e) {
        if (isSysError(e) && e.code === 'ENXIO') break; // already cleared (autoclear, test did it)
        if (isSysError(e) && e.code === 'EBUSY' && i < 19) {
          await sleep(50);
          continue;
        }
        problem = `loop${b.index}: ${(e as Error).message}`;
        break;
      }
    }
    addon.close(b.fd);
    addon.close(b.backingFd);
    for (let i = 0; i < 100; i++) {
      // Only our own binding counts: once cleared, someone else may legitimately bind it.
      if (readSys(`/sys/block/loop${b.index}/loop/backing_file`) !== b.backing) return problem;
      await sleep(50);
    }
    return problem ?? `loop${b.index} still bound to ${b.backing} after 5 s`;
  }

  /** LOOP_CTL_REMOVE of an index we added; EBUSY while udev still probes it. */
  async function removeAdded(index: number): Promise<string | undefined> {
    for (let i = 0; i < 100; i++) {
      try {
        addon.ctlRemove(ctl, index);
        added.delete(index);
        return undefined;
      } catch (e) {
        if (isSysError(e) && e.code === 'ENODEV') {
          added.delete(index);
          return undefined;
        }
        if (!(isSysError(e) && e.code === 'EBUSY')) return `remove loop${index}: ${(e as Error).message}`;
        await sleep(50);
      }
    }
    return `remove loop${index}: still EBUSY after 5 s`;
  }

  function makeBacking(name: string, size = 4 * MiB): string {
    const file = path.join(tmp, name);
    fs.writeFileSync(file, Buffer.alloc(size));
    return file;
  }

  /**
   * Bind a backing file to a free device with `bind`. Another process may grab the device
   * LOOP_CTL_GET_FREE offered before we bind it (EBUSY): then ask again, a bounded number of
   * times with a little jitter.
   */
  async function attach(backing: string, bind: (fd: number, backingFd: number) => void, readOnly = false) {
    const backingFd = addon.open(backing, readOnly ? C.O_RDONLY : C.O_RDWR);
    try {
      for (let attempt = 0; attempt < 32; attempt++) {
        const index = addon.ctlGetFree(ctl);
        const fd = addon.open(`/dev/loop${index}`, readOnly ? C.O_RDONLY : C.O_RDWR);
        try {
          bind(fd, backingFd);
        } catch (e) {
          addon.close(fd);
          if (isSysError(e) && e.code === 'EBUSY') {
            await sleep(10 + Math.random() * 40);
            continue;
          }
          throw e;
        }
        const b = { index, fd, backingFd, backing: fs.realpathSync(backing) };
        bound.push(b);
        return b;
      }
    } catch (e) {
      addon.close(backingFd);
      throw e;
    }
    addon.close(backingFd);
    throw new Error('no free loop device after 32 attempts');
  }

  /** An index with no loop device, created with LOOP_CTL_ADD (EEXIST: someone beat us, next). */
  function addUnusedIndex(): number {
    for (let index = 200; index < 1200; index++) {
      if (fs.existsSync(`/sys/block/loop${index}`)) continue;
      let got: number;
      try {
        got = addon.ctlAdd(ctl, index);
      } catch (e) {
        if (isSysError(e) && e.code === 'EEXIST') continue;
        throw e;
      }
      added.add(index); // recorded before any assertion can fail, so afterEach removes it
      expect(got).toBe(index);
      return index;
    }
    throw new Error('no unused loop index in 200..1199');
  }

  it('LOOP_CTL_GET_FREE names an existing device', () => {
    const index = addon.ctlGetFree(ctl);
    expect(Number.isInteger(index) && index >= 0).toBe(true);
    expect(fs.existsSync(`/sys/block/loop${index}`)).toBe(true);
  });

  it('LOOP_CONFIGURE: offset, sizelimit, flags, names, block size; visible in status, sysfs and data', async () => {
    const backing = makeBacking('configure.img');
    const marker = Buffer.from('loopfs-marker');
    const bfd = fs.openSync(backing, 'r+');
    fs.writeSync(bfd, marker, 0, marker.length, MiB);
    fs.closeSync(bfd);

    const b = await attach(backing, (fd, backingFd) =>
      addon.loopConfigure(
        fd,
        backingFd,
        {
          offset: BigInt(MiB),
          sizelimit: BigInt(2 * MiB),
          flags: C.LO_FLAGS_AUTOCLEAR,
          fileName: backing,
          cryptName: Buffer.from('loopfs-tag'),
        },
        512,
      ),
    );
    const st = addon.loopGetStatus64(b.fd);
    const bst = fs.statSync(backing, { bigint: true });
    expect(st.offset).toBe(BigInt(MiB));
    expect(st.sizelimit).toBe(BigInt(2 * MiB));
    expect(st.flags & C.LO_FLAGS_AUTOCLEAR).toBe(C.LO_FLAGS_AUTOCLEAR);
    expect(st.flags & C.LO_FLAGS_READ_ONLY).toBe(0);
    expect(st.number).toBe(b.index);
    expect(st.inode).toBe(bst.ino);
    expect(st.device).toBe(bst.dev);
    expect(Buffer.isBuffer(st.fileName) && st.fileName.length).toBe(64);
    expect(st.cryptName.length).toBe(64);
    expect(cName(st.fileName)).toBe(backing.slice(0, 63));
    // Older kernels stored lo_crypt_name; 6.18 (verified) accepts it and reads back zeros.
    expect(['loopfs-tag', '']).toContain(cName(st.cryptName));

    const sys = `/sys/block/loop${b.index}`;
    expect(readSys(`${sys}/loop/offset`)).toBe(String(MiB));
    expect(readSys(`${sys}/loop/sizelimit`)).toBe(String(2 * MiB));
    expect(readSys(`${sys}/loop/autoclear`)).toBe('1');
    expect(readSys(`${sys}/loop/backing_file`)).toBe(b.backing);
    expect(readSys(`${sys}/queue/logical_block_size`)).toBe('512');

    expect(addon.blkGetSize64(b.fd)).toBe(BigInt(2 * MiB));
    expect(addon.blkSszGet(b.fd)).toBe(512);
    const dev = addon.fstat(b.fd);
    expect([dev.mode & C.S_IFMT, dev.rdevMajor, dev.rdevMinor]).toEqual([C.S_IFBLK, C.LOOP_MAJOR, b.index]);

    const head = Buffer.alloc(marker.length);
    fs.readSync(b.fd, head, 0, head.length, 0);
    expect(head.toString()).toBe(marker.toString());

    // A bound device refuses a second binding; the error names the device by its path.
    const e = sysErrorOf(() => addon.loopConfigure(b.fd, b.backingFd, {}, 0));
    expect(e.code).toBe('EBUSY');
    expect(e.syscall).toBe('ioctl(LOOP_CONFIGURE)');
    expect(e.fd).toBe(b.fd);
    expect(e.path).toBe(`/dev/loop${b.index}`);
    expect(e.message).toBe(`EBUSY: Device or resource busy, ioctl(LOOP_CONFIGURE) '/dev/loop${b.index}'`);
  });

  it('LOOP_CONFIGURE with LO_FLAGS_READ_ONLY', async () => {
    const backing = makeBacking('ro.img');
    const b = await attach(
      backing,
      (fd, backingFd) => addon.loopConfigure(fd, backingFd, { flags: C.LO_FLAGS_READ_ONLY, fileName: backing }, 0),
      true,
    );
    expect(addon.loopGetStatus64(b.fd).flags & C.LO_FLAGS_READ_ONLY).toBe(C.LO_FLAGS_READ_ONLY);
    expect(readSys(`/sys/block/loop${b.index}/ro`)).toBe('1');
  });

  it('LOOP_SET_CAPACITY picks up a grown backing file', async () => {
    const backing = makeBacking('capacity.img');
    const b = await attach(backing, (fd, backingFd) => addon.loopConfigure(fd, backingFd, { fileName: backing }, 0));
    expect(addon.blkGetSize64(b.fd)).toBe(BigInt(4 * MiB));
    fs.truncateSync(backing, 8 * MiB);
    expect(addon.blkGetSize64(b.fd)).toBe(BigInt(4 * MiB));
    addon.loopSetCapacity(b.fd);
    expect(addon.blkGetSize64(b.fd)).toBe(BigInt(8 * MiB));
    expect(readSys(`/sys/block/loop${b.index}/size`)).toBe(String((8 * MiB) / 512));
  });

  it('LOOP_SET_STATUS64 changes offset, sizelimit, flags; names are cut to 63 bytes + NUL', async () => {
    const backing = makeBacking('status.img');
    const b = await attach(backing, (fd, backingFd) => addon.loopConfigure(fd, backingFd, { fileName: backing }, 0));
    const longName = 'n'.repeat(100);
    addon.loopSetStatus64(b.fd, {
      offset: BigInt(MiB),
      sizelimit: BigInt(MiB),
      flags: C.LO_FLAGS_AUTOCLEAR,
      fileName: longName,
      cryptName: Buffer.from('c'.repeat(70)),
    });
    const st = addon.loopGetStatus64(b.fd);
    expect(st.offset).toBe(BigInt(MiB));
    expect(st.sizelimit).toBe(BigInt(MiB));
    expect(st.flags & C.LO_FLAGS_AUTOCLEAR).toBe(C.LO_FLAGS_AUTOCLEAR);
    expect(st.fileName.subarray(0, 63).toString()).toBe('n'.repeat(63));
    expect(st.fileName[63]).toBe(0);
    expect(['c'.repeat(63), '']).toContain(cName(st.cryptName)); // see the LOOP_CONFIGURE test
    expect(addon.blkGetSize64(b.fd)).toBe(BigInt(MiB));
    expect(readSys(`/sys/block/loop${b.index}/loop/offset`)).toBe(String(MiB));
    expect(readSys(`/sys/block/loop${b.index}/loop/autoclear`)).toBe('1');

    // Read-modify-write: a LoopInfo64 read back is accepted as input.
    addon.loopSetStatus64(b.fd, { ...st, flags: 0 });
    const st2 = addon.loopGetStatus64(b.fd);
    expect(st2.flags & C.LO_FLAGS_AUTOCLEAR).toBe(0);
    expect(st2.fileName.equals(st.fileName)).toBe(true);
  });

  it('LOOP_SET_FD, then LOOP_SET_STATUS64, then LOOP_CLR_FD', async () => {
    const backing = makeBacking('setfd.img');
    const b = await attach(backing, (fd, backingFd) => addon.loopSetFd(fd, backingFd));
    expect(readSys(`/sys/block/loop${b.index}/loop/backing_file`)).toBe(b.backing);
    const before = addon.loopGetStatus64(b.fd);
    expect(before.offset).toBe(0n);
    expect(cName(before.fileName)).toBe('');
    addon.loopSetStatus64(b.fd, { fileName: Buffer.from(backing) });
    expect(cName(addon.loopGetStatus64(b.fd).fileName)).toBe(backing.slice(0, 63));

    addon.loopClrFd(b.fd);
    // The clear finishes on our last close at the latest: release() waits for it.
    bound.splice(bound.indexOf(b), 1);
    expect(await release(b)).toBeUndefined();
    expect(readSys(`/sys/block/loop${b.index}/loop/backing_file`)).not.toBe(b.backing);
  });

  it('direct I/O, block size and read-ahead on a bound device', async () => {
    const backing = makeBacking('tuning.img');
    const b = await attach(backing, (fd, backingFd) => addon.loopConfigure(fd, backingFd, { fileName: backing }, 0));
    const sys = `/sys/block/loop${b.index}`;
    const raBefore = addon.blkRaGet(b.fd);
    const sszBefore = addon.blkSszGet(b.fd);
    try {
      addon.loopSetDirectIo(b.fd, true);
      expect(readSys(`${sys}/loop/dio`)).toBe('1');
      expect(addon.loopGetStatus64(b.fd).flags & C.LO_FLAGS_DIRECT_IO).toBe(C.LO_FLAGS_DIRECT_IO);
      addon.loopSetDirectIo(b.fd, false);
      expect(readSys(`${sys}/loop/dio`)).toBe('0');

      addon.loopSetBlockSize(b.fd, 4096);
      expect(addon.blkSszGet(b.fd)).toBe(4096);
      expect(readSys(`${sys}/queue/logical_block_size`)).toBe('4096');
      const e = sysErrorOf(() => addon.loopSetBlockSize(b.fd, 1000));
      expect([e.code, e.syscall]).toEqual(['EINVAL', 'ioctl(LOOP_SET_BLOCK_SIZE)']);

      expect(raBefore).toBe(Number(readSys(`${sys}/queue/read_ahead_kb`)) * 2);
      addon.blkRaSet(b.fd, 4096);
      expect(addon.blkRaGet(b.fd)).toBe(4096);
      expect(readSys(`${sys}/queue/read_ahead_kb`)).toBe('2048');
    } finally {
      // The device outlives our binding: leave its queue settings as we found them.
      addon.blkRaSet(b.fd, raBefore);
      addon.loopSetBlockSize(b.fd, sszBefore);
    }
  });

  it('LOOP_CTL_ADD / LOOP_CTL_REMOVE of an unused index; ENXIO, EEXIST, EBUSY, ENODEV; mknod', async () => {
    const index = addUnusedIndex();
    expect(fs.existsSync(`/sys/block/loop${index}`)).toBe(true);

    const e = sysErrorOf(() => addon.ctlAdd(ctl, index));
    expect(e.code).toBe('EEXIST');
    expect(e.errno).toBe(os.constants.errno.EEXIST);
    expect(e.syscall).toBe('ioctl(LOOP_CTL_ADD)');
    expect(e.fd).toBe(ctl);
    expect(e.path).toBe('/dev/loop-control');

    // Our own node for it, in a temp dir, as an instance directory would hold.
    const node = path.join(tmp, `loop${index}`);
    addon.mknod(node, C.S_IFBLK | 0o660, C.LOOP_MAJOR, index);
    expect(fs.statSync(node).isBlockDevice()).toBe(true);
    expect(sysErrorOf(() => addon.mknod(node, C.S_IFBLK | 0o660, C.LOOP_MAJOR, index)).code).toBe('EEXIST');
    const fd = addon.open(node, C.O_RDWR);
    try {
      const st = addon.fstat(fd);
      expect([st.mode & C.S_IFMT, st.mode & 0o777, st.rdevMajor, st.rdevMinor]).toEqual([
        C.S_IFBLK,
        0o660 & ~umask(),
        7,
        index,
      ]);
      const nx = sysErrorOf(() => addon.loopGetStatus64(fd));
      expect(nx.code).toBe('ENXIO');
      expect(nx.errno).toBe(os.constants.errno.ENXIO);
      expect(nx.syscall).toBe('ioctl(LOOP_GET_STATUS64)');
      expect(nx.path).toBe(fs.realpathSync(node));
      expect(nx.description).toBe('No such device or address');
      expect(sysErrorOf(() => addon.loopClrFd(fd)).code).toBe('ENXIO');
      // Held open by us: the kernel refuses to remove it.
      expect(sysErrorOf(() => addon.ctlRemove(ctl, index)).code).toBe('EBUSY');
    } finally {
      addon.close(fd);
      fs.rmSync(node);
    }
    expect(await removeAdded(index)).toBeUndefined();
    expect(fs.existsSync(`/sys/block/loop${index}`)).toBe(false);
    const gone = sysErrorOf(() => addon.ctlRemove(ctl, index));
    expect([gone.code, gone.syscall]).toEqual(['ENODEV', 'ioctl(LOOP_CTL_REMOVE)']);
  });

  it('mknodat relative to a directory fd', () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'inst-'));
    const dirfd = addon.open(dir, C.O_RDONLY | C.O_DIRECTORY);
    try {
      // An index nobody uses: the node is never opened, so no device is probed into being.
      addon.mknodat(dirfd, 'loop999', C.S_IFBLK | 0o660, C.LOOP_MAJOR, 999);
      const st = fs.statSync(path.join(dir, 'loop999'));
      expect(st.isBlockDevice()).toBe(true);
      expect(st.mode & 0o777).toBe(0o660 & ~umask());
      const rdev = execFileSync('stat', ['-c', '%Hr %Lr', path.join(dir, 'loop999')], { encoding: 'utf8' }).trim();
      expect(rdev).toBe('7 999');
      const pfd = addon.open(path.join(dir, 'loop999'), C.O_PATH);
      try {
        const n = addon.fstat(pfd);
        expect([n.rdevMajor, n.rdevMinor]).toEqual([7, 999]);
      } finally {
        addon.close(pfd);
      }
      const e = sysErrorOf(() => addon.mknodat(dirfd, 'loop999', C.S_IFBLK | 0o660, 7, 999));
      expect([e.code, e.syscall, e.fd, e.path]).toEqual(['EEXIST', 'mknodat', dirfd, path.join(dir, 'loop999')]);
    } finally {
      addon.close(dirfd);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('fchown sets owner and group; -1 keeps one', () => {
    const file = path.join(tmp, 'owned');
    fs.writeFileSync(file, '');
    const fd = addon.open(file, C.O_RDONLY);
    const pfd = addon.open(file, C.O_PATH);
    try {
      addon.fchown(fd, 12345, 23456);
      expect([fs.statSync(file).uid, fs.statSync(file).gid]).toEqual([12345, 23456]);
      addon.fchown(fd, -1, 0);
      expect([fs.statSync(file).uid, fs.statSync(file).gid]).toEqual([12345, 0]);
      // O_PATH fds cannot change ownership.
      const e = sysErrorOf(() => addon.fchown(pfd, 0, 0));
      expect([e.code, e.syscall, e.fd]).toEqual(['EBADF', 'fchown', pfd]);
    } finally {
      addon.close(fd);
      addon.close(pfd);
    }
  });
});
