// Fuzzing the broker protocol against a real `loopfs serve`: more than 10,000 random,
// truncated, oversized, mistyped and fd-carrying datagrams (and valid requests mixed in, so
// the server's real work is exercised too), on connections that the server closes for
// repeated garbage and that the fuzzer reopens. Then: the server is alive, answers a normal
// client (the unprivileged user's `losetup` in a user namespace), and has leaked nothing —
// its fd count is back to the baseline, the instance holds no device, every device the fuzz
// took was removed with LOOP_CTL_REMOVE (so no mount or fd holds one), nothing is bound to a
// sandbox file.
//
// The generator is seeded (LOOPFS_FUZZ_SEED to replay a run; the seed is printed).
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { native } from '../../src/kernel/native.js';
import { skipTitle } from '../instance/support.js';
import { AsyncClient, BrokerSandbox, brokerSkipReason, LOSETUP, Server, text, waitFor } from './support.js';
import { prng } from '../helpers/prng.js';

const reason = brokerSkipReason('broker/fuzz');
const MESSAGES = Number(process.env.LOOPFS_FUZZ_MESSAGES ?? 12_000);

const OPS = ['hello', 'list', 'get-free', 'attach', 'detach', 'set-capacity', 'mount', 'set-direct-io', 'set-block-size'];

describe.skipIf(reason !== undefined)(skipTitle('loopfs serve: protocol fuzzing', reason), () => {
  it('a connection that keeps sending garbage gets an error reply for each message, then is closed', async () => {
    const sb = new BrokerSandbox('loopfs-fuzz');
    let server: Server | null = null;
    let c: AsyncClient | null = null;
    try {
      const inst = await sb.instance('inst');
      server = await Server.start(sb, [inst]);
      c = AsyncClient.connect(`${inst}/loop-control`);
      // valid requests in between do not count; 8 violations do
      expect(await c.request({ v: 1, id: 1, op: 'hello' })).toMatchObject({ v: 1, ok: true, server: 'loopfs', protocol: 2, uid: 0 });
      for (let i = 1; i <= 8; i++) {
        const r = await c.request(i % 2 ? { v: 1, id: i, op: 'nope' } : { v: 9, id: i, op: 'list' });
        expect(r).toMatchObject({ v: 1, id: i, ok: false, error: { kind: 'protocol' } });
        if (i === 4) expect(await c.request({ v: 1, id: 99, op: 'list' })).toMatchObject({ ok: true, devices: [] });
      }
      expect(await c.request({ v: 1, id: 10, op: 'list' })).toBeNull(); // closed
      c.close();
      c = AsyncClient.connect(`${inst}/loop-control`);
      expect(await c.request({ v: 1, id: 1, op: 'list' })).toMatchObject({ ok: true });
    } finally {
      c?.close();
      try {
        await server?.stop();
      } finally {
        await sb.teardown();
      }
    }
  });

  it(`${MESSAGES} hostile messages: the server survives, serves the next client, leaks no fd, device or mount`, async () => {
    const seed = Number(process.env.LOOPFS_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
    console.log(`[broker/fuzz] seed ${seed} (LOOPFS_FUZZ_SEED to replay), ${MESSAGES} messages`);
    const rnd = prng(seed);
    const int = (n: number) => Math.floor(rnd() * n);
    const pick = <T>(xs: T[]): T => xs[int(xs.length)];

    const sb = new BrokerSandbox('loopfs-fuzz');
    let server: Server | null = null;
    const n = native();
    const C = n.constants;
    const pool: number[] = [];
    let client: AsyncClient | null = null;
    try {
      const inst = await sb.instance('inst', ['--max', '4']);
      server = await Server.start(sb, [inst]);
      const socket = `${inst}/loop-control`;

      // fds to throw at the server
      const [sockA, sockB] = n.socketPair(false);
      const [pipeR, pipeW] = [n.open('/dev/zero', C.O_RDONLY), n.open('/dev/null', C.O_WRONLY)];
      const imgRw = n.open(sb.image, C.O_RDWR);
      const imgRo = n.open(sb.image, C.O_RDONLY);
      const dirFd = n.open(sb.files, C.O_RDONLY | C.O_DIRECTORY);
      pool.push(sockA, sockB, pipeR, pipeW, imgRw, imgRo, dirFd);

      // warm the server up (worker started, addon loaded, a mount made and sent), then count its fds
      {
        const w = AsyncClient.connect(socket);
        const at = await w.request({ v: 1, id: 1, op: 'attach', session: true, readOnly: true }, [imgRo]);
        expect(at?.ok).toBe(true);
        const m = await w.request({ v: 1, id: 2, op: 'mount', minor: at!.minor, readOnly: true });
        expect(m).toMatchObject({ ok: true, fstype: 'ext4' });
        w.close();
      }
      await waitFor('the warm-up session is released', () => Object.keys(sb.state(inst)!.devices).length === 0);
      await new Promise((r) => setTimeout(r, 300));
      const baseline = server.fdCount();

      const valid = (): Record<string, unknown> => {
        const op = pick(OPS);
        const m: Record<string, unknown> = { v: pick([1, 2]), id: int(2 ** 32), op };
        if (op === 'get-free' || op === 'attach') m.session = true;
        if (op === 'set-direct-io') m.on = pick([true, false]);
        if (op === 'set-block-size') m.size = pick([512, 1024, 4096, 0]);
        if (op === 'detach' || op === 'set-capacity' || op === 'mount' || op.startsWith('set-')) m.minor = rnd() < 0.5 ? pick(known.length ? known : [0]) : int(2 ** 20);
        if (op === 'mount' && rnd() < 0.5) m.fstype = pick(['ext4', 'squashfs', 'btrfs', 'xfs', 'vfat', 'Ext4', '../x']);
        // v2: FUSE mounts now and then (each one starts and ends a real driver)
        if (op === 'mount' && m.v === 2 && rnd() < 0.1) m.fuse = pick([true, false, 'yes']);
        if (op === 'mount' && rnd() < 0.3) m.attrs = pick([['noexec'], ['noatime', 'nodiratime'], ['suid'], 'noexec', [1]]);
        if (op === 'attach' && rnd() < 0.3) m.offset = pick(['0', '512', '1048576', '-1', '18446744073709551616', 512, 'abc']);
        if (op === 'attach' && rnd() < 0.2) m.blockSize = pick([0, 512, 4096, 513, 1 << 20, -1, '512']);
        return m;
      };
      const known: number[] = [];
      const mutate = (m: Record<string, unknown>): Record<string, unknown> => {
        const out = { ...m };
        const junk = () => pick<unknown>([null, true, -1, 1.5, 2 ** 53, 'x'.repeat(int(100)), [], {}, [1, 2], { a: 1 }, '\u0000', '💥']);
        switch (int(7)) {
          case 0:
            out.op = pick(['', 'ATTACH', 'attach ', 'rm -rf', junk()]);
            break;
          case 1:
            out.v = pick([0, 3, '1', null, 1.0000001]);
            break;
          case 2:
            out.id = pick([-1, 2 ** 32, 1.5, '7', null]);
            break;
          case 3:
            out[pick(['extra', '__proto__', 'constructor', 'minor', 'session', 'fd', 'path'])] = junk();
            break;
          case 4:
            delete out[pick(Object.keys(out))];
            break;
          case 5:
            out[pick(Object.keys(out))] = junk();
            break;
          default:
            return { ...out, nested: { deep: [out] } };
        }
        return out;
      };

      const stats = new Map<string, number>();
      const count = (k: string) => stats.set(k, (stats.get(k) ?? 0) + 1);
      const leftovers = new Set<number>(); // non-session devices a valid request made
      let closedByServer = 0;
      let sent = 0;
      client = AsyncClient.connect(socket);

      while (sent < MESSAGES) {
        let data: Buffer;
        let fds: number[] = [];
        const kind = rnd();
        if (kind < 0.15) {
          data = Buffer.from(Array.from({ length: 1 + int(512) }, () => int(256)));
          count('random');
        } else if (kind < 0.25) {
          const full = Buffer.from(JSON.stringify(valid()));
          data = full.subarray(0, Math.max(1, int(full.length)));
          count('truncated');
        } else if (kind < 0.3) {
          const size = 65_537 + int(70_000);
          data = rnd() < 0.5 ? Buffer.alloc(size, 0x20) : Buffer.from(`{"v":1,"id":1,"op":"list","pad":"${'a'.repeat(size)}"}`);
          count('oversized');
        } else if (kind < 0.45) {
          const k = 1 + int(3);
          fds = Array.from({ length: k }, () => pick(pool));
          data = Buffer.from(JSON.stringify(rnd() < 0.5 ? valid() : mutate(valid())));
          count('fds');
        } else if (kind < 0.65) {
          data = Buffer.from(JSON.stringify(mutate(valid())));
          count('mistyped');
        } else if (kind < 0.9) {
          const m = valid();
          if (m.op === 'attach') fds = [pick([imgRw, imgRo])];
          data = Buffer.from(JSON.stringify(m));
          count('valid');
        } else {
          data = Buffer.from(pick(['{}', '[]', 'null', '1', '"x"', '{"v":1}', '{"v":1,"id":1}', '\xff\xfe', '{"v":1,"id":1,"op":"hello"}garbage', ' ']));
          count('edge');
        }
        sent++;
        if (!client.send(data, fds)) {
          // the server closed this connection (repeated garbage): open another
          closedByServer++;
          client.close();
          client = AsyncClient.connect(socket);
          continue;
        }
        const reply = await client.recv(15_000);
        if (reply.eof) {
          closedByServer++;
          client.close();
          client = AsyncClient.connect(socket);
          continue;
        }
        const r = JSON.parse(reply.data.toString('utf8')) as { v: number; ok: boolean; minor?: number; error?: { code: string } };
        for (const fd of reply.fds) n.close(fd); // mount fds: closed at once
        expect([1, 2]).toContain(r.v);
        count(r.ok ? 'reply ok' : `reply ${r.error!.code}`);
        if (r.ok && typeof r.minor === 'number') {
          if (!known.includes(r.minor)) known.push(r.minor);
          // a mutated request may be valid without `session`: remember it for the cleanup below
          const req = (() => {
            try {
              return JSON.parse(data.toString('utf8')) as Record<string, unknown>;
            } catch {
              return {};
            }
          })();
          if (req.session !== true) leftovers.add(r.minor);
        }
      }
      client.close();
      client = null;
      console.log(`[broker/fuzz] ${sent} messages, ${closedByServer} connections closed by the server:`, Object.fromEntries([...stats].sort()));
      expect(server.alive).toBe(true);
      expect(closedByServer).toBeGreaterThan(0);
      expect(stats.get('reply ok') ?? 0).toBeGreaterThan(0);

      // detach what valid non-session requests attached (that is the protocol working, not a leak)
      if (leftovers.size > 0) {
        const c = AsyncClient.connect(socket);
        for (const minor of leftovers) await c.request({ v: 1, id: 1, op: 'detach', minor });
        c.close();
        // idle devices a session-less get-free reserved: take each into a session and end it
        for (let i = 0; i < 16 && Object.keys(sb.state(inst)!.devices).length > 0; i++) {
          const g = AsyncClient.connect(socket);
          await g.request({ v: 1, id: 1, op: 'get-free', session: true });
          g.close();
          await new Promise((r) => setTimeout(r, 100));
        }
      }

      // a normal client, the unprivileged user as root of a user namespace
      const r = await sb.asUser(`set -e; d=$(${LOSETUP} -f --show ${sb.image}); ${LOSETUP} -a; ${LOSETUP} -d $d; echo done`, { LOOPFS_INSTANCE: inst });
      expect(text(r.stderr)).toBe('');
      expect(text(r.stdout)).toMatch(/: \[\d+\]:\d+ \(.*ext4\.img\)\ndone\n$/);

      // nothing leaked: devices, claims, bindings, fds
      await waitFor('the instance holds no device', () => Object.keys(sb.state(inst)!.devices).length === 0, 30_000);
      expect(sb.claims()).toEqual([]);
      expect(sb.bound()).toEqual([]);
      await waitFor(`the server's fds are back to ${baseline}`, () => server!.fdCount() === baseline, 15_000).catch((e) => {
        throw new Error(`${(e as Error).message}: now ${server!.fdCount()}: ${server!.fdTargets().join(' ')}`);
      });
      // and no process: every FUSE driver a mount started ended with its mount fd
      const children = () =>
        fs.readdirSync(`/proc/${server!.pid}/task`).flatMap((t) => fs.readFileSync(`/proc/${server!.pid}/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean));
      await waitFor('the server has no child process left', () => children().length === 0, 15_000);
      expect(server.alive).toBe(true);
    } finally {
      client?.close();
      for (const fd of pool) n.close(fd);
      try {
        await server?.stop();
      } finally {
        await sb.teardown();
      }
    }
  }, 600_000);
});
