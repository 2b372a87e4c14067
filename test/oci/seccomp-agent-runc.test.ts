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

  it('a user-namespace container: unmodified mount -o loop succeeds through the agent, reads back, a write persists, umount frees the device', async () => {
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
    expect(out.slice(2)).toEqual(['1', '0', 'done', '']);
    expect(e2cat(sb.image, '/new.txt')).toBe('persisted\n');
    expect(brokerLog(broker)).toMatch(/seccomp agent: container agent-ct1 \(.*\/oci\/0\/agent-ct1\): serving pid \d+'s listener, mount verdict cap 21 else errno 1/);
    expect(boundUnder(sb.root)).toEqual([]);
  });
});
