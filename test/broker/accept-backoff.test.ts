// Out of fds, a daemon's accept loop (src/protocol/accept-loop.ts, the one loop of `loopfs
// serve`, `loopfs oci-broker` and its seccomp agent) pauses instead of spinning, and serves
// again once fds are back. Measured as the issue found it: the daemon's soft RLIMIT_NOFILE
// lowered to what it holds plus two, then connections that stay open; a listener whose
// accept fails with EMFILE stays readable, so a loop that just returns burns a core (about
// 100 ticks a second), one that pauses costs next to nothing.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { native } from '../../src/kernel/native.js';
import { ociSocketPath } from '../../src/oci/oci-broker.js';
import { AsyncClient, BrokerSandbox, brokerSkipReason, sleep, waitFor, withBroker, Server } from './support.js';

const skip = brokerSkipReason('accept back-off');

/** utime + stime of PID, in clock ticks (100 a second here). */
function cpuTicks(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

/**
 * With PID's soft fd limit at what it holds plus two, open `count` connections to `socket`
 * and keep them open (fewer than the listen backlog: our connect blocks once it is full); resolves with the daemon's CPU ticks over one second once its log
 * says accept failed. The limit and the connections are restored/closed in finally.
 */
async function ticksWhileOutOfFds(server: Server, socket: string, count: number): Promise<number> {
  const n = native();
  const pid = server.pid;
  // the soft limit only: root may lack CAP_SYS_RESOURCE to raise a hard one again
  const [soft, hard] = execFileSync('prlimit', ['--pid', String(pid), '--nofile', '--output', 'SOFT,HARD', '--noheadings'], { encoding: 'utf8' }).trim().split(/\s+/);
  execFileSync('prlimit', ['--pid', String(pid), `--nofile=${server.fdCount() + 2}:${hard}`]);
  const held: number[] = [];
  try {
    for (let i = 0; i < count; i++) held.push(n.seqpacketConnect(socket));
    await waitFor('the daemon to hit EMFILE', () => /accept: .*(EMFILE|Too many open files).*; pausing \d+ ms at a time until it works/.test(server.stderr.join('')), 10_000);
    const before = cpuTicks(pid);
    await sleep(1000);
    const ticks = cpuTicks(pid) - before;
    // a second of pauses, one line in the log: when it started, not every 100 ms
    expect(server.stderr.join('').match(/accept: .*; pausing \d+ ms at a time until it works/g)).toHaveLength(1);
    return ticks;
  } finally {
    execFileSync('prlimit', ['--pid', String(pid), `--nofile=${soft}:${hard}`]);
    for (const fd of held) n.close(fd);
  }
}

describe.skipIf(skip)('accept loop out of fds', () => {
  it('loopfs serve: pauses instead of spinning, then serves a client again', async () => {
    await withBroker({ prefix: 'loopfs-accept-serve' }, async ({ server, inst }) => {
      expect(await ticksWhileOutOfFds(server, `${inst}/loop-control`, 40)).toBeLessThan(20);
      const c = AsyncClient.connect(`${inst}/loop-control`);
      try {
        expect(await c.request({ v: 2, id: 1, op: 'hello' })).toMatchObject({ id: 1, ok: true, server: 'loopfs' });
        expect(server.stderr.join('')).toMatch(/: accepting again \(after \d+ pauses?\)\n/);
      } finally {
        c.close();
      }
    });
  });

  describe('loopfs oci-broker', () => {
    let sb: BrokerSandbox;
    let broker: Server | null = null;
    beforeAll(async () => {
      sb = new BrokerSandbox('loopfs-accept-oci');
      broker = await Server.launch(sb, ['oci-broker']);
    });
    afterAll(async () => {
      await broker?.stop();
      await sb?.teardown();
    });

    it('pauses instead of spinning (40 connections, a low ulimit -n), then answers a request again', async () => {
      const socket = ociSocketPath(sb.env);
      expect(await ticksWhileOutOfFds(broker!, socket, 40)).toBeLessThan(20);
      // fds are back: a request is read and answered (a malformed one: refused, with the reason)
      const c = AsyncClient.connect(socket);
      try {
        expect(await c.request({ op: 'nonsense' })).toMatchObject({ ok: false });
        expect(broker!.stderr.join('')).toMatch(/accepting again \(after \d+ pauses?\)\n/);
      } finally {
        c.close();
      }
    }, 60_000);
  });
});
