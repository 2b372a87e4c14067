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
import { BrokerSandbox, Server } from '../broker/support.js';
import { installHooks, Podman, SubIdRanges } from '../oci/support.js';
import { describeRun, engineSkipReason, RuntimeShim, text, type Engine } from './support.js';
import { userNsMount, type Case } from './checks.js';

const reason = engineSkipReason('podman with loopfs-runtime', ['podman', 'nsenter', 'newuidmap', 'newgidmap', 'mkfs.btrfs']);
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
    for (const f of ['hostdev', 'otherdev', 'btrfs.img']) fs.writeFileSync(path.join(rootful.rootfs, f), '');
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
