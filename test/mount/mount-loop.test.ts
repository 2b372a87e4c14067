// bin/mount.loop with real mounts, driven through mount(8) the way users and fstab drive it:
// `mount -t loop` on ext4, squashfs, erofs and vfat images, a partitioned image through
// offset=/sizelimit=, `-o ro`, fstab lines of type `loop` (`mount -T FILE`), `-t loop -o loop`,
// failure paths compared with util-linux's own `mount -o loop`, and the helper called by hand.
//
// All of it happens inside a private mount namespace whose /usr/sbin (= /sbin) has mount.loop
// overlaid (see support.ts): the host's /sbin, /usr/sbin and /etc/fstab are never touched.
// Every image lives in the test's own directory; afterEach unmounts everything under it and
// detaches (util-linux) whatever device is still bound to one of its files.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { boundLoopDevices, DeviceTracker, devicesBackedUnder, formatState, readLoopState, type LoopState } from '../helpers/devices.js';
import { announceSkip } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import {
  fsSkipReason,
  HELLO,
  HELPER,
  loopNameOf,
  makeCorruptExt4,
  makeErofs,
  makeExt4,
  makePartitioned,
  makeRandom,
  makeSourceTree,
  makeSquashfs,
  makeVfat,
  MiB,
  MOUNT,
  MountNamespace,
  mountSkipReason,
  normDevices,
  skipTitle,
  RELEASE_WAIT_MS,
  sleep,
  sysAttr,
  text,
  UMOUNT,
} from './support.js';

const reason = mountSkipReason('mount/mount-loop');
const straceReason = spawnSync('strace', ['-V']).status === 0 ? undefined : 'strace not installed';
announceSkip('mount/mount-loop strace', reason ?? straceReason);
const LOSETUP = '/usr/sbin/losetup';

/** Bound devices whose backing file is `file`. */
function devicesFor(file: string): LoopState[] {
  return boundLoopDevices().filter((s) => s.backingFile === file || s.backingFile === `${file} (deleted)`);
}

/** Wait (bounded) until no device is bound to `file` any more; the devices still bound, if any. */
async function waitNoDeviceFor(file: string, timeoutMs = RELEASE_WAIT_MS): Promise<LoopState[]> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const left = devicesFor(file);
    if (left.length === 0 || Date.now() > end) return left;
    await sleep(20);
  }
}

/** Wait (bounded) until no device is bound to a file under `dir`. */
async function waitNoDeviceUnder(dir: string, timeoutMs = RELEASE_WAIT_MS): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (devicesBackedUnder(dir).length > 0 && Date.now() < end) await sleep(20);
}

/** Wait (bounded) until `name` is no longer bound to `file` (unbound, or re-used by someone else). */
async function waitReleased(name: string, file: string, timeoutMs = RELEASE_WAIT_MS): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const s = readLoopState(name);
    if (!s || (s.backingFile !== file && s.backingFile !== `${file} (deleted)`)) return true;
    if (Date.now() > end) return false;
    await sleep(20);
  }
}

/** The argv libmount gave the helper, from its LIBMOUNT_DEBUG=cxt output. */
function helperArgv(stderr: string): string[] {
  const argv: string[] = [];
  for (const m of stderr.matchAll(/argv\[(\d+)\] = "(.*)"/g)) argv[Number(m[1])] = m[2];
  return argv;
}

describe.skipIf(reason !== undefined)(skipTitle('mount.loop under mount(8), real mounts', reason), () => {
  let root: string;
  let src: string;
  let ns: MountNamespace;
  let dir: string;
  let seq = 0;
  const tracker = new DeviceTracker();

  beforeAll(async () => {
    root = makeTempDir('loopfs-mount');
    tracker.ownDir(root);
    src = makeSourceTree(path.join(root, 'src'));
    ns = await MountNamespace.start({ scratch: root });
  });

  afterAll(async () => {
    try {
      if (ns) {
        await ns.cleanupUnder(root);
        await ns.stop();
      }
      await tracker.detachAll();
    } finally {
      if (root) removeTree(root);
    }
  });

  beforeEach(() => {
    dir = path.join(root, `t${++seq}`);
    fs.mkdirSync(dir);
  });

  afterEach(async () => {
    if (!ns) return;
    const problems = await ns.cleanupUnder(dir);
    await waitNoDeviceUnder(dir); // autoclear releases at the last close: give it a moment
    const detached = await tracker.detachAll();
    // a test that passed must not have needed the safety net
    expect({ problems, detached }).toEqual({ problems: [], detached: [] });
  });

  const mnt = (name = 'mnt') => {
    const p = path.join(dir, name);
    fs.mkdirSync(p, { recursive: true });
    return p;
  };

  /** mount, check the device and the content, umount, check the device is free again. */
  async function roundTrip(img: string, fstype: string, mountArgs: string[] = ['-t', 'loop']) {
    const target = mnt();
    const r = text(await ns.run(MOUNT, [...mountArgs, img, target]));
    expect(r).toEqual({ rc: 0, out: '', err: '' });
    const [m, ...more] = ns.mountsOn(target);
    expect(more).toEqual([]);
    expect(m.fstype).toBe(fstype);
    const name = loopNameOf(m);
    const st = readLoopState(name);
    expect(st, `${name} not bound`).toBeDefined();
    expect(st!.backingFile).toBe(img);
    expect(st!.autoclear).toBe('1');
    expect(devicesFor(img).map((s) => s.name)).toEqual([name]);
    expect(fs.readFileSync(ns.path(`${target}/hello.txt`), 'utf8')).toBe(HELLO);
    expect(fs.readFileSync(ns.path(`${target}/blob.bin`))).toEqual(Buffer.alloc(64 * 1024, 0x5a));

    expect(text(await ns.run(UMOUNT, [target]))).toEqual({ rc: 0, out: '', err: '' });
    expect(ns.mountsOn(target)).toEqual([]);
    // autoclear: the kernel unbinds the device at the last close (the umount)
    const released = await waitReleased(name, img);
    expect(released, released ? '' : `${name} still bound after umount: ${formatState(readLoopState(name)!)}`).toBe(true);
    expect(await waitNoDeviceFor(img)).toEqual([]);
  }

  describe('mount -t loop IMG DIR: detects the filesystem, mounts, umount frees the device', () => {
    it('ext4', async () => {
      await roundTrip(makeExt4(path.join(dir, 'fs.ext4'), src), 'ext4');
    });

    const noSquash = fsSkipReason('squashfs', ['mksquashfs']);
    it.skipIf(noSquash !== undefined)(skipTitle('squashfs', noSquash), async () => {
      await roundTrip(makeSquashfs(path.join(dir, 'fs.squashfs'), src), 'squashfs');
    });

    const noErofs = fsSkipReason('erofs', ['mkfs.erofs']);
    it.skipIf(noErofs !== undefined)(skipTitle('erofs', noErofs), async () => {
      await roundTrip(makeErofs(path.join(dir, 'fs.erofs'), src), 'erofs');
    });

    const noVfat = fsSkipReason('vfat', ['mkfs.vfat', 'mcopy']);
    it.skipIf(noVfat !== undefined)(skipTitle('vfat', noVfat), async () => {
      await roundTrip(makeVfat(path.join(dir, 'fs.vfat'), src), 'vfat');
    });

    it('-t loop.ext4 names the type (libmount passes -t loop.ext4 to the helper)', async () => {
      const img = makeExt4(path.join(dir, 'sub.ext4'), src);
      await roundTrip(img, 'ext4', ['-t', 'loop.ext4']);
      // the wrong explicit type fails like mount(8) and leaves nothing behind
      const other = makeExt4(path.join(dir, 'other.ext4'), src);
      const target = mnt('wrong');
      const r = text(await ns.run(MOUNT, ['-t', 'loop.squashfs', other, target]));
      expect(r.rc).toBe(32);
      expect(normDevices(r.err)).toMatch(new RegExp(`^mount: ${target}: wrong fs type, bad option, bad superblock on /dev/loopN`));
      expect(ns.mountsOn(target)).toEqual([]);
      expect(await waitNoDeviceFor(other)).toEqual([]);
    });
  });

  it('a partitioned image (MBR, partition at 1 MiB) through -t loop -o offset=1MiB,sizelimit=16MiB: libmount attaches, the helper gets /dev/loopN', async () => {
    const p = makePartitioned(path.join(dir, 'disk.img'), src);
    const target = mnt();
    // without the offset there is no filesystem at the start of the disk: a plain mount fails
    const whole = text(await ns.run(MOUNT, ['-t', 'loop', p.file, target]));
    expect(whole.rc).toBe(32);
    expect(ns.mountsOn(target)).toEqual([]);
    expect(await waitNoDeviceFor(p.file)).toEqual([]);

    const r = text(await ns.run(MOUNT, ['-t', 'loop', '-o', 'offset=1MiB,sizelimit=16MiB', p.file, target], { env: { LIBMOUNT_DEBUG: 'cxt' } }));
    expect(r.rc, r.err).toBe(0);
    const argv = helperArgv(r.err);
    expect(argv[0]).toBe('/sbin/mount.loop');
    expect(argv[1]).toMatch(/^\/dev\/loop\d+$/);
    expect(argv.slice(2)).toEqual([target, '-o', 'rw']); // offset=/sizelimit= consumed by libmount
    const [m] = ns.mountsOn(target);
    expect(m.fstype).toBe('ext4');
    const name = loopNameOf(m);
    expect(`/dev/${name}`).toBe(argv[1]);
    expect(readLoopState(name)).toMatchObject({
      backingFile: p.file,
      offset: String(p.offset),
      sizelimit: String(p.sizelimit),
      sizeBytes: String(p.sizelimit),
      autoclear: '1',
    });
    expect(fs.readFileSync(ns.path(`${target}/hello.txt`), 'utf8')).toBe(HELLO);

    expect(text(await ns.run(UMOUNT, [target])).rc).toBe(0);
    expect(await waitReleased(name, p.file)).toBe(true);
    expect(await waitNoDeviceFor(p.file)).toEqual([]);
  });

  it('-o ro: the device and the mount are read-only, a write fails with EROFS', async () => {
    const img = makeExt4(path.join(dir, 'ro.ext4'), src);
    const before = fs.readFileSync(img);
    const target = mnt();
    expect(text(await ns.run(MOUNT, ['-t', 'loop', '-o', 'ro', img, target]))).toEqual({ rc: 0, out: '', err: '' });
    const [m] = ns.mountsOn(target);
    expect(m.mountOptions.split(',')[0]).toBe('ro');
    const name = loopNameOf(m);
    expect(readLoopState(name)).toMatchObject({ backingFile: img, ro: '1', autoclear: '1' });
    expect(fs.readFileSync(ns.path(`${target}/hello.txt`), 'utf8')).toBe(HELLO);
    let code: string | undefined;
    try {
      fs.writeFileSync(ns.path(`${target}/new.txt`), 'x');
    } catch (e) {
      code = (e as NodeJS.ErrnoException).code;
    }
    expect(code).toBe('EROFS');
    // and from a shell inside the namespace, as a user would see it
    const sh = text(await ns.sh(`echo x > '${target}/hello.txt'`));
    expect(sh.rc).not.toBe(0);
    expect(sh.err).toContain('Read-only file system');
    // a remount cannot make it writable: the device itself is read-only
    const rw = text(await ns.run(MOUNT, ['-o', 'remount,rw', target]));
    expect(rw.rc).not.toBe(0);
    expect(text(await ns.run(UMOUNT, [target])).rc).toBe(0);
    expect(await waitReleased(name, img)).toBe(true);
    expect(fs.readFileSync(img).equals(before)).toBe(true);
  });

  describe('fstab lines of type loop (a private fstab through -T, never /etc/fstab)', () => {
    it('mount -T FILE DIR', async () => {
      const img = makeExt4(path.join(dir, 'tab.ext4'), src);
      const target = mnt();
      const fstab = path.join(dir, 'fstab');
      fs.writeFileSync(fstab, `# test fstab\n${img} ${target} loop defaults 0 0\n`);
      expect(text(await ns.run(MOUNT, ['-T', fstab, target]))).toEqual({ rc: 0, out: '', err: '' });
      const [m] = ns.mountsOn(target);
      expect(m.fstype).toBe('ext4');
      const name = loopNameOf(m);
      expect(readLoopState(name)).toMatchObject({ backingFile: img, autoclear: '1' });
      expect(fs.readFileSync(ns.path(`${target}/hello.txt`), 'utf8')).toBe(HELLO);
      expect(text(await ns.run(UMOUNT, [target])).rc).toBe(0);
      expect(await waitReleased(name, img)).toBe(true);
    });

    it('mount -a -T FILE: a plain `loop` line and a `loop ro,offset=0` line (libmount attaches, helper gets /dev/loopN)', async () => {
      const a = makeExt4(path.join(dir, 'a.ext4'), src);
      const b = makeExt4(path.join(dir, 'b.ext4'), src);
      const ta = mnt('a');
      const tb = mnt('b');
      const fstab = path.join(dir, 'fstab');
      fs.writeFileSync(fstab, `${a} ${ta} loop defaults 0 0\n${b} ${tb} loop ro,offset=0 0 0\n`);
      expect(text(await ns.run(MOUNT, ['-a', '-T', fstab]))).toEqual({ rc: 0, out: '', err: '' });
      const [ma] = ns.mountsOn(ta);
      const [mb] = ns.mountsOn(tb);
      expect([ma?.fstype, mb?.fstype]).toEqual(['ext4', 'ext4']);
      expect(ma.mountOptions.split(',')[0]).toBe('rw');
      expect(mb.mountOptions.split(',')[0]).toBe('ro');
      const na = loopNameOf(ma);
      const nb = loopNameOf(mb);
      expect(readLoopState(na)).toMatchObject({ backingFile: a, autoclear: '1', ro: '0' });
      expect(readLoopState(nb)).toMatchObject({ backingFile: b, autoclear: '1', ro: '1' });
      expect(fs.readFileSync(ns.path(`${tb}/hello.txt`), 'utf8')).toBe(HELLO);
      // a second -a is a no-op: both are mounted already
      expect(text(await ns.run(MOUNT, ['-a', '-T', fstab])).rc).toBe(0);
      expect(ns.mountsOn(ta).length + ns.mountsOn(tb).length).toBe(2);
      expect(text(await ns.run(UMOUNT, [ta, tb])).rc).toBe(0);
      expect(await waitReleased(na, a)).toBe(true);
      expect(await waitReleased(nb, b)).toBe(true);
    });
  });

  it('-t loop -o loop: libmount attaches the device (autoclear) and passes /dev/loopN; the helper mounts it', async () => {
    const img = makeExt4(path.join(dir, 'll.ext4'), src);
    const target = mnt();
    const r = text(await ns.run(MOUNT, ['-t', 'loop', '-o', 'loop', img, target], { env: { LIBMOUNT_DEBUG: 'cxt' } }));
    expect(r.rc, r.err).toBe(0);
    const argv = helperArgv(r.err);
    expect(argv[1]).toMatch(/^\/dev\/loop\d+$/);
    expect(argv.slice(2)).toEqual([target, '-o', 'rw']);
    const [m] = ns.mountsOn(target);
    const name = loopNameOf(m);
    expect(`/dev/${name}`).toBe(argv[1]);
    expect(m.fstype).toBe('ext4');
    // exactly one device: the helper used libmount's, it did not attach a second one
    expect(devicesFor(img).map((s) => s.name)).toEqual([name]);
    expect(readLoopState(name)).toMatchObject({ backingFile: img, autoclear: '1' });
    expect(fs.readFileSync(ns.path(`${target}/hello.txt`), 'utf8')).toBe(HELLO);
    expect(text(await ns.run(UMOUNT, [target])).rc).toBe(0);
    expect(await waitReleased(name, img)).toBe(true);
  });

  it('mount -v -t loop: the helper is told -v and says which device it used', async () => {
    const img = makeExt4(path.join(dir, 'v.ext4'), src);
    const target = mnt();
    const r = text(await ns.run(MOUNT, ['-v', '-t', 'loop', img, target]));
    expect(r.rc, r.err).toBe(0);
    const [m] = ns.mountsOn(target);
    const name = loopNameOf(m);
    expect(r.out).toContain(`mount.loop: /dev/${name} is ${img}`);
    expect(r.out).toContain(`mount: /dev/${name} mounted on ${target}.`);
    expect(text(await ns.run(UMOUNT, [target])).rc).toBe(0);
    expect(await waitReleased(name, img)).toBe(true);
  });

  describe('failure paths: mount(8) messages and statuses, nothing left behind (compared with util-linux mount -o loop)', () => {
    /**
     * Run `mount -t loop SPEC DIR` (our helper) and `mount -o loop SPEC DIR` (util-linux's own
     * loop setup) on the same input; both must fail alike, with no mount and no device left.
     */
    async function compareFailure(spec: string, target: string) {
      const ours = text(await ns.run(MOUNT, ['-t', 'loop', spec, target]));
      const oursLeft = { mounts: fs.existsSync(target) ? ns.mountsOn(target) : [], devices: await waitNoDeviceFor(spec) };
      const ref = text(await ns.run(MOUNT, ['-o', 'loop', spec, target]));
      const refLeft = { mounts: fs.existsSync(target) ? ns.mountsOn(target) : [], devices: await waitNoDeviceFor(spec) };
      expect(ours.rc).toBe(32);
      expect(ref.rc).toBe(32);
      expect(normDevices(ours.err)).toBe(normDevices(ref.err));
      expect(ours.out).toBe(ref.out);
      expect(oursLeft).toEqual({ mounts: [], devices: [] });
      expect(refLeft).toEqual({ mounts: [], devices: [] });
      return ours;
    }

    it('missing image', async () => {
      const img = path.join(dir, 'does-not-exist.img');
      const target = mnt();
      const r = await compareFailure(img, target);
      expect(r.err).toBe(`mount: ${target}: failed to setup loop device for ${img}.\n`);
    });

    it('missing mount point', async () => {
      const img = makeExt4(path.join(dir, 'ok.ext4'), src);
      const target = path.join(dir, 'no-such-dir');
      const r = await compareFailure(img, target);
      expect(r.err).toBe(
        `mount: ${target}: mount point does not exist.\n       dmesg(1) may have more information after failed mount system call.\n`,
      );
    });

    it('unknown filesystem (random bytes)', async () => {
      const img = makeRandom(path.join(dir, 'random.img'));
      const target = mnt();
      const r = await compareFailure(img, target);
      expect(normDevices(r.err)).toBe(
        `mount: ${target}: wrong fs type, bad option, bad superblock on /dev/loopN, missing codepage or helper program, or other error.\n` +
          '       dmesg(1) may have more information after failed mount system call.\n',
      );
    });

    it('corrupt image (an ext4 superblock whose filesystem is cut short)', async () => {
      const img = makeCorruptExt4(path.join(dir, 'corrupt.ext4'), src);
      const target = mnt();
      const r = await compareFailure(img, target);
      expect(normDevices(r.err)).toMatch(new RegExp(`^mount: ${target}: wrong fs type, bad option, bad superblock on /dev/loopN`));
    });

    it('util-linux reference: mount -o loop of an image mounted elsewhere re-uses its device (one device, one superblock)', async () => {
      const img = makeExt4(path.join(dir, 'twice.ext4'), src);
      const a = mnt('a');
      const b = mnt('b');
      expect(text(await ns.run(MOUNT, ['-o', 'loop', img, a])).rc).toBe(0);
      expect(text(await ns.run(MOUNT, ['-o', 'loop', img, b])).rc).toBe(0);
      expect(ns.mountsOn(b)[0].devno).toBe(ns.mountsOn(a)[0].devno);
      expect(devicesFor(img)).toHaveLength(1);
    });

    // A second `mount -t loop` of an image mounted read-write elsewhere must never bind a second
    // device (two superblocks on one image: corruption). Like libmount's loopcxt_find_overlap,
    // mount.loop re-uses the device already bound to the same range; refusing would pass too.
    it('image already mounted elsewhere: refused, or the same device re-used; never a second device', async () => {
      const img = makeExt4(path.join(dir, 'twice.ext4'), src);
      const a = mnt('a');
      const b = mnt('b');
      expect(text(await ns.run(MOUNT, ['-t', 'loop', img, a])).rc).toBe(0);
      const r = text(await ns.run(MOUNT, ['-t', 'loop', img, b]));
      const devices = devicesFor(img);
      if (r.rc === 0) {
        expect(ns.mountsOn(b)[0].devno).toBe(ns.mountsOn(a)[0].devno);
      } else {
        expect(r.rc).toBe(32);
        expect(r.err).toMatch(new RegExp(`^mount: ${b}: `));
        expect(ns.mountsOn(b)).toEqual([]);
      }
      expect(devices.map((s) => s.name)).toHaveLength(1);
    });
  });

  describe('the helper called by hand', () => {
    it('bad usage exits 1: no arguments, one argument, an unknown option, an unparsable size', async () => {
      const none = text(await ns.run(HELPER, []));
      expect(none).toEqual({
        rc: 1,
        out: '',
        err: "mount.loop: no image or mount point specified\nTry 'mount.loop --help' for more information.\n",
      });
      // as mount(8) would find it, in the namespace's /sbin
      expect(text(await ns.run('/sbin/mount.loop', [])).rc).toBe(1);
      expect(text(await ns.run(HELPER, [path.join(dir, 'x.img')])).rc).toBe(1);
      const bad = text(await ns.run(HELPER, ['-Z', 'a', 'b']));
      expect(bad.rc).toBe(1);
      expect(bad.err).toContain("Try 'mount.loop --help' for more information.");
      const img = makeExt4(path.join(dir, 'size.ext4'), src);
      const target = mnt();
      const size = text(await ns.run(HELPER, [img, target, '-o', 'offset=abc']));
      expect(size.rc).toBe(1);
      expect(size.err).toMatch(new RegExp(`^mount: ${target}: failed to parse mount options '.*offset=abc': Invalid argument\\.\\n$`));
      // util-linux: the same usage class of error, status 1
      const ref = text(await ns.run(MOUNT, ['-o', 'loop,offset=abc', img, target]));
      expect(ref.rc).toBe(1);
      expect(ref.err).toMatch(new RegExp(`^mount: ${target}: failed to parse mount options '.*offset=abc': Invalid argument\\.\\n$`));
      expect(ns.mountsOn(target)).toEqual([]);
      expect(await waitNoDeviceFor(img)).toEqual([]);
    });

    it('mount.loop IMG DIR -o ro,offset=0: attaches (autoclear, read-only) and mounts', async () => {
      const img = makeExt4(path.join(dir, 'hand.ext4'), src);
      const target = mnt();
      expect(text(await ns.run(HELPER, [img, target, '-o', 'ro,offset=0']))).toEqual({ rc: 0, out: '', err: '' });
      const [m] = ns.mountsOn(target);
      expect(m.fstype).toBe('ext4');
      expect(m.mountOptions.split(',')[0]).toBe('ro');
      const name = loopNameOf(m);
      expect(readLoopState(name)).toMatchObject({ backingFile: img, offset: '0', ro: '1', autoclear: '1' });
      expect(fs.readFileSync(ns.path(`${target}/hello.txt`), 'utf8')).toBe(HELLO);
      expect(text(await ns.run(UMOUNT, [target])).rc).toBe(0);
      expect(await waitReleased(name, img)).toBe(true);
    });

    it('mount.loop DISK DIR -o offset=1MiB,sizelimit=16MiB,direct-io: the helper attaches with the offset and direct I/O', async () => {
      const p = makePartitioned(path.join(dir, 'disk.img'), src);
      const target = mnt();
      expect(text(await ns.run(HELPER, [p.file, target, '-o', 'offset=1MiB,sizelimit=16MiB,direct-io'])).rc).toBe(0);
      const [m] = ns.mountsOn(target);
      const name = loopNameOf(m);
      expect(readLoopState(name)).toMatchObject({
        backingFile: p.file,
        offset: String(MiB),
        sizelimit: String(16 * MiB),
        dio: '1',
        autoclear: '1',
      });
      // the loop options are not passed on to the filesystem
      expect(m.superOptions).not.toMatch(/offset|sizelimit|direct-io/);
      expect(fs.readFileSync(ns.path(`${target}/hello.txt`), 'utf8')).toBe(HELLO);
      expect(text(await ns.run(UMOUNT, [target])).rc).toBe(0);
      expect(await waitReleased(name, p.file)).toBe(true);
    });

    it("the device's read-ahead is the backing disk's (direct I/O would otherwise read in the loop driver's small requests)", async () => {
      const img = makeExt4(path.join(dir, 'ra.ext4'), src);
      const st = fs.statSync(img, { bigint: true });
      const maj = Number(((st.dev >> 8n) & 0xfffn) | ((st.dev >> 32n) & ~0xfffn & 0xfffff000n));
      const min = Number((st.dev & 0xffn) | ((st.dev >> 12n) & ~0xffn & 0xffffff00n));
      const sysDisk = `/sys/dev/block/${maj}:${min}`;
      const diskRa = [`${sysDisk}/queue/read_ahead_kb`, `${sysDisk}/../queue/read_ahead_kb`].find((f) => fs.existsSync(f));
      if (maj === 0 || !diskRa) {
        console.log(`[mount/read-ahead] ${img} is not on a block device (st_dev ${maj}:${min}): nothing to match`);
        return;
      }
      const raOf = (dev: string) => Number(fs.readFileSync(`/sys/block/${dev}/queue/read_ahead_kb`, 'utf8'));
      // what the loop driver gives a device of this file by itself (util-linux, no match)
      const plain = execFileSync('/usr/sbin/losetup', ['-f', '--show', '-r', img], { encoding: 'utf8' }).trim();
      let driverRa: number;
      try {
        driverRa = raOf(path.basename(plain));
      } finally {
        execFileSync('/usr/sbin/losetup', ['-d', plain]);
      }
      const target = mnt();
      expect(text(await ns.run(HELPER, [img, target]))).toEqual({ rc: 0, out: '', err: '' });
      const name = loopNameOf(ns.mountsOn(target)[0]);
      // raised to the disk's, never lowered below the driver's own
      expect(raOf(name)).toBe(Math.max(Number(fs.readFileSync(diskRa, 'utf8')), driverRa));
      expect(readLoopState(name)).toMatchObject({ backingFile: img, dio: '1' });
      expect(text(await ns.run(UMOUNT, [target])).rc).toBe(0);
      expect(await waitReleased(name, img)).toBe(true);
    });

    it('-f (fake) attaches and mounts nothing', async () => {
      const img = makeExt4(path.join(dir, 'fake.ext4'), src);
      const target = mnt();
      expect(text(await ns.run(HELPER, [img, target, '-f', '-o', 'rw'])).rc).toBe(0);
      expect(ns.mountsOn(target)).toEqual([]);
      expect(devicesFor(img)).toEqual([]);
    });

    it('a failed mount by hand releases the device the helper attached', async () => {
      const img = makeRandom(path.join(dir, 'junk.img'));
      const target = mnt();
      const r = text(await ns.run(HELPER, [img, target, '-o', 'rw']));
      expect(r.rc).toBe(32);
      expect(normDevices(r.err)).toMatch(new RegExp(`^mount: ${target}: wrong fs type, bad option, bad superblock on /dev/loopN`));
      expect(ns.mountsOn(target)).toEqual([]);
      expect(await waitNoDeviceFor(img)).toEqual([]);
    });
  });

  // the default direct I/O: asked for in the binding itself (LO_FLAGS_DIRECT_IO in
  // LOOP_CONFIGURE, block size 512), never by LOOP_SET_DIRECT_IO on the bound device (which
  // freezes its queue: ~20 ms of every mount); a binding the kernel declines direct I/O for is
  // bound again buffered, keeping the 512-byte device a 1 KiB-block filesystem needs
  describe('direct I/O by default', () => {
    it.skipIf(straceReason)('direct I/O is asked for in LOOP_CONFIGURE (block size 512), never with LOOP_SET_DIRECT_IO', async () => {
      const img = makeExt4(path.join(dir, 'img.ext4'), src);
      const target = mnt('mnt');
      const trace = path.join(dir, 'ioctl.trace');
      const r = text(await ns.run('strace', ['-f', '-qq', '-e', 'trace=ioctl', '-o', trace, HELPER, img, target]));
      expect(r).toEqual({ rc: 0, out: '', err: '' });
      const lines = fs.readFileSync(trace, 'utf8').split('\n');
      const configure = lines.filter((l) => /\bioctl\(\d+, LOOP_CONFIGURE,/.test(l));
      expect(configure).toHaveLength(1);
      const flags = /lo_flags=([A-Z_|]+)/.exec(configure[0])?.[1].split('|').sort();
      expect({ flags, blockSize: /block_size=(\d+)/.exec(configure[0])?.[1] }).toEqual({
        flags: ['LO_FLAGS_AUTOCLEAR', 'LO_FLAGS_DIRECT_IO'],
        blockSize: '512',
      });
      expect(lines.filter((l) => l.includes('LOOP_SET_DIRECT_IO'))).toEqual([]);

      const name = loopNameOf(ns.mountsOn(target)[0]);
      expect(readLoopState(name)).toMatchObject({ backingFile: img, dio: '1', autoclear: '1' });
      expect(sysAttr(name, 'queue/logical_block_size')).toBe('512');
      expect(fs.readFileSync(ns.path(`${target}/hello.txt`), 'utf8')).toBe(HELLO);
      expect(text(await ns.run(UMOUNT, [target])).rc).toBe(0);
    });

    it('an image on a 4096-byte-sector disk: direct I/O declined, bound again buffered with 512-byte sectors, its 1 KiB-block ext4 mounts', async () => {
      // the disk under the image: a loop device of 4096-byte logical blocks holding an ext4
      const disk = path.join(dir, 'disk4k.img');
      fs.closeSync(fs.openSync(disk, 'w'));
      fs.truncateSync(disk, 64 * MiB);
      const disk4k = execFileSync(LOSETUP, ['-f', '--show', '-b', '4096', disk], { encoding: 'utf8' }).trim();
      try {
        expect(sysAttr(path.basename(disk4k), 'queue/logical_block_size')).toBe('4096');
        execFileSync('mkfs.ext4', ['-q', '-F', disk4k]);
        const outer = mnt('outer');
        expect(text(await ns.run(MOUNT, [disk4k, outer]))).toEqual({ rc: 0, out: '', err: '' });

        // a 16 MiB ext4 gets 1 KiB blocks: a device of 4096-byte sectors cannot hold it
        const made = makeExt4(path.join(dir, 'small.ext4'), src);
        expect(execFileSync('dumpe2fs', ['-h', made], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })).toMatch(/^Block size:\s+1024$/m);
        const img = `${outer}/small.ext4`;
        fs.copyFileSync(made, ns.path(img));

        const target = mnt('inner');
        expect(text(await ns.run(HELPER, [img, target]))).toEqual({ rc: 0, out: '', err: '' });
        const name = loopNameOf(ns.mountsOn(target)[0]);
        expect(readLoopState(name)).toMatchObject({ backingFile: img, dio: '0', autoclear: '1' });
        expect(sysAttr(name, 'queue/logical_block_size')).toBe('512');
        expect(fs.readFileSync(ns.path(`${target}/hello.txt`), 'utf8')).toBe(HELLO);
        expect(text(await ns.run(UMOUNT, [target])).rc).toBe(0);
        expect(text(await ns.run(UMOUNT, [outer])).rc).toBe(0);
      } finally {
        await ns.cleanupUnder(dir);
        execFileSync(LOSETUP, ['-d', disk4k]);
      }
    });
  });
});
