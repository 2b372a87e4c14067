// attach() (src/kernel/attach.ts) on real devices: success, read-only fallbacks (EROFS inside a
// private mount namespace, EACCES for an unprivileged caller), AttachError for each failure with
// the device left unbound and no fd left on the backing file, and EBUSY on a device that is
// already bound (whose binding must stay untouched). Every test works on high indexes it added.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { attach, AttachError } from '../../src/kernel/attach.js';
import { LoopDevice } from '../../src/kernel/loop-device.js';
import { native } from '../../src/kernel/native.js';
import { REF_LOSETUP } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import {
  distSkipReason,
  DIST_KERNEL,
  kernelSkipReason,
  makeImage,
  MiB,
  mknodLoop,
  OwnedIndexes,
  readSys,
  runNode,
  skipTitle,
  staysBound,
  sysBacking,
  waitIndexUnbound,
  NO_RETRY,
  SHARED_MACHINE,
} from './support.js';

const reason = kernelSkipReason('kernel/attach');
const C = native().constants;

/** fds of this process open on `file`. */
function fdsOn(file: string): string[] {
  return fs.readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return fs.readlinkSync(`/proc/self/fd/${fd}`) === file;
    } catch {
      return false;
    }
  });
}

function attachError(fn: () => unknown): AttachError {
  try {
    fn();
  } catch (e) {
    if (e instanceof AttachError) return e;
    throw e;
  }
  throw new Error('expected an AttachError, but attach() succeeded');
}

/** A child that attaches `node` to `file` with the built kernel layer and prints the result. */
const CHILD = `
  const { attach } = await import(${JSON.stringify(`${DIST_KERNEL}/attach.js`)});
  const { LoopDevice } = await import(${JSON.stringify(`${DIST_KERNEL}/loop-device.js`)});
  const fs = await import('node:fs');
  const [node, file] = process.argv.slice(1);
  let rwOpen = 'ok';
  try { fs.closeSync(fs.openSync(file, 'r+')); } catch (e) { rwOpen = e.code; }
  const dev = new LoopDevice(node);
  try {
    const r = attach(dev, { file, flags: 0 });
    console.log(JSON.stringify({ rwOpen, readOnly: r.readOnly }));
  } catch (e) {
    console.log(JSON.stringify({ rwOpen, error: e.code ?? String(e) }));
  } finally {
    dev.close();
  }
`;

describe.skipIf(reason !== undefined)(skipTitle('attach', reason), SHARED_MACHINE, () => {
  let dir: string;
  let owned: OwnedIndexes;
  let idx: number;
  let node: string;
  const dev = (p = node) => owned.track(new LoopDevice(p));

  beforeAll(() => {
    dir = makeTempDir('loopfs-attach');
  });
  afterAll(() => {
    if (dir) removeTree(dir);
  });
  beforeEach(() => {
    owned = new OwnedIndexes().ownBacking(dir);
    idx = owned.add();
    node = `/dev/loop${idx}`;
  });
  afterEach(async () => {
    await owned.cleanup();
  });

  it('binds read-write and leaves no fd on the backing file', () => {
    const file = makeImage(path.join(dir, 'ok.img'), 4 * MiB);
    const d = dev();
    expect(attach(d, { file, flags: 0 })).toEqual({ readOnly: false });
    expect(fdsOn(file)).toEqual([]);
    d.close();
    expect(sysBacking(idx)).toBe(file);
    expect(readSys(`/sys/block/loop${idx}/ro`)).toBe('0');
    expect(readSys(`/sys/block/loop${idx}/size`)).toBe(String((4 * MiB) / 512));
    const st = fs.statSync(file, { bigint: true });
    const check = dev();
    expect(check.backingIds()).toEqual({ dev: st.dev, ino: st.ino });
  });

  it('applies offset, sizelimit, block size, partscan and direct I/O', () => {
    const file = makeImage(path.join(dir, 'opts.img'), 8 * MiB);
    const d = dev();
    const r = attach(d, {
      file,
      offset: BigInt(MiB),
      sizelimit: BigInt(2 * MiB),
      blockSize: 4096,
      flags: C.LO_FLAGS_PARTSCAN | C.LO_FLAGS_DIRECT_IO,
    });
    expect(r.readOnly).toBe(false);
    const s = `/sys/block/loop${idx}`;
    expect(readSys(`${s}/loop/offset`)).toBe(String(MiB));
    expect(readSys(`${s}/loop/sizelimit`)).toBe(String(2 * MiB));
    expect(readSys(`${s}/size`)).toBe(String((2 * MiB) / 512));
    expect(readSys(`${s}/queue/logical_block_size`)).toBe('4096');
    expect(readSys(`${s}/loop/partscan`)).toBe('1');
    expect(readSys(`${s}/loop/dio`)).toBe('1');
    expect(readSys(`${s}/loop/autoclear`)).toBe('0');
  });

  it('an offset past the end of the file is accepted (size check skipped, as util-linux)', () => {
    const file = makeImage(path.join(dir, 'short.img'), MiB);
    const d = dev();
    expect(attach(d, { file, offset: BigInt(4 * MiB), flags: 0 }).readOnly).toBe(false);
    expect(readSys(`/sys/block/loop${idx}/size`)).toBe('0');
  });

  it('LO_FLAGS_READ_ONLY gives a read-only device', () => {
    const file = makeImage(path.join(dir, 'ro.img'), MiB);
    const d = dev();
    expect(attach(d, { file, flags: C.LO_FLAGS_READ_ONLY })).toEqual({ readOnly: true });
    expect(readSys(`/sys/block/loop${idx}/ro`)).toBe('1');
    expect(d.readOnly()).toBe(true);
  });

  it('LO_FLAGS_AUTOCLEAR: the device frees itself when the fd attach() opened is closed', async () => {
    const file = makeImage(path.join(dir, 'autoclear.img'), MiB);
    const d = dev();
    attach(d, { file, flags: C.LO_FLAGS_AUTOCLEAR });
    expect(readSys(`/sys/block/loop${idx}/loop/autoclear`)).toBe('1');
    d.close();
    expect(await waitIndexUnbound(idx)).toBe(true);
  });

  const noDist = distSkipReason();
  const noUnshare = fs.existsSync('/usr/bin/unshare') ? noDist : 'unshare(1) not installed';
  it.skipIf(noUnshare !== undefined)(
    `falls back to read-only when the file is on a read-only mount (EROFS)${noUnshare ? ` [SKIPPED: ${noUnshare}]` : ''}`,
    async () => {
      owned.ownBacking('/on read-only mount.img'); // the path the kernel shows once the namespace is gone
      const roDir = path.join(dir, `rofs-${idx}`);
      fs.mkdirSync(roDir);
      const file = makeImage(path.join(roDir, 'on read-only mount.img'), MiB);
      // a private mount namespace whose view of roDir is a read-only bind mount; it dies with the child
      const wrapper = [
        'unshare',
        '-m',
        '--propagation',
        'private',
        'sh',
        '-c',
        `mount --bind '${roDir}' '${roDir}' && mount -o remount,bind,ro '${roDir}' && exec "$@"`,
        'sh',
      ];
      const r = await runNode(CHILD, [node, file], { wrapper });
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toEqual({ rwOpen: 'EROFS', readOnly: true });
      // the child's mount namespace is gone: the kernel shows the path within the orphaned mount
      expect(sysBacking(idx)).toBe('/on read-only mount.img');
      const st = fs.statSync(file, { bigint: true });
      expect(dev().backingIds()).toEqual({ dev: st.dev, ino: st.ino });
      expect(readSys(`/sys/block/loop${idx}/ro`)).toBe('1');
    },
  );

  it.skipIf(noDist !== undefined)(
    `falls back to read-only when the caller may only read the file (EACCES, uid 65534)${noDist ? ` [SKIPPED: ${noDist}]` : ''}`,
    async () => {
      // an unprivileged caller with a writable node of its own (an instance node), a root-owned 0644 file
      const udir = path.join(dir, `unpriv-${idx}`);
      fs.mkdirSync(udir, { mode: 0o755 });
      fs.chmodSync(dir, 0o755);
      const file = makeImage(path.join(udir, 'root-owned.img'), MiB);
      fs.chmodSync(file, 0o644);
      const unode = mknodLoop(udir, `loop${idx}`, idx);
      fs.chownSync(unode, 65534, 65534);
      const r = await runNode(CHILD, [unode, file], { uid: 65534, gid: 65534 });
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout)).toEqual({ rwOpen: 'EACCES', readOnly: true });
      expect(sysBacking(idx)).toBe(file);
      expect(readSys(`/sys/block/loop${idx}/ro`)).toBe('1');
    },
  );

  it('a missing file: AttachError ENOENT, deviceOpenFailed false, device untouched', async () => {
    const d = dev();
    const e = attachError(() => attach(d, { file: path.join(dir, 'missing.img'), flags: 0 }));
    expect(e.name).toBe('AttachError');
    expect(e.code).toBe('ENOENT');
    expect(e.deviceOpenFailed).toBe(false);
    expect(e.cause.description).toBe('No such file or directory');
    expect(d.isOpen).toBe(false);
    d.close();
    expect(await waitIndexUnbound(idx)).toBe(true);
  });

  it('a directory: EISDIR read-write, EINVAL read-only; device left unbound', async () => {
    const sub = path.join(dir, `dir-${idx}`);
    fs.mkdirSync(sub);
    const d = dev();
    const e = attachError(() => attach(d, { file: sub, flags: 0 }));
    expect(e.code).toBe('EISDIR');
    expect(e.deviceOpenFailed).toBe(false);

    const e2 = attachError(() => attach(d, { file: sub, flags: C.LO_FLAGS_READ_ONLY }));
    expect(e2.code).toBe('EINVAL');
    expect(e2.deviceOpenFailed).toBe(false);
    expect(fdsOn(sub)).toEqual([]);
    d.close();
    expect(await waitIndexUnbound(idx)).toBe(true);
  });

  it('an invalid block size (1000): EINVAL, device left unbound once closed, no fd on the file', async () => {
    const file = makeImage(path.join(dir, 'bs1000.img'), MiB);
    const d = dev();
    const e = attachError(() => attach(d, { file, blockSize: 1000, flags: 0 }));
    expect(e.code).toBe('EINVAL');
    expect(e.deviceOpenFailed).toBe(false);
    expect(e.cause.description).toBe('Invalid argument');
    expect(fdsOn(file)).toEqual([]);
    d.close();
    expect(await waitIndexUnbound(idx)).toBe(true);
    expect(sysBacking(idx)).toBeNull();
  });

  // BUG (attach.ts:90-103): on failure attach() clears the device but keeps the device fd it
  // opened (it only closes the backing file's fd). LOOP_CONFIGURE failed with EINVAL, the SET_FD
  // fallback bound the device, and LOOP_CLR_FD on a current kernel only marks it autoclear until
  // the last close — so after attach() has thrown, the device is still bound to our file until
  // the caller happens to close the LoopDevice. The header promises "Every failure leaves the
  // device as it was found".
  it('a failed attach() leaves the device unbound without help from the caller', NO_RETRY, async () => {
    const file = makeImage(path.join(dir, 'bs1000-open.img'), MiB);
    const d = dev();
    attachError(() => attach(d, { file, blockSize: 1000, flags: 0 }));
    expect(await waitIndexUnbound(idx, 1_000)).toBe(true);
  });

  it('a device node that cannot be opened: deviceOpenFailed true; freshDevice retries for a while', () => {
    const file = makeImage(path.join(dir, 'nodev.img'), MiB);
    const missing = path.join(dir, 'no-such-node');
    const e = attachError(() => attach(dev(missing), { file, flags: 0 }));
    expect(e.code).toBe('ENOENT');
    expect(e.deviceOpenFailed).toBe(true);
    expect(fdsOn(file)).toEqual([]);

    const t0 = Date.now();
    const e2 = attachError(() => attach(dev(missing), { file, flags: 0, freshDevice: true }));
    expect(e2.code).toBe('ENOENT');
    expect(e2.deviceOpenFailed).toBe(true);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(16 * 25 - 50); // 16 retries, 25 ms apart
    expect(fdsOn(file)).toEqual([]);
  });

  it('EBUSY on a device that is already bound; the existing binding is untouched', async () => {
    const theirs = makeImage(path.join(dir, 'theirs.img'), 2 * MiB);
    const mine = makeImage(path.join(dir, 'mine.img'), MiB);
    execFileSync(REF_LOSETUP, ['-o', '512', node, theirs]);
    const d = dev();
    const e = attachError(() => attach(d, { file: mine, flags: 0 }));
    expect(e.code).toBe('EBUSY');
    expect(e.deviceOpenFailed).toBe(false);
    expect(e.cause.description).toBe('Device or resource busy');
    expect(fdsOn(mine)).toEqual([]);
    d.close();
    // had attach() issued LOOP_CLR_FD, the device would now go away at this last close
    expect(await staysBound(idx, 500)).toBe(true);
    expect(sysBacking(idx)).toBe(theirs);
    expect(readSys(`/sys/block/loop${idx}/loop/offset`)).toBe('512');
    expect(readSys(`/sys/block/loop${idx}/loop/autoclear`)).toBe('0');
  });
});
