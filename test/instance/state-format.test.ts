// Issue 14, the state format (version 2): `.loopfs/state.json` is a header written once, and
// each held device has its own record `.loopfs/devices/loopN`, so attach and release touch
// only their own device's record. Checked here with real devices:
//   - a version-1 state.json (every device in one map), written by hand, is still read, and
//     is migrated under the instance lock: records written, the header replaced, a v1 node
//     temporary left in DIR removed; gc then settles the "removing" entry as before;
//   - attach and detach never rewrite state.json, and write only their own record;
//   - an `instance destroy` killed after its durable mark is finished by gc, and nothing new
//     is attached into the instance meanwhile.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readLoopState } from '../helpers/devices.js';
import { REF_LOSETUP } from '../helpers/env.js';
import { instanceSkipReason, loopEntries, minorOf, Sandbox, skipTitle, text } from './support.js';

const reason = instanceSkipReason('instance state format tests');

describe.skipIf(reason)(skipTitle('instance state format', reason), () => {
  let sb: Sandbox;
  beforeEach(() => {
    sb = new Sandbox('loopfs-stfmt');
  });
  afterEach(async () => {
    await sb.cleanup();
  });

  const sd = (dir: string, ...p: string[]) => path.join(dir, '.loopfs', ...p);

  async function take(dir: string, file?: string): Promise<number> {
    const r = await sb.losetup(['--instance', dir, '-f', ...(file ? ['--show', file] : [])]);
    expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
    return minorOf(text(r.stdout).trim());
  }

  async function gc(): Promise<{ instances: number; fixes: Array<{ dir: string | null; minor: number | null; action: string }>; pending: unknown[] }> {
    const r = await sb.loopfs(['instance', 'gc', '--json']);
    expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
    return JSON.parse(text(r.stdout));
  }

  it('a hand-written version-1 state.json holding devices is read, then migrated under the lock; gc settles it as before', async () => {
    const dir = sb.path('i');
    await sb.create(dir, ['--pool', '1', '--owner', '1234:1234']);
    const fa = sb.file('a.img');
    const a = await take(dir, fa); // bound
    const c = await take(dir, sb.file('c.img'));
    const b = await take(dir); // idle (the pool keeps one)
    // c: detached by hand, its release killed after marking it (node already unlinked)
    execFileSync(REF_LOSETUP, ['-d', `/dev/loop${c}`]);
    fs.unlinkSync(path.join(dir, `loop${c}`));
    const header = JSON.parse(fs.readFileSync(sd(dir, 'state.json'), 'utf8'));
    expect(header.version).toBe(2);
    expect(header.devices).toBeUndefined();

    // what version 1 left on disk: one state.json with every device, no records, no hints,
    // and the temporary of a node creation that a kill interrupted, in DIR itself
    const v1 = {
      ...header,
      version: 1,
      devices: { [a]: { state: 'held' }, [b]: { state: 'held' }, [c]: { state: 'removing' } },
    };
    fs.rmSync(sd(dir, 'devices'), { recursive: true });
    fs.rmSync(sd(dir, 'idle'), { recursive: true });
    fs.writeFileSync(sd(dir, 'state.json'), `${JSON.stringify(v1, null, 2)}\n`);
    const tmpNode = path.join(dir, `.loop${a}.4242.deadbeef.tmp`);
    execFileSync('mknod', ['-m', '0600', tmpNode, 'b', '7', String(a)]);

    // read without the lock: the version-1 map is the truth, nothing is written
    const la = await sb.losetup(['--instance', dir, '-a']);
    expect([la.exitCode, text(la.stderr)]).toEqual([0, '']);
    expect(text(la.stdout)).toBe(`${dir}/loop${a}: [${fs.statSync(fa).dev}]:${fs.statSync(fa).ino} (${fa})\n`);
    const show = await sb.loopfs(['instance', 'show', dir, '--json']);
    expect(JSON.parse(text(show.stdout)).devices.map((d: { minor: number; state: string }) => [d.minor, d.state])).toEqual(
      [
        [a, 'bound'],
        [b, 'idle'],
        [c, 'removing'],
      ].sort((x, y) => (x[0] as number) - (y[0] as number)),
    );
    expect(JSON.parse(fs.readFileSync(sd(dir, 'state.json'), 'utf8')).version).toBe(1);
    expect(fs.existsSync(sd(dir, 'devices'))).toBe(false);

    // gc takes the lock: migrated first, then reconciled by the same rules as before
    const report = await gc();
    expect(report.pending).toEqual([]);
    expect(report.fixes.filter((f) => f.minor === c).map((f) => f.action)).toEqual(
      expect.arrayContaining([expect.stringMatching(/^(removed device left half-released|forgot device that no longer exists)$/)]),
    );
    const after = JSON.parse(fs.readFileSync(sd(dir, 'state.json'), 'utf8'));
    expect(after).toEqual(header); // the version-2 header, identical to what create wrote
    expect(fs.readdirSync(sd(dir, 'devices')).sort()).toEqual([`loop${a}`, `loop${b}`].sort());
    expect(sb.state(dir)!.devices).toEqual({ [a]: { state: 'held' }, [b]: { state: 'held' } });
    expect(sb.claims().map((x) => x.minor)).toEqual([a, b].sort((x, y) => x - y));
    expect(fs.existsSync(tmpNode)).toBe(false);
    expect(loopEntries(dir).sort()).toEqual([`loop${a}`, `loop${b}`].sort());
    expect(fs.readdirSync(sd(dir)).sort()).toEqual(['devices', 'idle', 'lock', 'state.json']);
    // settled: a second gc finds nothing
    expect(await gc()).toEqual({ instances: 1, fixes: [], pending: [] });
    // the idle device found by gc's full look is what -f hands out
    expect(await take(dir)).toBe(b);
    const d = await sb.loopfs(['instance', 'destroy', dir]);
    expect([d.exitCode, text(d.stderr)]).toEqual([0, '']);
    expect(fs.readdirSync(dir)).toEqual([]);
    expect(sb.claims()).toEqual([]);
  });

  it('a version-1 state is migrated by the first command that takes the lock (-f)', async () => {
    const dir = sb.path('i');
    await sb.create(dir);
    const a = await take(dir, sb.file('a.img'));
    const header = JSON.parse(fs.readFileSync(sd(dir, 'state.json'), 'utf8'));
    fs.rmSync(sd(dir, 'devices'), { recursive: true });
    fs.rmSync(sd(dir, 'idle'), { recursive: true });
    fs.writeFileSync(sd(dir, 'state.json'), JSON.stringify({ ...header, version: 1, devices: { [a]: { state: 'held' } } }));
    const b = await take(dir, sb.file('b.img'));
    expect(b).not.toBe(a);
    expect(JSON.parse(fs.readFileSync(sd(dir, 'state.json'), 'utf8'))).toEqual(header);
    expect(sb.state(dir)!.devices).toEqual({ [a]: { state: 'held' }, [b]: { state: 'held' } });
    expect(await gc()).toEqual({ instances: 1, fixes: [], pending: [] });
  });

  it('attach and detach leave state.json alone and write only their own device record', async () => {
    const dir = sb.path('i');
    await sb.create(dir);
    const st0 = fs.statSync(sd(dir, 'state.json'));
    const text0 = fs.readFileSync(sd(dir, 'state.json'), 'utf8');
    const a = await take(dir, sb.file('a.img'));
    const recA = fs.statSync(sd(dir, 'devices', `loop${a}`));
    const b = await take(dir, sb.file('b.img'));
    // a's record was not replaced by b's attach
    expect(fs.statSync(sd(dir, 'devices', `loop${a}`)).ino).toBe(recA.ino);
    const r = await sb.losetup(['--instance', dir, '-d', path.join(dir, `loop${b}`)]);
    expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
    expect(fs.readdirSync(sd(dir, 'devices'))).toEqual([`loop${a}`]);
    expect(fs.statSync(sd(dir, 'devices', `loop${a}`)).ino).toBe(recA.ino);
    const st1 = fs.statSync(sd(dir, 'state.json'));
    expect([st1.ino, st1.mtimeMs]).toEqual([st0.ino, st0.mtimeMs]);
    expect(fs.readFileSync(sd(dir, 'state.json'), 'utf8')).toBe(text0);
  });

  it('a destroy killed after its mark: nothing new is attached, gc finishes the destroy', async () => {
    const dir = sb.path('i');
    await sb.create(dir, ['--pool', '1']);
    const fa = sb.file('a.img');
    const a = await take(dir, fa);
    const idle = await take(dir);
    // what `instance destroy` writes first (durably), before it touches any device
    fs.writeFileSync(sd(dir, 'destroying'), `${new Date().toISOString()}\n`);
    const fx = sb.file('x.img');
    const r = await sb.losetup(['--instance', dir, '-f', '--show', fx]);
    expect(r.exitCode).not.toBe(0);
    expect(sb.bound().filter((s) => s.backingFile === fx)).toEqual([]);
    const report = await gc();
    expect(report.pending).toEqual([]);
    expect(report.fixes).toContainEqual({ dir, minor: null, action: 'finished an interrupted instance destroy' });
    expect(fs.existsSync(sd(dir))).toBe(false);
    expect(fs.readdirSync(dir)).toEqual([]);
    expect(sb.registry()).toEqual([]);
    expect(sb.claims()).toEqual([]);
    expect(readLoopState(`loop${a}`)?.backingFile).not.toBe(fa);
    expect(fs.existsSync(`/sys/block/loop${idle}`) ? readLoopState(`loop${idle}`)?.backingFile?.startsWith(sb.root) ?? false : false).toBe(false);
    expect(await gc()).toEqual({ instances: 0, fixes: [], pending: [] });
  });
});
