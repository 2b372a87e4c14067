// dev_t encoding (src/kernel/devnum.ts) against independent witnesses: coreutils stat(1) for
// real nodes, the sysfs `dev` attribute of every block device, nodes made with mknod(1), and
// glibc's own makedev()/major()/minor() through Python's os module.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hostLoopNode, isBlockDevice, LOOP_MAJOR, major, makedev, minor } from '../../src/kernel/devnum.js';
import { native } from '../../src/kernel/native.js';
import { announceSkip } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import { OwnedIndexes } from './support.js';

/** [major, minor] as coreutils stat(1) reports them for a device node (hex %t %T). */
function statMajMin(p: string): [number, number] {
  const [t, T] = execFileSync('stat', ['-L', '-c', '%t %T', p], { encoding: 'utf8' }).trim().split(' ');
  return [parseInt(t, 16), parseInt(T, 16)];
}

/** Block devices with a /dev node and a sysfs `dev` attribute: [node, major, minor]. */
function blockNodes(filter: (name: string) => boolean): [string, number, number][] {
  const out: [string, number, number][] = [];
  for (const name of fs.readdirSync('/sys/class/block')) {
    if (!filter(name)) continue;
    const node = `/dev/${name}`;
    let dev: string;
    try {
      if (!fs.statSync(node).isBlockDevice()) continue;
      dev = fs.readFileSync(`/sys/class/block/${name}/dev`, 'utf8').trim();
    } catch {
      continue;
    }
    const [M, m] = dev.split(':').map(Number);
    out.push([node, M, m]);
  }
  return out;
}

// /dev/loop0 normally. Other suites on this shared machine add and remove loop devices while we
// run, so the node is chosen when the test runs and a vanished candidate is replaced by the next.
// With root a device of our own guarantees that there is a node to look at.
const canAdd = process.getuid?.() === 0 && fs.existsSync('/dev/loop-control');
const anyLoopNode = fs.readdirSync('/dev').some((n) => /^loop\d+$/.test(n));
const noLoop0 = anyLoopNode || canAdd ? undefined : 'no /dev/loopN node (and not root to add one)';
announceSkip('kernel/devnum (/dev/loop0)', noLoop0);

/** stat() of /dev/loop0, else of the lowest /dev/loopN that still exists. */
function statSomeLoopNode(): { node: string; n: number; rdev: bigint; statMM: [number, number] } {
  const candidates = ['loop0', ...fs.readdirSync('/dev').filter((x) => /^loop\d+$/.test(x)).sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)))];
  for (const name of candidates) {
    const node = `/dev/${name}`;
    try {
      const rdev = fs.statSync(node, { bigint: true }).rdev;
      const statMM = statMajMin(node);
      if (fs.statSync(node, { bigint: true }).rdev !== rdev) continue; // replaced meanwhile
      return { node, n: Number(name.slice(4)), rdev, statMM };
    } catch {
      /* gone meanwhile */
    }
  }
  throw new Error('no /dev/loopN node left');
}

describe('devnum: LOOP_MAJOR', () => {
  it('is 7', () => {
    expect(LOOP_MAJOR).toBe(7);
  });
});

describe.skipIf(noLoop0 !== undefined)(`devnum: real nodes${noLoop0 ? ` [SKIPPED: ${noLoop0}]` : ''}`, () => {
  const owned = new OwnedIndexes();
  beforeAll(() => {
    if (canAdd) owned.add();
  });
  afterAll(async () => {
    await owned.cleanup();
  });

  it('splits the rdev of /dev/loop0 (or the lowest /dev/loopN) into 7:N; makedev(7, N) rebuilds it', () => {
    const { node, n, rdev, statMM } = statSomeLoopNode();
    expect([node, major(rdev), minor(rdev)]).toEqual([node, ...statMM]);
    expect(major(rdev)).toBe(7);
    expect(minor(rdev)).toBe(n);
    expect(makedev(7, n)).toBe(rdev);
  });

  it('agrees with sysfs `dev` for every /dev/loopN node', () => {
    const nodes = blockNodes((n) => /^loop\d+$/.test(n));
    expect(nodes.length).toBeGreaterThan(0);
    let checked = 0;
    for (const [node, M, m] of nodes) {
      let rdev: bigint;
      try {
        rdev = fs.statSync(node, { bigint: true }).rdev;
      } catch {
        continue; // removed by a concurrent suite after the listing
      }
      expect([node, major(rdev), minor(rdev)]).toEqual([node, M, m]);
      expect(makedev(M, m)).toBe(rdev);
      checked++;
    }
    expect(checked).toBeGreaterThan(0);
  });

  it('agrees with sysfs `dev` and stat(1) for non-loop disks and partitions (/dev/vda-style)', (ctx) => {
    const nodes = blockNodes((n) => !n.startsWith('loop'));
    if (nodes.length === 0) {
      console.warn('[skip] no non-loop block device with a /dev node');
      ctx.skip();
    }
    for (const [node, M, m] of nodes) {
      const rdev = fs.statSync(node, { bigint: true }).rdev;
      expect([node, major(rdev), minor(rdev)]).toEqual([node, M, m]);
      expect([node, ...statMajMin(node)]).toEqual([node, M, m]);
      expect(makedev(M, m)).toBe(rdev);
    }
  });

  it('splits st_dev of a regular file the way stat(1) does (%D is the raw hex dev_t)', () => {
    const st = fs.statSync('/proc/self/exe', { bigint: true });
    const raw = BigInt(`0x${execFileSync('stat', ['-L', '-c', '%D', '/proc/self/exe'], { encoding: 'utf8' }).trim()}`);
    expect(st.dev).toBe(raw);
    expect(makedev(major(st.dev), minor(st.dev))).toBe(st.dev);
  });
});

const notRoot = process.getuid?.() === 0 ? undefined : 'mknod needs root';
announceSkip('kernel/devnum (mknod)', notRoot);

describe.skipIf(notRoot !== undefined)(`devnum: nodes made with mknod(1)${notRoot ? ` [SKIPPED: ${notRoot}]` : ''}`, () => {
  let dir: string;
  beforeAll(() => {
    dir = makeTempDir('loopfs-devnum');
  });
  afterAll(() => {
    if (dir) removeTree(dir);
  });

  // The kernel's dev_t is 12 bits of major and 20 of minor: these cover every split boundary.
  const pairs: [number, number][] = [
    [7, 0],
    [7, 255],
    [7, 256],
    [7, 1048575],
    [255, 255],
    [256, 256],
    [4095, 0],
    [4095, 1048575],
    [259, 65536],
    [1234, 567890],
  ];
  it.each(pairs)('b %i %i round-trips through stat(2)', (M, m) => {
    const p = path.join(dir, `b-${M}-${m}`);
    execFileSync('mknod', [p, 'b', String(M), String(m)]);
    const rdev = fs.statSync(p, { bigint: true }).rdev;
    expect(major(rdev)).toBe(M);
    expect(minor(rdev)).toBe(m);
    expect(makedev(M, m)).toBe(rdev);
    expect(statMajMin(p)).toEqual([M, m]);
  });
});

// glibc's 64-bit dev_t holds 32-bit majors and minors; Python's os.makedev/major/minor are glibc's.
const py = spawnSync('python3', ['-c', 'import os; print(os.makedev(1, 2))'], { encoding: 'utf8' });
const noPython = py.status === 0 && py.stdout.trim() === String(258) ? undefined : 'python3 (glibc makedev witness) not available';
announceSkip('kernel/devnum (glibc witness)', noPython);

describe.skipIf(noPython !== undefined)(`devnum: large values against glibc${noPython ? ` [SKIPPED: ${noPython}]` : ''}`, () => {
  // Python's os.makedev takes C ints, so the witness stops at 2^31-1.
  const pairs: [number, number][] = [
    [0, 0],
    [0xfff, 0xff],
    [0x1000, 0x100],
    [0xfffff, 0xfffff],
    [0x12345, 0x6789a],
    [0x7fffffff, 0x7fffffff],
    [0x7ffff000, 0x7fffff00],
    [0x00000fff, 0x7fffffff],
    [0x7fffffff, 0x000000ff],
  ];
  const script =
    'import os, sys, json\n' +
    'pairs = json.loads(sys.argv[1])\n' +
    'print(json.dumps([[str(os.makedev(M, m)), os.major(os.makedev(M, m)), os.minor(os.makedev(M, m))] for M, m in pairs]))';
  const r = spawnSync('python3', ['-c', script, JSON.stringify(pairs)], { encoding: 'utf8' });
  const glibc = (r.status === 0 ? JSON.parse(r.stdout) : []) as [string, number, number][];

  it.each(pairs.map((p, i) => [...p, i]))('makedev(%i, %i) matches glibc and round-trips', (M, m, i) => {
    expect(glibc[i], r.stderr).toBeDefined();
    const [dev, gM, gm] = glibc[i];
    expect(makedev(M, m)).toBe(BigInt(dev));
    expect([gM, gm]).toEqual([M, m]);
    expect(major(BigInt(dev))).toBe(M);
    expect(minor(BigInt(dev))).toBe(m);
  });

  it('full 32-bit major and minor round-trip (beyond the Python witness)', () => {
    for (const [M, m] of [
      [0xffffffff, 0xffffffff],
      [0x80000000, 0x80000000],
      [0xfffff000, 0xffffff00],
      [0xdeadbeef, 0xcafebabe],
    ]) {
      const d = makedev(M, m);
      expect(d).toBeLessThan(1n << 64n);
      expect([major(d), minor(d)]).toEqual([M, m]);
    }
  });
});

describe('isBlockDevice, against what the kernel reports for real nodes', () => {
  it.skipIf(process.getuid?.() !== 0)('a block node 7:N is 7:N only; a char node, a file, a directory and a missing node are none', () => {
    const n = native();
    const dir = makeTempDir('loopfs-devnum-');
    const dirFd = n.open(dir, n.constants.O_RDONLY | n.constants.O_DIRECTORY);
    const devFd = n.open('/dev', n.constants.O_RDONLY | n.constants.O_DIRECTORY);
    try {
      n.mknodat(dirFd, 'b', n.constants.S_IFBLK | 0o600, 7, 123456);
      fs.writeFileSync(path.join(dir, 'f'), '');
      const st = (name: string) => n.lstatat(dirFd, name);
      expect(isBlockDevice(st('b'), 7, 123456)).toBe(true);
      expect(isBlockDevice(st('b'), 7, 123457)).toBe(false);
      expect(isBlockDevice(st('b'), 8, 123456)).toBe(false);
      expect(isBlockDevice(n.lstatat(devFd, 'null'), 1, 3)).toBe(false); // the char device 1:3
      expect(isBlockDevice(st('f'), 0, 0)).toBe(false);
      expect(isBlockDevice(st('.'), 0, 0)).toBe(false);
      expect(isBlockDevice(null, 7, 0)).toBe(false);
    } finally {
      n.close(dirFd);
      n.close(devFd);
      removeTree(dir);
    }
  });

  it('the host node of a loop device is /dev/loopN', () => {
    expect(hostLoopNode(0)).toBe('/dev/loop0');
    expect(hostLoopNode(1048575)).toBe('/dev/loop1048575');
  });
});
