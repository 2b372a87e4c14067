// Issue 13, the OCI part: `loopfs oci-broker` keeps every container's /dev live (real podman,
// runc). After the container has started it attaches more devices than its pool held: each
// new device appears as /dev/loopK within 1 s (pool refill after util-linux bound a pool
// device; the broker's devices in the rootless case), the partitions `partx -a` adds as
// /dev/loopKpM, readable through the device cgroup; `partx -d` and detaching make them go.
// Nothing of another instance (nor a host device's partitions) ever appears. Each test has
// its own sandbox, runtime dir, hooks, podman storage and oci-broker; see support.ts.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readLoopState } from '../helpers/devices.js';
import { BrokerSandbox, Server } from '../broker/support.js';
import { MiB, sleep } from '../instance/support.js';
import { COMMON_FLAGS, installHooks, OUR_LOSETUP, Podman, podmanSkipReason, REPO_VOLUME, ROOTFUL_FLAGS, SubIdRanges, text } from './support.js';

const reason = podmanSkipReason('OCI live /dev') ?? (spawnSync('partx', ['--version']).status === 0 ? undefined : 'partx is not installed');
// on cgroup v1 the hook grants the pool and the broker every later device and partition
const v1 = fs.existsSync('/sys/fs/cgroup/devices/devices.allow');

/** An MBR with two Linux partitions: 1 MiB at LBA 2048, 1 MiB at LBA 4096. */
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

/** Shell helpers in the container: wait (20 x 50 ms, about 1 s) for a name to come or go. */
const WAIT = `export PATH=/usr/sbin:/usr/bin:/sbin:/bin
appeared() { i=0; while [ "$i" -lt 20 ]; do if [ -e "$1" ]; then echo "$1 appeared"; return; fi; sleep 0.05; i=$((i+1)); done; echo "$1 missing"; }
gone() { i=0; while [ "$i" -lt 20 ]; do if [ ! -e "$1" ] && [ ! -L "$1" ]; then echo "$1 gone"; return; fi; sleep 0.05; i=$((i+1)); done; echo "$1 still there"; }
ndev() { ls /dev | grep -cE '^loop[0-9]+$'; }
nnodes() { ls /dev/loopfs | grep -cE '^loop[0-9]+$'; }
settled() { i=0; while [ "$i" -lt 20 ] && { [ "$(ndev)" != "$1" ] || [ "$(nnodes)" != "$1" ]; }; do sleep 0.05; i=$((i+1)); done; echo "devices $(ndev)"; }
view() { echo "== view"; for l in /dev/loop[0-9]*; do echo "\${l#/dev/}->$(readlink "$l")"; done; for l in /sys/block/loop*; do echo "sys:\${l#/sys/block/}->$(readlink "$l")"; done; ls /dev/loopfs | grep -E '^loop[0-9]' | sed 's/^/node:/'; echo "== end"; }
`;

/** The "== view" section of an output, as lines. */
function section(out: string[], from: number): string[] {
  const i = out.indexOf('== view', from);
  const j = out.indexOf('== end', i);
  return out.slice(i + 1, j);
}

/** The lines `view` must print for a container holding `disks` (K -> minor) and `parts` (K -> numbers). */
function expectedView(disks: Map<number, number>, parts: Map<number, number[]> = new Map()): string[] {
  const ks = [...disks.keys()].sort((a, b) => a - b);
  const links: string[] = [];
  for (const k of ks) {
    links.push(`loop${k}->loopfs/loop${disks.get(k)}`);
    for (const p of parts.get(k) ?? []) links.push(`loop${k}p${p}->loopfs/loop${disks.get(k)}p${p}`);
  }
  // the shell glob sorts by name: loop1 < loop10 < loop1p1 (C locale collation of ASCII)
  const sys = ks.map((k) => `sys:loop${k}->/sys/devices/virtual/block/loop${disks.get(k)}`);
  const nodes: string[] = [];
  for (const k of ks) {
    nodes.push(`node:loop${disks.get(k)}`);
    for (const p of parts.get(k) ?? []) nodes.push(`node:loop${disks.get(k)}p${p}`);
  }
  return [...links.sort(), ...sys.sort(), ...nodes.sort()];
}

/** Sorted the way `view` prints: links and sys entries by the shell's glob, nodes by ls. */
function normalize(lines: string[]): string[] {
  const links = lines.filter((l) => /^loop/.test(l)).sort();
  const sys = lines.filter((l) => l.startsWith('sys:')).sort();
  const nodes = lines.filter((l) => l.startsWith('node:')).sort();
  return [...links, ...sys, ...nodes];
}

/** The devices the instance in DIR holds: its claims (the machine-wide record of ownership). */
const minorsOf = (sb: BrokerSandbox, dir: string): number[] =>
  sb
    .claims()
    .filter((c) => c.dir === dir)
    .map((c) => c.minor)
    .sort((a, b) => a - b);

/** The minor of the instance's device bound to `file` (as the binder named it). */
function boundTo(minors: number[], file: string): number {
  const m = minors.filter((n) => readLoopState(`loop${n}`)?.backingFile === file);
  if (m.length !== 1) throw new Error(`expected one device bound to ${file}, found ${m.join(' ') || 'none'}`);
  return m[0];
}

/** Another instance and a host device, both with partitions: nothing of them may reach a container. */
interface Strangers {
  otherDir: string;
  otherMinor: number;
  hostMinor: number;
}

async function strangers(sb: BrokerSandbox): Promise<Strangers> {
  const img = sb.path('other.img');
  mbrImage(img);
  const otherDir = sb.path('other');
  await sb.create(otherDir);
  const r = await sb.losetup(['--instance', otherDir, '-f', '--show', '-P', img]);
  expect(text(r.stderr)).toBe('');
  const otherNode = text(r.stdout).trim();
  const pxo = spawnSync('partx', ['-a', otherNode], { encoding: 'utf8' });
  expect(pxo.status, pxo.stderr).toBe(0);
  const hostImg = sb.path('hostdisk.img');
  mbrImage(hostImg);
  // util-linux on the host, with a partition scan (BLKPG needs it); teardown detaches it
  const hostDev = execFileSync('/usr/sbin/losetup', ['-f', '--show', '-P', hostImg], { encoding: 'utf8' }).trim();
  const px = spawnSync('partx', ['-a', hostDev], { encoding: 'utf8' });
  expect(px.status, px.stderr).toBe(0);
  return { otherDir, otherMinor: Number(path.basename(otherNode).slice(4)), hostMinor: Number(path.basename(hostDev).slice(4)) };
}

/** No name in the container's /dev or /dev/loopfs reaches a device of `s`. */
function expectNoStrangers(view: string[], s: Strangers): void {
  const minors = view.flatMap((l) => [...l.matchAll(/loop(\d+)(?:p\d+)?$/g)].map((m) => Number(m[1])));
  for (const l of view.filter((x) => x.includes('loopfs/') || x.startsWith('node:') || x.startsWith('sys:'))) {
    const m = /loop(\d+)(?:p\d+)?$/.exec(l);
    expect(m, l).not.toBeNull();
  }
  expect(minors.filter((m) => m === s.otherMinor || m === s.hostMinor)).toEqual([]);
}

interface Ctx {
  sb: BrokerSandbox;
  podman: Podman;
  broker: Server;
  ranges: SubIdRanges | null;
  ids: string[];
}

async function setUp(prefix: string, rootless: boolean): Promise<Ctx> {
  const sb = new BrokerSandbox(prefix);
  const ranges = rootless ? new SubIdRanges(sb.user) : null;
  ranges?.add();
  const hooks = sb.path('hooks.d');
  const r = await installHooks(sb, hooks);
  expect(r.exitCode).toBe(0);
  fs.chmodSync(hooks, 0o755);
  const podman = new Podman(sb, rootless ? 'rootless' : 'rootful', hooks, rootless ? { user: sb.user } : {});
  const broker = await Server.launch(sb, ['oci-broker']);
  return { sb, podman, broker, ranges, ids: [] };
}

async function tearDown(ctx: Ctx | null): Promise<void> {
  if (!ctx) return;
  try {
    for (const id of ctx.ids) await ctx.podman.rmForce(id);
    // podman's poststop follows rm -f asynchronously: wait for the container instances to go
    const oci = path.join(ctx.sb.runtime, 'oci');
    const left = () => {
      try {
        return fs.readdirSync(oci).flatMap((u) => fs.readdirSync(path.join(oci, u)));
      } catch {
        return [];
      }
    };
    for (let i = 0; i < 100 && left().length > 0; i++) await sleep(100);
    await ctx.broker.stop();
    ctx.podman.stopPause();
    ctx.ranges?.remove();
  } finally {
    await ctx.sb.teardown();
  }
}

/** CPU time (clock ticks) of a process so far: utime + stime. */
function cpuTicks(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

/** The broker reported no failed sync, and sleeps without events (no timer: at most a stray host event). */
async function expectQuietBroker(broker: Server): Promise<void> {
  expect(broker.stderr.join('').split('\n').filter((l) => l.includes('live sync'))).toEqual([]);
  const before = cpuTicks(broker.pid);
  await sleep(1000);
  expect(cpuTicks(broker.pid) - before).toBeLessThanOrEqual(2);
}

/** Host pid of the container's init. */
async function initPid(podman: Podman, id: string): Promise<number> {
  return Number(text((await podman.run(['inspect', '-f', '{{.State.Pid}}', id])).stdout).trim());
}

/** Wait (host side, 10 ms steps) until `cond` holds; the time it took, or null after `ms`. */
async function within(ms: number, cond: () => boolean): Promise<number | null> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) return null;
    await sleep(10);
  }
  return Date.now() - t0;
}

/**
 * The instance's devices once it has settled: a container's /dev lets go of a device
 * before the device leaves the instance (LOOP_CTL_REMOVE takes tens of milliseconds), so
 * the instance is read again until it holds `want` devices, for at most 1 s.
 */
async function settledMinors(sb: Parameters<typeof minorsOf>[0], dir: string, want: number): Promise<number[]> {
  const t0 = Date.now();
  let m = minorsOf(sb, dir);
  while (m.length !== want && Date.now() - t0 < 1000) {
    await new Promise((r) => setTimeout(r, 20));
    m = minorsOf(sb, dir);
  }
  return m;
}

const lexists = (p: string) => {
  try {
    fs.lstatSync(p);
    return true;
  } catch {
    return false;
  }
};

describe.skipIf(!!reason)('oci-broker keeps a rootful container\'s /dev live (hook)', () => {
  let ctx: Ctx | null = null;
  beforeEach(async () => {
    ctx = await setUp('loopfs-live-rf', false);
  });
  afterEach(async () => {
    await tearDown(ctx);
    ctx = null;
  });

  it('util-linux attaches more devices than the pool held: each refill appears as /dev/loopK within 1 s, partx -a partitions as /dev/loopKpM (readable), and they go again', async () => {
    const { sb, podman } = ctx!;
    const s = await strangers(sb);
    const disk = sb.path('disk.img');
    mbrImage(disk);
    // cgroup v1: no device flag (the hook grants the pool, the broker the rest); else every loop device
    const flags = [...COMMON_FLAGS, '--annotation', 'io.loopfs.pool=1', '--cap-add=SYS_ADMIN', ...(v1 ? [] : ROOTFUL_FLAGS)];
    const id = await podman.start(flags, [`${disk}:/disk`, `${sb.image}:/img`]);
    ctx!.ids.push(id);
    const dir = path.join(sb.runtime, 'oci', '0', id.slice(0, 32));
    const pool = minorsOf(sb, dir);
    expect(pool.length).toBe(1);

    const r = await podman.exec(
      id,
      `${WAIT}view
losetup -f --show /disk
appeared /dev/loop1
losetup -f --show /img
appeared /dev/loop2
losetup -f --show /img
appeared /dev/loop3
partx -a /dev/loop0 && echo partx-added
appeared /dev/loop0p1
appeared /dev/loop0p2
head -c 4096 /dev/loop0p2 | wc -c
losetup -a | sort
view
partx -d --nr 1:2 /dev/loop0 && echo partx-deleted
gone /dev/loop0p1
gone /dev/loop0p2
losetup -d /dev/loop0 /dev/loop1 /dev/loop2 && echo detached
settled 1
view`,
    );
    expect(text(r.stderr)).toBe('');
    expect(r.exitCode).toBe(0);
    const out = text(r.stdout).split('\n');
    expect(section(out, 0)).toEqual(expectedView(new Map([[0, pool[0]]])));
    const at = out.indexOf('== end') + 1;
    const { dev, ino } = fs.statSync(disk);
    const img = fs.statSync(sb.image);
    expect(out.slice(at, at + 14)).toEqual([
      '/dev/loop0',
      '/dev/loop1 appeared',
      '/dev/loop1',
      '/dev/loop2 appeared',
      '/dev/loop2',
      '/dev/loop3 appeared',
      'partx-added',
      '/dev/loop0p1 appeared',
      '/dev/loop0p2 appeared',
      '4096',
      `/dev/loop0: [${dev}]:${ino} (/disk)`,
      `/dev/loop1: [${img.dev}]:${img.ino} (/img)`,
      `/dev/loop2: [${img.dev}]:${img.ino} (/img)`,
      '== view',
    ]);
    // the full view: four devices (loop0 the pool's, loop1-3 the refills, by arrival), the
    // partitions of loop0, and the instance's nodes behind them (its directory, bound at /dev/loopfs)
    const full = section(out, at);
    const disks = new Map<number, number>();
    for (const l of full) {
      const m = /^loop(\d+)->loopfs\/loop(\d+)$/.exec(l);
      if (m) disks.set(Number(m[1]), Number(m[2]));
    }
    expect([...disks.keys()].sort()).toEqual([0, 1, 2, 3]);
    expect(disks.get(0)).toBe(pool[0]);
    expect(new Set(disks.values()).size).toBe(4);
    expect(normalize(full)).toEqual(expectedView(disks, new Map([[0, [1, 2]]])));
    expectNoStrangers(full, s);
    const after = out.indexOf('== end', at) + 1;
    expect(out.slice(after, after + 5)).toEqual(['partx-deleted', '/dev/loop0p1 gone', '/dev/loop0p2 gone', 'detached', 'devices 1']);
    // one idle device stays (the pool), as /dev/loop0: busybox probes from there
    const last = section(out, after);
    const left = await settledMinors(sb, dir, 1);
    expect(left.length).toBe(1);
    expect(normalize(last)).toEqual(expectedView(new Map([[0, left[0]]])));
    // the device cgroup grants exactly what the instance holds now (v1)
    if (v1) {
      const pid = await initPid(podman, id);
      const cg = fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.split(':')[1]?.split(',').includes('devices'))!.split(':')[2];
      const rules = fs
        .readFileSync(`/sys/fs/cgroup/devices${cg}/devices.list`, 'utf8')
        .split('\n')
        .filter((l) => /^b (7|259):/.test(l));
      expect(rules).toEqual([`b 7:${left[0]} rw`]);
    }
    await expectQuietBroker(ctx!.broker);
  });
});

describe.skipIf(!!reason)('oci-broker keeps a rootless container\'s /dev live', () => {
  let ctx: Ctx | null = null;
  beforeEach(async () => {
    ctx = await setUp('loopfs-live-rl', true);
  });
  afterEach(async () => {
    await tearDown(ctx);
    ctx = null;
  });

  it('devices from the broker (our losetup) and the refill appear as /dev/loopK within 1 s; partitions added on the host as /dev/loopKpM; they go again', async () => {
    const { sb, podman } = ctx!;
    const s = await strangers(sb);
    const disk = sb.path('disk.img');
    mbrImage(disk);
    sb.giveToUser(disk);
    const id = await podman.start([...COMMON_FLAGS, '--annotation', 'io.loopfs.pool=1'], [`${disk}:/disk`, `${sb.image}:/img`, REPO_VOLUME]);
    ctx!.ids.push(id);
    const dir = path.join(sb.runtime, 'oci', String(sb.user.uid), id.slice(0, 32));
    const pool = minorsOf(sb, dir);
    expect(pool.length).toBe(1);

    const r = await podman.exec(
      id,
      `${WAIT}losetup -f --show /disk
appeared /dev/loop1
${OUR_LOSETUP} -f /img && echo ours-1
appeared /dev/loop2
${OUR_LOSETUP} -f /img && echo ours-2
appeared /dev/loop3
losetup -a | sort
view`,
    );
    expect(text(r.stderr)).toBe('');
    expect(r.exitCode).toBe(0);
    const out = text(r.stdout).split('\n');
    const { dev, ino } = fs.statSync(disk);
    const img = fs.statSync(sb.image);
    expect(out.slice(0, 9)).toEqual([
      '/dev/loop0',
      '/dev/loop1 appeared',
      'ours-1',
      '/dev/loop2 appeared',
      'ours-2',
      '/dev/loop3 appeared',
      `/dev/loop0: [${dev}]:${ino} (/disk)`,
      `/dev/loop1: [${img.dev}]:${img.ino} (/img)`,
      `/dev/loop2: [${img.dev}]:${img.ino} (/img)`,
    ]);
    const minors = minorsOf(sb, dir);
    expect(minors.length).toBe(4);
    const k0 = boundTo(minors, '/disk');
    expect(k0).toBe(pool[0]);
    const view = section(out, 0);
    const disks = new Map<number, number>([[0, k0]]);
    for (const l of view) {
      const m = /^loop([123])->loopfs\/loop(\d+)$/.exec(l);
      if (m) disks.set(Number(m[1]), Number(m[2]));
    }
    expect([...disks.values()].sort((a, b) => a - b)).toEqual(minors);
    expect(normalize(view)).toEqual(expectedView(disks));
    expectNoStrangers(view, s);

    // partitions, added on the host against the instance's node (BLKPG needs CAP_SYS_ADMIN)
    const pid = await initPid(podman, id);
    const devDir = `/proc/${pid}/root/dev`;
    expect(spawnSync('partx', ['-a', path.join(dir, `loop${k0}`)]).status).toBe(0);
    const tookP = await within(1000, () => lexists(`${devDir}/loop0p1`) && lexists(`${devDir}/loop0p2`));
    expect(tookP, 'partitions within 1 s').not.toBeNull();
    expect(fs.readlinkSync(`${devDir}/loop0p2`)).toBe(`loopfs/loop${k0}p2`);
    const st = fs.statSync(path.join(dir, `loop${k0}p2`));
    expect({ uid: st.uid, gid: st.gid, mode: st.mode & 0o7777 }).toEqual({ uid: sb.user.uid, gid: sb.user.gid, mode: 0o660 });
    const rp = await podman.exec(id, `${WAIT}head -c 4096 /dev/loop0p2 | wc -c\nview`);
    expect(text(rp.stderr)).toBe('');
    const outP = text(rp.stdout).split('\n');
    expect(outP[0]).toBe('4096');
    const viewP = section(outP, 0);
    expect(normalize(viewP)).toEqual(expectedView(disks, new Map([[0, [1, 2]]])));
    expectNoStrangers(viewP, s);

    expect(spawnSync('partx', ['-d', path.join(dir, `loop${k0}`)]).status).toBe(0);
    const goneP = await within(1000, () => !lexists(`${devDir}/loop0p1`) && !lexists(`${devDir}/loop0p2`));
    expect(goneP, 'partitions gone within 1 s').not.toBeNull();

    const rd = await podman.exec(id, `${WAIT}losetup -d /dev/loop0 && ${OUR_LOSETUP} -d /dev/loop1 /dev/loop2 && echo detached\nsettled 1\nview`);
    expect(text(rd.stderr)).toBe('');
    const outD = text(rd.stdout).split('\n');
    expect(outD.slice(0, 2)).toEqual(['detached', 'devices 1']);
    const left = await settledMinors(sb, dir, 1);
    expect(left.length).toBe(1);
    expect(normalize(section(outD, 0))).toEqual(expectedView(new Map([[0, left[0]]])));
    await expectQuietBroker(ctx!.broker);
  });
});
