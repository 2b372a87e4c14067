// Issue 4, "Partitions": `-P` in an instance exposes DIR/loopNpM nodes for the partitions
// too. This kernel is built without partition-table parsers, so the kernel's own scan finds
// nothing; partitions are added with BLKPG (`partx -a`, which parses the table in userspace),
// the way they appear on such kernels, and `loopfs instance gc` publishes and retires them.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { instanceSkipReason, loopEntries, MiB, nodeInfo, Sandbox, skipTitle, text } from './support.js';

const reason =
  instanceSkipReason('instance partition tests') ?? (spawnSync('partx', ['--version']).status === 0 ? undefined : 'partx is not installed');

/** An MBR with two Linux partitions: 1 MiB + 1 MiB at LBA 2048, 2 MiB + 1 MiB at LBA 4096. */
function mbrImage(file: string): void {
  const b = Buffer.alloc(4 * MiB);
  const entry = (i: number, start: number, count: number) => {
    const o = 446 + 16 * i;
    b[o + 4] = 0x83;
    b.writeUInt32LE(start, o + 8);
    b.writeUInt32LE(count, o + 12);
  };
  entry(0, 2048, 2048);
  entry(1, 4096, 2048);
  b[510] = 0x55;
  b[511] = 0xaa;
  fs.writeFileSync(file, b);
}

describe.skipIf(reason)(skipTitle('instance partitions', reason), () => {
  let sb: Sandbox;
  beforeEach(() => {
    sb = new Sandbox('loopfs-parts');
  });
  afterEach(async () => {
    await sb.cleanup();
  });

  it('-P: partition nodes appear as DIR/loopNpM with the instance owner, and go away after -d', async () => {
    const dir = sb.path('inst');
    await sb.create(dir, ['--owner', '4321:4321']);
    const img = sb.path('disk.img');
    mbrImage(img);

    const r = await sb.losetup(['--instance', dir, '-f', '--show', '-P', img]);
    expect(text(r.stderr)).toBe('');
    expect(r.exitCode).toBe(0);
    const node = text(r.stdout).trim();
    const name = node.slice(node.lastIndexOf('/') + 1);

    // BLKPG: what a kernel without parsers needs (with parsers, -P already found them)
    const px = spawnSync('partx', ['-a', node], { encoding: 'utf8' });
    expect(px.status, px.stderr).toBe(0);
    const gc = await sb.loopfs(['instance', 'gc']);
    expect(gc.exitCode, text(gc.stderr)).toBe(0);

    expect(loopEntries(dir).sort()).toEqual([name, `${name}p1`, `${name}p2`]);
    for (const p of [`${name}p1`, `${name}p2`]) {
      const info = nodeInfo(`${dir}/${p}`)!;
      expect(info.block).toBe(true);
      expect({ uid: info.uid, gid: info.gid, mode: info.mode }).toEqual({ uid: 4321, gid: 4321, mode: 0o660 });
      const sys = fs.readFileSync(`/sys/block/${name}/${p}/dev`, 'utf8').trim();
      expect(`${info.major}:${info.minor}`).toBe(sys);
    }
    // the partition node reads the partition's bytes: 1 MiB
    const size = spawnSync('blockdev', ['--getsize64', `${dir}/${name}p1`], { encoding: 'utf8' });
    expect(size.stdout.trim()).toBe(String(MiB));

    // a partition that goes away is unpublished by the next gc
    expect(spawnSync('partx', ['-d', '--nr', '2', node]).status).toBe(0);
    await sb.loopfs(['instance', 'gc']);
    expect(loopEntries(dir).sort()).toEqual([name, `${name}p1`]);

    const d = await sb.losetup(['--instance', dir, '-d', node]);
    expect(text(d.stderr)).toBe('');
    expect(d.exitCode).toBe(0);
    expect(loopEntries(dir)).toEqual([]);
  });
});
