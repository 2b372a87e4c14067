// The seccomp agent of `loopfs oci-broker` with a real runc: containers whose config.json
// sends mount(2) to RUNTIME/seccomp.sock (listenerPath, listenerMetadata) and that get an
// instance from the real `loopfs oci-hook` createRuntime/poststop hooks. Unmodified
// util-linux `mount -o loop` inside succeeds through the agent; refusals and the agent's
// restart are checked with mnt.c's exact errno.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BrokerSandbox, HELLO, type Server } from '../broker/support.js';
import { JUDGED_SYSCALLS } from '../../src/oci/agent-contract.js';
import { agentSkipReason, brokerLog, DOCKER_CAPS, Runc, startBroker, text, writeBundle } from './agent-support.js';

const reason = agentSkipReason('seccomp agent with runc');

const ALL_CAPS_USERNS = [...DOCKER_CAPS, 'CAP_SYS_ADMIN'];

/** Minors bound to a file under `root` (sysfs), i.e. devices still in use for the sandbox. */
function boundUnder(root: string): string[] {
  const out: string[] = [];
  for (const n of fs.readdirSync('/sys/block').filter((b) => /^loop\d+$/.test(b))) {
    try {
      const f = fs.readFileSync(`/sys/block/${n}/loop/backing_file`, 'utf8').trim();
      if (f.startsWith(`${root}/`)) out.push(n);
    } catch {
      /* unbound */
    }
  }
  return out;
}

/** The content of FILE in an ext4 image (debugfs, read-only). */
function e2cat(image: string, file: string): string {
  return execFileSync('debugfs', ['-R', `cat ${file}`, image], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
}

describe.skipIf(!!reason)('seccomp agent (runc)', () => {
  let sb: BrokerSandbox | null = null;
  let runc: Runc | null = null;
  let broker: Server | null = null;

  afterEach(async () => {
    const errors: string[] = [];
    try {
      if (runc) errors.push(...(await runc.removeAll()));
    } finally {
      await broker?.stop();
      broker = null;
      const s = sb;
      sb = null;
      runc = null;
      if (s) {
        const mounts = s.hostMounts();
        await s.teardown();
        expect(mounts, 'nothing of the sandbox is mounted on the host').toEqual([]);
      }
    }
    expect(errors).toEqual([]);
  });

  it('a user-namespace container: unmodified mount -o loop (util-linux, and busybox without -t) succeeds through the agent, reads back, a write persists, umount frees the device', async () => {
    sb = new BrokerSandbox('loopfs-agent-runc');
    runc = new Runc(sb);
    broker = await startBroker(sb);
    const bundle = sb.path('ct1');
    fs.mkdirSync(bundle);
    const script = [
      'mount -o loop /img /mnt || exit 10',
      'cat /mnt/hello.txt',
      'echo persisted > /mnt/new.txt',
      `awk '$5=="/mnt"{for(i=7;$i!="-";i++);print $6, $(i+1), $(i+2)}' /proc/self/mountinfo`,
      'losetup -a | wc -l',
      'umount /mnt || exit 11',
      'losetup -a | wc -l',
      // busybox, without -t: it tries ext3 and ext2 before ext4
      'mkdir /tmp/bb && busybox mount -o loop /img /tmp/bb && cat /tmp/bb/new.txt && umount /tmp/bb',
      'echo done',
    ].join('\n');
    writeBundle(sb, bundle, {
      root: { uid: sb.user.uid, gid: sb.user.gid },
      caps: ALL_CAPS_USERNS,
      verdict: { kind: 'cap', cap: 21, errno: 1 },
      binds: [[sb.image, '/img']],
      args: ['sh', '-c', script],
    });
    const r = await runc.runForeground('agent-ct1', bundle);
    const out = text(r.stdout).split('\n');
    expect({ code: r.exitCode, stderr: text(r.stderr) }).toEqual({ code: 0, stderr: '' });
    expect(out[0]).toBe(HELLO.trim());
    // nosuid,nodev forced, ID-mapped to the container's user namespace, ext4 on a loop device
    expect(out[1]).toMatch(/^rw,nosuid,nodev,relatime,idmapped ext4 \/dev\/loop\d+$/);
    expect(out.slice(2)).toEqual(['1', '0', 'persisted', 'done', '']);
    expect(e2cat(sb.image, '/new.txt')).toBe('persisted\n');
    expect(brokerLog(broker)).toMatch(/seccomp agent: container agent-ct1 \(.*\/oci\/0\/agent-ct1\): serving pid \d+'s listener, mount verdict cap 21 else errno 1/);
    expect(boundUnder(sb.root)).toEqual([]);
  });

  it('refuses a host device, a filesystem outside the allow-list (the wrong type of an allowed one is EINVAL) and a remount dropping nosuid/nodev; other mounts get the engine verdict; exec connections are served', async () => {
    sb = new BrokerSandbox('loopfs-agent-runc');
    runc = new Runc(sb);
    broker = await startBroker(sb);
    // minix: a filesystem the kernel may know but the agent does not allow
    const minix = path.join(sb.files, 'minix.img');
    sb.file('minix.img', 4 << 20);
    execFileSync('mkfs.minix', [minix], { stdio: 'pipe' });
    sb.giveToUser(minix);
    const hostDev = sb.hostAttach(sb.file('host.img', 4 << 20));
    const bundle = sb.path('ct2');
    fs.mkdirSync(bundle);
    writeBundle(sb, bundle, {
      root: { uid: sb.user.uid, gid: sb.user.gid },
      caps: ALL_CAPS_USERNS,
      verdict: { kind: 'cap', cap: 21, errno: 1 },
      binds: [[sb.image, '/img'], [minix, '/img2'], [hostDev, '/hostdev']],
      args: ['sleep', '600'],
    });
    await runc.runDetached('agent-ct2', bundle);
    const r = await runc.exec('agent-ct2', [
      'mkdir -p /tmp/t',
      'echo "host device: $(mnt mount /hostdev /mnt ext4 0)"',
      'dev=$(losetup -f --show /img2)',
      'echo "minix: $(mnt mount $dev /mnt minix 0)"',
      'echo "unmodified minix: $(mount -o loop /img2 /mnt 2>&1 | head -n 1)"',
      'losetup -d $dev',
      // the wrong type for an allowed filesystem is the kernel's EINVAL (busybox tries the next)
      'dev=$(losetup -f --show /img)',
      'echo "ext4 as ext3: $(mnt mount $dev /mnt ext3 0)"',
      'losetup -d $dev',
      'mount -o loop /img /mnt || exit 10',
      'echo "remount,bind: $(mnt mount none /mnt none 0x1020)"',
      'echo "remount,bind,nosuid,nodev: $(mnt mount none /mnt none 0x1026)"',
      'echo "tmpfs: $(mnt mount none /tmp/t tmpfs 0)"',
      'umount /tmp/t',
      'umount /mnt || exit 11',
      'echo "new mount API: $(mnt fsopen ext4)"',
    ].join('\n'));
    expect({ code: r.exitCode, stderr: text(r.stderr) }).toEqual({ code: 0, stderr: '' });
    expect(text(r.stdout).split('\n')).toEqual([
      'host device: EPERM',
      'minix: EPERM',
      'unmodified minix: mount: /mnt: permission denied.',
      'ext4 as ext3: EINVAL',
      'remount,bind: EPERM',
      'remount,bind,nosuid,nodev: ok',
      'tmpfs: ok',
      'new mount API: ENOSYS',
      '',
    ]);
    const log = brokerLog(broker);
    expect(log).toMatch(/container agent-ct2: pid \d+: EPERM: \/hostdev \(7:\d+\) is not|container agent-ct2: pid \d+: EPERM: loop\d+ is not a device of/);
    expect(log).toMatch(/container agent-ct2: pid \d+: EPERM: filesystem type minix is not allowed/);
    expect(log).toMatch(/container agent-ct2: pid \d+: EINVAL: loop\d+ holds ext4, not ext3 \(which is not allowed\)/);
    expect(log).toMatch(/container agent-ct2: pid \d+: EPERM: a remount must keep nosuid,nodev/);
  });

  it('a container without a user namespace (root is host uid 0 without CAP_SYS_ADMIN): mount -o loop is performed without ID mapping, and umount of it (only of it) when umount2 is sent too', async () => {
    sb = new BrokerSandbox('loopfs-agent-runc');
    runc = new Runc(sb);
    broker = await startBroker(sb);
    const bundle = sb.path('ct3');
    fs.mkdirSync(bundle);
    const script = [
      'mount -o loop /img /mnt || exit 10',
      'cat /mnt/hello.txt',
      'echo persisted > /mnt/rootful.txt',
      `awk '$5=="/mnt"{for(i=7;$i!="-";i++);print $6, $(i+1), $(i+2)}' /proc/self/mountinfo`,
      // CAP_SYS_ADMIN is the engine's condition for everything else (cap:21:1)
      'mkdir /tmp/t && echo "tmpfs: $(mnt mount none /tmp/t tmpfs 0)"',
      // umount2 sent to the agent too: only the instance's mount is unmounted for it
      'umount /proc/kcore 2>/dev/null; echo "umount of a masked path: $?"',
      'umount /tmp 2>/dev/null; echo "umount of another mount: $?"',
      'losetup -a | wc -l',
      'umount /mnt; echo "umount /mnt: $?"',
      'losetup -a | wc -l',
    ].join('\n');
    writeBundle(sb, bundle, {
      caps: DOCKER_CAPS,
      verdict: { kind: 'cap', cap: 21, errno: 1 },
      binds: [[sb.image, '/img']],
      args: ['sh', '-c', script],
      notify: JUDGED_SYSCALLS,
    });
    const r = await runc.runForeground('agent-ct3', bundle);
    const out = text(r.stdout).split('\n');
    expect({ code: r.exitCode, stderr: text(r.stderr) }).toEqual({ code: 0, stderr: '' });
    expect(out[0]).toBe(HELLO.trim());
    expect(out[1]).toMatch(/^rw,nosuid,nodev,relatime ext4 \/dev\/loop\d+$/);
    expect(out.slice(2)).toEqual([
      'tmpfs: EPERM',
      'umount of a masked path: 32',
      'umount of another mount: 32',
      '1',
      'umount /mnt: 0',
      '0',
      '',
    ]);
    await runc.removeAll();
    expect(e2cat(sb.image, '/rootful.txt')).toBe('persisted\n');
    expect(boundUnder(sb.root)).toEqual([]);
  });

  it('after the agent restarts, the container keeps running but its trapped mount(2) fails with ENOSYS; new execs are served again', async () => {
    sb = new BrokerSandbox('loopfs-agent-runc');
    runc = new Runc(sb);
    broker = await startBroker(sb);
    const bundle = sb.path('ct4');
    fs.mkdirSync(bundle);
    // the init mounts once before and once after the restart, when told to
    const init = [
      'mkdir -p /tmp/a /tmp/b',
      'while [ ! -e /tmp/go1 ]; do sleep 0.05; done',
      'mnt mount none /tmp/a tmpfs 0 > /tmp/r1',
      'while [ ! -e /tmp/go2 ]; do sleep 0.05; done',
      'mnt mount none /tmp/b tmpfs 0 > /tmp/r2',
      'mount -o loop /img /mnt 2> /tmp/r3; echo "exit $?" >> /tmp/r3',
      'exec sleep 600',
    ].join('\n');
    writeBundle(sb, bundle, {
      root: { uid: sb.user.uid, gid: sb.user.gid },
      caps: ALL_CAPS_USERNS,
      verdict: { kind: 'errno', errno: 13 },
      binds: [[sb.image, '/img']],
      args: ['sh', '-c', init],
    });
    await runc.runDetached('agent-ct4', bundle);
    const wait = async (file: string) => {
      for (let i = 0; i < 200; i++) {
        const r = await runc!.exec('agent-ct4', `cat ${file} 2>/dev/null`);
        if (text(r.stdout)) return text(r.stdout);
        await new Promise((res) => setTimeout(res, 50));
      }
      throw new Error(`${file} never written; the broker said:\n${brokerLog(broker!)}`);
    };
    expect((await runc.exec('agent-ct4', 'touch /tmp/go1')).exitCode).toBe(0);
    // the engine's verdict (errno 13) for a mount the agent does not perform
    expect(await wait('/tmp/r1')).toBe('EACCES\n');

    await broker.stop();
    broker = await startBroker(sb);
    expect((await runc.exec('agent-ct4', 'touch /tmp/go2')).exitCode).toBe(0);
    expect(await wait('/tmp/r2')).toBe('ENOSYS\n');
    expect(await wait('/tmp/r3')).toMatch(/exit [1-9]\d*\n$/);
    // everything else works, and a process started now has a listener of the new agent
    const r = await runc.exec('agent-ct4', 'cat /tmp/r1; mount -o loop /img /mnt && cat /mnt/hello.txt && umount /mnt');
    expect({ code: r.exitCode, out: text(r.stdout), err: text(r.stderr) }).toEqual({ code: 0, out: `EACCES\n${HELLO}`, err: '' });
  });
});
