// src/mounting/loop-mount.ts, mountLoopDevice: the one routine the broker's mount op and the
// interceptor (loopfs run, the OCI seccomp agent) mount an instance's loop device with.
// Real devices and a real instance: each refusal is the one its facts call for, nothing is
// mounted when it is refused, and a mount it makes is the nosuid,nodev mount of the host
// node, handed to the caller's idmap exactly once. The broker's and the interceptor's own
// wording of each refusal is tested through them (test/broker, test/intercept, test/oci).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { native } from '../../src/kernel/native.js';
import { LocalInstance } from '../../src/instance/local-instance.js';
import { LoopMountRefused, mountLoopDevice, type LoopMountRefusal, type LoopMountRequest } from '../../src/mounting/loop-mount.js';
import { readLoopState } from '../helpers/devices.js';
import { firstReason, REF_LOSETUP } from '../helpers/env.js';
import { instanceSkipReason, MiB, minorOf, Sandbox, skipTitle, text } from '../instance/support.js';

const which = (t: string) => fs.existsSync(`/usr/sbin/${t}`) || fs.existsSync(`/sbin/${t}`) || fs.existsSync(`/usr/bin/${t}`);
const reason = firstReason(instanceSkipReason('mounting/loop-mount'), which('mkfs.ext4') ? undefined : 'mkfs.ext4 not installed');

describe.skipIf(reason)(skipTitle('mountLoopDevice', reason), () => {
  let sb: Sandbox;
  let dir: string;
  /** minors: an ext4 image and an all-zero one in the instance, an ext4 image attached on the host */
  let ext4: number;
  let blank: number;
  let blankFile: string;
  let foreign: number;

  beforeAll(async () => {
    sb = new Sandbox('loopfs-mounting');
    dir = sb.path('inst');
    await sb.create(dir);
    const img = sb.file('ext4.img', 8 * MiB);
    execFileSync('mkfs.ext4', ['-q', '-F', img], { stdio: 'ignore' });
    const attach = async (file: string) => {
      const r = await sb.losetup(['--instance', dir, '-f', '--show', file]);
      if (r.exitCode !== 0) throw new Error(`attach ${file}: ${text(r.stderr)}`);
      return minorOf(text(r.stdout).trim());
    };
    ext4 = await attach(img);
    blankFile = sb.file('blank.img');
    blank = await attach(blankFile);
    foreign = minorOf(sb.hostAttach(sb.file('host.img')));
  });

  afterAll(async () => {
    await sb?.cleanup();
  });

  /** mountLoopDevice on the instance with `over` applied; the idmap calls it made. */
  function mount(over: Partial<LoopMountRequest>): { result: ReturnType<typeof mountLoopDevice>; idmapped: number[] } {
    const inst = LocalInstance.open(dir, sb.env);
    const idmapped: number[] = [];
    try {
      const result = mountLoopDevice({
        inst,
        minor: ext4,
        fstype: null,
        readOnly: false,
        attrs: [],
        allowFs: ['ext4'],
        fuse: () => false,
        for: { uid: 0, gid: 0, idmap: (fd) => (idmapped.push(fd), false) },
        env: sb.env,
        ...over,
      });
      return { result, idmapped };
    } finally {
      inst.close();
    }
  }

  function refusal(over: Partial<LoopMountRequest>): LoopMountRefusal {
    try {
      const { result } = mount(over);
      native().close(result.mntFd);
    } catch (e) {
      if (e instanceof LoopMountRefused) return e.refusal;
      throw e;
    }
    throw new Error('mounted, not refused');
  }

  it('a device of no instance is not-member, an unknown superblock unknown-type', () => {
    expect(refusal({ minor: foreign })).toEqual({ why: 'not-member' });
    expect(refusal({ minor: blank })).toEqual({ why: 'unknown-type' });
  });

  it('a type outside the allow-list: wrong-type when the device holds an allowed one, else type-not-allowed', () => {
    expect(refusal({ fstype: 'ext3' })).toEqual({ why: 'wrong-type', fstype: 'ext3', probed: 'ext4' });
    expect(refusal({ allowFs: ['squashfs'] })).toEqual({ why: 'type-not-allowed', fstype: 'ext4' });
    expect(refusal({ fstype: 'ext3', allowFs: ['squashfs'] })).toEqual({ why: 'type-not-allowed', fstype: 'ext3' });
  });

  it('kernel or FUSE is asked only once the filesystem is allowed', () => {
    let asked = 0;
    const fuse = () => (asked++, false);
    expect(refusal({ allowFs: [], fuse })).toEqual({ why: 'type-not-allowed', fstype: 'ext4' });
    expect(refusal({ minor: blank, fuse })).toEqual({ why: 'unknown-type' });
    expect(asked).toBe(0);
  });

  it('mounts the host node nosuid,nodev (read-only when asked), with one idmap call on the mount fd', () => {
    const n = native();
    for (const readOnly of [false, true]) {
      const target = sb.path(`mnt-${readOnly ? 'ro' : 'rw'}`);
      fs.mkdirSync(target);
      const { result, idmapped } = mount({ readOnly });
      try {
        expect({ ...result, mntFd: 0 }).toEqual({ mntFd: 0, fstype: 'ext4', readOnly, idmapped: false, fuse: null });
        expect(idmapped).toEqual([result.mntFd]);
        n.moveMount(result.mntFd, n.constants.AT_FDCWD, target, n.constants.MOVE_MOUNT_F_EMPTY_PATH);
      } finally {
        n.close(result.mntFd);
      }
      try {
        // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... - FSTYPE SOURCE SUPEROPTIONS
        const line = fs
          .readFileSync('/proc/self/mountinfo', 'utf8')
          .split('\n')
          .find((l) => l.split(' ')[4] === target)!;
        const [pre, post] = line.split(' - ');
        const opts = pre.split(' ')[5].split(',');
        expect(opts.filter((o) => ['ro', 'rw', 'nosuid', 'nodev'].includes(o)).sort()).toEqual([readOnly ? 'ro' : 'rw', 'nodev', 'nosuid'].sort());
        expect(post.split(' ').slice(0, 2)).toEqual(['ext4', `/dev/loop${ext4}`]);
      } finally {
        execFileSync('umount', [target]);
      }
    }
  });

  it('nothing stays open after a refusal: the device can be detached at once', () => {
    expect(refusal({ minor: blank })).toEqual({ why: 'unknown-type' });
    expect(refusal({ minor: blank, fstype: 'ext4', allowFs: [] })).toEqual({ why: 'type-not-allowed', fstype: 'ext4' });
    // an fd left open on the host node would defer this clear: the device would stay bound
    // to our file (another tool may bind the freed device to its own file at once)
    execFileSync(REF_LOSETUP, ['-d', `/dev/loop${blank}`]);
    expect(readLoopState(`loop${blank}`)?.backingFile).not.toBe(blankFile);
  });
});
