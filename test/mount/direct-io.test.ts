// mount.loop's default direct I/O, with real mounts in a private mount namespace (support.ts):
// it is asked for in the binding itself (LO_FLAGS_DIRECT_IO in LOOP_CONFIGURE, block size 512),
// never by LOOP_SET_DIRECT_IO on the bound device (which freezes its queue: ~20 ms of every
// mount), and a binding the kernel declines direct I/O for is bound again buffered, keeping the
// 512-byte device a 1 KiB-block filesystem needs.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { DeviceTracker, devicesBackedUnder, readLoopState } from '../helpers/devices.js';
import { announceSkip, firstReason } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import {
  HELLO,
  HELPER,
  loopNameOf,
  makeExt4,
  makeSourceTree,
  MiB,
  MOUNT,
  MountNamespace,
  mountSkipReason,
  RELEASE_WAIT_MS,
  skipTitle,
  sleep,
  text,
  UMOUNT,
} from './support.js';

const reason = mountSkipReason('mount/direct-io');
const straceReason = spawnSync('strace', ['-V']).status === 0 ? undefined : 'strace not installed';
announceSkip('mount/direct-io strace', firstReason(reason, straceReason));

const LOSETUP = '/usr/sbin/losetup';

async function waitNoDeviceUnder(dir: string, timeoutMs = RELEASE_WAIT_MS): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (devicesBackedUnder(dir).length > 0 && Date.now() < end) await sleep(20);
}

const sysAttr = (name: string, attr: string) => fs.readFileSync(`/sys/block/${name}/${attr}`, 'utf8').trim();

describe.skipIf(reason !== undefined)(skipTitle('mount.loop direct I/O by default, real mounts', reason), () => {
  let root: string;
  let src: string;
  let ns: MountNamespace;
  let dir: string;
  let seq = 0;
  const tracker = new DeviceTracker();

  beforeAll(async () => {
    root = makeTempDir('loopfs-mount-dio');
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
    await waitNoDeviceUnder(dir);
    const detached = await tracker.detachAll();
    expect({ problems, detached }).toEqual({ problems: [], detached: [] });
  });

  const mnt = (name: string) => {
    const p = path.join(dir, name);
    fs.mkdirSync(p, { recursive: true });
    return p;
  };

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
