// Issue 12, containerd (the Kubernetes path): a containerd of our own (private root, state and
// sockets, the CRI plugin off), driven with `ctr run --runc-binary SHIM`, which is what a
// RuntimeClass with `options.BinaryName` makes the CRI plugin do. Opted in by the annotation
// io.loopfs.instance=true (what `pod_annotations = ["io.loopfs.*"]` passes from a pod): util-linux
// and busybox losetup get the container's instance devices, `mount -o loop` works without
// CAP_SYS_ADMIN through the agent, and the refusals hold. See support.ts for the hygiene rules.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readLoopState } from '../helpers/devices.js';
import { BrokerSandbox, HELLO, Server } from '../broker/support.js';
import { buildRootfs } from '../oci/support.js';
import {
  answers,
  Containerd,
  containerdEngine,
  describeRun,
  deviceNode,
  engineSkipReason,
  hexMinor,
  instanceOf,
  NOTHING,
  RuntimeShim,
  waitNothingLeft,
  type Engine,
} from './support.js';
import { ATTACH, ATTACH_DONE, BB_EPERM, BB_MOUNTS, MOUNTS, REFUSALS, UL_EPERM, backingInode, btrfsImage } from './checks.js';

const reason = engineSkipReason('containerd (ctr) with loopfs-runtime', ['containerd', 'ctr', 'containerd-shim-runc-v2', 'mkfs.btrfs']);

describe.skipIf(!!reason)('containerd: ctr run --runc-binary loopfs-runtime --annotation io.loopfs.instance=true', () => {
  let sb: BrokerSandbox;
  let containerd: Containerd | null = null;
  let broker: Server | null = null;
  let engine: Engine;
  let shim: RuntimeShim;
  let rootfs = '';
  let hostFile = '';
  let hostDev = '';

  beforeAll(async () => {
    sb = new BrokerSandbox('loopfs-containerd');
    shim = new RuntimeShim(sb);
    broker = await Server.launch(sb, ['oci-broker']);
    containerd = await Containerd.start(sb, 'containerd');
    rootfs = sb.path('rootfs');
    buildRootfs(rootfs);
    engine = containerdEngine(containerd, shim.path, rootfs);
    hostFile = sb.file('host.img');
    hostDev = sb.hostAttach(hostFile);
  }, 120_000);

  afterAll(async () => {
    if (!sb) return;
    try {
      await containerd?.stop();
      await broker?.stop();
    } finally {
      await sb.teardown();
    }
  }, 120_000);

  it('the harness: plain runc and the wrapper without the annotation run the rootfs, with no loop device', async () => {
    const plain = await containerd!.run('plain', '/usr/sbin/runc', rootfs, [], 'echo plain');
    expect(describeRun(plain)).toBe('exit 0\n--- stdout\nplain\n--- stderr\n');
    const r = await containerd!.run('not-opted-in', shim.path, rootfs, [], 'ls /dev | grep -c loop || true');
    expect(describeRun(r)).toBe('exit 0\n--- stdout\n0\n--- stderr\n');
    expect(await waitNothingLeft(sb, engine, [hostFile])).toEqual(NOTHING);
  });

  const FLAGS = ['--annotation', 'io.loopfs.instance=true', '--annotation', 'io.loopfs.pool=2'];

  it('opted in: losetup -f --show gets /dev/loop0 (an instance device as the host sees it), busybox losetup too; mount -o loop reads back without CAP_SYS_ADMIN; nothing is left after', async () => {
    const b = await engine.start(FLAGS, [`${sb.image}:/img`, '/usr:/usr:ro']);
    try {
      const inst = instanceOf(sb, b);
      expect(inst.owner).toEqual({ uid: 0, gid: 0 });
      const r = await engine.exec(b, ATTACH);
      const x = answers(r);
      const log = describeRun(r);
      expect(x('id'), log).toBe('0');
      expect(x('caps'), "ctr's default spec gives no CAP_SYS_ADMIN").toBe('sys_admin=0');
      expect(x('dev'), log).toBe('loop0 loop1');
      expect(x('sysblock'), 'the host\'s loop devices are not in its /sys/block').toBe('loop0 loop1');
      const nodes = [0, 1].map((n) => hexMinor(x(`node-loop${n}`)));
      expect(nodes, log).toEqual(inst.minors);
      expect(nodes).not.toContain(Number(path.basename(hostDev).slice(4)));
      const st = fs.statSync(sb.image);
      expect(x('attach'), log).toBe('/dev/loop0');
      expect(x('list'), log).toBe(`/dev/loop0: [${st.dev}]:${st.ino} (/img)`);
      expect(x('detach'), log).toBe('0');
      expect(x('bb-attach'), log).toBe('0');
      expect(x('bb-list'), log).toBe('/dev/loop0: 0 /img');
      expect(backingInode(nodes[0])).toBe(st.ino);

      const m = await engine.exec(b, ATTACH_DONE + MOUNTS);
      const y = answers(m);
      const mlog = describeRun(m);
      expect(y('end'), mlog).toBe('');
      expect(y('bb-detach'), mlog).toBe('0');
      expect(y('mount'), mlog).toBe('0 ');
      expect(y('read'), mlog).toBe(HELLO.trim());
      expect(y('info'), mlog).toMatch(new RegExp(`^7:(${inst.minors.join('|')}) rw,nosuid,nodev,relatime$`));
      expect(y('umount'), mlog).toBe('0 ');
      expect(y('after'), mlog).toBe('0');
      for (const n of inst.minors) expect(readLoopState(`loop${n}`), `loop${n} freed by umount`).toBeUndefined();
      expect(readLoopState(path.basename(hostDev))?.backingFile).toBe(hostFile);
    } finally {
      await engine.remove(b);
    }
    expect(await waitNothingLeft(sb, engine, [hostFile])).toEqual(NOTHING);
  });

  it('busybox: unmodified mount -o loop (no -t) reads back', async () => {
    const id = await engine.start(FLAGS, [`${sb.image}:/img`]);
    try {
      const inst = instanceOf(sb, id);
      const r = await engine.exec(id, BB_MOUNTS);
      const a = answers(r);
      const log = describeRun(r);
      expect(a('end'), log).toBe('');
      expect(a('bb-mount'), log).toBe('0 ');
      expect(a('bb-read'), log).toBe(HELLO.trim());
      expect(a('bb-info'), log).toMatch(new RegExp(`^7:(${inst.minors.join('|')}) rw,nosuid,nodev,relatime$`));
      expect(a('bb-umount'), log).toBe('0 ');
    } finally {
      await engine.remove(id);
    }
    expect(await waitNothingLeft(sb, engine, [hostFile])).toEqual(NOTHING);
  });

  it("refused: a host device, another container's device, btrfs, a remount dropping nosuid or nodev; nothing of the other container is visible", async () => {
    const a = await engine.start(FLAGS, [`${sb.image}:/img:ro`]);
    let b = '';
    try {
      const other = instanceOf(sb, a);
      expect(other.minors.length).toBe(2);
      const hostNode = deviceNode(sb, 'host', Number(path.basename(hostDev).slice(4)));
      const otherNode = deviceNode(sb, 'other', other.minors[0]);
      b = await engine.start(FLAGS, [
        `${sb.image}:/img`, '/usr:/usr:ro', `${hostNode}:/hostdev`, `${otherNode}:/otherdev`, `${btrfsImage(sb)}:/btrfs.img`,
      ]);
      const own = instanceOf(sb, b);
      const r = await engine.exec(b, REFUSALS);
      const ans = answers(r);
      const log = describeRun(r);
      expect(ans('end'), log).toBe('');
      expect(ans('dev'), log).toBe('loop0 loop1');
      expect(ans('loopfs'), log).toBe(own.minors.map((n) => `loop${n}`).sort().join(' '));
      expect(ans('host'), log).toBe(`32 ${UL_EPERM}`);
      expect(ans('other'), log).toBe(`32 ${UL_EPERM}`);
      expect(ans('btrfs'), log).toBe(`32 ${UL_EPERM}`);
      expect(ans('bb-btrfs'), log).toBe(`1 ${BB_EPERM}`);
      expect(ans('freed'), log).toBe('');
      expect(ans('good'), log).toBe('0 ');
      expect(ans('remount-suid'), log).toBe(`32 ${UL_EPERM}`);
      expect(ans('remount-dev'), log).toBe(`32 ${UL_EPERM}`);
      expect(ans('bb-remount-suid'), log).toBe(`1 ${BB_EPERM}`);
      expect(ans('info'), log).toMatch(/^7:\d+ rw,nosuid,nodev,relatime$/);
      expect(readLoopState(path.basename(hostDev))?.backingFile).toBe(hostFile);
      expect(readLoopState(`loop${other.minors[0]}`)).toBeUndefined();
    } finally {
      await engine.remove(a);
      if (b) await engine.remove(b);
    }
    expect(await waitNothingLeft(sb, engine, [hostFile])).toEqual(NOTHING);
  });
});
