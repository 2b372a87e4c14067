// LoopControl (src/kernel/loop-control.ts) on the real /dev/loop-control. Devices touched: only
// high indexes this file adds itself (removed in afterEach, bounded EBUSY retry) and, for
// getFree, nothing at all (the index is only looked at).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { LoopControl, LOOP_CONTROL_PATH } from '../../src/kernel/loop-control.js';
import { isSysError, native } from '../../src/kernel/native.js';
import { REF_LOSETUP } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import { distSkipReason, DIST_KERNEL, kernelSkipReason, makeImage, MiB, OwnedIndexes, runNode, skipTitle, sysBacking, SHARED_MACHINE } from './support.js';
import { sysErrorOf } from '../helpers/errors.js';

const reason = kernelSkipReason('kernel/loop-control');

describe.skipIf(reason !== undefined)(skipTitle('LoopControl', reason), SHARED_MACHINE, () => {
  let dir: string;
  let owned: OwnedIndexes;
  const ctls: LoopControl[] = [];
  const openCtl = () => {
    const c = LoopControl.open();
    ctls.push(c);
    return c;
  };

  beforeAll(() => {
    dir = makeTempDir('loopfs-ctl');
  });
  afterAll(() => {
    if (dir) removeTree(dir);
  });
  afterEach(async () => {
    for (const c of ctls.splice(0)) c.close();
    await owned?.cleanup();
  });

  it('opens /dev/loop-control by default; a missing path throws ENOENT', () => {
    expect(LOOP_CONTROL_PATH).toBe('/dev/loop-control');
    const c = openCtl();
    expect(c.path).toBe('/dev/loop-control');
    const e = sysErrorOf(() => LoopControl.open(path.join(dir, 'no-such-control')));
    expect(e.code).toBe('ENOENT');
    expect(e.syscall).toBe('open');
  });

  it('getFree() returns the index of an existing, unbound device', () => {
    const c = openCtl();
    // a device of a concurrent suite can get bound between the ioctl and our look; ask again then
    for (let attempt = 0; ; attempt++) {
      const i = c.getFree();
      expect(Number.isInteger(i) && i >= 0).toBe(true);
      expect(fs.existsSync(`/sys/block/loop${i}`)).toBe(true);
      if (sysBacking(i) !== null && attempt < 5) continue;
      expect(sysBacking(i)).toBeNull();
      break;
    }
  });

  it('add()/remove() of an unused high index; EEXIST and ENODEV on repeats', () => {
    owned = new OwnedIndexes().ownBacking(dir);
    // find an unused index ourselves, then let the code under test create it (another suite may
    // take the number in between: then try another)
    const c = openCtl();
    let probe = -1;
    for (let attempt = 0; probe < 0; attempt++) {
      const i = owned.add();
      owned.removeNow(i);
      try {
        expect(c.add(i)).toBe(i);
        probe = i;
      } catch (e) {
        if (!isSysError(e) || e.code !== 'EEXIST' || attempt >= 10) throw e;
      }
    }
    owned.indexes.add(probe); // ours now: cleanup removes it if the test fails below
    expect(fs.existsSync(`/sys/block/loop${probe}`)).toBe(true);
    expect(fs.readFileSync(`/sys/block/loop${probe}/dev`, 'utf8').trim()).toBe(`7:${probe}`);
    expect(sysBacking(probe)).toBeNull();
    expect(sysErrorOf(() => c.add(probe)).code).toBe('EEXIST');

    // the ioctl's return value: the index on kernels before 5.15 (loop_lookup()), 0 since
    // (loop_control_remove()); LoopControl.remove() passes it through
    expect([probe, 0]).toContain(c.remove(probe));
    owned.indexes.delete(probe);
    expect(fs.existsSync(`/sys/block/loop${probe}`)).toBe(false);
    const e = sysErrorOf(() => c.remove(probe));
    expect(e.code).toBe('ENODEV');
    expect(e.description).toBe('No such device');
  });

  it('remove() of a bound device fails with EBUSY and leaves the binding alone', () => {
    owned = new OwnedIndexes().ownBacking(dir);
    const idx = owned.add();
    const file = makeImage(path.join(dir, 'bound.img'), MiB);
    execFileSync(REF_LOSETUP, [`/dev/loop${idx}`, file]);
    const c = openCtl();
    const e = sysErrorOf(() => c.remove(idx));
    expect(e.code).toBe('EBUSY');
    expect(e.errno).toBe(16);
    expect(e.description).toBe('Device or resource busy');
    expect(sysBacking(idx)).toBe(file);
  });

  it('remove() of an unbound device that someone holds open fails with EBUSY', () => {
    owned = new OwnedIndexes().ownBacking(dir);
    const idx = owned.add();
    const fd = fs.openSync(`/dev/loop${idx}`, 'r');
    try {
      const c = openCtl();
      expect(sysErrorOf(() => c.remove(idx)).code).toBe('EBUSY');
    } finally {
      fs.closeSync(fd);
    }
  });

  it('lock() excludes a second open file description; unlock() releases it', () => {
    const a = openCtl();
    const n = native();
    const C = n.constants;
    const fd2 = n.open('/dev/loop-control', C.O_RDWR);
    try {
      a.lock();
      const e = sysErrorOf(() => n.flock(fd2, C.LOCK_EX | C.LOCK_NB));
      expect(e.code).toBe('EAGAIN');
      expect(sysErrorOf(() => n.flock(fd2, C.LOCK_SH | C.LOCK_NB)).code).toBe('EAGAIN');
      a.unlock();
      n.flock(fd2, C.LOCK_EX | C.LOCK_NB); // free now
      n.flock(fd2, C.LOCK_UN);
      // and a second LoopControl object can take it once the first released it
      const b = openCtl();
      a.lock();
      a.unlock();
      b.lock();
      expect(sysErrorOf(() => n.flock(fd2, C.LOCK_EX | C.LOCK_NB)).code).toBe('EAGAIN');
      b.unlock();
    } finally {
      n.close(fd2);
    }
  });

  it('close() drops the lock and is idempotent', () => {
    const n = native();
    const C = n.constants;
    const a = LoopControl.open();
    const fd2 = n.open('/dev/loop-control', C.O_RDWR);
    try {
      a.lock();
      a.close();
      a.close();
      n.flock(fd2, C.LOCK_EX | C.LOCK_NB);
      n.flock(fd2, C.LOCK_UN);
      expect(() => a.getFree()).toThrow(); // fd -1: the addon's argument check
    } finally {
      n.close(fd2);
    }
  });

  const noDist = distSkipReason();
  it.skipIf(noDist !== undefined)(
    `serialises two LoopControl objects in two processes${noDist ? ` [SKIPPED: ${noDist}]` : ''}`,
    async () => {
      const a = openCtl();
      a.lock();
      const script = `
        const { LoopControl } = await import(${JSON.stringify(`${DIST_KERNEL}/loop-control.js`)});
        const c = LoopControl.open();
        process.stdout.write('opened\\n');
        c.lock();
        process.stdout.write('locked ' + Date.now() + '\\n');
        c.unlock();
        c.close();
      `;
      let opened = false;
      let lockedEarly = false;
      let released = 0;
      const child = runNode(script, [], {
        onStdout: (s) => {
          if (s.includes('opened')) opened = true;
          if (s.includes('locked') && released === 0) lockedEarly = true;
        },
      });
      try {
        // wait for the child to be blocked in flock(), then keep it waiting a while
        const t0 = Date.now();
        while (!opened && Date.now() - t0 < 20_000) await new Promise((r) => setTimeout(r, 20));
        expect(opened).toBe(true);
        await new Promise((r) => setTimeout(r, 500));
        expect(lockedEarly).toBe(false);
      } finally {
        released = Date.now();
        a.unlock();
      }
      const r = await child;
      expect(r.code, r.stderr).toBe(0);
      expect(lockedEarly).toBe(false);
      const at = Number(/locked (\d+)/.exec(r.stdout)?.[1]);
      expect(at).toBeGreaterThanOrEqual(released - 50); // clocks are the same machine's
    },
  );
});
