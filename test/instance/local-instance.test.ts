// LocalInstance (src/instance/local-instance.ts) on its own, in-process, on real instances and
// real loop devices in a private sandbox: opening (and what it refuses), reserving and binding,
// the idle hints, membership, detach and the pool policy, the repair calls gc uses, the
// instance limit, and the lock order the file's header states. The CLI-level behaviour is in
// the other files of this directory; here each call is checked against the kernel (sysfs),
// the state records, the claims and the directory listing.
// Devices: only the sandbox's (Sandbox.cleanup detaches and removes them, also on failure).
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { AttachRequest } from '../../src/kernel/attach.js';
import type { Allocated } from '../../src/kernel/allocate.js';
import { LoopDevice } from '../../src/kernel/loop-device.js';
import { native } from '../../src/kernel/native.js';
import { LocalInstance, QuotaError } from '../../src/instance/local-instance.js';
import { readLoopState } from '../helpers/devices.js';
import { REF_LOSETUP } from '../helpers/env.js';
import { editInstanceState } from '../helpers/instance-state.js';
import { instanceSkipReason, loopEntries, minorOf, nodeInfo, Sandbox, skipTitle, sleep } from './support.js';

const reason = instanceSkipReason('LocalInstance unit tests');

/** What a call threw (fails when it did not throw). */
function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    // the error is the subject of the test: handed to the caller to compare
    return e;
  }
  throw new Error('expected an error, but the call succeeded');
}

/** What a call threw: its code and path. */
function thrown(fn: () => unknown): { code: string; path: string | undefined } {
  const err = caught(fn) as { code: string; path?: string };
  return { code: err.code, path: err.path };
}

const req = (file: string, flags = 0): AttachRequest => ({ file, offset: 0n, sizelimit: 0n, flags, blockSize: 0 });

const backingFile = (minor: number): string | undefined => readLoopState(`loop${minor}`)?.backingFile;

/** Wait (bounded) until loopN is unbound: LOOP_CLR_FD completes at the last close. */
async function unbound(minor: number): Promise<void> {
  for (let i = 0; i < 150 && backingFile(minor) !== undefined; i++) await sleep(20);
  expect(backingFile(minor)).toBeUndefined();
}

describe.skipIf(reason)(skipTitle('LocalInstance, in-process on real instances', reason), () => {
  let sb: Sandbox;
  // every instance and device object a test opened, closed once in afterEach
  const instances: LocalInstance[] = [];
  const devices: LoopDevice[] = [];

  beforeEach(() => {
    sb = new Sandbox('loopfs-local');
  });
  afterEach(async () => {
    for (const d of devices.splice(0)) d.close();
    for (const i of instances.splice(0)) i.close();
    await sb.cleanup();
  });

  function open(dir: string): LocalInstance {
    const inst = LocalInstance.open(dir, sb.env);
    instances.push(inst);
    return inst;
  }

  /** A new instance at sb.path(name), opened in-process. */
  async function make(name: string, flags: string[] = []): Promise<{ dir: string; inst: LocalInstance; id: string }> {
    const dir = sb.path(name);
    const s = await sb.create(dir, flags);
    return { dir, inst: open(dir), id: s.id };
  }

  /** allocate() a new file; the holder (the host node it was bound through) is closed at once. */
  function bind(inst: LocalInstance, name: string): { minor: number; file: string; device: LoopDevice } {
    const file = sb.file(name);
    const a: Allocated = inst.allocate(req(file));
    devices.push(a.device);
    a.holder?.close();
    return { minor: minorOf(a.device.path), file, device: a.device };
  }

  const hints = (dir: string): string[] => fs.readdirSync(path.join(dir, '.loopfs', 'idle')).sort();
  const claimed = () => sb.claims().map((c) => c.minor);

  // ---------------------------------------------------------------- open

  it('open() of a directory without .loopfs fails ENOENT on DIR/.loopfs; with an empty .loopfs, ENOENT on its state.json; isInstance() is false for both', () => {
    const plain = sb.path('plain');
    fs.mkdirSync(plain);
    expect(thrown(() => LocalInstance.open(plain, sb.env))).toEqual({ code: 'ENOENT', path: `${plain}/.loopfs` });
    expect(LocalInstance.isInstance(plain)).toBe(false);
    const half = sb.path('half'); // what a create killed before its state leaves
    fs.mkdirSync(path.join(half, '.loopfs'), { recursive: true, mode: 0o700 });
    expect(thrown(() => LocalInstance.open(half, sb.env))).toEqual({ code: 'ENOENT', path: `${half}/.loopfs/state.json` });
    expect(LocalInstance.isInstance(half)).toBe(false);
  });

  it('open() follows no symlink inside DIR: a symlinked .loopfs fails ENOTDIR, a symlinked state.json fails ELOOP; DIR itself given as a symlink opens (the caller\'s choice)', async () => {
    const real = sb.path('real');
    const s = await sb.create(real);
    const linked = sb.path('linked');
    fs.mkdirSync(linked);
    fs.symlinkSync(path.join(real, '.loopfs'), path.join(linked, '.loopfs'));
    expect(thrown(() => LocalInstance.open(linked, sb.env))).toEqual({ code: 'ENOTDIR', path: `${linked}/.loopfs` });

    // a .loopfs of our own whose state.json is a symlink to a real state
    const planted = sb.path('planted');
    fs.mkdirSync(path.join(planted, '.loopfs'), { recursive: true, mode: 0o700 });
    fs.symlinkSync(path.join(real, '.loopfs', 'state.json'), path.join(planted, '.loopfs', 'state.json'));
    expect(thrown(() => LocalInstance.open(planted, sb.env)).code).toBe('ELOOP');

    const alias = sb.path('alias');
    fs.symlinkSync(real, alias);
    const inst = open(alias);
    expect(inst.dir).toBe(alias);
    expect(inst.header().id).toBe(s.id);
  });

  it('open() refuses a .loopfs that others may write (mode 0777) with EPERM on DIR/.loopfs', async () => {
    const dir = sb.path('i');
    await sb.create(dir);
    fs.chmodSync(path.join(dir, '.loopfs'), 0o777);
    expect(thrown(() => LocalInstance.open(dir, sb.env))).toEqual({ code: 'EPERM', path: `${dir}/.loopfs` });
  });

  // ---------------------------------------------------------------- allocate, findFree

  it('allocate() claims a new minor, records it held, binds the file and publishes DIR/loopN with the state\'s owner and mode; no idle hint', async () => {
    const { dir, inst, id } = await make('i', ['--owner', '1234:2345', '--mode', '0640']);
    const file = sb.file('a.img');
    const a = inst.allocate(req(file));
    devices.push(a.device);
    if (a.holder) devices.push(a.holder);
    const m = minorOf(a.device.path);
    expect(a.device.path).toBe(`${dir}/loop${m}`);
    expect(a.holder?.path).toBe(`/dev/loop${m}`);
    expect(backingFile(m)).toBe(file);
    expect(sb.state(dir)!.devices).toEqual({ [m]: { state: 'held' } });
    expect(sb.claims()).toEqual([{ minor: m, id, dir, uid: 1234 }]);
    expect(nodeInfo(`${dir}/loop${m}`)).toEqual({ uid: 1234, gid: 2345, mode: 0o640, block: true, major: 7, minor: m });
    expect(fs.readdirSync(dir).sort()).toEqual(['.loopfs', `loop${m}`]);
    expect(hints(dir)).toEqual([]);
    expect(inst.minors()).toEqual([m]);
    expect(inst.record(m)).toEqual({ state: 'held' });
  });

  it('allocate() of a missing file: the device it made is given back (no record, claim, node or index left) and the error is the file\'s ENOENT', async () => {
    const { dir, inst } = await make('i');
    const missing = sb.path('files', 'missing.img');
    expect((caught(() => inst.allocate(req(missing))) as { code?: string }).code).toBe('ENOENT');
    expect(sb.state(dir)!.devices).toEqual({});
    expect(sb.claims()).toEqual([]);
    expect(fs.readdirSync(dir)).toEqual(['.loopfs']);
    // the index it made is the one before the runtime's next-index hint; it left the kernel
    const made = Number(fs.readFileSync(path.join(sb.runtime, 'next-index'), 'utf8').split(' ')[0]) - 1;
    expect(fs.existsSync(`/sys/block/loop${made}`)).toBe(false);
  });

  it('findFree() reserves an idle device (recorded, claimed, published, hinted) and hands it out again while it stays idle', async () => {
    const { dir, inst, id } = await make('i');
    const dev = inst.findFree();
    const m = minorOf(dev.path);
    expect(dev.path).toBe(`${dir}/loop${m}`);
    expect(backingFile(m)).toBeUndefined();
    expect(sb.state(dir)!.devices).toEqual({ [m]: { state: 'held' } });
    expect(sb.claims()).toEqual([{ minor: m, id, dir, uid: 0 }]);
    expect(hints(dir)).toEqual([`loop${m}`]);
    expect(nodeInfo(`${dir}/loop${m}`)).toEqual({ uid: 0, gid: 0, mode: 0o660, block: true, major: 7, minor: m });
    expect(inst.findFree().path).toBe(dev.path);
    expect(sb.state(dir)!.devices).toEqual({ [m]: { state: 'held' } });
  });

  it('findFree() prefers a hinted idle device to a lower idle one without a hint; allocate() binds the hinted one and drops its hint', async () => {
    const { dir, inst } = await make('i');
    const low = bind(inst, 'low.img');
    const high = inst.findFree(); // reserved above `low`, hinted
    const h = minorOf(high.path);
    expect(h).toBeGreaterThan(low.minor);
    // `low` freed behind the instance's back (a stock tool): idle, but not hinted
    execFileSync(REF_LOSETUP, ['-d', `/dev/loop${low.minor}`]);
    await unbound(low.minor);
    expect(hints(dir)).toEqual([`loop${h}`]);
    expect(inst.findFree().path).toBe(`${dir}/loop${h}`);
    const b = bind(inst, 'b.img');
    expect(b.minor).toBe(h);
    expect(backingFile(h)).toBe(b.file);
    expect(hints(dir)).toEqual([]);
    expect(sb.state(dir)!.devices).toEqual({ [low.minor]: { state: 'held' }, [h]: { state: 'held' } });
  });

  it('a stale hint (its device bound meanwhile) is dropped, never handed out: findFree() reserves a new device instead', async () => {
    const { dir, inst } = await make('i');
    const m = minorOf(inst.findFree().path);
    const file = sb.file('a.img');
    execFileSync(REF_LOSETUP, [`${dir}/loop${m}`, file]); // a stock tool through the published node
    const n2 = minorOf(inst.findFree().path);
    expect(n2).not.toBe(m);
    expect(hints(dir)).toEqual([`loop${n2}`]);
    expect(backingFile(m)).toBe(file);
    expect(sb.state(dir)!.devices).toEqual({ [m]: { state: 'held' }, [n2]: { state: 'held' } });
  });

  it('an instance marked destroying takes nothing new: allocate() and findFree() fail ENOENT on its state.json, nothing recorded or claimed', async () => {
    const { dir, inst } = await make('i');
    inst.lock();
    try {
      inst.markDestroying();
    } finally {
      inst.unlock();
    }
    expect(inst.isDestroying()).toBe(true);
    const refused = { code: 'ENOENT', path: `${dir}/.loopfs/state.json` };
    expect(thrown(() => inst.findFree())).toEqual(refused);
    expect(thrown(() => inst.allocate(req(sb.file('a.img'))))).toEqual(refused);
    expect(sb.state(dir)!.devices).toEqual({});
    expect(sb.claims()).toEqual([]);
    expect(fs.readdirSync(dir)).toEqual(['.loopfs']);
  });

  // ---------------------------------------------------------------- contains

  it('contains() is true for its own published held device (by DIR/loopN or /dev/loopN) and false for a host device, another instance\'s device, a regular file, and its own device once its node is gone', async () => {
    const { dir, inst } = await make('i');
    const other = await make('other');
    const own = bind(inst, 'a.img');
    const theirs = bind(other.inst, 'b.img');
    const host = minorOf(sb.hostAttach(sb.file('h.img')));
    const dev = (p: string) => {
      const d = new LoopDevice(p);
      devices.push(d);
      return d;
    };
    expect(inst.contains(dev(`${dir}/loop${own.minor}`))).toBe(true);
    expect(inst.contains(dev(`/dev/loop${own.minor}`))).toBe(true);
    expect(inst.contains(dev(`/dev/loop${host}`))).toBe(false);
    expect(inst.contains(dev(`${other.dir}/loop${theirs.minor}`))).toBe(false);
    expect(other.inst.contains(dev(`${other.dir}/loop${theirs.minor}`))).toBe(true);
    expect(inst.contains(dev(own.file))).toBe(false);
    fs.unlinkSync(`${dir}/loop${own.minor}`);
    expect(inst.contains(dev(`/dev/loop${own.minor}`))).toBe(false);
  });

  // ---------------------------------------------------------------- detach and the pool

  it('detach() with pool 0: the device is unbound and leaves the kernel; its record, node and claim are gone', async () => {
    const { dir, inst } = await make('i');
    const a = bind(inst, 'a.img');
    inst.detach(a.device);
    expect(backingFile(a.minor)).toBeUndefined();
    expect(fs.existsSync(`/sys/block/loop${a.minor}`)).toBe(false);
    expect(sb.state(dir)!.devices).toEqual({});
    expect(fs.readdirSync(dir)).toEqual(['.loopfs']);
    expect(hints(dir)).toEqual([]);
    expect(sb.claims()).toEqual([]);
  });

  it('detach() with pool 1: the first device detached stays held, published and hinted idle; the next one, above the pool, is released', async () => {
    const { dir, inst } = await make('i', ['--pool', '1']);
    const a = bind(inst, 'a.img');
    const b = bind(inst, 'b.img');
    inst.detach(a.device);
    expect(backingFile(a.minor)).toBeUndefined();
    expect(sb.state(dir)!.devices).toEqual({ [a.minor]: { state: 'held' }, [b.minor]: { state: 'held' } });
    expect(hints(dir)).toEqual([`loop${a.minor}`]);
    expect(loopEntries(dir).sort()).toEqual([`loop${a.minor}`, `loop${b.minor}`].sort());
    expect(claimed()).toEqual([a.minor, b.minor].sort((x, y) => x - y));

    inst.detach(b.device);
    expect(fs.existsSync(`/sys/block/loop${b.minor}`)).toBe(false);
    expect(sb.state(dir)!.devices).toEqual({ [a.minor]: { state: 'held' } });
    expect(hints(dir)).toEqual([`loop${a.minor}`]);
    expect(loopEntries(dir)).toEqual([`loop${a.minor}`]);
    expect(claimed()).toEqual([a.minor]);
  });

  it('detachMany() (-D) with pool 1: every device unbound, the first kept idle and hinted, the others released in one batch; no "releasing" mark stays', async () => {
    const { dir, inst } = await make('i', ['--pool', '1']);
    const bound = [bind(inst, 'a.img'), bind(inst, 'b.img'), bind(inst, 'c.img')];
    const errors = inst.detachMany(bound.map((b) => b.device));
    expect(errors).toEqual([null, null, null]);
    const [kept, ...gone] = bound;
    for (const b of bound) expect(backingFile(b.minor)).toBeUndefined();
    for (const b of gone) expect(fs.existsSync(`/sys/block/loop${b.minor}`)).toBe(false);
    expect(sb.state(dir)!.devices).toEqual({ [kept.minor]: { state: 'held' } });
    expect(hints(dir)).toEqual([`loop${kept.minor}`]);
    expect(loopEntries(dir)).toEqual([`loop${kept.minor}`]);
    expect(claimed()).toEqual([kept.minor]);
    expect(fs.readdirSync(path.join(dir, '.loopfs')).sort()).toEqual(['devices', 'idle', 'lock', 'state.json']);
  });

  it('detachMany() returns the LOOP_CLR_FD error (ENXIO) of a device that was not bound, and settles only the ones it detached', async () => {
    const { dir, inst } = await make('i', ['--pool', '1']);
    const a = bind(inst, 'a.img');
    const idle = inst.findFree(); // after the bind: a device of its own (`a` is bound)
    devices.push(idle);
    const errors = inst.detachMany([idle, a.device]);
    expect(errors.map((e) => (e === null ? null : (e as { code?: string }).code))).toEqual(['ENXIO', null]);
    // the pool (1) is full with the idle device, so the detached one leaves
    expect(fs.existsSync(`/sys/block/loop${a.minor}`)).toBe(false);
    expect(sb.state(dir)!.devices).toEqual({ [minorOf(idle.path)]: { state: 'held' } });
    expect(hints(dir)).toEqual([`loop${minorOf(idle.path)}`]);
    expect(claimed()).toEqual([minorOf(idle.path)]);
  });

  // ---------------------------------------------------------------- release, keepIfUnbound

  it('release() of a device somebody holds open: LOOP_CTL_REMOVE refused, so it stays recorded "removing" with its claim and the kernel index, its node unlinked', async () => {
    const { dir, inst } = await make('i');
    const m = minorOf(inst.findFree().path);
    const n = native();
    const fd = n.open(`/dev/loop${m}`, n.constants.O_RDONLY); // a tool scanning for a free device
    try {
      inst.lock();
      try {
        expect(inst.release(m, 0)).toBe(false);
      } finally {
        inst.unlock();
      }
    } finally {
      n.close(fd);
    }
    expect(sb.state(dir)!.devices).toEqual({ [m]: { state: 'removing' } });
    expect(fs.readdirSync(dir)).toEqual(['.loopfs']);
    expect(hints(dir)).toEqual([]);
    expect(claimed()).toEqual([m]);
    expect(fs.existsSync(`/sys/block/loop${m}`)).toBe(true);
  });

  it('keepIfUnbound() takes back an unbound "removing" device (held, node published again, hinted idle); a bound "removing" one and a held one are left as they are (false)', async () => {
    const { dir, inst } = await make('i', ['--owner', '1234:1234', '--mode', '0600']);
    const b = bind(inst, 'b.img');
    const idle = minorOf(inst.findFree().path); // after the bind: a device of its own
    // both half-released: marked "removing", nodes unlinked (a release that LOOP_CTL_REMOVE refused)
    editInstanceState(dir, (s) => {
      s.devices[idle].state = 'removing';
      s.devices[b.minor].state = 'removing';
    });
    fs.unlinkSync(`${dir}/loop${idle}`);
    fs.unlinkSync(`${dir}/loop${b.minor}`);
    fs.unlinkSync(`${dir}/.loopfs/idle/loop${idle}`);
    inst.lock();
    try {
      expect(inst.keepIfUnbound(idle)).toBe(true);
      expect(inst.keepIfUnbound(b.minor)).toBe(false);
      expect(inst.keepIfUnbound(idle)).toBe(false); // held now
    } finally {
      inst.unlock();
    }
    expect(sb.state(dir)!.devices).toEqual({ [idle]: { state: 'held' }, [b.minor]: { state: 'removing' } });
    expect(nodeInfo(`${dir}/loop${idle}`)).toEqual({ uid: 1234, gid: 1234, mode: 0o600, block: true, major: 7, minor: idle });
    expect(loopEntries(dir)).toEqual([`loop${idle}`]);
    expect(hints(dir)).toEqual([`loop${idle}`]);
    expect(backingFile(b.minor)).toBe(b.file);
  });

  // ---------------------------------------------------------------- repair calls

  it('republish() makes DIR/loopN again with owner and mode when it is missing, a symlink to the host node, or a node of another device; a right node is left (false)', async () => {
    const { dir, inst } = await make('i', ['--owner', '1234:1234', '--mode', '0640']);
    const a = bind(inst, 'a.img');
    const node = `${dir}/loop${a.minor}`;
    const right = { uid: 1234, gid: 1234, mode: 0o640, block: true, major: 7, minor: a.minor };
    expect(inst.republish(a.minor)).toBe(false);
    fs.unlinkSync(node);
    expect(inst.isPublished(a.minor)).toBe(false);
    expect(inst.republish(a.minor)).toBe(true);
    expect(nodeInfo(node)).toEqual(right);
    fs.unlinkSync(node);
    fs.symlinkSync(`/dev/loop${a.minor}`, node);
    expect(inst.isPublished(a.minor)).toBe(false);
    expect(inst.republish(a.minor)).toBe(true);
    expect(nodeInfo(node)).toEqual(right);
    fs.unlinkSync(node);
    const n = native();
    n.mknod(node, n.constants.S_IFBLK | 0o666, 7, a.minor + 1);
    expect(inst.republish(a.minor)).toBe(true);
    expect(nodeInfo(node)).toEqual(right);
    expect(fs.readdirSync(dir).sort()).toEqual(['.loopfs', `loop${a.minor}`]);
    expect(backingFile(a.minor)).toBe(a.file);
  });

  it('strayEntries() names exactly the device-like names that are no held device\'s node; removeTempFiles() removes exactly the temporaries in .loopfs, devices/ and idle/', async () => {
    const { dir, inst } = await make('i');
    const a = bind(inst, 'a.img');
    const n = native();
    const host = minorOf(sb.hostAttach(sb.file('h.img')));
    n.mknod(`${dir}/loop${host}`, n.constants.S_IFBLK | 0o600, 7, host); // a host device's node
    fs.symlinkSync(`/dev/loop${a.minor}`, `${dir}/loop${a.minor + 100000}`); // a planted symlink
    n.mknod(`${dir}/loop${a.minor}p1`, n.constants.S_IFBLK | 0o600, 7, a.minor); // an unrecorded partition
    fs.writeFileSync(`${dir}/.loop${a.minor}.1.abcd.tmp`, ''); // a torn node creation's temporary
    fs.writeFileSync(`${dir}/README`, 'stays\n');
    fs.writeFileSync(`${dir}/loopy`, 'stays\n');
    expect(inst.strayEntries().sort()).toEqual(
      [`loop${host}`, `loop${a.minor + 100000}`, `loop${a.minor}p1`, `.loop${a.minor}.1.abcd.tmp`].sort(),
    );
    for (const s of inst.strayEntries()) inst.removeEntry(s);
    expect(fs.readdirSync(dir).sort()).toEqual(['.loopfs', 'README', `loop${a.minor}`, 'loopy'].sort());
    expect(backingFile(host)).toBe(path.join(sb.files, 'h.img'));

    const state = path.join(dir, '.loopfs');
    fs.writeFileSync(path.join(state, '.state.json.1.abcd.tmp'), '');
    fs.writeFileSync(path.join(state, 'devices', `.loop${a.minor}.1.beef.tmp`), '');
    fs.writeFileSync(path.join(state, 'idle', `.loop${a.minor}.1.cafe.tmp`), '');
    inst.lock();
    try {
      expect(inst.removeTempFiles().sort()).toEqual(
        ['.state.json.1.abcd.tmp', `devices/.loop${a.minor}.1.beef.tmp`, `idle/.loop${a.minor}.1.cafe.tmp`].sort(),
      );
    } finally {
      inst.unlock();
    }
    expect(fs.readdirSync(state).sort()).toEqual(['devices', 'idle', 'lock', 'state.json']);
    expect(fs.readdirSync(path.join(state, 'devices'))).toEqual([`loop${a.minor}`]);
    expect(fs.readdirSync(path.join(state, 'idle'))).toEqual([]);
    expect(sb.state(dir)!.devices).toEqual({ [a.minor]: { state: 'held' } });
  });

  // ---------------------------------------------------------------- the instance limit

  it('--max 2: a third allocate() or findFree() is refused with QuotaError "DIR: instance limit of 2 loop devices reached" (EDQUOT), nothing recorded or claimed', async () => {
    const { dir, inst } = await make('i', ['--max', '2']);
    const a = bind(inst, 'a.img');
    const b = bind(inst, 'b.img');
    const before = sb.state(dir)!.devices;
    for (const call of [() => inst.allocate(req(sb.file('c.img'))), () => inst.findFree()]) {
      const err = caught(call);
      expect(err).toBeInstanceOf(QuotaError);
      expect([(err as QuotaError).code, (err as QuotaError).message]).toEqual(['EDQUOT', `${dir}: instance limit of 2 loop devices reached`]);
    }
    expect(sb.state(dir)!.devices).toEqual(before);
    expect(claimed()).toEqual([a.minor, b.minor].sort((x, y) => x - y));
    expect(loopEntries(dir).sort()).toEqual([`loop${a.minor}`, `loop${b.minor}`].sort());
  });

  it('--max 2 at the limit: an idle device without a hint (freed by a stock tool) is still found by findFree() and bound by allocate()', async () => {
    const { dir, inst } = await make('i', ['--max', '2']);
    const a = bind(inst, 'a.img');
    bind(inst, 'b.img');
    execFileSync(REF_LOSETUP, ['-d', `/dev/loop${a.minor}`]);
    await unbound(a.minor);
    expect(hints(dir)).toEqual([]);
    expect(inst.findFree().path).toBe(`${dir}/loop${a.minor}`);
    const c = bind(inst, 'c.img');
    expect(c.minor).toBe(a.minor);
    expect(backingFile(a.minor)).toBe(c.file);
    expect(Object.keys(sb.state(dir)!.devices)).toHaveLength(2);
  });

  // ---------------------------------------------------------------- the lock order

  /** A process holding flock `file` for `ms`; resolves once it holds it. */
  async function holdLock(file: string, ms: number): Promise<{ done: Promise<void> }> {
    const child = spawn('flock', [file, 'sh', '-c', `echo locked; sleep ${ms / 1000}`], { stdio: ['ignore', 'pipe', 'ignore'] });
    const done = new Promise<void>((r) => child.on('exit', () => r()));
    await new Promise<void>((resolve, reject) => {
      child.stdout.once('data', () => resolve());
      child.once('exit', (code) => reject(new Error(`flock ${file} exited ${code} before holding it`)));
    });
    return { done };
  }

  /** A process that, after `ms`, tries flock -n `file` and reports whether it was free. */
  function probeLock(file: string, ms: number): Promise<'free' | 'held'> {
    return new Promise((resolve) => {
      const child = spawn('sh', ['-c', `sleep ${ms / 1000}; flock -n "$0" true`, file], { stdio: 'ignore' });
      child.on('exit', (code) => resolve(code === 0 ? 'free' : 'held'));
    });
  }

  it('lock order: allocate() waiting for the runtime lock (2) holds the instance lock (1) meanwhile, and lets go of both when it returns', async () => {
    const { dir, inst } = await make('i');
    const instanceLock = path.join(dir, '.loopfs', 'lock');
    const runtimeLock = path.join(sb.runtime, 'lock');
    const holder = await holdLock(runtimeLock, 2500);
    const probe = probeLock(instanceLock, 800);
    const t0 = Date.now();
    const a = bind(inst, 'a.img'); // blocks (synchronously) until the holder lets go
    const waited = Date.now() - t0;
    await holder.done;
    expect(await probe).toBe('held');
    expect(waited).toBeGreaterThanOrEqual(1000);
    expect(backingFile(a.minor)).toBe(a.file);
    expect(await probeLock(instanceLock, 0)).toBe('free');
    expect(await probeLock(runtimeLock, 0)).toBe('free');
  });
});
