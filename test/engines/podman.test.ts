// Issue 12, podman: `podman --runtime SHIM` (bin/loopfs-runtime behind a shim that names the
// sandbox's runtime config), rootful with --uidmap (an unprivileged container started by
// root) and rootless (as the test user, through `loopfs oci-broker`); and without the
// wrapper, with `--security-opt seccomp=FILE` from `loopfs seccomp-profile` plus the hooks
// from `loopfs install --oci-hooks`. In each, the container's root runs unmodified
// `mount -o loop IMG /mnt`: it reads back, a write persists, umount frees the device; and the
// refusals hold. Podman's storage and configuration are the sandbox's (test/oci/support.ts).
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readLoopState } from '../helpers/devices.js';
import { BrokerSandbox, HELLO, Server } from '../broker/support.js';
import { installHooks, Podman, SubIdRanges } from '../oci/support.js';
import {
  answers,
  describeRun,
  deviceNode,
  engineSkipReason,
  instanceOf,
  NOTHING,
  RuntimeShim,
  text,
  waitNothingLeft,
  type Engine,
} from './support.js';
import { ONE, UL_EPERM, btrfsImage, writtenOnHost } from './checks.js';

const reason = engineSkipReason('podman with loopfs-runtime', ['podman']);
const v1Reason = fs.existsSync('/sys/fs/cgroup/devices/devices.allow') ? undefined : 'no cgroup v1 devices controller';
if (!reason && v1Reason) console.warn(`[skip] podman --uidmap with loopfs-runtime: ${v1Reason} (podman gives user-namespace containers no device rules)`);

function podmanEngine(p: Podman, runtimeFlags: string[]): Engine {
  return {
    name: 'podman',
    start: (flags, volumes) => p.start([...runtimeFlags, ...flags], volumes),
    exec: (id, script) => p.exec(id, script),
    async remove(id) {
      await p.rmForce(id);
    },
    processes: () => p.conmons(),
  };
}

/**
 * Unmodified util-linux `mount -o loop` as the container's (unprivileged) root: read back,
 * write, a remount dropping nosuid refused, the host device and btrfs refused, umount.
 */
const USERNS_MOUNT = `${ONE}echo "id $(id -u)"
echo "sys_admin $(( ($(grep CapEff /proc/self/status | cut -f2 | sed 's/^/0x/') >> 21) & 1 ))"
out=$(/usr/bin/mount -o loop /img /mnt 2>&1); echo "mount $? $(one "$out")"
echo "read $(cat /mnt/hello.txt)"
echo "info $(grep ' /mnt ' /proc/self/mountinfo | cut -d' ' -f3,6)"
echo "$WRITE" > /mnt/new.txt; echo "write $?"
out=$(/usr/bin/mount -o remount,suid /mnt 2>&1); echo "remount-suid $? $(one "$out")"
out=$(/usr/bin/mount -o remount,dev /mnt 2>&1); echo "remount-dev $? $(one "$out")"
out=$(/usr/bin/mount -t ext4 /hostdev /tmp 2>&1); echo "host $? $(one "$out")"
out=$(/usr/bin/mount -o loop /btrfs.img /tmp 2>&1); echo "btrfs $? $(one "$out")"
out=$(/usr/bin/umount /mnt 2>&1); echo "umount $? $(one "$out")"
echo "after $(grep -c ' /mnt ' /proc/self/mountinfo)"
echo end
`;

interface Case {
  sb: BrokerSandbox;
  engine: Engine;
  hostFile: string;
  hostDev: string;
}

/** One container: USERNS_MOUNT as its root, then the host's view and that nothing is left. */
async function userNsMount(c: Case, flags: string[], image: string, requester: number, owner: { uid: number; gid: number }, word: string): Promise<void> {
  const { sb, engine, hostFile, hostDev } = c;
  const hostNode = deviceNode(sb, 'host', Number(path.basename(hostDev).slice(4)));
  const id = await engine.start(flags, [`${image}:/img`, `${hostNode}:/hostdev`, `${btrfsImage(sb)}:/btrfs.img`]);
  try {
    const inst = instanceOf(sb, id, requester);
    expect(inst.owner).toEqual(owner);
    const r = await engine.exec(id, `WRITE='${word}'\n${USERNS_MOUNT}`);
    const a = answers(r);
    const log = describeRun(r);
    expect(a('end'), log).toBe('');
    expect(a('id'), log).toBe('0');
    expect(a('sys_admin'), 'no CAP_SYS_ADMIN').toBe('0');
    expect(a('mount'), log).toBe('0 ');
    expect(a('read'), log).toBe(HELLO.trim());
    expect(a('info'), log).toMatch(new RegExp(`^7:(${inst.minors.join('|')}) rw,nosuid,nodev,relatime,idmapped$`));
    expect(a('write'), log).toBe('0');
    expect(a('remount-suid'), log).toBe(`32 ${UL_EPERM}`);
    expect(a('remount-dev'), log).toBe(`32 ${UL_EPERM}`);
    expect(a('host'), log).toBe(`32 ${UL_EPERM.replace('/mnt', '/tmp')}`);
    expect(a('btrfs'), log).toBe(`32 ${UL_EPERM.replace('/mnt', '/tmp')}`);
    // soft: the rest (nothing left, the write persisted) is checked also when umount fails
    expect.soft(a('umount'), log).toBe('0 ');
    expect.soft(a('after'), log).toBe('0');
    // autoclear: the umount freed the device (it stays the instance's)
    for (const m of inst.minors) expect.soft(readLoopState(`loop${m}`), `loop${m} freed by umount`).toBeUndefined();
    expect(readLoopState(path.basename(hostDev))?.backingFile).toBe(hostFile);
  } finally {
    await engine.remove(id);
  }
  expect(await waitNothingLeft(sb, engine, [hostFile])).toEqual(NOTHING);
  expect(await writtenOnHost(sb, image)).toBe(`${word}\n`);
}

describe.skipIf(!!reason)('podman --runtime loopfs-runtime', () => {
  let sb: BrokerSandbox;
  let broker: Server | null = null;
  let ranges: SubIdRanges | null = null;
  let rootful: Podman;
  let rootless: Podman;
  let shim: RuntimeShim;
  let c: Omit<Case, 'engine'>;
  const map = 400000;

  beforeAll(async () => {
    sb = new BrokerSandbox('loopfs-podman-rt');
    ranges = new SubIdRanges(sb.user);
    ranges.add();
    shim = new RuntimeShim(sb);
    broker = await Server.launch(sb, ['oci-broker']);
    // no hooks directory: the wrapper adds the hooks to the containers that opt in
    const noHooks = sb.path('no-hooks.d');
    fs.mkdirSync(noHooks, { mode: 0o755 });
    rootful = new Podman(sb, 'rootful', noHooks);
    // mount points for the device node and the btrfs image: a runtime in a user namespace
    // cannot create them in a rootfs owned by the host's root
    for (const f of ['hostdev', 'btrfs.img']) fs.writeFileSync(path.join(rootful.rootfs, f), '');
    rootless = new Podman(sb, 'rootless', noHooks, { user: sb.user });
    const hostFile = sb.file('host.img');
    c = { sb, hostFile, hostDev: sb.hostAttach(hostFile) };
  }, 120_000);

  afterAll(async () => {
    if (!sb) return;
    try {
      await broker?.stop();
      rootless?.stopPause();
      ranges?.remove();
    } finally {
      await sb.teardown();
    }
  }, 120_000);

  it.skipIf(!!v1Reason)('rootful with --uidmap: unmodified mount -o loop as the unprivileged container root succeeds through the agent; read back, write persists, umount frees the device; refusals hold', async () => {
    const image = sb.path('files', 'uidmap.img');
    fs.copyFileSync(sb.image, image);
    fs.chownSync(image, map, map);
    const engine = podmanEngine(rootful, ['--runtime', shim.path]);
    await userNsMount(
      { ...c, engine },
      ['--annotation', 'io.loopfs.instance=true', '--annotation', 'io.loopfs.pool=2', '--uidmap', `0:${map}:65536`, '--gidmap', `0:${map}:65536`],
      image,
      0,
      { uid: map, gid: map },
      'uidmap written',
    );
  });

  it('rootless: unmodified mount -o loop as the container root (the test user) succeeds through the agent; read back, write persists, umount frees the device; refusals hold', async () => {
    const engine = podmanEngine(rootless, ['--runtime', shim.path]);
    await userNsMount(
      { ...c, engine },
      ['--annotation', 'io.loopfs.instance=true', '--annotation', 'io.loopfs.pool=2'],
      sb.image,
      sb.user.uid,
      { uid: sb.user.uid, gid: sb.user.gid },
      'rootless written',
    );
  });

  it('without the wrapper: --security-opt seccomp=FILE from loopfs seccomp-profile and the hooks from install --oci-hooks (rootless)', async () => {
    const hooks = sb.path('hooks.d');
    const inst = await installHooks(sb, hooks);
    expect(text(inst.stderr)).toBe('');
    expect(inst.exitCode).toBe(0);
    fs.chmodSync(hooks, 0o755);
    const profile = sb.path('seccomp.json');
    const p = await sb.loopfs(['seccomp-profile', '-o', profile]);
    expect(describeRun(p)).toBe('exit 0\n--- stdout\n--- stderr\n');
    const doc = JSON.parse(fs.readFileSync(profile, 'utf8'));
    expect(doc.listenerPath).toBe(path.join(sb.runtime, 'seccomp.sock'));
    const withHooks = new Podman(sb, 'rlp', hooks, { user: sb.user });
    try {
      await userNsMount(
        { ...c, engine: podmanEngine(withHooks, []) },
        [
          '--annotation', 'io.loopfs.instance=true', '--annotation', 'io.loopfs.pool=2',
          '--security-opt', 'unmask=/sys/dev/block', '--security-opt', `seccomp=${profile}`,
        ],
        sb.image,
        sb.user.uid,
        { uid: sb.user.uid, gid: sb.user.gid },
        'profile written',
      );
    } finally {
      withHooks.stopPause();
    }
  });
});
