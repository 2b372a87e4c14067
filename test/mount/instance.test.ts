// mount.loop inside a loopfs instance, with real mounts.
//
//  - an *activated* instance: a private mount namespace whose /dev is a tmpfs prepared by
//    `loopfs activate INST --dev … --pool 3` (the instance's nodes, /dev/null & co, and no
//    loop-control), with the helper overlaid into /usr/sbin; LOOPFS_INSTANCE=INST. The device
//    must come from the instance and no device outside it may be touched;
//  - the helper called by hand with `--instance DIR` from a namespace that sees the host's /dev.
//
// The instances' machine-wide records go to a private LOOPFS_RUNTIME_DIR. Cleanup: unmount
// everything (and the namespaces die), `loopfs instance destroy --force`, `instance gc`, then
// util-linux detaches whatever device is still bound to one of the test's files.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { readInstanceState } from '../helpers/instance-state.js';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { boundLoopDevices, DeviceTracker, devicesBackedUnder, readLoopState, type LoopState } from '../helpers/devices.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import {
  HELLO,
  HELPER,
  LOOPFS,
  loopNameOf,
  makeExt4,
  makeRandom,
  makeSourceTree,
  MOUNT,
  MountNamespace,
  mountSkipReason,
  normDevices,
  skipTitle,
  RELEASE_WAIT_MS,
  sleep,
  text,
  UMOUNT,
} from './support.js';

const reason = mountSkipReason('mount/instance');
const POOL = 3;

function devicesFor(file: string): LoopState[] {
  return boundLoopDevices().filter((s) => s.backingFile === file);
}

async function waitReleased(name: string, file: string, timeoutMs = RELEASE_WAIT_MS): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const s = readLoopState(name);
    if (!s || s.backingFile !== file) return true;
    if (Date.now() > end) return false;
    await sleep(20);
  }
}

interface StateFile {
  devices: Record<string, { state: string }>;
}

function instanceState(inst: string): StateFile {
  const s = readInstanceState(inst);
  if (!s) throw new Error(`${inst}: no instance state`);
  return s;
}

function heldMinors(inst: string): number[] {
  const s = instanceState(inst);
  return Object.keys(s.devices)
    .filter((m) => s.devices[m].state === 'held')
    .map(Number);
}

/**
 * Idle devices of a local instance are unbound, so any host tool's `losetup -f` (loop-control's
 * lowest free index) can take one; on a shared machine it happens within seconds. The instance
 * notices only at its next allocation (EBUSY: the device is written off as "removing"), and an
 * activated /dev has no loop-control to reserve a replacement. This records every moment a device
 * of the instance was bound to a file outside the test's directory, so a failure caused by such
 * a foreign process can be told apart from a mount.loop failure.
 */
class PoolWatch {
  readonly foreign = new Map<string, string>();
  private timer: NodeJS.Timeout | null = null;
  private readonly minors = new Set<number>();

  constructor(
    private readonly inst: string,
    private readonly own: string,
  ) {}

  start(): this {
    const tick = () => {
      try {
        for (const m of Object.keys(instanceState(this.inst).devices)) this.minors.add(Number(m));
      } catch {
        /* state being rewritten: next tick */
      }
      for (const m of this.minors) {
        const s = readLoopState(`loop${m}`);
        if (s && !s.backingFile.startsWith(`${this.own}/`)) this.foreign.set(s.name, s.backingFile);
      }
    };
    tick();
    this.timer = setInterval(tick, 2);
    return this;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  describe(): string {
    return [...this.foreign].map(([n, f]) => `${n} -> ${f}`).join(', ');
  }
}

describe.skipIf(reason !== undefined)(skipTitle('mount.loop in a loopfs instance, real mounts', reason), () => {
  let root: string;
  let src: string;
  let env: NodeJS.ProcessEnv;
  let inst: string; // activated: the namespace's /dev shows its devices
  let hand: string; // not activated: used with --instance from a host-/dev namespace
  let small: string; // pool size 0, activated with idle devices all the same
  let smallNs: MountNamespace;
  let active: MountNamespace; // /dev = activated tmpfs
  let plain: MountNamespace; // /dev = the host's
  let dir: string;
  let seq = 0;
  const tracker = new DeviceTracker();

  const loopfs = (...args: string[]) => {
    const r = spawnSync(LOOPFS, args, { env, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`loopfs ${args.join(' ')}: rc ${r.status}: ${r.stderr}`);
    return r.stdout;
  };

  beforeAll(async () => {
    root = makeTempDir('loopfs-mount-inst');
    tracker.ownDir(root);
    src = makeSourceTree(path.join(root, 'src'));
    env = { ...process.env, LOOPFS_RUNTIME_DIR: path.join(root, 'run') };
    delete env.LOOPFS_INSTANCE;
    inst = path.join(root, 'inst');
    hand = path.join(root, 'hand');
    loopfs('instance', 'create', inst, '--pool', String(POOL));
    loopfs('instance', 'create', hand, '--pool', '0');
    small = path.join(root, 'small');
    loopfs('instance', 'create', small, '--pool', '0');
    // activation needs the host's loop-control (to reserve the pool): prepare the tmpfs on a
    // scratch path first, then move it over /dev, all inside the namespace
    const activated = (instDir: string, newdev: string, pool: number) => {
      fs.mkdirSync(newdev);
      return [
        `mount -t tmpfs -o mode=755 tmpfs '${newdev}'`,
        `for n in null zero full random urandom; do touch '${newdev}'/$n; mount --bind /dev/$n '${newdev}'/$n; done`,
        `'${LOOPFS}' activate '${instDir}' --dev '${newdev}' --pool ${pool} >/dev/null`,
        `mount --move '${newdev}' /dev`,
      ].join('\n');
    };
    active = await MountNamespace.start({ scratch: path.join(root, 'ns-active'), setup: activated(inst, path.join(root, 'newdev'), POOL), env });
    smallNs = await MountNamespace.start({ scratch: path.join(root, 'ns-small'), setup: activated(small, path.join(root, 'newdev2'), 2), env });
    plain = await MountNamespace.start({ scratch: path.join(root, 'ns-plain'), env });
  });

  afterAll(async () => {
    const errors: unknown[] = [];
    for (const ns of [active, smallNs, plain]) {
      try {
        if (ns) {
          await ns.cleanupUnder(root);
          await ns.stop();
        }
      } catch (e) {
        errors.push(e);
      }
    }
    for (const i of [inst, hand, small]) {
      try {
        if (i && fs.existsSync(path.join(i, '.loopfs'))) loopfs('instance', 'destroy', i, '--force');
      } catch (e) {
        errors.push(e);
      }
    }
    try {
      if (env) loopfs('instance', 'gc');
      await tracker.detachAll();
    } catch (e) {
      errors.push(e);
    } finally {
      if (root) removeTree(root);
    }
    if (errors.length) throw errors[0];
  });

  beforeEach(() => {
    dir = path.join(root, `t${++seq}`);
    fs.mkdirSync(dir);
    // what `loopfs activate --watch` does in a container: refill the pool in the namespace's
    // /dev (seen from here through /proc/PID/root, where loop-control is at hand)
    if (active) loopfs('activate', inst, '--dev', active.path('/dev'), '--pool', String(POOL));
  });

  /**
   * A test that needs the instance's pool. When it fails *and* a foreign process was seen holding
   * one of the instance's devices meanwhile, it is skipped with that evidence instead (see
   * PoolWatch); every other failure stands.
   */
  const poolTest = (title: string, fn: () => Promise<void>, which: () => string = () => inst, mark: typeof it | typeof it.fails = it) =>
    mark(title, async (ctx) => {
      const watch = new PoolWatch(which(), root).start();
      try {
        await fn();
      } catch (e) {
        watch.stop();
        if (watch.foreign.size === 0) throw e;
        const note = `a host process took this instance's pool device(s) during the test (${watch.describe()}); failure was: ${String((e as Error).message ?? e).split('\n').find((l) => l.trim()) ?? ''}`;
        console.warn(`[skip] ${title}: ${note}`);
        ctx.skip(note);
      } finally {
        watch.stop();
      }
    });

  afterEach(async () => {
    if (!active || !smallNs || !plain) return;
    const problems = [...(await active.cleanupUnder(dir)), ...(await smallNs.cleanupUnder(dir)), ...(await plain.cleanupUnder(dir))];
    const end = Date.now() + RELEASE_WAIT_MS;
    while (devicesBackedUnder(dir).length > 0 && Date.now() < end) await sleep(20);
    expect({ problems, left: devicesBackedUnder(dir).map((s) => s.name) }).toEqual({ problems: [], left: [] });
  });

  /** The instance's devices as the kernel sees them, for failure messages. */
  const poolReport = () => {
    const s = instanceState(inst);
    return `\ninstance ${inst}: ${Object.entries(s.devices)
      .map(([m, d]) => `loop${m} ${d.state} ${readLoopState(`loop${m}`)?.backingFile ?? '(unbound)'}`)
      .join('; ')}`;
  };

  const mnt = (name = 'mnt') => {
    const p = path.join(dir, name);
    fs.mkdirSync(p, { recursive: true });
    return p;
  };

  it('the activated /dev holds only instance nodes (no loop-control); the host /dev is untouched', () => {
    const held = heldMinors(inst);
    expect(held.length).toBeGreaterThanOrEqual(POOL);
    const names = fs.readdirSync(active.path('/dev'));
    expect(names).not.toContain('loop-control');
    const loops = names.filter((n) => /^loop\d+$/.test(n)).map((n) => Number(n.slice(4)));
    expect(loops.length).toBeGreaterThan(0);
    for (const m of loops) expect(held).toContain(m);
    expect(fs.existsSync('/dev/loop-control')).toBe(true);
    expect(fs.readlinkSync(`/proc/${active.pid}/ns/mnt`)).not.toBe(fs.readlinkSync('/proc/self/ns/mnt'));
  });

  poolTest('LOOPFS_INSTANCE + mount -t loop: the device comes from the instance, and returns to its pool after umount', async () => {
    const img = makeExt4(path.join(dir, 'in.ext4'), src);
    const target = mnt();
    const r = text(await active.run(MOUNT, ['-t', 'loop', img, target], { env: { LOOPFS_INSTANCE: inst } }));
    expect(r, poolReport()).toEqual({ rc: 0, out: '', err: '' });
    const [m] = active.mountsOn(target);
    expect(m.fstype).toBe('ext4');
    const name = loopNameOf(m);
    const minor = Number(name.slice(4));
    // mount -i was given the instance's node
    expect(m.source).toBe(path.join(inst, name));
    expect(heldMinors(inst)).toContain(minor);
    // no device outside the instance was bound to the image
    expect(devicesFor(img).map((s) => s.name)).toEqual([name]);
    expect(readLoopState(name)).toMatchObject({ backingFile: img, autoclear: '1' });
    expect(fs.readFileSync(active.path(`${target}/hello.txt`), 'utf8')).toBe(HELLO);

    expect(text(await active.run(UMOUNT, [target])).rc).toBe(0);
    expect(await waitReleased(name, img)).toBe(true);
    // still the instance's, idle in its pool (pool size 3, at most 3 idle)
    expect(heldMinors(inst)).toContain(minor);
    expect(fs.existsSync(path.join(inst, name))).toBe(true);
  });

  poolTest('-t loop -o offset=0 in the activated /dev: libmount picks a pool node itself, the helper accepts the instance device', async () => {
    const img = makeExt4(path.join(dir, 'off.ext4'), src);
    const target = mnt();
    const r = text(await active.run(MOUNT, ['-t', 'loop', '-o', 'offset=0', img, target], { env: { LOOPFS_INSTANCE: inst } }));
    expect(r.rc, `${r.err}${poolReport()}`).toBe(0);
    const [m] = active.mountsOn(target);
    const name = loopNameOf(m);
    expect(heldMinors(inst)).toContain(Number(name.slice(4)));
    expect(devicesFor(img).map((s) => s.name)).toEqual([name]);
    expect(fs.readFileSync(active.path(`${target}/hello.txt`), 'utf8')).toBe(HELLO);
    expect(text(await active.run(UMOUNT, [target])).rc).toBe(0);
    expect(await waitReleased(name, img)).toBe(true);
  });

  poolTest('plain mount -o loop (no helper) in the activated /dev also lands in the instance', async () => {
    const img = makeExt4(path.join(dir, 'builtin.ext4'), src);
    const target = mnt();
    const r = text(await active.run(MOUNT, ['-o', 'loop', img, target]));
    expect(r.rc, `${r.err}${poolReport()}`).toBe(0);
    const name = loopNameOf(active.mountsOn(target)[0]);
    expect(heldMinors(inst)).toContain(Number(name.slice(4)));
    expect(text(await active.run(UMOUNT, [target])).rc).toBe(0);
    expect(await waitReleased(name, img)).toBe(true);
  });

  poolTest('a failed mount in the instance: mount(8) message, status 32, the instance device unbound again', async () => {
    const img = makeRandom(path.join(dir, 'junk.img'));
    const target = mnt();
    const r = text(await active.run(MOUNT, ['-v', '-t', 'loop', img, target], { env: { LOOPFS_INSTANCE: inst } }));
    expect(r.rc).toBe(32);
    const used = /mount\.loop: (\S+) is /.exec(r.out)?.[1];
    expect(used, `${r.out}${r.err}${poolReport()}`).toMatch(new RegExp(`^${inst}/loop\\d+$`));
    expect(r.err).toBe(
      `mount: ${target}: wrong fs type, bad option, bad superblock on ${used}, missing codepage or helper program, or other error.\n` +
        '       dmesg(1) may have more information after failed mount system call.\n',
    );
    // the same words as util-linux's own loop setup, but for the device path
    const ref = text(await active.run(MOUNT, ['-o', 'loop', img, target]));
    expect(ref.rc).toBe(32);
    expect(normDevices(ref.err)).toBe(r.err.replace(used!, '/dev/loopN'));
    expect(active.mountsOn(target)).toEqual([]);
    const name = path.basename(used!);
    expect(await waitReleased(name, img)).toBe(true);
    expect(devicesFor(img)).toEqual([]);
  });

  // After a failed mount in an activated /dev (no loop-control there) the helper's undo()
  // settles the device; releasing it needs loop-control, so it must stay in the pool (held,
  // node published) rather than be stranded "removing" with its claim kept.
  poolTest(
    'a failed mount in an activated /dev, instance pool size 0: the device is not left "removing" and claimed',
    async () => {
      // pool size 0 (any idle device is one too many), activated with 3 idle devices to mount with
      loopfs('activate', small, '--dev', smallNs.path('/dev'), '--pool', '3');
      const img = makeRandom(path.join(dir, 'junk.img'));
      const target = mnt();
      const r = text(await smallNs.run(MOUNT, ['-v', '-t', 'loop', img, target], { env: { LOOPFS_INSTANCE: small } }));
      expect(r.rc).toBe(32);
      const used = /mount\.loop: \S+\/(loop\d+) is /.exec(r.out)?.[1];
      expect(used, `${r.out}${r.err}`).toBeDefined();
      expect(await waitReleased(used!, img)).toBe(true);
      const minor = used!.slice(4);
      const st = instanceState(small).devices[minor]?.state ?? 'gone';
      const claimed = fs.existsSync(path.join(env.LOOPFS_RUNTIME_DIR!, 'claims', used!));
      const state = JSON.stringify(instanceState(small).devices);
      if (st === 'held') expect(fs.existsSync(path.join(small, used!)), state).toBe(true);
      else expect({ st, claimed }, state).toEqual({ st: 'gone', claimed: false });
    },
    () => small,
  );

  it('mount.loop --instance DIR by hand (host /dev, instance not activated): the device is reserved in DIR', async () => {
    const img = makeExt4(path.join(dir, 'hand.ext4'), src);
    const target = mnt();
    const r = text(await plain.run(HELPER, ['--instance', hand, img, target, '-o', 'ro']));
    expect(r).toEqual({ rc: 0, out: '', err: '' });
    const [m] = plain.mountsOn(target);
    const name = loopNameOf(m);
    expect(m.source).toBe(path.join(hand, name));
    expect(m.mountOptions.split(',')[0]).toBe('ro');
    expect(heldMinors(hand)).toContain(Number(name.slice(4)));
    expect(heldMinors(inst)).not.toContain(Number(name.slice(4)));
    expect(readLoopState(name)).toMatchObject({ backingFile: img, ro: '1', autoclear: '1' });
    expect(fs.readFileSync(plain.path(`${target}/hello.txt`), 'utf8')).toBe(HELLO);
    expect(text(await plain.run(UMOUNT, [target])).rc).toBe(0);
    expect(await waitReleased(name, img)).toBe(true);
  });

  it('--instance naming something that is not an instance fails with one mount(8)-style line, nothing attached', async () => {
    const img = makeExt4(path.join(dir, 'x.ext4'), src);
    const target = mnt();
    const r = text(await plain.run(HELPER, ['--instance', dir, img, target]));
    expect(r).toEqual({ rc: 32, out: '', err: `mount: ${target}: ${dir}: not a loop device instance.\n` });
    expect(devicesFor(img)).toEqual([]);
  });
});
