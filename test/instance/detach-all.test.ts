// Issue 14, `losetup --instance DIR -D`: every bound device of the instance is detached (and only
// those: a host device on another file stays bound), then they are settled in one batch: the
// pool keeps what it lacks as idle published devices, the others leave the instance (records,
// nodes and claims gone, the indexes removed), exactly as one `-d` after another would leave it.
// The batch is marked "removing" in one durable write (.loopfs/releasing); a -D killed after it
// leaves the mark, which the next holder of the instance lock writes into the records.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isBound, readLoopState } from '../helpers/devices.js';
import { REF_LOSETUP } from '../helpers/env.js';
import { instanceSkipReason, loopEntries, minorOf, Sandbox, skipTitle, text } from './support.js';

const reason = instanceSkipReason('instance -D tests');

describe.skipIf(reason)(skipTitle('instance -D', reason), () => {
  let sb: Sandbox;
  beforeEach(() => {
    sb = new Sandbox('loopfs-detachall');
  });
  afterEach(async () => {
    await sb.cleanup();
  });

  async function attach(dir: string, n: number): Promise<number[]> {
    const minors: number[] = [];
    for (let i = 0; i < n; i++) {
      const r = await sb.losetup(['--instance', dir, '-f', '--show', sb.file(`${i}.img`)]);
      expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
      minors.push(minorOf(text(r.stdout).trim()));
    }
    return minors;
  }

  it('-D without a pool: all 6 detached and given back; a host device stays bound; -D again does nothing', async () => {
    const dir = sb.path('d');
    await sb.create(dir);
    const hostFile = sb.file('host.img');
    const hostDev = sb.hostAttach(hostFile);
    try {
      const minors = await attach(dir, 6);
      const r = await sb.losetup(['--instance', dir, '-D']);
      expect([r.exitCode, text(r.stdout), text(r.stderr)]).toEqual([0, '', '']);
      const kept = minors.filter((m) => sb.takenByOthers(m)); // a host tool may take a freed device (DESIGN.md)
      for (const m of minors.filter((x) => !kept.includes(x))) {
        expect(readLoopState(`loop${m}`)?.backingFile).toBeUndefined();
      }
      expect(sb.bound()).toEqual([expect.objectContaining({ backingFile: hostFile })]);
      // nothing of them left in the instance: records, nodes, claims, hints
      expect(Object.keys(sb.ownDevices(dir))).toEqual([]);
      expect(loopEntries(dir)).toEqual([]);
      expect(sb.claims().map((c) => c.minor)).toEqual(kept);
      expect(fs.readdirSync(`${dir}/.loopfs/idle`)).toEqual([]);
      // the indexes themselves are gone unless somebody holds one now
      for (const m of minors) if (!kept.includes(m) && fs.existsSync(`/sys/block/loop${m}`)) expect(isBound(`loop${m}`)).toBe(true);
      const again = await sb.losetup(['--instance', dir, '-D']);
      expect([again.exitCode, text(again.stdout), text(again.stderr)]).toEqual([0, '', '']);
      expect(readLoopState(hostDev)?.backingFile).toBe(hostFile);
    } finally {
      execFileSync(REF_LOSETUP, ['-d', hostDev]);
    }
  });

  it('-D with --pool 2: two devices stay held, idle and published; the other 3 leave', async () => {
    const dir = sb.path('p');
    await sb.create(dir, ['--pool', '2', '--owner', '1234:1234']);
    const minors = await attach(dir, 5);
    const r = await sb.losetup(['--instance', dir, '-D']);
    expect([r.exitCode, text(r.stdout), text(r.stderr)]).toEqual([0, '', '']);
    expect(sb.bound()).toEqual([]);
    const held = Object.entries(sb.ownDevices(dir));
    expect(held.map(([, e]) => e)).toEqual([{ state: 'held' }, { state: 'held' }]);
    const heldMinors = held.map(([m]) => Number(m));
    expect(heldMinors.every((m) => minors.includes(m))).toBe(true);
    expect(loopEntries(dir).sort()).toEqual(heldMinors.map((m) => `loop${m}`).sort());
    expect(fs.readdirSync(`${dir}/.loopfs/idle`).sort()).toEqual(heldMinors.map((m) => `loop${m}`).sort());
    expect(sb.claims().map((c) => c.minor).filter((m) => !sb.takenByOthers(m))).toEqual(heldMinors.sort((a, b) => a - b));
    // the pool serves the next attach from those two
    const again = await sb.losetup(['--instance', dir, '-f', '--show', sb.file('again.img')]);
    expect([again.exitCode, text(again.stderr)]).toEqual([0, '']);
    expect(heldMinors).toContain(minorOf(text(again.stdout).trim()));
  });

  it('a -D killed after its batch mark: the next command taking the lock writes the mark into the records, gc gives the devices back', async () => {
    const dir = sb.path('k');
    await sb.create(dir);
    const take = async (file?: string) => {
      const r = await sb.losetup(['--instance', dir, '-f', ...(file ? ['--show', file] : [])]);
      expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
      return minorOf(text(r.stdout).trim());
    };
    const b = await take(sb.file('b.img')); // bound
    const a = await take(); // idle (hinted)
    // what a -D killed right after its one durable step leaves: the mark, every node still there
    fs.writeFileSync(`${dir}/.loopfs/releasing`, `${JSON.stringify([a])}\n`);
    // -f takes the lock: the mark is written into a's record first, so a is no longer idle
    const c = await take();
    expect([a, b]).not.toContain(c);
    expect(sb.state(dir)!.devices).toEqual({ [a]: { state: 'removing' }, [b]: { state: 'held' }, [c]: { state: 'held' } });
    expect(fs.existsSync(`${dir}/.loopfs/releasing`)).toBe(false);
    const g = await sb.loopfs(['instance', 'gc', '--json']);
    expect([g.exitCode, text(g.stderr)]).toEqual([0, '']);
    const report = JSON.parse(text(g.stdout));
    expect(report.fixes.filter((f: { minor: number | null }) => f.minor === a).map((f: { action: string }) => f.action)).toEqual(
      expect.arrayContaining([expect.stringMatching(/^(removed device left half-released|forgot device that no longer exists)$/)]),
    );
    // (c, idle above the pool of 0, goes too: gc's pool rule)
    expect(sb.state(dir)!.devices).toEqual({ [b]: { state: 'held' } });
    expect(loopEntries(dir)).toEqual([`loop${b}`]);
    expect(sb.claims().map((x) => x.minor)).toEqual([b]);
    expect(fs.readdirSync(`${dir}/.loopfs`).sort()).toEqual(['devices', 'idle', 'lock', 'state.json']);
  });
});
