// Issue 14, flat attach cost: the two machine-wide lookups an attach used to make in full.
//   - The per-uid limit counts the names in runtime/uids/UID (an index of the claims by uid)
//     instead of reading every claim of the machine. The index is made before its claim and
//     dropped after it (a kill in between over-counts, never under-counts); gc mends it; a
//     runtime directory an older loopfs left without an index gets one from its claims.
//   - A new device is made at the runtime's next-index hint instead of above a listing of all
//     of /sys/block; where indexes at the hint exist already (made by somebody else), /sys/block
//     is listed once and the device goes above every existing one, as before.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { native } from '../../src/kernel/native.js';
import { Runtime } from '../../src/instance/runtime.js';
import { readLoopState } from '../helpers/devices.js';
import { instanceSkipReason, minorOf, Sandbox, skipTitle, text } from './support.js';

const reason = instanceSkipReason('runtime index tests');

describe.skipIf(reason)(skipTitle('runtime index', reason), () => {
  let sb: Sandbox;
  /** Indexes this file made on the host itself (LOOP_CTL_ADD): removed again in afterEach. */
  const added: number[] = [];
  beforeEach(() => {
    sb = new Sandbox('loopfs-rtidx');
  });
  afterEach(async () => {
    const n = native();
    const fd = n.open('/dev/loop-control', n.constants.O_RDWR);
    try {
      for (const m of added.splice(0)) {
        try {
          n.ctlRemove(fd, m);
        } catch {
          /* gone already */
        }
      }
    } finally {
      n.close(fd);
    }
    await sb.cleanup();
  });

  const uidIndex = (uid: number): string[] => {
    try {
      return fs.readdirSync(path.join(sb.runtime, 'uids', String(uid))).sort();
    } catch {
      return [];
    }
  };
  const claim = (minor: number, uid: number) => ({ minor, id: 'a'.repeat(16), dir: '/nowhere', uid });

  it('claims are indexed by uid: counted from the index, dropped with their claim, a claim lost to another is not indexed twice', () => {
    const rt = Runtime.open(sb.env);
    try {
      rt.lock();
      expect(rt.countClaimsOfUid(4242)).toBe(0);
      expect(rt.claim(claim(900001, 4242))).toBe(true);
      expect(rt.claim(claim(900002, 4242))).toBe(true);
      expect(rt.claim(claim(900003, 5151))).toBe(true);
      expect([rt.countClaimsOfUid(4242), rt.countClaimsOfUid(5151)]).toEqual([2, 1]);
      expect(uidIndex(4242)).toEqual(['loop900001', 'loop900002']);
      // a second claim of a claimed minor fails and leaves the index as it was, for either uid
      expect(rt.claim(claim(900001, 4242))).toBe(false);
      expect(rt.claim(claim(900001, 5151))).toBe(false);
      expect(uidIndex(4242)).toEqual(['loop900001', 'loop900002']);
      expect(uidIndex(5151)).toEqual(['loop900003']);
      // only the claiming instance's release drops it, and its index entry with it
      rt.release(900002, 'b'.repeat(16));
      expect(rt.countClaimsOfUid(4242)).toBe(2);
      rt.release(900002, 'a'.repeat(16));
      expect(rt.countClaimsOfUid(4242)).toBe(1);
      expect(uidIndex(4242)).toEqual(['loop900001']);
      expect(rt.syncUidIndex()).toEqual([]);
    } finally {
      rt.close();
    }
  });

  it('a kill between index entry and claim over-counts until gc; an index an older loopfs never made is built from the claims', async () => {
    const rt = Runtime.open(sb.env);
    try {
      rt.lock();
      expect(rt.claim(claim(900011, 4242))).toBe(true);
    } finally {
      rt.close();
    }
    // a kill after the index entry, before the claim: the entry alone
    fs.writeFileSync(path.join(sb.runtime, 'uids', '4242', 'loop900012'), '');
    const rt2 = Runtime.open(sb.env);
    try {
      rt2.lock();
      expect(rt2.countClaimsOfUid(4242)).toBe(2);
    } finally {
      rt2.close();
    }
    const r = await sb.loopfs(['instance', 'gc', '--json']);
    expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
    // gc gave back the orphan claim (no instance is registered; loop900011 never existed),
    // which dropped its entry; the entry without a claim only gc's index sync can drop
    expect(sb.claims()).toEqual([]);
    expect(uidIndex(4242)).toEqual([]);
    fs.rmSync(path.join(sb.runtime, 'uids'), { recursive: true });
    fs.writeFileSync(path.join(sb.runtime, 'claims', 'loop900021'), `${JSON.stringify(claim(900021, 7777))}\n`);
    fs.writeFileSync(path.join(sb.runtime, 'claims', 'loop900022'), `${JSON.stringify(claim(900022, 7777))}\n`);
    const rt3 = Runtime.open(sb.env);
    try {
      rt3.lock();
      expect(rt3.countClaimsOfUid(7777)).toBe(2);
      expect(uidIndex(7777)).toEqual(['loop900021', 'loop900022']);
      rt3.release(900021, 'a'.repeat(16));
      rt3.release(900022, 'a'.repeat(16));
      expect(rt3.countClaimsOfUid(7777)).toBe(0);
    } finally {
      rt3.close();
    }
  });

  it('the per-uid limit holds through the index: a third -f of uid 4242 with a limit of 2 is refused with one line', async () => {
    await sb.loopfs(['limits', 'set', '4242', '2']);
    const dir = sb.path('q');
    await sb.create(dir, ['--owner', '4242:4242']);
    for (let i = 0; i < 2; i++) {
      const r = await sb.losetup(['--instance', dir, '-f', '--show', sb.file(`q${i}.img`)]);
      expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
    }
    expect(uidIndex(4242)).toEqual(sb.claims().map((c) => `loop${c.minor}`).sort());
    const r = await sb.losetup(['--instance', dir, '-f', '--show', sb.file('q2.img')]);
    expect([r.exitCode, text(r.stdout), text(r.stderr)]).toEqual([1, '', `losetup: uid 4242: limit of 2 loop devices reached (${sb.limits})\n`]);
  });

  /** The highest loop index on the machine now. */
  const highest = (): number => Math.max(-1, ...fs.readdirSync('/sys/block').filter((n) => /^loop\d+$/.test(n)).map((n) => Number(n.slice(4))));
  const hintFile = () => path.join(sb.runtime, 'next-index');
  const plantHint = (index: number, left: number) =>
    fs.writeFileSync(hintFile(), `${String(index).padStart(10, '0')} ${String(left).padStart(3, '0')}\n`);
  const addIndex = (m: number) => {
    const n = native();
    const fd = n.open('/dev/loop-control', n.constants.O_RDWR);
    try {
      n.ctlAdd(fd, m);
      added.push(m);
    } finally {
      n.close(fd);
    }
  };

  it('a new device is made at the next-index hint (no listing of /sys/block), and the hint moves past it', async () => {
    const dir = sb.path('h');
    await sb.create(dir);
    const file = sb.file('h.img');
    // far above every device: nobody else makes devices there, so only the hint leads here
    const at = highest() + 5000;
    plantHint(at, 10);
    const r = await sb.losetup(['--instance', dir, '-f', '--show', file]);
    expect([r.exitCode, text(r.stdout), text(r.stderr)]).toEqual([0, `${dir}/loop${at}\n`, '']);
    expect(readLoopState(`loop${at}`)?.backingFile).toBe(file);
    expect(fs.readFileSync(hintFile(), 'utf8')).toBe(`${String(at + 1).padStart(10, '0')} 009\n`);
  });

  it('indexes at the hint made by somebody else: /sys/block is listed once and the device goes above every existing one', async () => {
    const dir = sb.path('x');
    await sb.create(dir);
    const base = highest() + 5000;
    // four taken indexes at the hint, and one more further up with a gap below it
    for (const m of [base, base + 1, base + 2, base + 3, base + 10]) addIndex(m);
    plantHint(base, 10);
    const r = await sb.losetup(['--instance', dir, '-f', '--show', sb.file('x.img')]);
    expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
    const m = minorOf(text(r.stdout).trim());
    // after the listing: above base+10 (the gap base+4..base+9 is below an existing device)
    expect(m).toBeGreaterThan(base + 10);
    expect(text(r.stdout)).toBe(`${dir}/loop${m}\n`);
    // and the count of uses starts again after a listing
    expect(fs.readFileSync(hintFile(), 'utf8')).toBe(`${String(m + 1).padStart(10, '0')} 064\n`);
  });

  it('a torn or used-up hint is not used: the device goes above every existing one', async () => {
    const dir = sb.path('t');
    await sb.create(dir);
    const low = highest() + 3000;
    const top = low + 20;
    addIndex(top);
    // torn by a kill mid-write; used NEXT_INDEX_USES times
    for (const content of [String(low).slice(0, 3), `${String(low).padStart(10, '0')} 000\n`]) {
      fs.writeFileSync(hintFile(), content);
      const r = await sb.losetup(['--instance', dir, '-f']);
      expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
      expect(minorOf(text(r.stdout).trim())).toBeGreaterThan(top);
    }
  });
});
