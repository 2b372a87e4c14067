// Issue 12, Docker: a dockerd of our own (docker.io 20.10) with bin/loopfs-runtime registered
// as the runtime `loopfs` (through a shim that names the sandbox's runtime config), an image
// from `docker import` of a busybox rootfs, and `loopfs oci-broker` (the seccomp agent) of our
// own. Inside `docker run --rm --runtime loopfs -e LOOPFS_OCI=1`, util-linux and busybox
// losetup get the container's instance devices, `mount -o loop` works although the container
// has no CAP_SYS_ADMIN (the agent mounts), the host's devices are unseen, and after the
// container ends nothing is left. The same with dockerd's userns-remap: the container's root
// is unprivileged and unmodified `mount -o loop` succeeds through the agent. See support.ts
// for the hygiene rules.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readLoopState } from '../helpers/devices.js';
import { BrokerSandbox, HELLO, Server } from '../broker/support.js';
import { SubIdRanges } from '../oci/support.js';
import {
  answers,
  describeRun,
  deviceNode,
  Dockerd,
  dockerEngine,
  engineSkipReason,
  hexMinor,
  instanceOf,
  NOTHING,
  RuntimeShim,
  rootfsTarball,
  text,
  waitNothingLeft,
  type Engine,
} from './support.js';
import { ATTACH, ATTACH_DONE, BB_EPERM, BB_MOUNTS, MOUNTS, REFUSALS, UL_EPERM, backingInode, btrfsImage, userNsMount } from './checks.js';

const reason = engineSkipReason('Docker with loopfs-runtime', ['dockerd', 'docker', 'mkfs.btrfs']);
const IMAGE = 'loopfs-test/busybox';

describe.skipIf(!!reason)('Docker: docker run --runtime loopfs -e LOOPFS_OCI=1', () => {
  let sb: BrokerSandbox;
  let dockerd: Dockerd | null = null;
  let broker: Server | null = null;
  let engine: Engine;
  let hostFile = '';
  let hostDev = '';
  let keep: string[] = [];

  beforeAll(async () => {
    sb = new BrokerSandbox('loopfs-docker');
    const shim = new RuntimeShim(sb);
    broker = await Server.launch(sb, ['oci-broker']);
    dockerd = await Dockerd.start(sb, 'docker', { shim: shim.path });
    await dockerd.importImage(rootfsTarball(sb).tar, IMAGE);
    engine = dockerEngine(dockerd, IMAGE);
    // a device of the host's, which no container may see or touch
    hostFile = sb.file('host.img');
    hostDev = sb.hostAttach(hostFile);
    keep = [hostFile];
  }, 120_000);

  afterAll(async () => {
    if (!sb) return;
    try {
      await dockerd?.stop();
      await broker?.stop();
    } finally {
      await sb.teardown();
    }
  }, 120_000);

  it('the harness: plain runc runs the imported image, and a container that does not opt in gets no loop device through the wrapper', async () => {
    const plain = await dockerd!.run([], IMAGE, 'echo plain');
    expect(describeRun(plain)).toBe('exit 0\n--- stdout\nplain\n--- stderr\n');
    const r = await dockerd!.run(['--runtime', 'loopfs'], IMAGE, 'ls /dev | grep -c loop || true');
    expect(text(r.stderr)).toBe('');
    expect(text(r.stdout)).toBe('0\n');
    expect(await waitNothingLeft(sb, engine, keep)).toEqual(NOTHING);
  });

  it('opted in: losetup -f --show gets /dev/loop0, an instance device as the host sees it; busybox too; mount -o loop reads back without CAP_SYS_ADMIN; the host device stays unseen; nothing is left after', async () => {
    const id = await engine.start(['-e', 'LOOPFS_OCI=1'], [`${sb.image}:/img`, '/usr:/usr:ro']);
    let inst: ReturnType<typeof instanceOf>;
    try {
      inst = instanceOf(sb, id);
      expect(inst.owner).toEqual({ uid: 0, gid: 0 });
      expect(inst.minors.length).toBe(4);
      const r = await engine.exec(id, ATTACH);
      const a = answers(r);
      const log = describeRun(r);
      expect(a('id'), log).toBe('0');
      expect(a('caps'), 'docker gives no CAP_SYS_ADMIN').toBe('sys_admin=0');
      // numbered from 0 for busybox's scan; the nodes are the instance's own devices
      expect(a('dev'), log).toBe('loop0 loop1 loop2 loop3');
      expect(a('sysblock'), 'the host\'s loop devices are not in its /sys/block').toBe('loop0 loop1 loop2 loop3');
      const nodes = [0, 1, 2, 3].map((n) => hexMinor(a(`node-loop${n}`)));
      expect(nodes, log).toEqual(inst.minors);
      expect(nodes).not.toContain(Number(path.basename(hostDev).slice(4)));
      const st = fs.statSync(sb.image);
      expect(a('attach'), log).toBe('/dev/loop0');
      expect(a('list'), log).toBe(`/dev/loop0: [${st.dev}]:${st.ino} (/img)`);
      expect(a('detach'), log).toBe('0');
      expect(a('bb-attach'), log).toBe('0');
      expect(a('bb-list'), log).toBe('/dev/loop0: 0 /img');
      // seen from the host: the container's loop0 is the instance's first device, bound to the image
      expect(backingInode(nodes[0])).toBe(st.ino);

      const m = await engine.exec(id, ATTACH_DONE + MOUNTS);
      const b = answers(m);
      const mlog = describeRun(m);
      expect(b('end'), mlog).toBe('');
      expect(b('bb-detach'), mlog).toBe('0');
      expect(b('mount'), mlog).toBe('0 ');
      expect(b('read'), mlog).toBe(HELLO.trim());
      expect(b('info'), mlog).toMatch(new RegExp(`^7:(${inst.minors.join('|')}) rw,nosuid,nodev,relatime$`));
      expect(b('umount'), mlog).toBe('0 ');
      expect(b('after'), mlog).toBe('0');
      for (const n of inst.minors) expect(readLoopState(`loop${n}`), `loop${n} freed by umount`).toBeUndefined();
      // the host's device is as it was
      expect(readLoopState(path.basename(hostDev))?.backingFile).toBe(hostFile);
    } finally {
      await engine.remove(id);
    }
    expect(await waitNothingLeft(sb, engine, keep)).toEqual(NOTHING);
    for (const m of inst!.minors) expect(readLoopState(`loop${m}`)?.backingFile).not.toBe('/img');
  });

  it('busybox: unmodified mount -o loop (no -t) reads back', async () => {
    const id = await engine.start(['-e', 'LOOPFS_OCI=1', '-e', 'LOOPFS_OCI_POOL=1'], [`${sb.image}:/img`]);
    try {
      const inst = instanceOf(sb, id);
      const r = await engine.exec(id, BB_MOUNTS);
      const a = answers(r);
      const log = describeRun(r);
      expect(a('end'), log).toBe('');
      expect(a('bb-mount'), log).toBe('0 ');
      expect(a('bb-read'), log).toBe(HELLO.trim());
      expect(a('bb-info'), log).toMatch(new RegExp(`^7:${inst.minors[0]} rw,nosuid,nodev,relatime$`));
      expect(a('bb-umount'), log).toBe('0 ');
    } finally {
      await engine.remove(id);
    }
    expect(await waitNothingLeft(sb, engine, keep)).toEqual(NOTHING);
  });

  it('refused: a host device, another container\'s device, btrfs, a remount dropping nosuid or nodev; nothing of the other container is visible', async () => {
    const a = await engine.start(['-e', 'LOOPFS_OCI=1', '-e', 'LOOPFS_OCI_POOL=2'], [`${sb.image}:/img:ro`]);
    let b = '';
    try {
      const other = instanceOf(sb, a);
      expect(other.minors.length).toBe(2);
      const hostNode = deviceNode(sb, 'host', Number(path.basename(hostDev).slice(4)));
      const otherNode = deviceNode(sb, 'other', other.minors[0]);
      b = await engine.start(['-e', 'LOOPFS_OCI=1', '-e', 'LOOPFS_OCI_POOL=2'], [
        `${sb.image}:/img`, '/usr:/usr:ro', `${hostNode}:/hostdev`, `${otherNode}:/otherdev`, `${btrfsImage(sb)}:/btrfs.img`,
      ]);
      const own = instanceOf(sb, b);
      const r = await engine.exec(b, REFUSALS);
      const ans = answers(r);
      const log = describeRun(r);
      expect(ans('end'), log).toBe('');
      expect(ans('dev'), log).toBe('loop0 loop1');
      expect(ans('loopfs'), 'the container\'s /dev/loopfs holds its own devices only').toBe(own.minors.map((m) => `loop${m}`).sort().join(' '));
      expect(ans('host'), log).toBe(`32 ${UL_EPERM}`);
      expect(ans('other'), log).toBe(`32 ${UL_EPERM}`);
      expect(ans('btrfs'), log).toBe(`32 ${UL_EPERM}`);
      expect(ans('bb-btrfs'), log).toBe(`1 ${BB_EPERM}`);
      expect(ans('good'), log).toBe('0 ');
      expect(ans('remount-suid'), log).toBe(`32 ${UL_EPERM}`);
      expect(ans('remount-dev'), log).toBe(`32 ${UL_EPERM}`);
      expect(ans('bb-remount-suid'), log).toBe(`1 ${BB_EPERM}`);
      expect(ans('info'), log).toMatch(/^7:\d+ rw,nosuid,nodev,relatime$/);
      expect(ans('freed'), 'a refused loop setup left no device bound').toBe('');
      // the host's device and the other container's are untouched
      expect(readLoopState(path.basename(hostDev))?.backingFile).toBe(hostFile);
      expect(readLoopState(`loop${other.minors[0]}`)).toBeUndefined();
    } finally {
      await engine.remove(a);
      if (b) await engine.remove(b);
    }
    expect(await waitNothingLeft(sb, engine, keep)).toEqual(NOTHING);
  });
});

describe.skipIf(!!reason)('Docker with userns-remap: an unprivileged container root', () => {
  let sb: BrokerSandbox;
  let dockerd: Dockerd | null = null;
  let broker: Server | null = null;
  let ranges: SubIdRanges | null = null;
  let engine: Engine;
  let image = '';
  let base = 0;
  let hostFile = '';
  let hostDev = '';

  beforeAll(async () => {
    sb = new BrokerSandbox('loopfs-docker-userns');
    ranges = new SubIdRanges(sb.user);
    ranges.add();
    base = Number(
      fs.readFileSync('/etc/subuid', 'utf8').split('\n').find((l) => l.startsWith(`${sb.user.name}:`))!.split(':')[1],
    );
    const shim = new RuntimeShim(sb);
    broker = await Server.launch(sb, ['oci-broker']);
    dockerd = await Dockerd.start(sb, 'docker', { shim: shim.path, usernsRemap: sb.user.name });
    await dockerd.importImage(rootfsTarball(sb).tar, IMAGE);
    engine = dockerEngine(dockerd, IMAGE);
    // the image belongs to the container's root as mapped on the host
    image = sb.path('files', 'userns.img');
    fs.copyFileSync(sb.image, image);
    fs.chownSync(image, base, base);
    hostFile = sb.file('host.img');
    hostDev = sb.hostAttach(hostFile);
  }, 120_000);

  afterAll(async () => {
    if (!sb) return;
    try {
      await dockerd?.stop();
      await broker?.stop();
      ranges?.remove();
    } finally {
      await sb.teardown();
    }
  }, 120_000);

  it('unmodified mount -o loop as the remapped root succeeds through the agent: reads back, a write persists, umount frees the device; refusals hold', async () => {
    // the remapped root is host uid BASE: dockerd's userns-remap, not a capability
    const probe = await dockerd!.run(['--runtime', 'loopfs'], IMAGE, "tr -s ' ' < /proc/self/uid_map | sed 's/^ //'");
    expect(describeRun(probe)).toBe(`exit 0\n--- stdout\n0 ${base} 65536\n--- stderr\n`);
    await userNsMount(
      { sb, engine, hostFile, hostDev },
      ['-e', 'LOOPFS_OCI=1', '-e', 'LOOPFS_OCI_POOL=2', '-v', '/usr:/usr:ro'],
      image,
      0,
      { uid: base, gid: base },
      'userns written',
    );
  });
});

