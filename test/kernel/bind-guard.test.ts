// The bind guard (src/kernel/bind-guard.ts) on real devices: while it is held, no other
// process can bind the device (util-linux's LOOP_CONFIGURE fails with EBUSY); a bound
// device, a device held exclusively by somebody else and a device that is gone are told
// apart. Devices touched: only indexes this file adds itself (OwnedIndexes).
import { execFileSync, spawnSync } from 'node:child_process';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { guardUnbound, guardUnboundBy, releaseGuard } from '../../src/kernel/bind-guard.js';
import { native } from '../../src/kernel/native.js';
import { REF_LOSETUP } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import { kernelSkipReason, makeImage, MiB, OwnedIndexes, skipTitle, sysBacking, SHARED_MACHINE } from './support.js';

const reason = kernelSkipReason('kernel/bind-guard');

describe.skipIf(reason !== undefined)(skipTitle('bind guard', reason), SHARED_MACHINE, () => {
  let dir: string;
  let owned: OwnedIndexes;
  let file: string;

  beforeAll(() => {
    dir = makeTempDir('loopfs-guard');
    file = makeImage(`${dir}/a.img`, MiB);
  });
  afterAll(() => {
    if (dir) removeTree(dir);
  });
  afterEach(async () => {
    await owned?.cleanup();
  });

  const bind = (index: number) => spawnSync(REF_LOSETUP, [`/dev/loop${index}`, file], { encoding: 'utf8' });

  it('an unbound device is guarded: util-linux cannot bind it while the guard is held, and can once it is let go', () => {
    owned = new OwnedIndexes().ownBacking(dir);
    const index = owned.add();
    const g = guardUnbound(index);
    expect(typeof g).toBe('object');
    try {
      const r = bind(index);
      expect([r.status, r.stderr]).toEqual([1, `losetup: ${file}: failed to set up loop device: Device or resource busy\n`]);
      expect(sysBacking(index)).toBe(null);
    } finally {
      releaseGuard(g);
    }
    const r = bind(index);
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(sysBacking(index)).toBe(file);
  });

  it('a bound device is in use, at once and after waiting; it is guarded once it was detached', () => {
    owned = new OwnedIndexes().ownBacking(dir);
    const index = owned.add();
    expect(bind(index).status).toBe(0);
    expect(guardUnbound(index)).toBe('in-use');
    const t0 = Date.now();
    expect(guardUnboundBy(index, t0 + 200)).toBe('in-use');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(200);
    execFileSync(REF_LOSETUP, ['-d', `/dev/loop${index}`]);
    const g = guardUnboundBy(index, Date.now() + 2000);
    expect(typeof g).toBe('object');
    releaseGuard(g);
  });

  it('a device somebody else holds exclusively is in use; a device that does not exist is gone', () => {
    owned = new OwnedIndexes().ownBacking(dir);
    const index = owned.add();
    const n = native();
    const fd = n.open(`/dev/loop${index}`, n.constants.O_RDONLY | n.constants.O_EXCL);
    try {
      expect(guardUnbound(index)).toBe('in-use');
    } finally {
      n.close(fd);
    }
    owned.removeNow(index);
    expect(guardUnbound(index)).toBe('gone');
  });
});
