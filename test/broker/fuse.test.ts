// FUSE mode of the broker, as the real unprivileged user (`loopfstest`, root of its own user
// namespace): `mount.loop -o fuse` and `loopfs serve --fuse` give mounts served by fuse2fs
// (ext4) and squashfuse (squashfs) instead of the kernel's filesystem code. Each case
// checks what the kernel shows (mountinfo type fuse.DRIVER, nosuid,nodev, user_id of the
// caller), that the file reads back, who the driver runs as (the instance owner, no
// groups), and that after umount no driver process, device or mount is left.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { skipTitle } from '../instance/support.js';
import { makeSquashfs } from '../mount/support.js';
import { brokerSkipReason, heldMinors, HELLO, LOSETUP, MOUNT_LOOP, text, waitFor, withBroker } from './support.js';

const has = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
const reason =
  brokerSkipReason('broker/fuse') ??
  (['fuse2fs', 'squashfuse', 'mksquashfs'].find((c) => !has(c)) ? 'fuse2fs, squashfuse or mksquashfs not installed' : undefined) ??
  (fs.existsSync('/dev/fuse') ? undefined : 'no /dev/fuse');

/** Processes whose command line names a driver and an fd of ours (/dev/fd/4). */
function driverPids(driver: string): number[] {
  const pids: number[] = [];
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
      if (cmd.some((a) => a.endsWith(`/${driver}`) || a === driver) && cmd.includes('/dev/fd/4')) pids.push(Number(p));
    } catch {
      /* gone */
    }
  }
  return pids;
}

describe.skipIf(reason !== undefined)(skipTitle('loopfs serve: FUSE mounts for unprivileged clients', reason), () => {
  it('mount.loop -o fuse: ext4 through fuse2fs and squashfs through squashfuse, as the owner; umount ends the driver', async () => {
    await withBroker({ prefix: 'loopfs-fuse' }, async ({ sb, inst }) => {
      const sqfs = makeSquashfs(sb.path('files', 'img.sqfs'), sb.path('src'));
      sb.giveToUser(sqfs);
      const mnt = sb.userDir('mnt');
      for (const [image, driver] of [
        [sb.image, 'fuse2fs'],
        [sqfs, 'squashfuse'],
      ] as const) {
        // the driver must still serve while the namespace looks at the mount: print its
        // pid from inside (pgrep by our marker), then unmount
        const script = [
          'set -e',
          `${MOUNT_LOOP} -v -o fuse,ro ${image} ${mnt}`,
          `cat ${mnt}/hello.txt`,
          `grep " ${mnt} " /proc/self/mountinfo | sed 's/ - /|/' | awk -F'|' '{ split($1, a, " "); split($2, b, " "); print a[6], b[1], b[3] }'`,
          `${LOSETUP} -a | cut -d: -f1`,
          'sleep 0.3',
          `umount ${mnt}`,
          `grep -c " ${mnt} " /proc/self/mountinfo || true`,
        ].join('\n');
        const run = sb.asUser(script, { LOOPFS_INSTANCE: inst });
        // while it runs, the driver is there: as the owner, without supplementary groups
        let seen: number[] = [];
        await waitFor(`${driver} running`, () => (seen = driverPids(driver)).length > 0, 30_000).catch(() => undefined);
        const status = seen.length ? fs.readFileSync(`/proc/${seen[0]}/status`, 'utf8') : '';
        const r = await run;
        expect([r.exitCode, text(r.stderr)], driver).toEqual([0, '']);
        const out = text(r.stdout).split('\n');
        expect(out[0], driver).toMatch(new RegExp(`^mount\\.loop: ${inst}/loop\\d+ is ${image}$`));
        expect(out[1]).toBe(`mount.loop: mounted ${out[0].split(' ')[1]} (${driver === 'fuse2fs' ? 'ext4' : 'squashfs'}, FUSE: ${driver}, ro) on ${mnt}`);
        expect(out[2] + '\n').toBe(HELLO);
        const [opts, type, superOpts] = out[3].split(' ');
        expect(type).toBe(`fuse.${driver}`);
        expect(opts.split(',')).toEqual(expect.arrayContaining(['ro', 'nosuid', 'nodev']));
        // usable by the caller only: its uid as the broker sees it (SO_PEERCRED)
        expect(superOpts.split(',')).toEqual(expect.arrayContaining([`user_id=${sb.user.uid}`, `group_id=${sb.user.gid}`, 'default_permissions']));
        expect(superOpts).not.toContain('allow_other');
        expect(out[4]).toMatch(new RegExp(`^${inst}/loop\\d+$`));
        expect(out[5]).toBe('0');
        expect(status, `${driver} was seen running`).not.toBe('');
        expect(/^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$/m.exec(status)?.slice(1)).toEqual(Array(4).fill(String(sb.user.uid)));
        expect(/^Groups:[ \t]*(.*)$/m.exec(status)?.[1].trim()).toBe('');
        // unmounted: the driver exits by itself, the device frees itself, the broker gives it back
        await waitFor(`${driver} exited`, () => driverPids(driver).length === 0);
        await waitFor('no device bound to a sandbox file', () => sb.bound().length === 0);
        await waitFor('the instance holds no device', () => heldMinors(sb, inst).length === 0);
      }
    });
  });

  it('serve --fuse: every mount goes through FUSE (read-write ext4 too); -o nofuse is refused; broker stop ends drivers', async () => {
    await withBroker({ prefix: 'loopfs-fuse', serve: ['--fuse'] }, async ({ sb, inst, server }) => {
      const mnt = sb.userDir('mnt');
      const env = { LOOPFS_INSTANCE: inst };
      const nofuse = await sb.asUser(`${MOUNT_LOOP} -o nofuse ${sb.image} ${mnt}`, env);
      expect([nofuse.exitCode, text(nofuse.stderr)]).toEqual([32, `mount: ${mnt}: this broker mounts through FUSE only.\n`]);
      // a plain mount.loop: FUSE, read-write; the namespace's root may write what the caller owns
      const script = [
        'set -e',
        `${MOUNT_LOOP} ${sb.image} ${mnt}`,
        `grep " ${mnt} " /proc/self/mountinfo | sed 's/.* - //' | cut -d' ' -f1`,
        `cat ${mnt}/hello.txt`,
        // the namespace keeps the mount (and so the driver) while the test looks: stop here
        `echo ready; read line`,
      ].join('\n');
      const child = (await import('node:child_process')).spawn(
        'setpriv',
        ['--reuid', String(sb.user.uid), '--regid', String(sb.user.gid), '--clear-groups', 'unshare', '-r', '-m', 'sh', '-c', script],
        { env: sb.userEnv(env), cwd: sb.root, stdio: ['pipe', 'pipe', 'pipe'] },
      );
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
      child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      try {
        await waitFor('the mount is in place', () => stdout.includes('ready\n') || child.exitCode !== null, 30_000);
        expect(stderr).toBe('');
        expect(stdout).toBe(`fuse.fuse2fs\n${HELLO}ready\n`);
        const pids = driverPids('fuse2fs');
        expect(pids).toHaveLength(1);
        // the broker stops: the driver is ended with it, not left behind
        await server.stop();
        await waitFor('fuse2fs ended with the broker', () => driverPids('fuse2fs').length === 0);
      } finally {
        child.stdin.end('\n');
        await exited;
      }
      await waitFor('no device bound to a sandbox file', () => sb.bound().length === 0);
    });
  });

  it('a driver that cannot serve the image fails the mount with its own words and leaves nothing behind', async () => {
    await withBroker({ prefix: 'loopfs-fuse' }, async ({ sb, inst }) => {
      const mnt = sb.userDir('mnt');
      // an ext4 superblock magic on garbage: the kernel probe says ext4, fuse2fs cannot open it
      const bad = sb.path('files', 'bad.img');
      const buf = Buffer.alloc(4 * 1024 * 1024);
      buf.writeUInt16LE(0xef53, 1024 + 56);
      fs.writeFileSync(bad, buf);
      sb.giveToUser(bad);
      const r = await sb.asUser(`${MOUNT_LOOP} -o fuse ${bad} ${mnt}`, { LOOPFS_INSTANCE: inst });
      expect(r.exitCode).toBe(32);
      expect(text(r.stderr)).toMatch(new RegExp(`^mount: ${mnt}: the FUSE driver fuse2fs failed: .+\\.\\n$`));
      expect(driverPids('fuse2fs')).toEqual([]);
      await waitFor('no device bound to a sandbox file', () => sb.bound().length === 0);
      await waitFor('the instance holds no device', () => heldMinors(sb, inst).length === 0);
      // and FUSE for a type without a driver is refused before anything runs
      const vfat = await sb.asUser(`${MOUNT_LOOP} -o fuse -t loop.vfat ${sb.image} ${mnt}`, { LOOPFS_INSTANCE: inst });
      expect(text(vfat.stderr)).toContain('no FUSE driver for filesystem type vfat');
    });
  });
});
