// native/fuse_exec.c (loopfs-fuse-exec), the compiled launcher of the FUSE drivers and the
// fusermount libfuse 2 runs, and startFuseDriver on top of it, without the broker and
// without loop devices (the drivers serve image files here; test/broker/fuse.test.ts runs
// them through a real broker on instance devices). Checked against the kernel: what
// /proc/PID/status says of the driver's ids, groups, capabilities and no_new_privs, which
// fds it has, which mount namespace it is in and what is bound there, what arrives over
// $_FUSE_COMMFD, and that a mount made by createFuseMount is served and then let go.
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createFuseMount, FuseDriverError, runningFuseDrivers, startFuseDriver, type FuseDriver } from '../../src/mounting/fuse-driver.js';
import { FUSE_EXEC } from '../../src/kernel/fuse-exec.js';
import { native } from '../../src/kernel/native.js';
import { announceSkip, firstReason } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import { makeExt4, makeSourceTree, makeSquashfs, HELLO } from '../mount/support.js';
import { testUser, type User } from './support.js';

const has = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
const reason = firstReason(
  process.getuid?.() === 0 ? undefined : 'needs root',
  fs.existsSync(FUSE_EXEC) ? undefined : `${FUSE_EXEC} not built (node native/build.mjs)`,
  fs.existsSync('/dev/fuse') ? undefined : 'no /dev/fuse',
  ['fuse2fs', 'squashfuse', 'mksquashfs', 'mkfs.ext4'].find((c) => !has(c)) ? 'fuse2fs, squashfuse, mksquashfs or mkfs.ext4 not installed' : undefined,
  fs.existsSync('/bin/fusermount') ? undefined : 'no /bin/fusermount (what libfuse 2 runs)',
  process.getuid?.() === 0 && !testUser() ? 'cannot create the unprivileged test user' : undefined,
);
announceSkip('fuse-exec', reason);

const STATUS_FIELDS = ['Uid', 'Gid', 'Groups', 'CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs'];
const NO_CAPS = '0000000000000000';

/** What a confined process's status must say for uid:gid. */
function confinedStatus(uid: number, gid: number): string[] {
  return [`Uid:\t${uid}\t${uid}\t${uid}\t${uid}`, `Gid:\t${gid}\t${gid}\t${gid}\t${gid}`, 'Groups:\t', ...['CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb'].map((c) => `${c}:\t${NO_CAPS}`), 'NoNewPrivs:\t1'];
}

function statusLines(text: string): string[] {
  return text
    .split('\n')
    .filter((l) => STATUS_FIELDS.includes(l.split(':')[0]))
    .map((l) => l.trimEnd().replace(/^Groups:$/, 'Groups:\t'));
}

function run(args: string[], opts: SpawnSyncOptions = {}) {
  const r = spawnSync(FUSE_EXEC, args, { encoding: 'utf8', env: { PATH: process.env.PATH }, cwd: '/', ...opts });
  return { status: r.status, stdout: String(r.stdout), stderr: String(r.stderr) };
}

describe.skipIf(reason !== undefined)('loopfs-fuse-exec and startFuseDriver', () => {
  let tmp = '';
  let user: User;
  let ext4 = '';
  let sqfs = '';
  beforeAll(() => {
    user = testUser()!;
    tmp = makeTempDir('loopfs-fuse-exec');
    fs.chmodSync(tmp, 0o755);
    const src = makeSourceTree(path.join(tmp, 'src'));
    ext4 = makeExt4(path.join(tmp, 'img.ext4'), src);
    sqfs = makeSquashfs(path.join(tmp, 'img.sqfs'), src);
  });
  afterAll(() => {
    if (tmp) removeTree(tmp);
  });

  it('drops to UID:GID with no groups, no capabilities (also as uid 0) and no_new_privs before the exec', () => {
    for (const [uid, gid] of [
      [user.uid, user.gid],
      [0, 0],
    ]) {
      const r = run([String(uid), String(gid), 'plain', '/bin/cat', '/proc/self/status']);
      expect([r.status, r.stderr]).toEqual([0, '']);
      expect(statusLines(r.stdout), `${uid}:${gid}`).toEqual(confinedStatus(uid, gid));
    }
  });

  it('gives the program fds 0-4 and closes every other one it was started with', () => {
    const names = ['three', 'four', 'five', 'six'].map((n) => path.join(tmp, n));
    const fds = names.map((n) => fs.openSync(n, 'w'));
    try {
      const r = run([String(user.uid), String(user.gid), 'plain', '/bin/readlink', ...[3, 4, 5, 6].map((n) => `/proc/self/fd/${n}`)], {
        stdio: ['ignore', 'pipe', 'pipe', ...fds],
      });
      // readlink prints the links it could read and fails for the others
      expect([r.status, r.stdout, r.stderr]).toEqual([1, `${names[0]}\n${names[1]}\n`, '']);
    } finally {
      for (const fd of fds) fs.closeSync(fd);
    }
  });

  it('fusermount mode: runs the program in a mount namespace of its own where /bin/fusermount is this launcher; nothing changes in the caller\'s', () => {
    const self = fs.statSync(FUSE_EXEC);
    // mounts on the path libfuse 2 runs, in our namespace (field 5 of mountinfo: the mount point)
    const target = fs.realpathSync('/bin/fusermount');
    const mountsOnTarget = () =>
      fs
        .readFileSync('/proc/self/mountinfo', 'utf8')
        .split('\n')
        .filter((l) => l.split(' ')[4] === target);
    expect(mountsOnTarget()).toEqual([]);
    const r = run([String(user.uid), String(user.gid), 'fusermount', '/bin/sh', '-c', 'stat -L -c %d:%i /bin/fusermount; readlink /proc/self/ns/mnt']);
    expect([r.status, r.stderr]).toEqual([0, '']);
    const [binding, ns] = r.stdout.trimEnd().split('\n');
    expect(binding).toBe(`${self.dev}:${self.ino}`);
    expect(ns).not.toBe(fs.readlinkSync('/proc/self/ns/mnt'));
    expect(mountsOnTarget()).toEqual([]);
    const host = fs.statSync('/bin/fusermount');
    expect(`${host.dev}:${host.ino}`).not.toBe(binding);
    // plain mode: no namespace of its own
    const plain = run([String(user.uid), String(user.gid), 'plain', '/bin/readlink', '/proc/self/ns/mnt']);
    expect([plain.status, plain.stdout, plain.stderr]).toEqual([0, `${fs.readlinkSync('/proc/self/ns/mnt')}\n`, '']);
  });

  it('as fusermount: hands fd 3 (/dev/fuse) over $_FUSE_COMMFD as one byte with SCM_RIGHTS; refuses anything else; -u does nothing', () => {
    const n = native();
    const [mine, theirs] = n.socketPair(true);
    const fuse = n.open('/dev/fuse', n.constants.O_RDWR);
    const devnull = n.open('/dev/null', n.constants.O_RDWR);
    try {
      const asFusermount = (fd3: number, args: string[], env: Record<string, string>) =>
        run(args, { argv0: 'fusermount', stdio: ['ignore', 'pipe', 'pipe', fd3, 'ignore', theirs], env: { ...env } });
      const sent = asFusermount(fuse, ['-o', 'rw,nosuid,nodev,auto_unmount', '--', '/'], { _FUSE_COMMFD: '5' });
      expect([sent.status, sent.stdout, sent.stderr]).toEqual([0, '', '']);
      const m = n.recvMsg(mine, 16, 4);
      expect(m && { data: [...m.data], fds: m.fds.length, truncated: m.truncated }).toEqual({ data: [0], fds: 1, truncated: false });
      const st = n.fstat(m!.fds[0]);
      n.close(m!.fds[0]);
      expect([st.mode & n.constants.S_IFMT, st.rdevMajor, st.rdevMinor]).toEqual([n.constants.S_IFCHR, 10, 229]);

      const notFuse = asFusermount(devnull, ['--', '/'], { _FUSE_COMMFD: '5' });
      expect([notFuse.status, notFuse.stdout, notFuse.stderr]).toEqual([1, '', 'loopfs fusermount: fd 3 is not /dev/fuse\n']);
      const noComm = asFusermount(fuse, ['--', '/'], {});
      expect([noComm.status, noComm.stdout, noComm.stderr]).toEqual([1, '', 'loopfs fusermount: _FUSE_COMMFD is not set\n']);
      const unmount = asFusermount(fuse, ['-u', '-q', '-z', '--', '/'], { _FUSE_COMMFD: '5' });
      expect([unmount.status, unmount.stdout, unmount.stderr]).toEqual([0, '', '']);
      // nothing was sent by the refusals or the unmount
      expect(n.recvMsg(mine, 16, 4)).toBeNull();
    } finally {
      for (const fd of [mine, theirs, fuse, devnull]) n.close(fd);
    }
  });

  it('refuses a malformed command line with its usage and exit status 127, running nothing', () => {
    const usage = 'usage: loopfs-fuse-exec UID GID fusermount|plain PROGRAM [ARG...]\n';
    for (const args of [[], ['1', '1', 'plain'], ['x', '1', 'plain', '/bin/true'], ['1', '-1', 'plain', '/bin/true'], ['1', '1', 'other', '/bin/true'], ['4294967295', '1', 'plain', '/bin/true']]) {
      const r = run(args);
      expect([r.status, r.stdout, r.stderr], args.join(' ')).toEqual([127, '', usage]);
    }
    const missing = run([String(user.uid), String(user.gid), 'plain', '/nonexistent/driver']);
    expect([missing.status, missing.stderr]).toEqual([127, 'loopfs-fuse-exec: /nonexistent/driver: No such file or directory\n']);
  });

  for (const [driver, owner] of [
    ['fuse2fs', 'user'],
    ['squashfuse', 'user'],
    ['fuse2fs', 'root'],
  ] as const) {
    it(`startFuseDriver: ${driver} owned by ${owner} serves the mount as that owner, confined, in ${driver === 'fuse2fs' ? 'its own' : 'our'} mount namespace, and exits when the mount goes`, async () => {
      const n = native();
      const c = n.constants;
      const image = driver === 'fuse2fs' ? ext4 : sqfs;
      const [uid, gid] = owner === 'user' ? [user.uid, user.gid] : [0, 0];
      fs.chownSync(image, uid, gid);
      const imageFd = n.open(image, c.O_PATH);
      const m = createFuseMount({ driver: driver as FuseDriver, source: image, userId: 0, groupId: 0, readOnly: true });
      let mntFd = m.mntFd;
      try {
        const d = await startFuseDriver({ driver, fuseFd: m.fuseFd, imageFd, uid, gid, readOnly: true });
        n.close(m.fuseFd);
        n.close(imageFd);
        expect(runningFuseDrivers().map((r) => r.pid)).toContain(d.pid);
        const status = fs.readFileSync(`/proc/${d.pid}/status`, 'utf8');
        expect(/^Name:\t(.*)$/m.exec(status)?.[1]).toBe(driver);
        expect(statusLines(status)).toEqual(confinedStatus(uid, gid));
        const ns = fs.readlinkSync(`/proc/${d.pid}/ns/mnt`);
        if (driver === 'fuse2fs') expect(ns).not.toBe(fs.readlinkSync('/proc/self/ns/mnt'));
        else expect(ns).toBe(fs.readlinkSync('/proc/self/ns/mnt'));
        // served: the file reads back through the mount (user_id=0: ours to use)
        expect(fs.readFileSync(`/proc/self/fd/${mntFd}/hello.txt`, 'utf8')).toBe(HELLO);
        // the only mount is ours (detached); the driver made none in its namespace either
        expect(fs.readFileSync(`/proc/${d.pid}/mountinfo`, 'utf8')).not.toMatch(/ - fuse/);
        n.close(mntFd);
        mntFd = -1;
        await d.exited;
        expect(runningFuseDrivers().map((r) => r.pid)).not.toContain(d.pid);
      } finally {
        if (mntFd >= 0) n.close(mntFd);
        fs.chownSync(image, 0, 0);
      }
    });
  }

  it('startFuseDriver: a driver that cannot read the image fails the start with the last line of its stderr or, with none, its exit status, and leaves no process', async () => {
    const n = native();
    const c = n.constants;
    // an ext4 superblock magic on zeroes: fuse2fs cannot open it
    const bad = path.join(tmp, 'bad.img');
    const buf = Buffer.alloc(4 * 1024 * 1024);
    buf.writeUInt16LE(0xef53, 1024 + 56);
    fs.writeFileSync(bad, buf);
    fs.chownSync(bad, user.uid, user.gid);
    const imageFd = n.open(bad, c.O_PATH);
    const m = createFuseMount({ driver: 'fuse2fs', source: bad, userId: 0, groupId: 0, readOnly: true });
    try {
      const e = await startFuseDriver({ driver: 'fuse2fs', fuseFd: m.fuseFd, imageFd, uid: user.uid, gid: user.gid, readOnly: true }).then(
        () => null,
        (x: unknown) => x,
      );
      expect(e).toBeInstanceOf(FuseDriverError);
      // Debian's fuse2fs 1.47 says why on stdout, which the broker does not read
      expect((e as Error).message).toBe('the FUSE driver fuse2fs failed: exit status 2');
      expect(runningFuseDrivers()).toEqual([]);
    } finally {
      for (const fd of [m.fuseFd, imageFd, m.mntFd]) n.close(fd);
    }
  });
});
