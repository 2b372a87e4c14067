// InstanceOps (src/broker/ops.ts) on its own, in-process, on a real instance: what the broker's
// worker does for each request, checked against the kernel (sysfs) and the instance's state,
// without a socket, a server or a client in between. The end-to-end behaviour is in
// unprivileged.test.ts; this file pins each operation and each refusal (code and kind, as the
// protocol carries them).
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InstanceOps, OpError, toErrorBody } from '../../src/broker/ops.js';
import { LocalInstance } from '../../src/instance/local-instance.js';
import { native } from '../../src/kernel/native.js';
import { instanceSkipReason, minorOf, Sandbox, skipTitle } from '../instance/support.js';

const reason = instanceSkipReason('broker/ops');

/** What InstanceOps threw, as the protocol's error body; fails when it did not throw. */
function refusal(fn: () => unknown): { code: string; kind: string } {
  try {
    fn();
  } catch (e) {
    const { code, kind } = toErrorBody(e);
    return { code, kind };
  }
  throw new Error('expected a refusal, but the operation succeeded');
}

const backingFile = (minor: number): string | null => {
  try {
    return fs.readFileSync(`/sys/block/loop${minor}/loop/backing_file`, 'utf8').trim();
  } catch {
    return null; // not bound: sysfs has no loop/ group
  }
};

describe.skipIf(reason !== undefined)(skipTitle('InstanceOps, in-process on a real instance', reason), () => {
  let sb: Sandbox;
  let dir: string;
  let ops: InstanceOps;
  const n = native();
  const fds: number[] = [];
  const openFile = (p: string, flags = n.constants.O_RDWR) => {
    const fd = n.open(p, flags);
    fds.push(fd);
    return fd;
  };

  beforeEach(async () => {
    sb = new Sandbox('loopfs-ops');
    dir = sb.path('inst');
    await sb.create(dir, ['--pool', '1']);
    const inst = LocalInstance.open(dir, sb.env);
    const id = inst.header().id;
    inst.close();
    ops = new InstanceOps({ dir, id, allowFs: ['ext4'], fuseMode: 'never', env: sb.env });
  });

  afterEach(async () => {
    for (const fd of fds.splice(0)) n.close(fd);
    await sb.cleanup();
  });

  it('attach binds a device of the instance to the fd given; list shows it bound first; detach unbinds it and the pool keeps one idle', () => {
    const file = sb.file('a.img');
    const a = ops.attach(openFile(file), { op: 'attach' });
    expect(a).toMatchObject({ readOnly: false, holderFd: null });
    expect(Object.keys(sb.state(dir)!.devices).map(Number)).toContain(a.minor);
    expect(backingFile(a.minor)).toBe(file);
    const listed = ops.list().devices;
    expect(listed[0]).toMatchObject({ minor: a.minor, bound: true, backingFile: file, offset: '0', sizelimit: '0', readOnly: false });

    ops.detach(a.minor);
    expect(backingFile(a.minor)).toBeNull();
    expect(ops.list().devices.filter((d) => d.bound)).toEqual([]);
    // --pool 1: one idle device stays held by the instance
    expect(Object.values(sb.state(dir)!.devices).filter((d) => d.state === 'held')).toHaveLength(1);
  });

  it('a read-only fd gives a read-only device; an autoclear attach comes with a holder fd that keeps it bound', () => {
    const ro = ops.attach(openFile(sb.file('ro.img'), n.constants.O_RDONLY), { op: 'attach' });
    expect(ro.readOnly).toBe(true);
    expect(fs.readFileSync(`/sys/block/loop${ro.minor}/ro`, 'utf8').trim()).toBe('1');
    const ac = ops.attach(openFile(sb.file('ac.img')), { op: 'attach', autoclear: true });
    expect(ac.holderFd).not.toBeNull();
    fds.push(ac.holderFd!);
    expect(fs.readFileSync(`/sys/block/loop${ac.minor}/loop/autoclear`, 'utf8').trim()).toBe('1');
    expect(backingFile(ac.minor)).toBe(path.join(sb.files, 'ac.img'));
  });

  it('refuses, with the protocol code and kind: a directory, a loop device of no instance, a device of another instance, a minor not held', async () => {
    expect(refusal(() => ops.attach(openFile(sb.files, n.constants.O_RDONLY | n.constants.O_DIRECTORY), { op: 'attach' }))).toEqual({ code: 'EINVAL', kind: 'file' });
    const host = sb.hostAttach(sb.file('host.img'));
    expect(refusal(() => ops.attach(openFile(host, n.constants.O_RDONLY), { op: 'attach' }))).toEqual({ code: 'EPERM', kind: 'file' });
    expect(refusal(() => ops.detach(minorOf(host)))).toEqual({ code: 'ENODEV', kind: 'device' });
    const other = sb.path('other');
    await sb.create(other);
    const inst = LocalInstance.open(other, sb.env);
    try {
      const b = inst.allocate({ file: sb.file('b.img'), offset: 0n, sizelimit: 0n, flags: 0, blockSize: 0 });
      const minor = minorOf(b.device.path);
      b.holder?.close();
      b.device.close();
      expect(refusal(() => ops.detach(minor))).toEqual({ code: 'ENODEV', kind: 'device' });
      expect(refusal(() => ops.setCapacity(minor))).toEqual({ code: 'ENODEV', kind: 'device' });
      expect(backingFile(minor)).toBe(path.join(sb.files, 'b.img')); // untouched
    } finally {
      inst.close();
    }
  });

  it('a session device is detached and given back when its connection ends', () => {
    const a = ops.attach(openFile(sb.file('s.img')), { op: 'attach', session: true });
    expect(backingFile(a.minor)).toBe(path.join(sb.files, 's.img'));
    ops.endSession([a.minor], []);
    expect(backingFile(a.minor)).toBeNull();
    expect(ops.pending()).toEqual([]);
  });

  it('an instance destroyed and made again at the same path is not served by the old ops (its id differs)', async () => {
    expect((await sb.loopfs(['instance', 'destroy', dir])).exitCode).toBe(0);
    await sb.create(dir);
    expect(refusal(() => ops.list())).toEqual({ code: 'ENOENT', kind: 'internal' });
    expect(() => ops.list()).toThrow(OpError);
  });
});
