// Issue 8, OCI hook: real podman (runc), rootful and rootless, with the hook files written by
// the real `loopfs install --oci-hooks`. Inside a container annotated io.loopfs.instance=true,
// util-linux `losetup -f --show` attaches a device of the container's private instance, `mount
// -o loop` works where the container may mount (rootful, CAP_SYS_ADMIN), the host's devices are
// neither visible in /dev nor touched, two containers get disjoint devices, and after `podman
// rm -f` nothing is left. See support.ts for the hygiene rules.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readLoopState } from '../helpers/devices.js';
import { BrokerSandbox, HELLO, Server } from '../broker/support.js';
import { sleep } from '../instance/support.js';
import { ociHookInstalled, ociHookStatus } from '../../src/oci/hooks-json.js';
import {
  COMMON_FLAGS,
  installHooks,
  OUR_LOSETUP,
  Podman,
  podmanSkipReason,
  REPO_VOLUME,
  ROOTFUL_FLAGS,
  SubIdRanges,
  text,
} from './support.js';

const reason = podmanSkipReason('OCI hook with podman');
// podman gives a container with a user namespace no device rules, even those asked for:
// only the hook's own rules (cgroup v1) let it open its devices
const v1Reason = fs.existsSync('/sys/fs/cgroup/devices/devices.allow') ? undefined : 'no cgroup v1 devices controller';
if (!reason && v1Reason) console.warn(`[skip] OCI hook device-cgroup tests: ${v1Reason}`);

/** Instance directories of containers in the sandbox's runtime dir: RUNTIME/oci/UID/ID. */
function containerInstances(sb: BrokerSandbox): string[] {
  const root = path.join(sb.runtime, 'oci');
  const out: string[] = [];
  for (const uid of safeList(root)) for (const id of safeList(path.join(root, uid))) out.push(path.join(root, uid, id));
  return out;
}

function safeList(d: string): string[] {
  try {
    return fs.readdirSync(d);
  } catch {
    return [];
  }
}

/** lo_inode of loopN as the host sees it (the path in sysfs is the container's: /img). */
function backingInode(minor: number): number {
  return Number(execFileSync('/usr/sbin/losetup', ['-n', '-O', 'BACK-INO', `/dev/loop${minor}`], { encoding: 'utf8' }).trim());
}

/** Minors containers of this file had; none may stay bound to a container's /img. */
const seen: number[] = [];

/** Everything a container's instance may leave behind, for "nothing is left" checks. */
function leftovers(sb: BrokerSandbox, podman: Podman): Record<string, unknown> {
  return {
    instances: containerInstances(sb),
    claims: sb.claims().map((c) => c.minor),
    registry: sb.registry().map((e) => e.dir),
    // the host's own device (host.img) stays bound on purpose
    bound: sb.bound().filter((s) => !s.backingFile.endsWith('/host.img')).map((s) => `${s.dev} ${s.backingFile}`),
    mounts: sb.mounts().filter((m) => m !== sb.runtime),
    containerBound: seen.filter((m) => readLoopState(`loop${m}`)?.backingFile === '/img'),
    conmon: podman.conmons(),
  };
}

const NOTHING = { instances: [], claims: [], registry: [], bound: [], mounts: [], containerBound: [], conmon: [] };

/** Wait until podman's cleanup (poststop) has run: it is asynchronous after rm -f. */
async function waitNothingLeft(sb: BrokerSandbox, podman: Podman): Promise<Record<string, unknown>> {
  let now = leftovers(sb, podman);
  for (let i = 0; i < 100 && JSON.stringify(now) !== JSON.stringify(NOTHING); i++) {
    await sleep(100);
    now = leftovers(sb, podman);
  }
  return now;
}

/**
 * The container's view, four lines: the /dev/loopfs/loopN nodes; the loop names in /dev;
 * each /dev/loopK link as "loopK->TARGET"; each /sys/block/loop* entry the same way.
 */
const LIST_DEV = [
  'ls /dev/loopfs | grep -E "^loop[0-9]+$" | tr "\\n" " "; echo',
  'ls /dev | grep -E "^loop([0-9]+|-control)$" | tr "\\n" " "; echo',
  'for l in /dev/loop[0-9]*; do printf "%s->%s " "${l#/dev/}" "$(readlink "$l")"; done; echo',
  'for l in /sys/block/loop*; do printf "%s->%s " "${l#/sys/block/}" "$(readlink "$l")"; done; echo',
  '',
].join('\n');

/**
 * The layout LIST_DEV must show (lines 1-3, each as a sorted list of words) for an instance
 * holding `minors`: /dev/loopK -> loopfs/loopN and /sys/block/loopK -> the real sysfs
 * directory of loopN, K = 0, 1, ... in ascending order of N, so that busybox's probe from
 * loop0 and util-linux's /sys/block scan both find exactly the instance's devices.
 */
function containerLayout(minors: number[]): { names: string[]; links: string[]; sys: string[] } {
  const sorted = [...minors].sort((a, b) => a - b);
  return {
    names: sorted.map((_, k) => `loop${k}`).sort(),
    links: sorted.map((m, k) => `loop${k}->loopfs/loop${m}`).sort(),
    sys: sorted.map((m, k) => `loop${k}->/sys/devices/virtual/block/loop${m}`).sort(),
  };
}

/** Line i of a LIST_DEV output as a sorted list of words. */
const words = (line: string): string[] => line.trim().split(' ').filter(Boolean).sort();

describe.skipIf(!!reason)('OCI hook: rootful podman', () => {
  let sb: BrokerSandbox;
  let podman: Podman;
  let hooks: string;
  let hostDev = '';
  let hostFile = '';

  beforeAll(async () => {
    sb = new BrokerSandbox('loopfs-oci');
    // the runtime directory on a nodev tmpfs, as /run is on systemd hosts: the bind at
    // /dev/loopfs must still reach the devices
    fs.mkdirSync(sb.runtime);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'nodev,nosuid,mode=0755', 'loopfs-oci-test', sb.runtime]);
    hooks = sb.path('hooks.d');
    const r = await installHooks(sb, hooks);
    expect(text(r.stderr)).toBe('');
    expect(r.exitCode).toBe(0);
    podman = new Podman(sb, 'rootful', hooks);
    // a device of the host's, which no container may see or touch
    hostFile = sb.file('host.img');
    hostDev = sb.hostAttach(hostFile);
  });

  afterAll(async () => {
    if (!sb) return;
    await sb.teardown();
  });

  it('install --oci-hooks wrote both stage files, and ociHookInstalled sees them', () => {
    expect(fs.readdirSync(hooks).sort()).toEqual(['loopfs-createRuntime.json', 'loopfs-poststop.json']);
    const doc = JSON.parse(fs.readFileSync(path.join(hooks, 'loopfs-createRuntime.json'), 'utf8'));
    expect(doc.stages).toEqual(['createRuntime']);
    expect(doc.hook.env).toContain(`LOOPFS_RUNTIME_DIR=${sb.runtime}`);
    expect(ociHookInstalled([hooks])).toBe(true);
    expect(ociHookStatus([sb.path('nowhere')])[0].broken).toEqual(['createRuntime', 'poststop']);
  });

  it('a container gets its own devices: losetup -f --show and mount -o loop work, the host device stays unseen and untouched; rm -f leaves nothing', async () => {
    const id = await podman.start([...COMMON_FLAGS, ...ROOTFUL_FLAGS, '--cap-add=SYS_ADMIN'], [`${sb.image}:/img`]);
    try {
      const dir = path.join(sb.runtime, 'oci', '0', id.slice(0, 32));
      // the instance exists on the host, with the default pool of 4, owned by the container's root
      const state = sb.state(dir);
      expect(state?.owner).toEqual({ uid: 0, gid: 0 });
      const minors = Object.keys(state?.devices ?? {}).map(Number).sort((a, b) => a - b);
      expect(minors.length).toBe(4);

      const r = await podman.exec(
        id,
        `${LIST_DEV}
dev=$(losetup -f --show /img); echo "$dev"
losetup -a
mkdir -p /mnt/m && mount -o loop /img /mnt/m && cat /mnt/m/hello.txt && umount /mnt/m
ls -la /dev/loop-control 2>&1 | head -1
losetup /dev/loopfs/$(ls /dev/loopfs | grep -E '^loop[0-9]+$' | tail -1) /img && losetup -d /dev/loopfs/$(ls /dev/loopfs | grep -E '^loop[0-9]+$' | tail -1) && echo direct-ok
grep ' /dev/loopfs ' /proc/self/mountinfo | cut -d' ' -f6
grep ' /sys/block ' /proc/self/mountinfo | cut -d' ' -f6
ls /sys/block | grep -v '^loop' | tr '\\n' ' '; echo`,
      );
      expect(text(r.stderr)).toBe('');
      expect(r.exitCode).toBe(0);
      const out = text(r.stdout).split('\n');
      const layout = containerLayout(minors);
      expect(words(out[0])).toEqual(minors.map((m) => `loop${m}`).sort());
      expect(words(out[1])).toEqual(layout.names);
      expect(words(out[2])).toEqual(layout.links);
      expect(words(out[3])).toEqual(layout.sys);
      // util-linux scanned /dev (there is no loop-control) and took the first device: loop0,
      // the instance's lowest minor; -a names it as the container does
      expect(out[4]).toBe('/dev/loop0');
      expect(out[5]).toBe(`/dev/loop0: [${fs.statSync(sb.image).dev}]:${fs.statSync(sb.image).ino} (/img)`);
      expect(out[6]).toBe(HELLO.trim());
      expect(out[7]).toMatch(/No such file or directory/);
      // the instance's own nodes work through the bind, although the runtime dir is nodev
      expect(out[8]).toBe('direct-ok');
      expect(out[9].split(',').sort()).toEqual(['noexec', 'nosuid', 'relatime', 'ro']);
      expect(out[10].split(',').sort()).toEqual(['nodev', 'noexec', 'nosuid', 'relatime', 'ro']);
      // the other block devices stay in the container's /sys/block, the host's loop devices do not
      expect(words(out[11])).toEqual(fs.readdirSync('/sys/block').filter((n) => !n.startsWith('loop')).sort());
      // seen from the host: that device is bound to the image, the host's device is as it was
      expect(backingInode(minors[0])).toBe(fs.statSync(sb.image).ino);
      seen.push(...minors);
      expect(readLoopState(path.basename(hostDev))?.backingFile).toBe(hostFile);
      expect(minors).not.toContain(Number(path.basename(hostDev).slice(4)));
    } finally {
      const rm = await podman.rmForce(id);
      expect(text(rm.stderr)).toBe('');
    }
    expect(await waitNothingLeft(sb, podman)).toEqual(NOTHING);
    expect(readLoopState(path.basename(hostDev))?.backingFile).toBe(hostFile);
  });

  it('busybox and util-linux in one container: busybox losetup -f and mount -o loop from /dev/loop0, util-linux losetup -f; losetup -a of busybox, util-linux and ours name the same devices', async () => {
    const id = await podman.start([...COMMON_FLAGS, ...ROOTFUL_FLAGS, '--cap-add=SYS_ADMIN'], [`${sb.image}:/img`, REPO_VOLUME]);
    try {
      const minors = Object.keys(sb.state(path.join(sb.runtime, 'oci', '0', id.slice(0, 32)))?.devices ?? {})
        .map(Number)
        .sort((a, b) => a - b);
      expect(minors.length).toBe(4);
      seen.push(...minors);
      const r = await podman.exec(
        id,
        `set -e
busybox losetup -f
busybox losetup -f /img
losetup -f --show /img
mkdir -p /mnt/b
busybox mount -o loop /img /mnt/b
cat /mnt/b/hello.txt
awk '$5 == "/mnt/b" { for (i = 7; $i != "-"; i++); print $3, $(i + 2) }' /proc/self/mountinfo
echo "== util-linux"; losetup -a
echo "== busybox"; busybox losetup -a
echo "== ours"; ${OUR_LOSETUP} -a
echo "== util-linux -j"; losetup -j /img | cut -d" " -f1
echo "== ours -j"; ${OUR_LOSETUP} -j /img | cut -d" " -f1
echo "== sysfs"; for d in 0 1 2; do readlink -f /sys/block/loop$d; done`,
      );
      expect(text(r.stderr)).toBe('');
      expect(r.exitCode).toBe(0);
      const { dev, ino } = fs.statSync(sb.image);
      const ul = (k: number) => `/dev/loop${k}: [${dev}]:${ino} (/img)`;
      const out = text(r.stdout).split('\n');
      const section = (title: string) => {
        const i = out.indexOf(`== ${title}`);
        const j = out.findIndex((l, n) => n > i && l.startsWith('== '));
        return out.slice(i + 1, j < 0 ? undefined : j);
      };
      // busybox probes from /dev/loop0: free, then bound; util-linux takes the next one;
      // busybox mount -o loop the one after, mounted as the container names it
      expect(out.slice(0, 4)).toEqual(['/dev/loop0', '/dev/loop1', HELLO.trim(), `7:${minors[2]} /dev/loop2`]);
      // util-linux lists in /sys/block order, and so do we (the same overlay); busybox by number
      expect(section('util-linux').slice().sort()).toEqual([ul(0), ul(1), ul(2)]);
      expect(section('ours')).toEqual(section('util-linux'));
      expect(section('busybox')).toEqual(['/dev/loop0: 0 /img', '/dev/loop1: 0 /img', '/dev/loop2: 0 /img']);
      expect(section('util-linux -j').sort()).toEqual(['/dev/loop0:', '/dev/loop1:', '/dev/loop2:']);
      expect(section('ours -j')).toEqual(section('util-linux -j'));
      // each container name is the instance device of the same rank, and the host agrees
      expect(section('sysfs')).toEqual([...[0, 1, 2].map((k) => `/sys/devices/virtual/block/loop${minors[k]}`), '']);
      for (const k of [0, 1, 2]) expect(backingInode(minors[k])).toBe(ino);
      expect(readLoopState(`loop${minors[3]}`)?.backingFile ?? null).toBeNull();

      const end = await podman.exec(
        id,
        `set -e
busybox umount /mnt/b
busybox losetup -d /dev/loop0
losetup -d /dev/loop1
losetup -a; busybox losetup -a; ${OUR_LOSETUP} -a; echo "."`,
      );
      expect(text(end.stderr)).toBe('');
      // busybox's mount -o loop set autoclear: its umount freed loop2
      expect(text(end.stdout)).toBe('.\n');
    } finally {
      const rm = await podman.rmForce(id);
      expect(text(rm.stderr)).toBe('');
    }
    expect(await waitNothingLeft(sb, podman)).toEqual(NOTHING);
  });

  it.skipIf(!!v1Reason)('a container in a user namespace: refused on a nodev runtime dir; elsewhere its instance is owned by its root as mapped on the host', async () => {
    const map = 400000;
    const flags = [...COMMON_FLAGS, '--uidmap', `0:${map}:65536`, '--gidmap', `0:${map}:65536`, '--annotation', 'io.loopfs.pool=1'];
    // podman gives such a container no device-cgroup rules (node permissions decide) and it
    // cannot make nodes; but its mounts' flags are locked, so the nodev of sb.runtime stays
    await expect(podman.start(flags, [`${sb.image}:/img:ro`])).rejects.toThrow(/mounted nodev: a container with a user namespace cannot use devices/);
    const ps = await podman.run(['ps', '-aq']);
    for (const c of text(ps.stdout).split('\n').filter(Boolean)) await podman.rmForce(c);
    expect(await waitNothingLeft(sb, podman)).toEqual(NOTHING);

    // a second installation of the hooks whose runtime dir is a plain directory
    const runtime2 = sb.path('run2');
    const hooks2 = sb.path('hooks2.d');
    const inst = await sb.loopfs(
      ['install', '--oci-hooks', hooks2, '--no-losetup', '--prefix', sb.path('prefix2'), '--helper-dir', sb.path('helpers2'), '--record', sb.path('install2.json')],
      { env: { LOOPFS_RUNTIME_DIR: runtime2 } },
    );
    expect(inst.exitCode).toBe(0);
    const podman2 = new Podman(sb, 'rootful-userns', hooks2);
    const id = await podman2.start(flags, [`${sb.image}:/img:ro`, REPO_VOLUME]);
    try {
      const dir = path.join(runtime2, 'oci', '0', id.slice(0, 32));
      const state = sb.state(dir);
      expect(state?.owner).toEqual({ uid: map, gid: map });
      const minor = Number(Object.keys(state?.devices ?? {})[0]);
      seen.push(minor);
      // the container's root (host uid 400000) opens the node it owns
      // util-linux and busybox find it as /dev/loop0 and name it so, as do we (REPO_VOLUME)
      const r = await podman2.exec(
        id,
        `id -u; stat -c %u:%g /dev/loopfs/loop[0-9]*; readlink /dev/loop0 /sys/block/loop0; ls /sys/block | grep -c '^loop'
busybox losetup -f; losetup -r -f --show /img; busybox losetup -a; losetup -a | cut -d' ' -f1; ${OUR_LOSETUP} -a | cut -d' ' -f1`,
      );
      expect(text(r.stderr)).toBe('');
      expect(text(r.stdout).split('\n')).toEqual([
        '0',
        '0:0',
        `loopfs/loop${minor}`,
        `/sys/devices/virtual/block/loop${minor}`,
        '1',
        '/dev/loop0',
        '/dev/loop0',
        '/dev/loop0: 0 /img',
        '/dev/loop0:',
        '/dev/loop0:',
        '',
      ]);
      expect(backingInode(minor)).toBe(fs.statSync(sb.image).ino);
    } finally {
      await podman2.rmForce(id);
    }
    // podman's cleanup (poststop) and conmon's exit follow rm -f asynchronously
    for (let i = 0; i < 100 && (safeList(path.join(runtime2, 'claims')).length > 0 || podman2.conmons().length > 0); i++) await sleep(100);
    expect(safeList(path.join(runtime2, 'claims'))).toEqual([]);
    expect(safeList(path.join(runtime2, 'oci', '0'))).toEqual([]);
    expect(podman2.conmons()).toEqual([]);
  });

  it('two containers at once get disjoint devices (io.loopfs.pool), and both are cleaned up', async () => {
    const flags = [...COMMON_FLAGS, ...ROOTFUL_FLAGS, '--annotation', 'io.loopfs.pool=2'];
    const a = await podman.start(flags, [`${sb.image}:/img:ro`]);
    let b = '';
    try {
      b = await podman.start(flags, [`${sb.image}:/img:ro`]);
      // the device losetup took, and the instance node its name links to
      const script = `${LIST_DEV}dev=$(losetup -r -f --show /img); echo "$dev"; readlink "$dev"`;
      const ra = await podman.exec(a, script);
      const rb = await podman.exec(b, script);
      expect(ra.exitCode).toBe(0);
      expect(rb.exitCode).toBe(0);
      const outA = text(ra.stdout).split('\n');
      const outB = text(rb.stdout).split('\n');
      const devsA = words(outA[0]);
      const devsB = words(outB[0]);
      seen.push(...[...devsA, ...devsB].map((d) => Number(d.slice(4))));
      expect(devsA.length).toBe(2);
      expect(devsB.length).toBe(2);
      expect(devsA.filter((d) => devsB.includes(d))).toEqual([]);
      // both name their devices loop0 and loop1, each its own instance's
      const minorsOf = (devs: string[]) => devs.map((d) => Number(d.slice(4)));
      expect(words(outA[2])).toEqual(containerLayout(minorsOf(devsA)).links);
      expect(words(outB[2])).toEqual(containerLayout(minorsOf(devsB)).links);
      expect(outA[4]).toBe('/dev/loop0');
      expect(outB[4]).toBe('/dev/loop0');
      expect(devsA).toContain(path.basename(outA[5]));
      expect(devsB).toContain(path.basename(outB[5]));
    } finally {
      await podman.rmForce(a);
      if (b) await podman.rmForce(b);
    }
    expect(await waitNothingLeft(sb, podman)).toEqual(NOTHING);
  });

  it('refuses to start a container that could reach the host\'s devices (every loop device granted, CAP_MKNOD kept)', async () => {
    await expect(podman.start([...COMMON_FLAGS, '--device-cgroup-rule=b 7:* rw'])).rejects.toThrow(/--cap-drop=MKNOD/);
    // a refused start leaves nothing behind (the hook undid its instance, podman its container)
    await sleep(200);
    const r = await podman.run(['ps', '-aq']);
    for (const id of text(r.stdout).split('\n').filter(Boolean)) await podman.rmForce(id);
    expect(await waitNothingLeft(sb, podman)).toEqual(NOTHING);
  });

  it.skipIf(!!v1Reason)('without any device flag (cgroup v1): exactly the instance\'s devices are granted; a node made for the host\'s device stays denied', async () => {
    const id = await podman.start([...COMMON_FLAGS, '--annotation', 'io.loopfs.pool=2'], [`${sb.image}:/img:ro`]);
    try {
      const state = sb.state(path.join(sb.runtime, 'oci', '0', id.slice(0, 32)));
      const minors = Object.keys(state?.devices ?? {}).map(Number).sort((a, b) => a - b);
      seen.push(...minors);
      const hostMinor = Number(path.basename(hostDev).slice(4));
      const r = await podman.exec(
        id,
        `grep '^b 7:' /sys/fs/cgroup/devices/devices.list | sort
losetup -r -f --show /img | xargs readlink
mknod /tmp/hostdev b 7 ${hostMinor} && (head -c 1 /tmp/hostdev >/tmp/out 2>&1; echo "read=$?"; cat /tmp/out)`,
      );
      const out = text(r.stdout).split('\n');
      expect(out.slice(0, 2)).toEqual(minors.map((m) => `b 7:${m} rw`).sort());
      expect(out[2]).toBe(`loopfs/loop${minors[0]}`);
      // podman's default capabilities include CAP_MKNOD: the node can be made, not opened
      expect(out[3]).toBe('read=1');
      expect(out[4]).toMatch(/Operation not permitted/);
      expect(readLoopState(path.basename(hostDev))?.backingFile).toBe(hostFile);
    } finally {
      await podman.rmForce(id);
    }
    expect(await waitNothingLeft(sb, podman)).toEqual(NOTHING);
  });

  it('a container without the annotation gets nothing', async () => {
    const id = await podman.start(['--security-opt', 'unmask=/sys/dev/block']);
    try {
      const r = await podman.exec(id, 'ls /dev | grep -c loop || true');
      expect(text(r.stdout).trim()).toBe('0');
      expect(containerInstances(sb)).toEqual([]);
    } finally {
      await podman.rmForce(id);
    }
  });

  it('uninstall removes the hook files', async () => {
    const r = await sb.loopfs(['uninstall', '--record', sb.path('install.json')]);
    expect(r.exitCode).toBe(0);
    expect(fs.existsSync(path.join(hooks, 'loopfs-createRuntime.json'))).toBe(false);
    expect(fs.existsSync(path.join(hooks, 'loopfs-poststop.json'))).toBe(false);
    expect(ociHookInstalled([hooks])).toBe(false);
  });
});

describe.skipIf(!!reason)('OCI hook: rootless podman (through loopfs oci-broker)', () => {
  let sb: BrokerSandbox;
  let podman: Podman;
  let ranges: SubIdRanges;
  let broker: Server | null = null;

  beforeAll(async () => {
    sb = new BrokerSandbox('loopfs-oci-rl');
    ranges = new SubIdRanges(sb.user);
    ranges.add();
    const hooks = sb.path('hooks.d');
    const r = await installHooks(sb, hooks);
    expect(r.exitCode).toBe(0);
    fs.chmodSync(hooks, 0o755);
    podman = new Podman(sb, 'rootless', hooks, { user: sb.user });
  });

  afterAll(async () => {
    if (!sb) return;
    try {
      await broker?.stop();
      podman?.stopPause();
      ranges?.remove();
    } finally {
      await sb.teardown();
    }
  });

  async function startBroker(): Promise<Server> {
    broker = await Server.launch(sb, ['oci-broker']);
    return broker;
  }

  it('without the OCI broker the container does not start, and says why', async () => {
    await expect(podman.start([...COMMON_FLAGS])).rejects.toThrow(/rootless containers need 'loopfs oci-broker' running as root/);
    const r = await podman.run(['ps', '-aq']);
    for (const id of text(r.stdout).split('\n').filter(Boolean)) await podman.rmForce(id);
  });

  it('a rootless container gets a brokered instance owned by its user: losetup -f --show works, rm -f leaves nothing', async () => {
    const b = await startBroker();
    const id = await podman.start([...COMMON_FLAGS], [`${sb.image}:/img`]);
    try {
      const dir = path.join(sb.runtime, 'oci', String(sb.user.uid), id.slice(0, 32));
      const state = sb.state(dir);
      expect(state?.owner).toEqual({ uid: sb.user.uid, gid: sb.user.gid });
      const minors = Object.keys(state?.devices ?? {}).map(Number).sort((x, y) => x - y);
      expect(minors.length).toBe(4);
      // served by the broker in the oci-broker process: a socket owned by the user
      const sock = fs.lstatSync(path.join(dir, 'loop-control'));
      expect(sock.isSocket()).toBe(true);
      expect(sock.uid).toBe(sb.user.uid);

      const r = await podman.exec(
        id,
        `${LIST_DEV}
id -u
losetup -f --show /img
losetup -a
readlink /dev/loop-control
mount -o loop /img /mnt 2>&1; echo "mount=$?"`,
      );
      expect(r.exitCode).toBe(0);
      const out = text(r.stdout).split('\n');
      const layout = containerLayout(minors);
      expect(words(out[0])).toEqual(minors.map((m) => `loop${m}`).sort());
      expect(words(out[1])).toEqual([...layout.names, 'loop-control'].sort());
      expect(words(out[2])).toEqual(layout.links);
      expect(words(out[3])).toEqual(layout.sys);
      expect(out[4]).toBe('0');
      expect(out[5]).toBe('/dev/loop0');
      expect(out[6]).toBe(`/dev/loop0: [${fs.statSync(sb.image).dev}]:${fs.statSync(sb.image).ino} (/img)`);
      expect(out[7]).toBe('loopfs/loop-control');
      // unprivileged: the kernel refuses the mount itself (the broker mounts for loopfs's tools)
      expect(out.find((l) => l.startsWith('mount='))).not.toBe('mount=0');
      expect(backingInode(minors[0])).toBe(fs.statSync(sb.image).ino);
      seen.push(...minors);
      expect(b.stderr.join('')).toContain(`uid ${sb.user.uid}: container ${id}`);
    } finally {
      await podman.rmForce(id);
    }
    expect(await waitNothingLeft(sb, podman)).toEqual(NOTHING);
  });

  it('busybox in a rootless container: losetup -f from /dev/loop0; losetup -a of busybox, util-linux and ours name the same devices', async () => {
    await (broker ?? (await startBroker()));
    const id = await podman.start([...COMMON_FLAGS, '--annotation', 'io.loopfs.pool=2'], [`${sb.image}:/img`, REPO_VOLUME]);
    try {
      const dir = path.join(sb.runtime, 'oci', String(sb.user.uid), id.slice(0, 32));
      const minors = Object.keys(sb.state(dir)?.devices ?? {}).map(Number).sort((x, y) => x - y);
      expect(minors.length).toBe(2);
      seen.push(...minors);
      const r = await podman.exec(
        id,
        `set -e
${LIST_DEV}busybox losetup -f
busybox losetup -f /img
losetup -f --show /img
echo "== busybox"; busybox losetup -a
echo "== util-linux"; losetup -a
echo "== ours"; ${OUR_LOSETUP} -a
busybox losetup -d /dev/loop0
${OUR_LOSETUP} -d loop1
echo "== end"; busybox losetup -a; losetup -a; ${OUR_LOSETUP} -a; echo .`,
      );
      expect(text(r.stderr)).toBe('');
      expect(r.exitCode).toBe(0);
      const { dev, ino } = fs.statSync(sb.image);
      const out = text(r.stdout).split('\n');
      const layout = containerLayout(minors);
      expect(words(out[1])).toEqual([...layout.names, 'loop-control'].sort());
      expect(words(out[2])).toEqual(layout.links);
      expect(words(out[3])).toEqual(layout.sys);
      expect(out.slice(4)).toEqual([
        '/dev/loop0',
        '/dev/loop1',
        '== busybox',
        '/dev/loop0: 0 /img',
        '/dev/loop1: 0 /img',
        '== util-linux',
        `/dev/loop0: [${dev}]:${ino} (/img)`,
        `/dev/loop1: [${dev}]:${ino} (/img)`,
        '== ours',
        `/dev/loop0: [${dev}]:${ino} (/img)`,
        `/dev/loop1: [${dev}]:${ino} (/img)`,
        '== end',
        '.',
        '',
      ]);
    } finally {
      await podman.rmForce(id);
    }
    expect(await waitNothingLeft(sb, podman)).toEqual(NOTHING);
  });

  it('refuses, with the reason, where the instances would live on a nodev mount', async () => {
    await (broker ?? (await startBroker()));
    const parent = path.join(sb.runtime, 'oci', String(sb.user.uid));
    fs.mkdirSync(parent, { recursive: true, mode: 0o755 });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'nodev,nosuid,mode=0755', 'loopfs-oci-nodev', parent]);
    try {
      await expect(podman.start([...COMMON_FLAGS])).rejects.toThrow(/mounted nodev: a rootless container cannot use devices through it/);
    } finally {
      execFileSync('umount', [parent]);
    }
    const r = await podman.run(['ps', '-aq']);
    for (const id of text(r.stdout).split('\n').filter(Boolean)) await podman.rmForce(id);
    expect(await waitNothingLeft(sb, podman)).toEqual(NOTHING);
  });

  it('SIGKILL of the container init: the instance goes with it', async () => {
    await (broker ?? (await startBroker()));
    const id = await podman.start([...COMMON_FLAGS, '--annotation', 'io.loopfs.pool=1'], [`${sb.image}:/img`]);
    try {
      const r = await podman.exec(id, 'losetup -f --show /img');
      expect(r.exitCode).toBe(0);
      expect(containerInstances(sb).length).toBe(1);
      const pid = Number(text((await podman.run(['inspect', '-f', '{{.State.Pid}}', id])).stdout).trim());
      expect(pid).toBeGreaterThan(1);
      process.kill(pid, 'SIGKILL');
      for (let i = 0; i < 100 && containerInstances(sb).length > 0; i++) await sleep(100);
      expect(containerInstances(sb)).toEqual([]);
    } finally {
      await podman.rmForce(id);
    }
    expect(await waitNothingLeft(sb, podman)).toEqual(NOTHING);
  });
});

