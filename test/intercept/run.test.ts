// Issue 7: `loopfs run` — seccomp user notification of mount(2). As the unprivileged user's
// user-namespace root, with an activated instance /dev, unmodified util-linux attaches an
// instance device and `mount -o loop` works; everything the supervisor must not mount is
// refused with EPERM, and a racing thread rewriting mount(2)'s strings never gets a mount it
// was not allowed.
//
// Real devices and mounts; every mount lives in the user's private namespaces under `loopfs
// run` and dies with them. Host devices the test attaches are detached in `finally`.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { waitUnbound } from '../helpers/devices.js';
import { REF_LOSETUP } from '../helpers/env.js';
import { runProgram } from '../helpers/run.js';
import { HELLO } from '../broker/support.js';
import { describeRun, fuseDriversUnder, installed, LOOPFS, RunSandbox, runSkipReason, text } from './support.js';

const reason = runSkipReason('loopfs run tests');

const minorOf = (dev: string): number => Number(/loop(\d+)$/.exec(dev.trim())![1]);

/** Fields of a /proc/PID/mountinfo line: major:minor, mount options, fstype, source. */
function mountinfoFields(line: string): { majmin: string; opts: string[]; fstype: string; source: string } {
  const f = line.trim().split(' ');
  const sep = f.indexOf('-');
  return { majmin: f[2], opts: f[5].split(','), fstype: f[sep + 1], source: f[sep + 2] };
}

describe.skipIf(reason)(reason ? `loopfs run (skipped: ${reason})` : 'loopfs run', () => {
  let sb: RunSandbox;
  let hostDevs: string[];

  beforeEach(() => {
    sb = new RunSandbox('loopfs-run');
    hostDevs = [];
  });

  /** A device attached on the host (no instance's), with a node the container can name. */
  function hostDevice(): { hostImg: string; hostDev: string; hostNode: string } {
    const hostImg = sb.ext4Image('host.img', 'host\n');
    const hostDev = sb.hostAttach(hostImg);
    hostDevs.push(hostDev);
    const hostNode = path.join(sb.userDir('nodes'), 'host');
    execFileSync('mknod', ['-m', '0666', hostNode, 'b', '7', String(minorOf(hostDev))]);
    return { hostImg, hostDev, hostNode };
  }

  afterEach(async () => {
    for (const d of hostDevs) {
      try {
        execFileSync(REF_LOSETUP, ['-d', d], { stdio: 'pipe' });
      } catch {
        /* already gone */
      }
    }
    await sb.teardown();
  });

  it('unmodified losetup -f and mount -o loop as a user-namespace root: instance devices, read back, umount frees the device', async () => {
    const [dir, dev] = await sb.activated('inst', 2);
    const raw = sb.file('raw.img', 4 << 20);
    sb.giveToUser(raw);
    const mnt = sb.userDir('mnt');
    const out = sb.userDir('out');
    const r = await sb.underRun(
      dir,
      dev,
      [
        'set -eu',
        '"$REF" -f --show "$RAW" > "$OUT/attached"',
        '/usr/bin/mount -o loop "$IMG" "$MNT"',
        'cat "$MNT/hello.txt" > "$OUT/content"',
        'grep " $MNT " /proc/self/mountinfo > "$OUT/mountinfo"',
        'stat -c %u "$MNT/hello.txt" > "$OUT/owner"',
        'echo written > "$MNT/new.txt"',
        '/usr/bin/umount "$MNT"',
        '{ grep -c " $MNT " /proc/self/mountinfo || true; } > "$OUT/after"',
        '"$REF" -d "$(cat "$OUT/attached")"',
        'echo done > "$OUT/done"',
      ].join('\n'),
      { REF: REF_LOSETUP, RAW: raw, IMG: sb.image, MNT: mnt, OUT: out },
    );
    expect(r.exitCode, describeRun(r)).toBe(0);
    const read = (name: string) => fs.readFileSync(path.join(out, name), 'utf8');
    expect(read('done')).toBe('done\n');
    const held = sb.held(dir);

    const attached = minorOf(read('attached'));
    expect(held, `losetup -f took loop${attached}, an instance device`).toContain(attached);

    const info = mountinfoFields(read('mountinfo'));
    const [major, minor] = info.majmin.split(':').map(Number);
    expect(major).toBe(7);
    expect(held, `mount -o loop used loop${minor}, an instance device`).toContain(minor);
    expect(minor).not.toBe(attached);
    expect(info.fstype).toBe('ext4');
    expect(info.opts, 'nosuid,nodev are forced').toEqual(expect.arrayContaining(['nosuid', 'nodev', 'rw']));
    expect(info.opts, 'ID-mapped to the user namespace').toContain('idmapped');
    expect(read('content')).toBe(HELLO);
    expect(read('owner').trim(), "the image's root files belong to the namespace's root").toBe('0');
    expect(read('after').trim(), 'umount by the user-namespace root worked').toBe('0');

    // autoclear freed the mount's device at umount; the device stays the instance's
    expect(await waitUnbound(`loop${minor}`), `loop${minor} freed after umount`).toBe(true);
    expect(await waitUnbound(`loop${attached}`)).toBe(true);
    expect(sb.held(dir)).toEqual(expect.arrayContaining([minor, attached]));
    expect(sb.hostMounts(), 'nothing mounted in the host namespace').toEqual([]);
    // the write went to the image: mount it once more on the host side to check (read-only)
    const check = await runProgram('unshare', ['-m', '--propagation', 'private', 'sh', '-c', 'mount -o loop,ro "$IMG" "$MNT" && cat "$MNT/new.txt"'], {
      env: { ...sb.env, IMG: sb.image, MNT: mnt },
    });
    expect(text(check.stdout)).toBe('written\n');
  });

  it('refuses with EPERM: a host device, another instance\'s device, a filesystem outside the allow-list, filesystem options, a caller without CAP_SYS_ADMIN, a remount dropping nosuid or nodev', async () => {
    const [dir, dev] = await sb.activated('inst', 3);
    const { hostImg, hostDev, hostNode } = hostDevice();
    // another instance of the same user, with a bound device
    const dir2 = await sb.instance('other');
    const otherImg = sb.ext4Image('other.img', 'other\n');
    const a = await sb.losetup(['--instance', dir2, '-f', '--show', otherImg]);
    expect(a.exitCode, describeRun(a)).toBe(0);
    const other = text(a.stdout).trim();
    expect(other.startsWith(`${dir2}/loop`)).toBe(true);
    // a squashfs image: a real filesystem, but not in this run's allow-list (--allow-fs ext4)
    const sqfs = sb.squashImage();
    const mnt = sb.userDir('mnt');

    const r = await sb.underRun(
      dir,
      dev,
      [
        'DEV=$("$REF" -f --show "$IMG"); echo "dev $DEV"',
        'echo "host $("$M" mount "$HOSTNODE" "$MNT" ext4 0)"',
        'echo "other $("$M" mount "$OTHER" "$MNT" ext4 0)"',
        'SDEV=$("$REF" -f --show "$SQFS"); echo "sdev $SDEV"',
        'echo "squashfs $("$M" mount "$SDEV" "$MNT" squashfs 0)"',
        '"$REF" -d "$SDEV"',
        'echo "data $("$M" mount "$DEV" "$MNT" ext4 0 errors=panic)"',
        'echo "fsopen $("$M" fsopen ext4)"',
        'echo "nocap $(setpriv --bounding-set -sys_admin "$M" mount "$DEV" "$MNT" ext4 0)"',
        'echo "foreign-mntns $(unshare -U -r "$M" mount "$DEV" "$MNT" ext4 0)"',
        'echo "good $("$M" mount "$DEV" "$MNT" ext4 0)"',
        'grep " $MNT " /proc/self/mountinfo | sed "s/^/info1 /"',
        'echo "remount-suid $("$M" mount none "$MNT" none $((0x1024)))"',
        'echo "remount-dev $("$M" mount none "$MNT" none $((0x1022)))"',
        'echo "remount-ro $("$M" mount none "$MNT" none $((0x1027)))"',
        'grep " $MNT " /proc/self/mountinfo | sed "s/^/info2 /"',
        'umount "$MNT"; echo "umount $?"',
        'echo "tmpfs $("$M" mount none "$MNT" tmpfs 0)"',
        'umount "$MNT"',
        '/usr/bin/mount -o loop "$SQFS" "$MNT" 2>&1 | sed "s/^/mount-squashfs /"',
        '"$REF" -d "$DEV"',
        'echo end',
      ].join('\n'),
      { REF: REF_LOSETUP, IMG: sb.image, HOSTNODE: hostNode, OTHER: other, SQFS: sqfs, MNT: mnt },
      ['--allow-fs', 'ext4'],
    );
    expect(r.exitCode, describeRun(r)).toBe(0);
    const lines = text(r.stdout).split('\n');
    const answer = (key: string) => lines.find((l) => l.startsWith(`${key} `))?.slice(key.length + 1);
    const log = describeRun(r);
    expect(answer('end'), log).toBeUndefined(); // "end" has no value
    expect(lines, log).toContain('end');
    expect(held(answer('dev')), log).toBe(true);
    expect(answer('host'), `host device ${hostDev}\n${log}`).toBe('EPERM');
    expect(answer('other'), `another instance's device ${other}\n${log}`).toBe('EPERM');
    expect(answer('squashfs'), `squashfs is outside --allow-fs ext4\n${log}`).toBe('EPERM');
    expect(answer('data'), `filesystem options\n${log}`).toBe('EPERM');
    expect(answer('fsopen'), `the new mount API under the filter\n${log}`).toBe('ENOSYS');
    expect(answer('nocap'), `a caller without CAP_SYS_ADMIN in its user namespace\n${log}`).toBe('EPERM');
    expect(answer('foreign-mntns'), `a nested user namespace that does not own its mount namespace\n${log}`).toBe('EPERM');
    expect(answer('good'), log).toBe('ok');
    const info1 = mountinfoFields(answer('info1') ?? '');
    expect(info1.opts, 'asked for neither: nosuid,nodev forced').toEqual(expect.arrayContaining(['nosuid', 'nodev']));
    expect(answer('remount-suid'), `remount,bind clearing nosuid\n${log}`).toBe('EPERM');
    expect(answer('remount-dev'), `remount,bind clearing nodev\n${log}`).toBe('EPERM');
    expect(answer('remount-ro'), `remount,bind,ro keeping nosuid,nodev\n${log}`).toBe('ok');
    const info2 = mountinfoFields(answer('info2') ?? '');
    expect(info2.opts).toEqual(expect.arrayContaining(['ro', 'nosuid', 'nodev']));
    expect(answer('umount'), log).toBe('0');
    expect(answer('tmpfs'), `an ordinary userns mount continues to the kernel\n${log}`).toBe('ok');
    expect(answer('mount-squashfs'), `unmodified mount -o loop of a refused filesystem\n${log}`).toMatch(/permission denied/);
    // the host device and the other instance's device are untouched
    expect(fs.readFileSync(`/sys/block/${path.basename(hostDev)}/loop/backing_file`, 'utf8').trim()).toBe(hostImg);
    expect(sb.hostMounts()).toEqual([]);

    function held(devPath: string | undefined): boolean {
      return devPath !== undefined && sb.held(dir).includes(minorOf(devPath));
    }
  });

  it('TOCTOU: a thread rewriting source, type and target after the trap never gets a mount it was not allowed', async () => {
    const [dir, dev] = await sb.activated('inst', 2);
    const { hostDev, hostNode } = hostDevice();
    const mnt = sb.userDir('mnt');
    const r = await sb.underRun(
      dir,
      dev,
      ['set -e', 'DEV=$("$REF" -f --show "$IMG")', 'echo "dev $DEV"', '"$M" race 400 "$MNT" "$DEV" "$HOSTNODE"', '"$REF" -d "$DEV"'].join('\n'),
      { REF: REF_LOSETUP, IMG: sb.image, HOSTNODE: hostNode, MNT: mnt },
      [],
      120_000,
    );
    const log = describeRun(r);
    expect(r.exitCode, log).toBe(0);
    const lines = text(r.stdout).split('\n').filter(Boolean);
    const devMinor = minorOf(lines.find((l) => l.startsWith('dev '))!);
    expect(sb.held(dir)).toContain(devMinor);
    const summary = /summary ok=(\d+) eperm=(\d+) other=(\d+)/.exec(lines.find((l) => l.startsWith('summary'))!)!;
    const [ok, eperm] = [Number(summary[1]), Number(summary[2])];
    const mounted = lines.filter((l) => l.startsWith('mounted ')).map((l) => mountinfoFields(l.slice('mounted '.length)));
    expect(mounted.length).toBe(ok);
    const loopMounts = mounted.filter((m) => m.majmin.startsWith('7:'));
    for (const m of mounted) {
      if (m.majmin.startsWith('0:')) {
        expect(m.fstype, 'a kernel-judged (continued) mount is the userns-mountable tmpfs').toBe('tmpfs');
        continue;
      }
      expect(m.majmin, 'only the instance device is ever mounted').toBe(`7:${devMinor}`);
      expect(m.fstype).toBe('ext4');
      expect(m.opts).toEqual(expect.arrayContaining(['nosuid', 'nodev']));
    }
    expect(mounted.some((m) => m.majmin === `7:${minorOf(hostDev)}`), 'the host device was never mounted').toBe(false);
    // the race hit both outcomes: permitted mounts and refusals
    expect(loopMounts.length, log).toBeGreaterThan(0);
    expect(eperm, log).toBeGreaterThan(0);
    expect(sb.hostMounts()).toEqual([]);
  });

  const noFuse = ['fuse2fs', 'squashfuse'].filter((d) => !installed(d));
  if (noFuse.length) console.warn(`[skip] loopfs run --fuse: ${noFuse.join(', ')} not installed`);
  it.skipIf(noFuse.length > 0)('--fuse: mount -o loop is served by fuse2fs / squashfuse, nosuid,nodev plus the caller\'s own noexec, and nothing is left after umount', async () => {
    const [dir, dev] = await sb.activated('inst', 2);
    const sqfs = sb.squashImage();
    const mnt = sb.userDir('mnt');
    const out = sb.userDir('out');
    const r = await sb.underRun(
      dir,
      dev,
      [
        'set -eu',
        'for img in "$IMG" "$SQFS"; do',
        '  if [ "$img" = "$IMG" ]; then opts=loop,noexec; else opts=loop; fi',
        '  /usr/bin/mount -o "$opts" "$img" "$MNT"',
        '  cat "$MNT/hello.txt" >> "$OUT/content"',
        '  grep " $MNT " /proc/self/mountinfo >> "$OUT/mountinfo"',
        '  /usr/bin/umount "$MNT"',
        'done',
        'echo done > "$OUT/done"',
      ].join('\n'),
      { IMG: sb.image, SQFS: sqfs, MNT: mnt, OUT: out },
      ['--fuse'],
    );
    expect(r.exitCode, describeRun(r)).toBe(0);
    const read = (name: string) => fs.readFileSync(path.join(out, name), 'utf8');
    expect(read('done')).toBe('done\n');
    expect(read('content')).toBe(HELLO + HELLO);
    const infos = read('mountinfo').trim().split('\n').map(mountinfoFields);
    expect(infos.map((i) => i.fstype)).toEqual(['fuse.fuse2fs', 'fuse.squashfuse']);
    // the caller's noexec is carried by the FUSE mount as by a kernel one; never added unasked
    expect(infos.map((i) => i.opts.includes('noexec'))).toEqual([true, false]);
    for (const i of infos) {
      expect(i.majmin.startsWith('0:'), 'a FUSE mount, not the kernel parsing the image').toBe(true);
      expect(i.opts).toEqual(expect.arrayContaining(['nosuid', 'nodev']));
      const minor = minorOf(i.source);
      expect(sb.held(dir), `${i.source} is an instance device`).toContain(minor);
      expect(await waitUnbound(`loop${minor}`), `${i.source} freed after umount`).toBe(true);
    }
    const drivers = fuseDriversUnder(sb.root);
    expect(drivers, 'no FUSE driver of this run (holding an instance node) left running').toEqual([]);
  });

  it('passes other syscalls through, exits with the status of CMD, and fails cleanly for a missing command', async () => {
    const dir = await sb.instance('inst');
    const r = await sb.loopfs(['run', '--instance', dir, '--', 'sh', '-c', 'echo "hi $(cat /proc/self/status | grep -c NoNewPrivs)"; grep NoNewPrivs /proc/self/status; exit 7']);
    expect(r.exitCode, describeRun(r)).toBe(7);
    expect(text(r.stdout)).toMatch(/^hi 1\nNoNewPrivs:\s+1\n$/);
    const missing = await sb.loopfs(['run', '--instance', dir, '--', 'no-such-command-here']);
    expect(missing.exitCode).toBe(1);
    expect(text(missing.stderr)).toBe('loopfs: run: no-such-command-here: command not found\n');
    const noInstance = await runProgram(LOOPFS, ['run', '--instance', sb.path('nope'), '--', 'true'], { env: sb.env });
    expect(noInstance.exitCode).toBe(1);
    expect(text(noInstance.stderr)).toMatch(/^loopfs: run: .*nope: not a loop device instance managed here\n$/);
  });
});
