// The new mount API and namespace calls (native/mount_api.cc, native/ns.cc) against the real
// kernel, root only.
//
// Hygiene: nothing is ever mounted in the host mount namespace. Every step that attaches a
// mount runs in a child node process under `unshare -m` (private propagation), so the mount
// dies with that namespace; the host's /proc/self/mountinfo is checked afterwards. The one
// loop device is attached by util-linux losetup to an image in this file's private
// directory and detached (by backing-file directory, so only ours) in afterAll, whatever
// happened. The user namespace for the ID-mapped mount belongs to a `sleep` child killed in
// `finally`.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { native, type FsContextError, type SysError } from '../../src/kernel/native.js';
import { DeviceTracker, readLoopState } from '../helpers/devices.js';
import { announceSkip, firstReason, loopSkipReason, REF_LOSETUP, REPO_ROOT } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import { sysErrorOf } from '../helpers/errors.js';

const addon = native();
const C = addon.constants;
const ADDON_PATH = path.join(REPO_ROOT, 'native', 'build', 'Release', 'loopfs.node');
const MKFS = '/usr/sbin/mkfs.ext4';
const UNSHARE = '/usr/bin/unshare';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function toolReason(): string | undefined {
  if (!fs.existsSync(MKFS)) return `${MKFS} not installed`;
  if (!fs.existsSync(UNSHARE)) return `${UNSHARE} not installed`;
  if (!fs.existsSync(REF_LOSETUP)) return `${REF_LOSETUP} not installed`;
  if (!fs.readFileSync('/proc/filesystems', 'utf8').includes('\text4')) return 'no ext4 in /proc/filesystems';
  return undefined;
}

const skipReason = firstReason(loopSkipReason(), toolReason());
announceSkip('mount API tests', skipReason);

/** Mount points of the host namespace (this process's) that lie under `dir`. */
function hostMountsUnder(dir: string): string[] {
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((p): p is string => p !== undefined && (p === dir || p.startsWith(`${dir}/`)));
}

/**
 * Runs `body` in a node child inside a new private mount namespace, with the addon as `a`,
 * its constants as `C`, node:fs as `fs`, `P` = params, and `out(value)` to report a result.
 * Returns what it reported; throws with the child's stderr when it failed.
 */
function inMountNs<T = Record<string, unknown>>(body: string, params: Record<string, unknown>): T {
  const code = `
    const a = require(${JSON.stringify(ADDON_PATH)});
    const C = a.constants;
    const fs = require('node:fs');
    const P = JSON.parse(process.argv[1]);
    const out = (v) => process.stdout.write(JSON.stringify(v));
    const err = (f) => { try { f(); return null; } catch (e) {
      return { code: e.code, syscall: e.syscall, path: e.path, details: e.details, message: e.message }; } };
    const mountinfo = (p) => fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\\n').filter((l) => l.split(' ')[4] === p);
    ${body}`;
  const r = spawnSync(UNSHARE, ['--mount', '--propagation', 'private', process.execPath, '-e', code, JSON.stringify(params)], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (r.status !== 0 || r.error) {
    throw new Error(`child in a private mount namespace failed (status ${r.status}, ${r.error ?? r.signal}): ${r.stderr}`);
  }
  return JSON.parse(r.stdout) as T;
}

describe.skipIf(skipReason !== undefined)('new mount API (root, real kernel, private mount namespaces)', () => {
  const tracker = new DeviceTracker();
  let tmp = '';
  let dev = '';
  let img = '';
  let mnt = '';

  beforeAll(() => {
    tmp = makeTempDir('loopfs-mountapi');
    tracker.ownDir(tmp);
    const src = path.join(tmp, 'src');
    fs.mkdirSync(src);
    fs.writeFileSync(path.join(src, 'hello.txt'), 'hello from ext4\n');
    fs.writeFileSync(path.join(src, 'owned-1000.txt'), 'uid 1000\n');
    fs.chownSync(path.join(src, 'owned-1000.txt'), 1000, 1000);
    fs.writeFileSync(path.join(src, 'setuid'), '#!/bin/sh\n', { mode: 0o4755 });
    fs.chmodSync(path.join(src, 'setuid'), 0o4755);
    img = path.join(tmp, 'ext4.img');
    const mk = spawnSync(MKFS, ['-q', '-F', '-d', src, img, '16M'], { encoding: 'utf8' });
    if (mk.status !== 0) throw new Error(`mkfs.ext4 failed: ${mk.stderr}`);
    mnt = path.join(tmp, 'mnt');
    fs.mkdirSync(mnt);
  });

  /**
   * Our device, bound to our image. Tests elsewhere on this shared machine attach and detach
   * devices all the time; should ours have been taken away since the last test, say so and
   * attach the image again (the tracker detaches everything backed under `tmp`).
   */
  function ourDevice(): string {
    if (dev && readLoopState(dev)?.backingFile === img) return dev;
    if (dev) console.warn(`[mount-api] ${dev} no longer backs ${img}: detached by another process; attaching again`);
    const lo = spawnSync(REF_LOSETUP, ['-f', '--show', img], { encoding: 'utf8' });
    if (lo.status !== 0) throw new Error(`losetup -f --show failed: ${lo.stderr}`);
    dev = lo.stdout.trim();
    tracker.add(dev, img);
    return dev;
  }

  afterAll(async () => {
    try {
      // Mounts lived only in the children's namespaces; a namespace's mounts are released
      // as it dies, which can lag its last process a little, so the detach waits (bounded).
      if (tmp) await tracker.detachAll();
    } finally {
      if (tmp) {
        expect(hostMountsUnder(tmp)).toEqual([]);
        removeTree(tmp);
      }
    }
  });

  it('fsopen + fsconfig(source) + CMD_CREATE + fsmount(NOSUID|NODEV) + move_mount: the files read back', () => {
    const dev = ourDevice();
    const r = inMountNs<{ text: string; info: string[]; setuidMode: number; fdLink: string; cloexec: number[] }>(
      `
      const fsfd = a.fsopen('ext4', 0);
      a.fsconfigSetString(fsfd, 'source', P.dev);
      a.fsconfigSetFlag(fsfd, 'noload');
      a.fsconfigCreate(fsfd);
      const mfd = a.fsmount(fsfd, 0, C.MOUNT_ATTR_NOSUID | C.MOUNT_ATTR_NODEV);
      const flags = (fd) => parseInt(/^flags:\\s+([0-7]+)$/m.exec(fs.readFileSync('/proc/self/fdinfo/' + fd, 'utf8'))[1], 8);
      const cloexec = [fsfd, mfd].map((fd) => flags(fd) & 0o2000000);
      a.close(fsfd);
      const fdLink = fs.readlinkSync('/proc/self/fd/' + mfd);
      a.moveMount(mfd, C.AT_FDCWD, P.mnt, C.MOVE_MOUNT_F_EMPTY_PATH);
      a.close(mfd);
      out({ text: fs.readFileSync(P.mnt + '/hello.txt', 'utf8'), info: mountinfo(P.mnt),
            setuidMode: fs.statSync(P.mnt + '/setuid').mode & 0o7777, fdLink, cloexec });`,
      { dev, mnt },
    );
    expect(r.text).toBe('hello from ext4\n');
    expect(r.cloexec).toEqual([0o2000000, 0o2000000]);
    expect(r.fdLink).toBe('/'); // a detached mount's root
    expect(r.info).toHaveLength(1);
    const [, , , root, point, opts] = r.info[0].split(' ');
    expect([root, point]).toEqual(['/', mnt]);
    expect(opts.split(',')).toEqual(expect.arrayContaining(['rw', 'nosuid', 'nodev']));
    expect(r.info[0]).toContain(` - ext4 ${dev} `);
    expect(r.setuidMode).toBe(0o4755); // the bit is on disk; nosuid makes the kernel ignore it
    expect(hostMountsUnder(tmp)).toEqual([]);
  });

  it('ID-mapped mount through a user namespace (mount_setattr MOUNT_ATTR_IDMAP)', async () => {
    const dev = ourDevice();
    // A user namespace mapping 0..65535 inside to 100000.. outside, held by a sleeping child.
    let holder: ChildProcess | undefined;
    try {
      holder = spawn(UNSHARE, ['--user', 'sleep', '60'], { stdio: 'ignore' });
      const pid = holder.pid!;
      // Wait until the child has exec'd sleep inside its new user namespace.
      const ourNs = fs.readlinkSync('/proc/self/ns/user');
      for (let i = 0; i < 200; i++) {
        try {
          if (fs.readlinkSync(`/proc/${pid}/ns/user`) !== ourNs && fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'sleep') break;
        } catch {
          /* not there yet */
        }
        await sleep(10);
      }
      fs.writeFileSync(`/proc/${pid}/uid_map`, '0 100000 65536\n');
      fs.writeFileSync(`/proc/${pid}/gid_map`, '0 100000 65536\n');

      const r = inMountNs<{ uids: number[]; gids: number[]; info: string[]; again: { code: string } | null;
        initNs: { code: string } | null; attached: { code: string } | null }>(
        `
        const fsfd = a.fsopen('ext4', 0);
        a.fsconfigSetString(fsfd, 'source', P.dev);
        a.fsconfigCreate(fsfd);
        const mfd = a.fsmount(fsfd, 0, C.MOUNT_ATTR_NOSUID | C.MOUNT_ATTR_NODEV);
        a.close(fsfd);
        const self = a.open('/proc/self/ns/user', C.O_RDONLY);
        const initNs = err(() => a.mountSetattrIdmap(mfd, self));
        const userns = a.open('/proc/' + P.pid + '/ns/user', C.O_RDONLY);
        a.mountSetattrIdmap(mfd, userns);
        const again = err(() => a.mountSetattrIdmap(mfd, userns));
        a.moveMount(mfd, C.AT_FDCWD, P.mnt, C.MOVE_MOUNT_F_EMPTY_PATH);
        a.close(mfd);
        // An attached mount cannot be ID-mapped: open_tree without CLONE names the mount
        // holding our temp dir (a copy of the host's, in this namespace only).
        const here = a.openTree(C.AT_FDCWD, P.tmp, 0);
        const attached = err(() => a.mountSetattrIdmap(here, userns));
        a.close(here);
        const files = ['hello.txt', 'owned-1000.txt'].map((f) => fs.statSync(P.mnt + '/' + f));
        out({ uids: files.map((s) => s.uid), gids: files.map((s) => s.gid), info: mountinfo(P.mnt), again, initNs, attached });`,
        { dev, mnt, pid, tmp },
      );
      // On disk: root and 1000. Through the mapping: 100000 and 101000.
      expect(r.uids).toEqual([100000, 101000]);
      expect(r.gids).toEqual([100000, 101000]);
      expect(r.info).toHaveLength(1);
      expect(r.info[0].split(' ')[5].split(',')).toEqual(expect.arrayContaining(['nosuid', 'nodev', 'idmapped']));
      // The kernel's answers for the refused cases (Linux 6.18): the initial user namespace,
      // an already mapped mount, and a mount that is attached.
      expect(r.initNs?.code).toBe('EPERM');
      expect(r.again?.code).toBe('EPERM');
      expect(r.attached?.code).toBe('EINVAL');
    } finally {
      holder?.kill('SIGKILL');
    }
    expect(hostMountsUnder(tmp)).toEqual([]);
  });

  it('open_tree(OPEN_TREE_CLONE) + mount_setattr(RDONLY) + move_mount: a read-only bind', () => {
    const src = path.join(tmp, 'src');
    const r = inMountNs<{ info: string[]; write: { code: string } | null; text: string }>(
      `
      const tree = a.openTree(C.AT_FDCWD, P.src, C.OPEN_TREE_CLONE);
      a.mountSetattr(tree, '', C.AT_EMPTY_PATH, { attrSet: C.MOUNT_ATTR_RDONLY | C.MOUNT_ATTR_NOEXEC, propagation: C.MS_PRIVATE });
      a.moveMount(tree, C.AT_FDCWD, P.mnt, C.MOVE_MOUNT_F_EMPTY_PATH);
      a.close(tree);
      const write = err(() => fs.writeFileSync(P.mnt + '/new', 'x'));
      out({ info: mountinfo(P.mnt), write, text: fs.readFileSync(P.mnt + '/hello.txt', 'utf8') });`,
      { src, mnt },
    );
    expect(r.text).toBe('hello from ext4\n');
    expect(r.write?.code).toBe('EROFS');
    expect(r.info).toHaveLength(1);
    expect(r.info[0].split(' ')[5].split(',')).toEqual(expect.arrayContaining(['ro', 'noexec']));
    expect(fs.existsSync(path.join(src, 'new'))).toBe(false);
    expect(hostMountsUnder(tmp)).toEqual([]);
  });

  it('move_mount errors: ENOENT naming the target; an empty from-path needs MOVE_MOUNT_F_EMPTY_PATH', () => {
    const dev = ourDevice();
    const missing = path.join(tmp, 'no-such-dir');
    const r = inMountNs<{ move: { code: string; syscall: string; path: string } | null; bad: Record<string, unknown> | null }>(
      `
      const fsfd = a.fsopen('ext4', 0);
      a.fsconfigSetString(fsfd, 'source', P.dev);
      a.fsconfigCreate(fsfd);
      const mfd = a.fsmount(fsfd, 0, 0);
      a.close(fsfd);
      const move = err(() => a.moveMount(mfd, C.AT_FDCWD, P.missing, C.MOVE_MOUNT_F_EMPTY_PATH));
      const bad = err(() => a.moveMount(mfd, C.AT_FDCWD, P.missing, 0)); // "" without F_EMPTY_PATH
      a.close(mfd);
      out({ move, bad });`,
      { dev, missing },
    );
    expect(r.move).toMatchObject({ code: 'ENOENT', syscall: 'move_mount', path: missing });
    expect(r.bad).toMatchObject({ code: 'ENOENT', syscall: 'move_mount' });
  });

  it('fsconfig failures carry the kernel log; fsopen of an unknown type is ENODEV with fsname', () => {
    const unknown = sysErrorOf(() => addon.fsopen('no-such-fs', 0)) as SysError & { fsname?: string };
    expect([unknown.code, unknown.syscall, unknown.fsname]).toEqual(['ENODEV', 'fsopen', 'no-such-fs']);
    expect(unknown.message).toBe("ENODEV: No such device, fsopen 'no-such-fs'");

    // None of these create a superblock, let alone a mount: safe in the host namespace.
    const fsfd = addon.fsopen('ext4', 0);
    try {
      const badKey = sysErrorOf<FsContextError>(() => addon.fsconfigSetString(fsfd, 'no_such_option', '1'));
      expect([badKey.code, badKey.syscall, badKey.key, badKey.fd]).toEqual([
        'EINVAL',
        'fsconfig(FSCONFIG_SET_STRING)',
        'no_such_option',
        fsfd,
      ]);
      expect(badKey.details.join('\n')).toContain('no_such_option');
      expect(badKey.message).toContain(badKey.details[0]);

      const badFlag = sysErrorOf<FsContextError>(() => addon.fsconfigSetFlag(fsfd, 'no_such_flag'));
      expect([badFlag.code, badFlag.syscall, badFlag.key]).toEqual(['EINVAL', 'fsconfig(FSCONFIG_SET_FLAG)', 'no_such_flag']);

      // A regular file as the source of a block-device filesystem.
      const file = path.join(tmp, 'src', 'hello.txt');
      addon.fsconfigSetString(fsfd, 'source', file);
      const create = sysErrorOf<FsContextError>(() => addon.fsconfigCreate(fsfd));
      expect(create.syscall).toBe('fsconfig(FSCONFIG_CMD_CREATE)');
      expect(['ENOTBLK', 'EINVAL']).toContain(create.code);
      expect(create.details.length).toBeGreaterThan(0);
      expect(create.details.some((l) => /^e /.test(l))).toBe(true);
      expect(create.key).toBeUndefined();
      // A failed context is dead: fsmount then fails too (with an empty or repeated log).
      const mount = sysErrorOf<FsContextError>(() => addon.fsmount(fsfd, 0, 0));
      expect(mount.syscall).toBe('fsmount');
      expect(Array.isArray(mount.details)).toBe(true);
    } finally {
      addon.close(fsfd);
    }
    expect(() => addon.fsopen('ext4\0x', 0)).toThrow(TypeError);
    expect(() => addon.mountSetattr(0, '', 0, null as never)).toThrow(TypeError);
  });

  it('constants are the UAPI values', () => {
    expect([C.MOUNT_ATTR_RDONLY, C.MOUNT_ATTR_NOSUID, C.MOUNT_ATTR_NODEV, C.MOUNT_ATTR_NOEXEC]).toEqual([1, 2, 4, 8]);
    expect(C.MOUNT_ATTR_IDMAP).toBe(0x100000);
    expect(C.MOVE_MOUNT_F_EMPTY_PATH).toBe(4);
    expect(C.MOVE_MOUNT_T_EMPTY_PATH).toBe(0x40);
    expect(C.OPEN_TREE_CLONE).toBe(1);
    expect(C.OPEN_TREE_CLOEXEC).toBe(0o2000000);
    expect([C.FSOPEN_CLOEXEC, C.FSMOUNT_CLOEXEC]).toEqual([1, 1]);
    expect(C.AT_EMPTY_PATH).toBe(0x1000);
    expect(C.AT_RECURSIVE).toBe(0x8000);
    expect([C.CLONE_NEWNS, C.CLONE_NEWUSER]).toEqual([0x20000, 0x10000000]);
  });
});

describe('namespaces and pidfds', () => {
  it('pidfdOpen: a close-on-exec pidfd; watchFd on it fires when the process exits', async () => {
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    let pidfd = -1;
    try {
      pidfd = addon.pidfdOpen(child.pid!);
      const info = fs.readFileSync(`/proc/self/fdinfo/${pidfd}`, 'utf8');
      expect(/^Pid:\s+(\d+)$/m.exec(info)?.[1]).toBe(String(child.pid));
      const flags = parseInt(/^flags:\s+([0-7]+)$/m.exec(info)?.[1] ?? '0', 8);
      expect(flags & 0o2000000).toBe(0o2000000);
      const fd = pidfd;
      const gone = new Promise<void>((resolve) => {
        addon.watchFd(fd, function () {
          this.close();
          resolve();
        });
      });
      child.kill('SIGKILL');
      await gone;
    } finally {
      child.kill('SIGKILL');
      await exited;
      if (pidfd >= 0) addon.close(pidfd);
    }
    const e = sysErrorOf(() => addon.pidfdOpen(0x3fffffff)) as SysError & { pid?: number };
    expect([e.code, e.syscall, e.pid]).toEqual(['ESRCH', 'pidfd_open', 0x3fffffff]);
    expect(() => addon.pidfdOpen(0)).toThrow(RangeError);
  });

  const rootReason = process.getuid?.() === 0 ? undefined : 'setns needs CAP_SYS_ADMIN (not root)';
  announceSkip('setns test', rootReason);

  it.skipIf(rootReason !== undefined)('setns: mount and user namespaces are refused in multi-threaded node (EINVAL)', () => {
    for (const [ns, type] of [
      ['mnt', C.CLONE_NEWNS],
      ['user', C.CLONE_NEWUSER],
    ] as const) {
      const fd = addon.open(`/proc/self/ns/${ns}`, C.O_RDONLY);
      try {
        const e = sysErrorOf(() => addon.setns(fd, type));
        expect([e.code, e.syscall, e.fd]).toEqual(['EINVAL', 'setns', fd]);
      } finally {
        addon.close(fd);
      }
    }
    // Per-thread namespace types work (re-joining our own UTS namespace changes nothing).
    const uts = addon.open('/proc/self/ns/uts', C.O_RDONLY);
    try {
      addon.setns(uts, C.CLONE_NEWUTS);
      // The wrong type for the fd: EINVAL as well.
      expect(sysErrorOf(() => addon.setns(uts, C.CLONE_NEWNET)).code).toBe('EINVAL');
    } finally {
      addon.close(uts);
    }
  });
});
