// The broker end to end, as a real unprivileged user: `loopfstest` (setpriv --reuid/--regid
// --clear-groups), as root of its own user namespace (`unshare -r -m`), runs our unchanged
// `bin/losetup` and `bin/mount.loop` against instances served by a real `loopfs serve`.
// Outside its namespace the user is an ordinary uid: everything privileged is the broker's.
//
// Each test starts its own server on fresh instances of a private sandbox and, in `finally`,
// stops it, destroys the instances, runs gc and detaches whatever is bound to a sandbox file.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { isBound, readLoopState } from '../helpers/devices.js';
import { REF_LOSETUP } from '../helpers/env.js';
import { skipTitle } from '../instance/support.js';
import { kernelHasFs, makeErofs, makeRandom, makeSquashfs } from '../mount/support.js';
import { BrokerSandbox, brokerSkipReason, heldMinors, HELLO, LOSETUP, MOUNT_LOOP, Server, text, waitFor, withBroker } from './support.js';

const reason = brokerSkipReason('broker/unprivileged');

const minorOf = (node: string) => Number(/loop(\d+)$/.exec(node)![1]);

describe.skipIf(reason !== undefined)(skipTitle('loopfs serve: unprivileged clients in user namespaces', reason), () => {
  it('losetup -f --show, -a, -l, -c, -d work unchanged as root of a user namespace', async () => {
    await withBroker({}, async ({ sb, inst }) => {
      const env = { LOOPFS_INSTANCE: inst };
      // Proof of who runs: root inside, the test user outside.
      const who = await sb.asUser('id -u; cat /proc/self/uid_map', env);
      expect(text(who.stdout).split(/\s+/).filter(Boolean)).toEqual(['0', '0', String(sb.user.uid), '1']);

      const attach = await sb.asUser(`${LOSETUP} -f --show ${sb.image}`, env);
      expect(text(attach.stderr)).toBe('');
      expect(attach.exitCode).toBe(0);
      const node = text(attach.stdout).trim();
      expect(node).toMatch(new RegExp(`^${inst}/loop\\d+$`));
      const minor = minorOf(node);
      // the kernel's view: bound to our image, the node the user's, held by the instance
      expect(readLoopState(`loop${minor}`)?.backingFile).toBe(sb.image);
      const st = fs.lstatSync(node);
      expect([st.isBlockDevice(), st.uid, st.gid, st.mode & 0o777]).toEqual([true, sb.user.uid, sb.user.gid, 0o660]);
      expect(heldMinors(sb, inst)).toEqual([minor]);

      const ino = fs.statSync(sb.image).ino;
      const all = await sb.asUser(`${LOSETUP} -a`, env);
      expect(all.exitCode).toBe(0);
      expect(text(all.stdout)).toMatch(new RegExp(`^${node}: \\[\\d{4,}\\]:${ino} \\(${sb.image}\\)\\n$`));
      // the same line util-linux prints for that device on the host, but for the name
      const { execFileSync } = await import('node:child_process');
      const host = execFileSync(REF_LOSETUP, [`/dev/loop${minor}`], { encoding: 'utf8' });
      expect(text(all.stdout)).toBe(host.replace(`/dev/loop${minor}`, node));

      const list = await sb.asUser(`${LOSETUP} -l -O NAME,BACK-FILE,RO,AUTOCLEAR,MAJ:MIN,BACK-INO`, env);
      expect(list.exitCode).toBe(0);
      const rows = text(list.stdout).trim().split('\n');
      expect(rows).toHaveLength(2);
      expect(rows[1].split(/\s+/)).toEqual([node, sb.image, '0', '0', `7:${minor}`, String(ino)]);
      const json = await sb.asUser(`${LOSETUP} -J`, env);
      expect(JSON.parse(text(json.stdout)).loopdevices.map((d: { name: string }) => d.name)).toEqual([node]);
      const jfile = await sb.asUser(`${LOSETUP} -j ${sb.image}`, env);
      expect(text(jfile.stdout).startsWith(`${node}: `)).toBe(true);

      // -c: the image grows, the device follows (LOOP_SET_CAPACITY by the broker)
      fs.truncateSync(sb.image, 12 * 1024 * 1024);
      const cap = await sb.asUser(`${LOSETUP} -c ${node}`, env);
      expect([cap.exitCode, text(cap.stderr)]).toEqual([0, '']);
      expect(readLoopState(`loop${minor}`)?.sizeBytes).toBe(String(12 * 1024 * 1024));

      const det = await sb.asUser(`${LOSETUP} -d ${node}`, env);
      expect([det.exitCode, text(det.stderr)]).toEqual([0, '']);
      expect(isBound(`loop${minor}`) && readLoopState(`loop${minor}`)?.backingFile === sb.image).toBe(false);
      // pool 0: the detached device left the instance (LOOP_CTL_REMOVE) and its node is gone
      await waitFor('the device leaves the instance', () => heldMinors(sb, inst).length === 0);
      expect(fs.existsSync(node)).toBe(false);
      const empty = await sb.asUser(`${LOSETUP} -a`, env);
      expect([empty.exitCode, text(empty.stdout)]).toEqual([0, '']);

      // -f without a file: a device reserved into the instance, its node the user's; the
      // user may bind it directly through the node (no broker involved), as DESIGN.md says
      const free = await sb.asUser(`${LOSETUP} -f`, env);
      expect(free.exitCode).toBe(0);
      const freeNode = text(free.stdout).trim();
      expect(fs.lstatSync(freeNode).uid).toBe(sb.user.uid);
      const direct = await sb.asUser(`${LOSETUP} ${freeNode} ${sb.image} && ${LOSETUP} -a | cut -d: -f1`, env);
      expect([direct.exitCode, text(direct.stdout)]).toEqual([0, `${freeNode}\n`]);

      // -D detaches every device of the instance, and only those
      const two = await sb.asUser(`${LOSETUP} -f --show ${sb.image} && ${LOSETUP} -D && ${LOSETUP} -a`, env);
      expect([two.exitCode, text(two.stderr)]).toEqual([0, '']);
      expect(text(two.stdout).trim().split('\n')).toHaveLength(1); // the --show line; -a prints nothing
      expect(sb.bound()).toEqual([]);
    });
  });

  it('explicit device, --direct-io=on and -b on a live device, -c: as util-linux does them on the host', async () => {
    await withBroker({}, async ({ sb, inst }) => {
      const env = { LOOPFS_INSTANCE: inst };
      const free = await sb.asUser(`${LOSETUP} -f`, env);
      const node = text(free.stdout).trim();
      const minor = minorOf(node);
      const cols = '-n -O DIO,LOG-SEC';
      // through the node the user owns (explicit device), then the broker for the ioctls the
      // kernel allows only with CAP_SYS_ADMIN or a writable open (LOOP_SET_DIRECT_IO, _BLOCK_SIZE)
      const script = [
        'set -e',
        `${LOSETUP} ${node} ${sb.image}`,
        `${LOSETUP} -l ${cols} ${node}`,
        `${LOSETUP} --direct-io=on ${node}`,
        `${LOSETUP} -b 4096 ${node}`,
        `${LOSETUP} -l ${cols} ${node}`,
        `${LOSETUP} --direct-io=off ${node}`,
        `${LOSETUP} -c ${node}`,
        `${LOSETUP} -l ${cols} ${node}`,
      ].join('\n');
      const r = await sb.asUser(script, env);
      expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
      const rows = text(r.stdout).trim().split('\n').map((l) => l.trim().split(/\s+/).join(' '));
      expect(rows).toEqual(['0 512', '1 4096', '0 4096']);
      // the kernel's view, through util-linux on the host node: the same
      const { execFileSync } = await import('node:child_process');
      expect(execFileSync(REF_LOSETUP, ['-l', '-n', '-O', 'DIO,LOG-SEC', `/dev/loop${minor}`], { encoding: 'utf8' }).trim().split(/\s+/).join(' ')).toBe('0 4096');
      // errors word as util-linux's: a busy device, and a device of nobody's
      const busy = await sb.asUser(`${LOSETUP} ${node} ${sb.image}`, env);
      expect([busy.exitCode, text(busy.stderr)]).toEqual([1, `losetup: ${sb.image}: failed to set up loop device: Device or resource busy\n`]);
      const unbound = await sb.asUser(`${LOSETUP} -d ${node} && ${LOSETUP} -f && ${LOSETUP} --direct-io=on ${inst}/loop${2 ** 20 - 1}`, env);
      expect(unbound.exitCode).toBe(1);
      // a v1 client does not know the new ops
      const v1 = await sb.rawClient(`${inst}/loop-control`, [{ msg: { v: 1, op: 'set-direct-io', minor, on: true } }]);
      expect(v1[0].reply?.error?.code).toBe('EOPNOTSUPP');
    });
  });

  it('mount.loop: the broker mounts, the file inside reads back (ID-mapped, nosuid, nodev); umount frees the device', async () => {
    await withBroker({}, async ({ sb, inst }) => {
      const mnt = sb.userDir('mnt');
      const env = { LOOPFS_INSTANCE: inst };
      const script = [
        'set -e',
        `${MOUNT_LOOP} ${sb.image} ${mnt}`,
        `cat ${mnt}/hello.txt`,
        `stat -c 'owner=%u:%g' ${mnt}/hello.txt`,
        `grep " ${mnt} " /proc/self/mountinfo | awk '{ print $6 }'`,
        `grep " ${mnt} " /proc/self/mountinfo | sed 's/.* - //' | cut -d' ' -f1,2`,
        `echo written > ${mnt}/new.txt && cat ${mnt}/new.txt`,
        `${LOSETUP} -a | cut -d' ' -f1`,
        `umount ${mnt}`,
        `${MOUNT_LOOP} -o ro,noexec ${sb.image} ${mnt}`,
        `cat ${mnt}/new.txt`,
        `grep " ${mnt} " /proc/self/mountinfo | cut -d' ' -f6`,
        `(echo x > ${mnt}/ro.txt) 2>/dev/null && echo WRITABLE || echo read-only`,
      ].join('\n');
      const r = await sb.asUser(script, env);
      expect(text(r.stderr)).toBe('');
      expect(r.exitCode).toBe(0);
      const out = text(r.stdout).split('\n');
      expect(out[0] + '\n').toBe(HELLO);
      // disk root, shown through the ID-mapped mount as the namespace's root (host: the user)
      expect(out[1]).toBe('owner=0:0');
      expect(out[2].split(',')).toEqual(expect.arrayContaining(['rw', 'nosuid', 'nodev', 'idmapped']));
      const [fstype, source] = out[3].split(' ');
      expect(fstype).toBe('ext4');
      expect(source).toMatch(/^\/dev\/loop\d+$/);
      expect(out[4]).toBe('written');
      expect(out[5]).toMatch(new RegExp(`^${inst}/loop\\d+:$`));
      expect(out[6]).toBe('written');
      expect(out[7].split(',')).toEqual(expect.arrayContaining(['ro', 'nosuid', 'nodev', 'noexec', 'idmapped']));
      expect(out[8]).toBe('read-only');
      // on disk the new file belongs to root (what the namespace's root wrote)
      // the namespace is gone: autoclear frees the device, the broker gives it back
      await waitFor('no device bound to the image', () => sb.bound().length === 0);
      await waitFor('the instance holds no device', () => heldMinors(sb, inst).length === 0);
    });
  });

  it('unmodified mount(8): `mount -t loop img dir` as root of a user namespace, with mount.loop in its /sbin', async () => {
    await withBroker({}, async ({ sb, inst }) => {
      const mnt = sb.userDir('mnt');
      const [up, work] = [sb.userDir('sbin-up'), sb.userDir('sbin-work')];
      // mount.loop goes into /usr/sbin (= /sbin) of the user's own mount namespace only, through
      // an overlay the namespace's root may make; the host's /sbin is never touched
      const script = [
        'set -e',
        `mount -t overlay overlay -o lowerdir=/usr/sbin,upperdir=${up},workdir=${work} /usr/sbin`,
        `ln -s ${MOUNT_LOOP} /usr/sbin/mount.loop`,
        `mount -t loop ${sb.image} ${mnt}`,
        `cat ${mnt}/hello.txt`,
        `grep " ${mnt} " /proc/self/mountinfo | awk '{ print $6 }'`,
        `umount ${mnt}`,
      ].join('\n');
      const r = await sb.asUser(script, { LOOPFS_INSTANCE: inst });
      expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
      const out = text(r.stdout).split('\n');
      expect(out[0] + '\n').toBe(HELLO);
      expect(out[1].split(',')).toEqual(expect.arrayContaining(['nosuid', 'nodev', 'idmapped']));
      await waitFor('the instance holds no device', () => heldMinors(sb, inst).length === 0);
    });
  });

  it('mount.loop probes squashfs and erofs; the allow-list refuses other types and undecidable images', async () => {
    await withBroker({ serve: ['--allow-fs', 'ext4,squashfs'] }, async ({ sb, inst }) => {
      const mnt = sb.userDir('mnt');
      const env = { LOOPFS_INSTANCE: inst };
      const src = sb.path('src');
      const images: Array<[string, string, boolean]> = [];
      if (kernelHasFs('squashfs')) images.push([makeSquashfs(sb.path('files', 'img.sqfs'), src), 'squashfs', true]);
      if (kernelHasFs('erofs')) images.push([makeErofs(sb.path('files', 'img.erofs'), src), 'erofs', false]);
      for (const [img, fstype, allowed] of images) {
        sb.giveToUser(img);
        const r = await sb.asUser(
          `${MOUNT_LOOP} ${img} ${mnt} && cat ${mnt}/hello.txt && grep " ${mnt} " /proc/self/mountinfo | sed 's/.* - //' | cut -d' ' -f1`,
          env,
        );
        if (allowed) {
          expect([r.exitCode, text(r.stderr)], fstype).toEqual([0, '']);
          expect(text(r.stdout)).toBe(`${HELLO}${fstype}\n`);
        } else {
          expect(r.exitCode, fstype).toBe(32);
          expect(text(r.stderr)).toBe(`mount: ${mnt}: filesystem type ${fstype} is not allowed by this broker (allowed: ext4, squashfs).\n`);
        }
      }
      // no filesystem the broker knows: refused before the kernel parses anything
      const junk = makeRandom(sb.path('files', 'junk.img'));
      sb.giveToUser(junk);
      const r = await sb.asUser(`${MOUNT_LOOP} ${junk} ${mnt}`, env);
      expect(r.exitCode).toBe(32);
      expect(text(r.stderr)).toMatch(/cannot tell the filesystem type \(name it with -t loop.TYPE\)\.\n$/);
      // a named type off the list, and options the broker does not pass on
      const typed = await sb.asUser(`${MOUNT_LOOP} -t loop.btrfs ${sb.image} ${mnt}`, env);
      expect(text(typed.stderr)).toContain('filesystem type btrfs is not allowed by this broker');
      const opt = await sb.asUser(`${MOUNT_LOOP} -o errors=panic ${sb.image} ${mnt}`, env);
      expect([opt.exitCode, text(opt.stderr)]).toEqual([1, `mount: ${mnt}: option 'errors' cannot be passed through the loopfs broker.\n`]);
      const suid = await sb.asUser(`${MOUNT_LOOP} -o suid ${sb.image} ${mnt}`, env);
      expect(text(suid.stderr)).toContain("option 'suid' is refused by the loopfs broker");
      // every failed mount gave its device back
      await waitFor('no device bound to a sandbox file', () => sb.bound().length === 0);
      await waitFor('the instance holds no device', () => heldMinors(sb, inst).length === 0);
    });
  });

  it('serve --all serves the registered instances and follows the registry on SIGHUP', async () => {
    const sb = new BrokerSandbox('loopfs-broker');
    let server: Server | null = null;
    try {
      const first = await sb.instance('first');
      server = await Server.start(sb, [], ['--all']);
      expect(fs.lstatSync(`${first}/loop-control`).isSocket()).toBe(true);
      const second = await sb.instance('second');
      expect(fs.existsSync(`${second}/loop-control`)).toBe(false);
      process.kill(server.pid, 'SIGHUP');
      await waitFor('the new instance is served', () => fs.existsSync(`${second}/loop-control`));
      const r = await sb.asUser(`${LOSETUP} -f --show ${sb.image}`, { LOOPFS_INSTANCE: second });
      expect(r.exitCode).toBe(0);
      expect((await sb.loopfs(['instance', 'destroy', '--force', first])).exitCode).toBe(0);
      process.kill(server.pid, 'SIGHUP');
      await waitFor('the destroyed instance is no longer served', () => server!.stderr.join('').includes(`no longer serving ${first}\n`));
      expect(fs.existsSync(`${first}/loop-control`)).toBe(false);
    } finally {
      await server?.stop();
      await sb.teardown();
    }
  });

  it('quota: --max and the per-uid limit apply to broker clients', async () => {
    await withBroker({ instance: ['--max', '2'], more: ['b', 'c'] }, async ({ sb, inst, more: [b, c] }) => {
      const run = (dir: string) => sb.asUser(`${LOSETUP} -f --show ${sb.image}`, { LOOPFS_INSTANCE: dir });
      expect((await run(inst)).exitCode).toBe(0);
      expect((await run(inst)).exitCode).toBe(0);
      const third = await run(inst);
      expect(third.exitCode).toBe(1);
      expect(text(third.stderr)).toBe(`losetup: ${inst}: instance limit of 2 loop devices reached\n`);
      expect(heldMinors(sb, inst)).toHaveLength(2);

      // the user may hold 3 devices in all: 2 in inst, so 1 more anywhere
      fs.writeFileSync(sb.limits, `${sb.user.uid} 3\n`);
      expect((await run(b)).exitCode).toBe(0);
      const over = await run(c);
      expect(over.exitCode).toBe(1);
      expect(text(over.stderr)).toBe(`losetup: uid ${sb.user.uid}: limit of 3 loop devices reached (${sb.limits})\n`);
      expect(heldMinors(sb, c)).toEqual([]);
    });
  });

  it('a client never sees or touches the devices of another instance', async () => {
    await withBroker({ more: ['other'] }, async ({ sb, inst, more: [other] }) => {
      const a = await sb.asUser(`${LOSETUP} -f --show ${sb.image}`, { LOOPFS_INSTANCE: inst });
      const b = await sb.asUser(`${LOSETUP} -f --show ${sb.image}`, { LOOPFS_INSTANCE: other });
      const [nodeA, nodeB] = [text(a.stdout).trim(), text(b.stdout).trim()];
      expect(nodeA.startsWith(`${inst}/`) && nodeB.startsWith(`${other}/`)).toBe(true);

      const listA = await sb.asUser(`${LOSETUP} -a; ${LOSETUP} -l -n -O NAME`, { LOOPFS_INSTANCE: inst });
      expect(text(listA.stdout)).not.toContain(nodeB);
      expect(text(listA.stdout).split('\n').filter(Boolean).map((l) => l.split(':')[0].trim())).toEqual([nodeA, nodeA]);

      const env = { LOOPFS_INSTANCE: inst };
      for (const cmd of [`-d ${nodeB}`, `-c ${nodeB}`]) {
        const r = await sb.asUser(`${LOSETUP} ${cmd}`, env);
        expect(r.exitCode, cmd).toBe(1);
        expect(text(r.stderr), cmd).toContain('No such device');
      }
      // through the protocol directly, by minor: refused the same way
      const minorB = minorOf(nodeB);
      const replies = await sb.rawClient(`${inst}/loop-control`, [
        { msg: { op: 'detach', minor: minorB } },
        { msg: { op: 'set-capacity', minor: minorB } },
        { msg: { op: 'mount', minor: minorB } },
      ]);
      for (const r of replies) expect(r.reply?.error?.code).toBe('ENODEV');
      expect(readLoopState(`loop${minorB}`)?.backingFile).toBe(sb.image);
      expect(heldMinors(sb, other)).toEqual([minorB]);
    });
  });

  it('backing fds the broker refuses: directory, socket, FIFO, char device, host block device, another instance device, O_WRONLY, O_PATH, wrong fd counts', async () => {
    await withBroker({ more: ['other'] }, async ({ sb, inst, more: [other] }) => {
      const { execFileSync } = await import('node:child_process');
      // a host device (no instance's) bound to a sandbox file, reachable by the user through a node
      const hostFile = sb.file('host.img');
      const hostDev = execFileSync(REF_LOSETUP, ['-f', '--show', hostFile], { encoding: 'utf8' }).trim();
      const hostMinor = minorOf(hostDev);
      const hostNode = sb.path('files', 'hostdev');
      execFileSync('mknod', [hostNode, 'b', '7', String(hostMinor)]);
      sb.giveToUser(hostNode);
      const fifo = sb.path('files', 'fifo');
      execFileSync('mkfifo', [fifo]);
      sb.giveToUser(fifo);
      const b = await sb.asUser(`${LOSETUP} -f --show ${sb.image}`, { LOOPFS_INSTANCE: other });
      const nodeB = text(b.stdout).trim();

      const attach = (fds: unknown[]) => ({ msg: { op: 'attach', session: true }, fds });
      const replies = await sb.rawClient(`${inst}/loop-control`, [
        attach([{ open: sb.files, mode: 'dir' }]),
        attach([{ socket: true }]),
        attach([{ fifo }]),
        attach([{ open: '/dev/null', mode: 'rw' }]),
        attach([{ open: hostNode, mode: 'r' }]),
        attach([{ open: nodeB, mode: 'rw' }]),
        attach([{ open: sb.image, mode: 'w' }]),
        attach([{ open: sb.image, mode: 'path' }]),
        attach([]),
        attach([{ open: sb.image, mode: 'r' }, { open: sb.image, mode: 'r' }]),
        { msg: { op: 'list' }, fds: [{ open: sb.image, mode: 'r' }] },
      ]);
      const codes = replies.map((r) => r.reply?.error?.code ?? (r.reply?.ok ? 'ok' : JSON.stringify(r)));
      expect(codes).toEqual(['EINVAL', 'EINVAL', 'EINVAL', 'EINVAL', 'EPERM', 'EPERM', 'EBADF', 'EBADF', 'EBADF', 'EBADF', 'EBADF']);
      expect(replies[0].reply?.error?.message).toContain('a directory');
      expect(replies[1].reply?.error?.message).toContain('a socket');
      expect(replies[2].reply?.error?.message).toContain('FIFO');
      expect(replies[3].reply?.error?.message).toContain('a character device');
      // nothing was taken: the instance holds no device, the host device is untouched
      expect(heldMinors(sb, inst)).toEqual([]);
      expect(readLoopState(hostDev)?.backingFile).toBe(hostFile);

      // accepted: a regular file read-only (a read-only device), and a device of this very
      // instance (a loop on a loop)
      const ok = await sb.rawClient(`${inst}/loop-control`, [attach([{ open: sb.image, mode: 'r' }])]);
      expect(ok[0].reply).toMatchObject({ ok: true, readOnly: true });
      // the session ended with the client: the device was detached and released
      await waitFor('session device released', () => heldMinors(sb, inst).length === 0);
      const own = await sb.asUser(`${LOSETUP} -f --show ${sb.image}`, { LOOPFS_INSTANCE: inst });
      const nodeA = text(own.stdout).trim();
      const stacked = await sb.rawClient(`${inst}/loop-control`, [attach([{ open: nodeA, mode: 'r' }])]);
      expect(stacked[0].reply?.ok).toBe(true);
      const stackedMinor = stacked[0].reply!.minor as number;
      await waitFor('the stacked session device is released', () => readLoopState(`loop${stackedMinor}`)?.backingFile !== nodeA);
      execFileSync(REF_LOSETUP, ['-d', hostDev]);
    });
  });

  it('only the owner may connect: socket mode 0600, and the broker checks SO_PEERCRED itself', async () => {
    await withBroker({}, async ({ sb, inst }) => {
      const socket = `${inst}/loop-control`;
      const st = fs.lstatSync(socket);
      expect([st.isSocket(), st.uid, st.gid, st.mode & 0o777]).toEqual([true, sb.user.uid, sb.user.gid, 0o600]);
      const env = { LOOPFS_INSTANCE: inst };
      const nobody = await sb.asPlainUser([LOSETUP, '-a'], env, 65534, 65534);
      expect(nobody.exitCode).toBe(1);
      expect(text(nobody.stderr)).toBe(`losetup: ${inst}: cannot reach the loopfs broker: Permission denied\n`);
      // even with the file opened up, the broker refuses anyone but the owner and root
      fs.chmodSync(socket, 0o666);
      const refused = await sb.asPlainUser([LOSETUP, '-f', '--show', sb.image], env, 65534, 65534);
      expect(refused.exitCode).toBe(1);
      expect(text(refused.stderr)).toBe(`losetup: ${inst}: only the instance owner (uid ${sb.user.uid}) and root may use this broker\n`);
      expect(heldMinors(sb, inst)).toEqual([]);
      // the owner without a user namespace is served too (listing needs no privilege)
      const owner = await sb.asPlainUser([LOSETUP, '-a'], env);
      expect([owner.exitCode, text(owner.stderr)]).toEqual([0, '']);
    });
  });

  it('sessions: devices of a connection that ends are detached and released; others stay', async () => {
    await withBroker({}, async ({ sb, inst }) => {
      const socket = `${inst}/loop-control`;
      const r = await sb.rawClient(socket, [
        { msg: { op: 'attach', session: true }, fds: [{ open: sb.image, mode: 'rw' }] },
        { msg: { op: 'get-free', session: true } },
        { msg: { op: 'attach' }, fds: [{ open: sb.image, mode: 'r' }] },
        { msg: { op: 'attach', autoclear: true }, fds: [{ open: sb.image, mode: 'r' }] },
      ]);
      expect(r.map((x) => x.reply?.ok)).toEqual([true, true, true, true]);
      const [sess, free, kept, auto] = r.map((x) => x.reply!.minor as number);
      // get-free does not bind: the next attach takes the idle device it found, and then
      // that device is the attach's (not a session device any more)
      expect(kept).toBe(free);
      expect(new Set([sess, kept, auto]).size).toBe(3);
      // the client has exited: the session device and the autoclear one are gone, the plain attach stays
      await waitFor('only the plain attach is left', () => String(heldMinors(sb, inst)) === String([kept]));
      expect(readLoopState(`loop${kept}`)?.backingFile).toBe(sb.image);
      for (const m of [sess, auto]) expect(readLoopState(`loop${m}`)?.backingFile === sb.image).toBe(false);
      // a found device nobody bound is released at the end of its session
      const f = await sb.rawClient(socket, [{ msg: { op: 'get-free', session: true } }]);
      expect(f[0].reply?.ok).toBe(true);
      await waitFor('the session device is released', () => String(heldMinors(sb, inst)) === String([kept]));
    });
  });

  it('a killed broker leaves a stale socket: clients say so, the next broker takes the socket over', async () => {
    const sb = new BrokerSandbox('loopfs-broker');
    let server: Server | null = null;
    try {
      const inst = await sb.instance('inst');
      server = await Server.start(sb, [inst]);
      const held = await sb.asUser(`${LOSETUP} -f --show ${sb.image}`, { LOOPFS_INSTANCE: inst });
      expect(held.exitCode).toBe(0);
      const dev = text(held.stdout).trim();
      server.child.kill('SIGKILL');
      await waitFor('broker gone', () => !server!.alive);
      expect(fs.lstatSync(`${inst}/loop-control`).isSocket()).toBe(true);
      const down = await sb.asUser(`${LOSETUP} -a`, { LOOPFS_INSTANCE: inst });
      expect([down.exitCode, text(down.stderr)]).toEqual([1, `losetup: ${inst}: the loopfs broker of this instance is not running\n`]);
      // a device operand is checked through the broker too: the device is fine, the broker is
      // not there (never util-linux's "failed to use device: No such device")
      const downDetach = await sb.asUser(`${LOSETUP} -d ${dev}`, { LOOPFS_INSTANCE: inst });
      expect([downDetach.exitCode, text(downDetach.stderr)]).toEqual([1, `losetup: ${inst}: the loopfs broker of this instance is not running\n`]);
      expect(readLoopState(`loop${minorOf(dev)}`)?.backingFile).toBe(sb.image);
      server = await Server.start(sb, [inst]);
      const again = await Server.start(sb, [inst]).then(
        async (s) => {
          await s.stop();
          return 'started';
        },
        (e: Error) => e.message,
      );
      expect(again).toContain('already served by another broker');
      const up = await sb.asUser(`${LOSETUP} -f --show ${sb.image}`, { LOOPFS_INSTANCE: inst });
      expect(up.exitCode).toBe(0);
      const detached = await sb.asUser(`${LOSETUP} -d ${dev}`, { LOOPFS_INSTANCE: inst });
      expect([detached.exitCode, text(detached.stderr)]).toEqual([0, '']);
      await server.stop();
      expect(fs.existsSync(`${inst}/loop-control`)).toBe(false);
    } finally {
      await server?.stop();
      await sb.teardown();
    }
  });

  it('refuses to serve a directory the owner could change', async () => {
    const sb = new BrokerSandbox('loopfs-broker');
    try {
      const inst = await sb.instance('inst');
      fs.chmodSync(inst, 0o777);
      const r = await sb.loopfs(['serve', inst]);
      expect(r.exitCode).toBe(1);
      expect(text(r.stderr)).toBe(`loopfs: ${inst}: must be owned by root and not writable by group or others to be served\n`);
      fs.chmodSync(inst, 0o755);
      expect(fs.existsSync(path.join(inst, 'loop-control'))).toBe(false);
    } finally {
      await sb.teardown();
    }
  });
});
