// SIGKILL of broker clients in the middle of their requests. At least 200 clients — the
// unprivileged user as root of its own user namespace, running fixtures/client.cjs — attach
// the image read-only as session devices, have the broker mount them (keeping the mount
// fds), reserve more session devices and list, in a loop; each is SIGKILLed at a random
// moment once connected. Afterwards every session device has been detached and released
// (the instance holds nothing, every claimed index was removed — so no mount fd and no
// mount survived either), the server's fd count is back to its baseline, and it serves the
// next client.
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { skipTitle } from '../instance/support.js';
import { ADDON, AsyncClient, BrokerSandbox, brokerSkipReason, CLIENT, LOSETUP, Server, sleep, text, waitFor } from './support.js';

const reason = brokerSkipReason('broker/kill');
const CLIENTS = Number(process.env.LOOPFS_KILL_CLIENTS ?? 220);
const PARALLEL = 16;

interface Outcome {
  connected: boolean;
  rounds: number;
  attached: number;
  mounted: number;
  signal: string | null;
}

describe.skipIf(reason !== undefined)(skipTitle('loopfs serve: clients SIGKILLed mid-request', reason), () => {
  it(`${CLIENTS} clients killed mid-session: sessions are released, nothing leaks, the server carries on`, async () => {
    const sb = new BrokerSandbox('loopfs-kill');
    let server: Server | null = null;
    const live = new Set<ReturnType<typeof spawn>>();
    try {
      const inst = await sb.instance('inst', ['--max', '64']);
      server = await Server.start(sb, [inst]);
      const socket = `${inst}/loop-control`;
      {
        const w = AsyncClient.connect(socket);
        expect((await w.request({ v: 1, id: 1, op: 'list' }))?.ok).toBe(true);
        w.close();
      }
      await sleep(300);
      const baseline = server.fdCount();

      const runOne = (): Promise<Outcome> =>
        new Promise((resolve) => {
          const child = spawn(
            'setpriv',
            ['--reuid', String(sb.user.uid), '--regid', String(sb.user.gid), '--clear-groups', 'unshare', '-r', '-m', process.execPath, CLIENT, ADDON, 'stress', socket, sb.image, '50'],
            { env: sb.userEnv(), stdio: ['ignore', 'pipe', 'pipe'] },
          );
          live.add(child);
          const o: Outcome = { connected: false, rounds: 0, attached: 0, mounted: 0, signal: null };
          let killTimer: NodeJS.Timeout | null = null;
          const kill = () => child.kill('SIGKILL');
          const fallback = setTimeout(kill, 8000); // never connected: kill anyway
          child.stdout!.setEncoding('utf8').on('data', (s: string) => {
            if (!o.connected && s.includes('connected')) {
              o.connected = true;
              // mid-request: the client spends nearly all its time waiting for replies
              killTimer = setTimeout(kill, Math.floor(Math.random() * 1500));
            }
            o.rounds += (s.match(/round/g) ?? []).length;
            o.attached += (s.match(/attached/g) ?? []).length;
            o.mounted += (s.match(/mounted/g) ?? []).length;
          });
          child.on('exit', (_code, signal) => {
            clearTimeout(fallback);
            if (killTimer) clearTimeout(killTimer);
            live.delete(child);
            o.signal = signal;
            resolve(o);
          });
        });

      const outcomes: Outcome[] = [];
      let next = 0;
      const lane = async () => {
        while (next < CLIENTS) {
          next++;
          outcomes.push(await runOne());
        }
      };
      await Promise.all(Array.from({ length: PARALLEL }, lane));

      const killed = outcomes.filter((o) => o.signal === 'SIGKILL').length;
      const connected = outcomes.filter((o) => o.connected).length;
      const withDevices = outcomes.filter((o) => o.attached > 0).length;
      const withMounts = outcomes.filter((o) => o.mounted > 0).length;
      const sum = (k: 'rounds' | 'attached' | 'mounted') => outcomes.reduce((n, o) => n + o[k], 0);
      console.log(
        `[broker/kill] ${outcomes.length} clients: ${killed} SIGKILLed, ${connected} connected first; ` +
          `${withDevices} held session devices (${sum('attached')} attached) and ${withMounts} held mount fds (${sum('mounted')}) when killed; ${sum('rounds')} full rounds`,
      );
      expect(killed).toBeGreaterThanOrEqual(200);
      expect(connected).toBeGreaterThanOrEqual(200);
      expect(withMounts).toBeGreaterThan(0);
      expect(server.alive).toBe(true);

      await waitFor('every session device is released', () => Object.keys(sb.state(inst)!.devices).length === 0, 90_000).catch((e) => {
        throw new Error(`${(e as Error).message}: still held ${JSON.stringify(sb.state(inst)!.devices)}`);
      });
      // a release deletes the records first, then drops the claims (forgetRemoved): wait
      // for the whole of it, bounded; a claim that stays is a leak and fails here
      await waitFor('every claim dropped', () => sb.claims().length === 0, 15_000).catch(() => undefined);
      expect(sb.claims()).toEqual([]);
      expect(sb.bound()).toEqual([]);
      await waitFor(`the server's fds are back to ${baseline}`, () => server!.fdCount() === baseline, 15_000).catch((e) => {
        throw new Error(`${(e as Error).message}: now ${server!.fdCount()}: ${server!.fdTargets().join(' ')}`);
      });

      const r = await sb.asUser(`set -e; d=$(${LOSETUP} -f --show ${sb.image}); ${LOSETUP} -d $d; echo ok`, { LOOPFS_INSTANCE: inst });
      expect([text(r.stdout), text(r.stderr)]).toEqual(['ok\n', '']);
      expect(server.alive).toBe(true);
    } finally {
      for (const c of live) c.kill('SIGKILL');
      try {
        await server?.stop();
      } finally {
        await sb.teardown();
      }
    }
  }, 900_000);

  /**
   * A broker with a session device (attached and found), an autoclear one and a plain one,
   * SIGKILLed with the connection open: nobody ran its session cleanup.
   */
  async function brokerKilledWithSessions(sb: BrokerSandbox, clients: AsyncClient[]) {
    const inst = await sb.instance('inst', ['--max', '8']);
    const server = await Server.start(sb, [inst]);
    const fs = await import('node:fs');
    const n = (await import('../../src/kernel/native.js')).native();
    const c = AsyncClient.connect(`${inst}/loop-control`);
    clients.push(c);
    const fd = n.open(sb.image, n.constants.O_RDONLY);
    let session: number, auto: number, plain: number, found: number;
    try {
      const attach = async (fields: object) => {
        const r = await c.request({ v: 2, id: 1, op: 'attach', ...fields }, [fd]);
        expect(r?.ok, JSON.stringify(r)).toBe(true);
        return r!.minor as number;
      };
      session = await attach({ session: true });
      auto = await attach({ autoclear: true });
      plain = await attach({});
      const f = await c.request({ v: 2, id: 2, op: 'get-free', session: true });
      found = f!.minor as number;
    } finally {
      n.close(fd);
    }
    const held = () => Object.keys(sb.state(inst)?.devices ?? {}).map(Number).sort((a, b) => a - b);
    expect(held()).toEqual([session, auto, plain, found].sort((a, b) => a - b));
    const record = `${sb.env.LOOPFS_RUNTIME_DIR}/broker/${sb.state(inst)!.id}.json`;
    expect(JSON.parse(fs.readFileSync(record, 'utf8'))).toMatchObject({ sessions: [session, found].sort((a, b) => a - b), released: [auto] });

    server.child.kill('SIGKILL');
    await waitFor('broker gone', () => !server.alive);
    c.close();
    expect(sb.bound().length, 'the session device is still bound after the broker died').toBeGreaterThanOrEqual(2);
    // what is left once the sessions are settled: the plain device, bound, claimed, recorded
    const settled = () => {
      expect(held()).toEqual([plain]);
      expect(sb.bound()).toHaveLength(1);
      expect(fs.existsSync(record)).toBe(false);
      expect(sb.claims().map((cl) => cl.minor)).toEqual([plain]);
    };
    return { inst, settled };
  }

  it('the broker SIGKILLed with live sessions: the next broker detaches and releases them before it serves', async () => {
    const sb = new BrokerSandbox('loopfs-kill');
    let server: Server | null = null;
    const clients: AsyncClient[] = [];
    try {
      const { inst, settled } = await brokerKilledWithSessions(sb, clients);
      server = await Server.start(sb, [inst]);
      expect(server.stderr.join('')).toContain('device(s) of a previous broker');
      settled();
    } finally {
      for (const cl of clients) cl.close();
      try {
        await server?.stop();
      } finally {
        await sb.teardown();
      }
    }
  }, 120_000);

  it('the broker SIGKILLed with live sessions and never restarted: loopfs gc settles them', async () => {
    const sb = new BrokerSandbox('loopfs-kill-gc');
    const clients: AsyncClient[] = [];
    try {
      const { settled } = await brokerKilledWithSessions(sb, clients);
      const r = await sb.loopfs(['gc']);
      expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
      expect(text(r.stdout).match(/settled session device of a dead broker/g)).toHaveLength(3);
      settled();
      // and a second gc finds nothing left to do for it
      const again = await sb.loopfs(['gc']);
      expect(text(again.stdout)).not.toContain('session');
    } finally {
      for (const cl of clients) cl.close();
      await sb.teardown();
    }
  }, 120_000);
});
