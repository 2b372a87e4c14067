// Issue 16 (chaos soak): the runtime directory (claims, registry) removed under a running
// `loopfs serve`. The instance directory is the truth for what an instance holds: a claim
// that vanished with the runtime directory is made again from the instance's records, and
// its registry entry too, so that no bound device is ever dropped from the instance (and
// `instance destroy --force` still detaches it). A record older than the running kernel
// names a device that a reboot took: that one is forgotten, never claimed again.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BrokerSandbox, brokerSkipReason, LOSETUP, Server } from '../broker/support.js';
import { instanceSkipReason, lines, minorOf, removeIndexIfUnbound, Sandbox, skipTitle, text } from './support.js';

const reason = brokerSkipReason('runtime dir removal tests');
const localReason = instanceSkipReason('runtime dir removal tests (local)');

describe.skipIf(reason)(skipTitle('runtime dir removed under a daemon', reason), () => {
  it('every bound device stays recorded, is claimed again after gc, and destroy --force detaches it', async () => {
    const sb = new BrokerSandbox('loopfs-rtrm');
    let server: Server | null = null;
    try {
      const inst = await sb.instance('inst', ['--max', '4']);
      const second = path.join(sb.files, 'second.img');
      fs.copyFileSync(sb.image, second);
      sb.giveToUser(second);
      server = await Server.start(sb, [inst]);
      const env = { LOOPFS_INSTANCE: inst };
      const a1 = await sb.asUser(`${LOSETUP} -f --show ${sb.image}`, env);
      expect(text(a1.stderr)).toBe('');
      expect(a1.exitCode).toBe(0);
      fs.rmSync(sb.runtime, { recursive: true, force: true });
      const a2 = await sb.asUser(`${LOSETUP} -f --show ${second}`, env);
      expect(text(a2.stderr)).toBe('');
      expect(a2.exitCode).toBe(0);
      const minors = [minorOf(text(a1.stdout).trim()), minorOf(text(a2.stdout).trim())].sort((a, b) => a - b);
      await server.stop();
      server = null;

      const gc = await sb.loopfs(['instance', 'gc']);
      expect(text(gc.stderr)).toBe('');
      expect(gc.exitCode).toBe(0);
      const id = sb.state(inst)!.id;
      // both devices: bound to the user's files, recorded, published, claimed, registered
      const want = new Map([
        [minorOf(text(a1.stdout).trim()), sb.image],
        [minorOf(text(a2.stdout).trim()), second],
      ]);
      expect(sb.bound().map((s) => [minorOf(s.dev), s.backingFile]).sort((x, y) => Number(x[0]) - Number(y[0]))).toEqual(minors.map((m) => [m, want.get(m)]));
      expect(Object.keys(sb.state(inst)!.devices).map(Number).sort((a, b) => a - b)).toEqual(minors);
      for (const m of minors) expect(fs.statSync(path.join(inst, `loop${m}`)).isBlockDevice()).toBe(true);
      expect(sb.claims().map((c) => [c.minor, c.id, c.dir])).toEqual(minors.map((m) => [m, id, inst]));
      expect(sb.registry().map((e) => [e.id, e.dir])).toEqual([[id, inst]]);

      const d = await sb.loopfs(['instance', 'destroy', '--force', inst]);
      expect(text(d.stderr)).toBe('');
      expect(d.exitCode).toBe(0);
      expect(sb.bound()).toEqual([]);
    } finally {
      await server?.stop();
      await sb.teardown();
    }
  });
});

describe.skipIf(localReason)(skipTitle('claims lost, local instance', localReason), () => {
  it('gc claims a bound device again from a record older than the new runtime dir and written since boot; one recorded before boot is forgotten, never detached', async () => {
    const sb = new Sandbox('loopfs-rtrm-local');
    let forgotten: number | null = null;
    try {
      const dir = sb.path('inst');
      await sb.create(dir, ['--max', '4']);
      const a = sb.file('a.img');
      const b = sb.file('b.img');
      const ra = await sb.losetup(['--instance', dir, '-f', '--show', a]);
      const rb = await sb.losetup(['--instance', dir, '-f', '--show', b]);
      expect([ra.exitCode, rb.exitCode]).toEqual([0, 0]);
      const [ma, mb] = [minorOf(text(ra.stdout).trim()), minorOf(text(rb.stdout).trim())];
      forgotten = mb;
      const id = sb.state(dir)!.id;
      // b's record as a reboot would leave it: written before the running kernel started
      fs.utimesSync(path.join(dir, '.loopfs', 'devices', `loop${mb}`), 0, 0);
      fs.rmSync(sb.runtime, { recursive: true, force: true });

      // without claims or registry, gc finds nothing; the next attach claims a device, and
      // through that claim gc finds the instance again
      const c = sb.file('c.img');
      const rc = await sb.losetup(['--instance', dir, '-f', '--show', c]);
      expect(rc.exitCode).toBe(0);
      const mc = minorOf(text(rc.stdout).trim());
      const gc = await sb.loopfs(['instance', 'gc']);
      expect(text(gc.stderr)).toBe('');
      expect(gc.exitCode).toBe(0);
      // gc's table: RESULT DIR DEVICE ACTION, columns padded with spaces
      const rows = lines(gc.stdout).map((l) => l.split(/ {2,}/).join(' | '));
      expect(rows).toEqual(
        expect.arrayContaining([
          `fixed | ${dir} | - | registered the instance again (its registry entry was lost)`,
          `fixed | ${dir} | loop${ma} | claimed again a held device whose claim was lost`,
          `fixed | ${dir} | loop${mb} | forgot device recorded without a claim`,
        ]),
      );
      expect(Object.keys(sb.state(dir)!.devices).map(Number).sort((x, y) => x - y)).toEqual([ma, mc].sort((x, y) => x - y));
      expect(sb.claims().map((cl) => [cl.minor, cl.id])).toEqual([[ma, id], [mc, id]].sort((x, y) => x[0] - y[0]));
      expect(fs.existsSync(path.join(dir, `loop${mb}`))).toBe(false);
      // the forgotten device is left as it is: still bound to b (cleanup detaches it)
      expect(sb.bound().map((s) => s.backingFile).sort()).toEqual([a, b, c].sort());
      const d = await sb.loopfs(['instance', 'destroy', dir]);
      expect(d.exitCode).toBe(0);
      expect(sb.bound().map((s) => s.backingFile)).toEqual([b]);
    } finally {
      await sb.cleanup();
      // the forgotten device is in no record and no claim: the sandbox cleanup detached it,
      // its index is removed here
      if (forgotten !== null) removeIndexIfUnbound(forgotten);
    }
  });
});
