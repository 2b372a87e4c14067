// The gc module on its own, in-process (src/doctor/machine-gc.ts previewGc/runGc over
// src/instance/gc.ts gcPreview/gc): for each thing a crash or a vanished instance leaves, the
// preview (what `loopfs doctor` shows) names exactly the fixes the gc run then makes, changes
// nothing itself, and after the run there is nothing left to preview or fix. Real instances and
// real loop devices in a private sandbox; the CLI-level behaviour of the same cases is in
// test/instance/gc.test.ts and test/doctor/doctor.test.ts.
// Devices: only the sandbox's (Sandbox.cleanup), and the indexes a test made whose claim gc
// dropped on purpose (removed in afterEach when still there and unbound).
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { previewGc, runGc, type GcLeftover } from '../../src/doctor/machine-gc.js';
import type { GcFix, GcReport } from '../../src/instance/gc.js';
import { LocalInstance } from '../../src/instance/local-instance.js';
import { native } from '../../src/kernel/native.js';
import { readLoopState } from '../helpers/devices.js';
import { REF_LOSETUP } from '../helpers/env.js';
import { editInstanceState } from '../helpers/instance-state.js';
import { instanceSkipReason, minorOf, nodeInfo, removeIndexIfUnbound, Sandbox, skipTitle } from '../instance/support.js';

const reason = instanceSkipReason('gc module tests');

/**
 * The outcome of gc that a preview entry stands for: the fix gc makes (the actions of
 * src/instance/reconcile.ts and gc.ts), or, for a device still bound that gc must wait for,
 * its pending entry.
 */
function outcomeOf(l: GcLeftover): { fix: GcFix } | { pending: GcFix } {
  const at = { dir: l.dir, minor: l.kind === 'vanished-container' ? null : l.minor };
  switch (l.kind) {
    case 'unrecorded-claim':
      return { fix: { ...at, action: l.bound ? 'dropped claim of a device bound outside the instance (never published)' : 'freed device that was claimed but not recorded' } };
    case 'unclaimed-device':
      return { fix: { ...at, action: 'forgot device recorded without a claim' } };
    case 'half-released':
      return l.bound ? { pending: { ...at, action: 'device is still in use; removal deferred' } } : { fix: { ...at, action: 'removed device left half-released' } };
    case 'missing-node':
      return { fix: { ...at, action: 'restored missing device node' } };
    case 'stray-node':
      return { fix: { ...at, action: `removed stray ${l.name}` } };
    case 'vanished-instance':
      return { fix: { ...at, action: 'dropped registry entry of a vanished instance' } };
    case 'orphan-device':
      return { fix: { ...at, action: 'removed device of a vanished instance' } };
    default:
      throw new Error(`no case here plants a ${l.kind}`);
  }
}

/** The fixes and pending entries a preview promises, in its order. */
function promised(preview: GcLeftover[]): { fixes: GcFix[]; pending: GcFix[] } {
  const fixes: GcFix[] = [];
  const pending: GcFix[] = [];
  for (const o of preview.map(outcomeOf)) {
    if ('fix' in o) fixes.push(o.fix);
    else pending.push(o.pending);
  }
  return { fixes, pending };
}

const backingFile = (minor: number): string | undefined => readLoopState(`loop${minor}`)?.backingFile;
const exists = (minor: number) => fs.existsSync(`/sys/block/loop${minor}`);

describe.skipIf(reason)(skipTitle('gc passes: the preview and the run, in-process', reason), () => {
  let sb: Sandbox;
  const instances: LocalInstance[] = [];
  /** Every index a test made (removed after cleanup when still there and unbound). */
  const made = new Set<number>();

  beforeEach(() => {
    sb = new Sandbox('loopfs-mgc');
  });
  afterEach(async () => {
    for (const i of instances.splice(0)) i.close();
    try {
      await sb.cleanup();
    } finally {
      for (const m of made) removeIndexIfUnbound(m);
      made.clear();
    }
  });

  async function make(name: string, flags: string[] = []): Promise<{ dir: string; inst: LocalInstance; id: string }> {
    const dir = sb.path(name);
    const s = await sb.create(dir, flags);
    const inst = LocalInstance.open(dir, sb.env);
    instances.push(inst);
    return { dir, inst, id: s.id };
  }

  /** A device of `inst` bound to a new sandbox file (holder closed). */
  function bound(inst: LocalInstance, name: string): { minor: number; file: string } {
    const file = sb.file(name);
    const a = inst.allocate({ file, offset: 0n, sizelimit: 0n, flags: 0, blockSize: 0 });
    a.holder?.close();
    a.device.close();
    const minor = minorOf(a.device.path);
    made.add(minor);
    return { minor, file };
  }

  /** An idle device of `inst` (reserved, unbound, published, hinted). */
  function idle(inst: LocalInstance): number {
    const minor = minorOf(inst.findFree().path);
    made.add(minor);
    return minor;
  }

  /** Everything gc may change: states, claims, registry, the instance directories. */
  function snapshot(): unknown {
    const dirs = sb.instanceDirs().sort();
    return {
      states: dirs.map((d) => sb.state(d)),
      listings: dirs.map((d) => fs.readdirSync(d).sort()),
      claims: sb.claims(),
      registry: sb.registry().sort((a, b) => a.id.localeCompare(b.id)),
      devices: [...made].sort((a, b) => a - b).map((m) => [m, exists(m), backingFile(m) ?? null]),
    };
  }

  /** previewGc, checked to have changed nothing. */
  function preview(): GcLeftover[] {
    const before = snapshot();
    const p = previewGc(sb.env);
    expect(snapshot()).toEqual(before);
    return p;
  }

  /** After a run: nothing left to preview, and a second run fixes nothing. */
  function settled(instances: number): void {
    expect(previewGc(sb.env)).toEqual([]);
    expect(runGc(sb.env)).toEqual({ instances, fixes: [], pending: [] });
  }

  const removeClaim = (minor: number) => fs.unlinkSync(path.join(sb.runtime, 'claims', `loop${minor}`));

  it('a claim without a record (a reserve killed before recording): previewed as unrecorded-claim with its binding; gc frees the unbound device and drops the claim of the bound one, leaving its binding', async () => {
    const { dir, inst, id } = await make('i');
    const b = bound(inst, 'b.img');
    const u = idle(inst);
    // no record, no node, no hint: what a kill between the claim and the record leaves
    editInstanceState(dir, (s) => {
      delete s.devices[u];
      delete s.devices[b.minor];
    });
    for (const name of [`loop${u}`, `loop${b.minor}`]) fs.unlinkSync(path.join(dir, name));
    fs.unlinkSync(path.join(dir, '.loopfs', 'idle', `loop${u}`));
    const p = preview();
    expect(p).toEqual(
      [
        { kind: 'unrecorded-claim', dir, id, minor: b.minor, bound: true },
        { kind: 'unrecorded-claim', dir, id, minor: u, bound: false },
      ].sort((x, y) => x.minor - y.minor),
    );
    const report = runGc(sb.env);
    expect(report).toEqual({ instances: 1, ...promised(p) });
    expect(report.fixes).toHaveLength(2);
    expect(sb.claims()).toEqual([]);
    expect(exists(u)).toBe(false);
    expect(backingFile(b.minor)).toBe(b.file);
    expect(fs.readdirSync(dir)).toEqual(['.loopfs']);
    settled(1);
  });

  it('a record without a claim: previewed as unclaimed-device; gc forgets the record and its node and leaves the device bound', async () => {
    const { dir, inst, id } = await make('i');
    const a = bound(inst, 'a.img');
    removeClaim(a.minor);
    const p = preview();
    expect(p).toEqual([{ kind: 'unclaimed-device', dir, id, minor: a.minor, bound: true }]);
    const report = runGc(sb.env);
    expect(report).toEqual({ instances: 1, ...promised(p) });
    expect(report.fixes).toEqual([{ dir, minor: a.minor, action: 'forgot device recorded without a claim' }]);
    expect(sb.state(dir)!.devices).toEqual({});
    expect(fs.readdirSync(dir)).toEqual(['.loopfs']);
    expect(sb.claims()).toEqual([]);
    expect(backingFile(a.minor)).toBe(a.file);
    settled(1);
  });

  it('a "removing" record (a release killed after its mark): previewed as half-released; gc removes the unbound device, and leaves the bound one pending and untouched', async () => {
    const { dir, inst, id } = await make('i');
    const b = bound(inst, 'b.img');
    const u = idle(inst);
    editInstanceState(dir, (s) => {
      s.devices[u].state = 'removing';
      s.devices[b.minor].state = 'removing';
    });
    for (const name of [`loop${u}`, `loop${b.minor}`]) fs.unlinkSync(path.join(dir, name));
    fs.unlinkSync(path.join(dir, '.loopfs', 'idle', `loop${u}`));
    const p = preview();
    expect(p).toEqual(
      [
        { kind: 'half-released', dir, id, minor: b.minor, bound: true },
        { kind: 'half-released', dir, id, minor: u, bound: false },
      ].sort((x, y) => x.minor - y.minor),
    );
    const report = runGc(sb.env);
    expect(report).toEqual({ instances: 1, ...promised(p) });
    expect(report.fixes).toEqual([{ dir, minor: u, action: 'removed device left half-released' }]);
    expect(exists(u)).toBe(false);
    expect(sb.state(dir)!.devices).toEqual({ [b.minor]: { state: 'removing' } });
    expect(sb.claims().map((c) => c.minor)).toEqual([b.minor]);
    expect(backingFile(b.minor)).toBe(b.file);
    // the same preview again until its user lets go
    expect(previewGc(sb.env)).toEqual([{ kind: 'half-released', dir, id, minor: b.minor, bound: true }]);
  });

  it('a missing node and a node with the wrong numbers: previewed as missing-node; gc publishes both again with the state\'s owner and mode', async () => {
    const { dir, inst, id } = await make('i', ['--owner', '1234:1234', '--mode', '0640']);
    const a = bound(inst, 'a.img');
    const b = bound(inst, 'b.img');
    fs.unlinkSync(path.join(dir, `loop${a.minor}`));
    fs.unlinkSync(path.join(dir, `loop${b.minor}`));
    const n = native();
    n.mknod(path.join(dir, `loop${b.minor}`), n.constants.S_IFBLK | 0o666, 7, a.minor);
    const p = preview();
    expect(p).toEqual(
      [
        { kind: 'missing-node', dir, id, minor: a.minor, bound: true },
        { kind: 'missing-node', dir, id, minor: b.minor, bound: true },
      ].sort((x, y) => x.minor - y.minor),
    );
    const report = runGc(sb.env);
    expect(report).toEqual({ instances: 1, ...promised(p) });
    for (const d of [a, b]) {
      expect(nodeInfo(path.join(dir, `loop${d.minor}`))).toEqual({ uid: 1234, gid: 1234, mode: 0o640, block: true, major: 7, minor: d.minor });
      expect(backingFile(d.minor)).toBe(d.file);
    }
    expect(fs.readdirSync(dir).sort()).toEqual(['.loopfs', `loop${a.minor}`, `loop${b.minor}`].sort());
    settled(1);
  });

  it('stray names in DIR (a host-numbered node, a symlink, an unrecorded partition, a torn temporary): previewed as stray-node by name; gc removes exactly those', async () => {
    const { dir, inst, id } = await make('i');
    const a = bound(inst, 'a.img');
    const n = native();
    const strays = [`loop${a.minor + 100000}`, `loop${a.minor + 100001}`, `loop${a.minor}p1`, `.loop${a.minor}.1.abcd.tmp`];
    n.mknod(path.join(dir, strays[0]), n.constants.S_IFBLK | 0o600, 7, a.minor);
    fs.symlinkSync(`/dev/loop${a.minor}`, path.join(dir, strays[1]));
    n.mknod(path.join(dir, strays[2]), n.constants.S_IFBLK | 0o600, 7, a.minor);
    fs.writeFileSync(path.join(dir, strays[3]), '');
    fs.writeFileSync(path.join(dir, 'README'), 'stays\n');
    const p = preview();
    // in the order DIR lists them (readdir), one entry per name
    const byName = (x: GcLeftover, y: GcLeftover) => ((x as { name: string }).name < (y as { name: string }).name ? -1 : 1);
    expect([...p].sort(byName)).toEqual([...strays].sort().map((name) => ({ kind: 'stray-node', dir, id, minor: null, name })));
    const report = runGc(sb.env);
    expect(report).toEqual({ instances: 1, ...promised(p) });
    expect(fs.readdirSync(dir).sort()).toEqual(['.loopfs', 'README', `loop${a.minor}`].sort());
    expect(backingFile(a.minor)).toBe(a.file);
    settled(1);
  });

  // The pool rule is the one pass without a preview (machine-gc.ts says so): an idle device
  // is no leftover, and how many an instance keeps is its pool policy, which doctor does not
  // judge (test/doctor/doctor.test.ts: doctor passes with an idle device in a pool-0 instance).
  it('an idle device above the pool: no preview (the pool policy, not a leftover), and gc releases it keeping the lowest idle ones', async () => {
    const { dir, inst } = await make('i', ['--pool', '1']);
    // two idle devices: one bound through the instance and detached behind its back (no
    // hint), one reserved after it (hinted); gc keeps the lowest idle ones, up to the pool
    const low = bound(inst, 'x.img');
    execFileSync(REF_LOSETUP, ['-d', `/dev/loop${low.minor}`]);
    for (let i = 0; i < 150 && backingFile(low.minor) !== undefined; i++) await new Promise((r) => setTimeout(r, 20));
    const high = idle(inst);
    expect(preview()).toEqual([]);
    const report = runGc(sb.env);
    expect(report).toEqual({ instances: 1, fixes: [{ dir, minor: high, action: 'released idle device above the pool size' }], pending: [] });
    expect(sb.state(dir)!.devices).toEqual({ [low.minor]: { state: 'held' } });
    expect(exists(high)).toBe(false);
  });

  it('a vanished instance (its directory removed): previewed as vanished-instance and one orphan-device per claim; gc drops its registry entry, detaches and removes its devices, and leaves a live instance alone', async () => {
    const keep = await make('keep');
    const gone = await make('gone');
    const k = bound(keep.inst, 'k.img');
    const g = bound(gone.inst, 'g.img');
    const gi = idle(gone.inst);
    fs.rmSync(gone.dir, { recursive: true, force: true });
    const p = preview();
    expect(p).toEqual([
      { kind: 'vanished-instance', dir: gone.dir, id: gone.id, minor: null },
      ...[
        { kind: 'orphan-device', dir: gone.dir, id: gone.id, minor: g.minor, bound: true },
        { kind: 'orphan-device', dir: gone.dir, id: gone.id, minor: gi, bound: false },
      ].sort((x, y) => x.minor - y.minor),
    ]);
    const report = runGc(sb.env);
    expect(report).toEqual({ instances: 1, ...promised(p) });
    expect(backingFile(g.minor)).toBeUndefined();
    expect(exists(g.minor)).toBe(false);
    expect(exists(gi)).toBe(false);
    expect(sb.registry()).toEqual([{ id: keep.id, dir: keep.dir, uid: 0 }]);
    expect(sb.claims()).toEqual([{ minor: k.minor, id: keep.id, dir: keep.dir, uid: 0 }]);
    expect(backingFile(k.minor)).toBe(k.file);
    settled(1);
  });

  it('every case at once, in two instances: the preview\'s promised fixes are exactly the run\'s, in its order', async () => {
    const one = await make('one');
    const two = await make('two');
    const a = bound(one.inst, 'a.img');
    const b = bound(one.inst, 'b.img');
    const c = bound(two.inst, 'c.img');
    const u = idle(two.inst);
    fs.unlinkSync(path.join(one.dir, `loop${a.minor}`)); // missing node
    removeClaim(b.minor); // record without a claim
    fs.symlinkSync('/dev/null', path.join(two.dir, `loop${c.minor + 100000}`)); // stray
    editInstanceState(two.dir, (s) => {
      s.devices[u].state = 'removing'; // half-released
    });
    fs.unlinkSync(path.join(two.dir, `loop${u}`));
    const p = preview();
    // per instance in the registry's order (not the test's): the same set, each once
    expect(p).toHaveLength(4);
    expect(p).toEqual(
      expect.arrayContaining([
        { kind: 'missing-node', dir: one.dir, id: one.id, minor: a.minor, bound: true },
        { kind: 'unclaimed-device', dir: one.dir, id: one.id, minor: b.minor, bound: true },
        { kind: 'half-released', dir: two.dir, id: two.id, minor: u, bound: false },
        { kind: 'stray-node', dir: two.dir, id: two.id, minor: null, name: `loop${c.minor + 100000}` },
      ]),
    );
    const report = runGc(sb.env);
    expect(report).toEqual({ instances: 2, ...promised(p) });
    settled(2);
  });

  // ---------------------------------------------------------------- the lock order

  it('lock order: while gc waits for an instance\'s lock (1) it holds no runtime lock (2)', async () => {
    const { dir, inst } = await make('i');
    bound(inst, 'a.img');
    const instanceLock = path.join(dir, '.loopfs', 'lock');
    const runtimeLock = path.join(sb.runtime, 'lock');
    const holder = spawn('flock', [instanceLock, 'sh', '-c', 'echo locked; sleep 2.5'], { stdio: ['ignore', 'pipe', 'ignore'] });
    const holderDone = new Promise<void>((r) => holder.on('exit', () => r()));
    await new Promise<void>((resolve, reject) => {
      holder.stdout.once('data', () => resolve());
      holder.once('exit', (code) => reject(new Error(`flock ${instanceLock} exited ${code} before holding it`)));
    });
    const probe = new Promise<number | null>((resolve) => {
      spawn('sh', ['-c', 'sleep 0.8; flock -n "$0" true', runtimeLock], { stdio: 'ignore' }).on('exit', (code) => resolve(code));
    });
    const t0 = Date.now();
    const report: GcReport = runGc(sb.env); // blocks (synchronously) on the instance lock
    const waited = Date.now() - t0;
    await holderDone;
    expect(await probe).toBe(0); // the runtime lock was free while gc waited
    expect(waited).toBeGreaterThanOrEqual(1000);
    expect(report).toEqual({ instances: 1, fixes: [], pending: [] });
  });
});
