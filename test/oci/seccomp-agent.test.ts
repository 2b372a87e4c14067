// The seccomp agent's handshake, attacked: a real `loopfs oci-broker` and two "containers"
// made the way the rootful hook makes them (createContainerInstance: a record naming the
// init by pid and start time, and an instance), each a real process tree under a real
// mount filter (native seccompSpawn gives its listener) in a PID namespace of its own,
// run by the unprivileged test user as root of its own user namespace.
//
// Over a thousand malformed handshakes (seeded PRNG) each get their connection closed,
// leave no fd in the agent, and serve nothing; a peer uid that does not own the container
// is refused, a flood from one uid does not starve the others; afterwards a valid
// handshake, sent in pieces, is served: the container's mount(2) gets the engine's
// verdict (EACCES) instead of ENOSYS. Killing the container closes its listener.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { native } from '../../src/kernel/native.js';
import { formatMetadata, seccompSocketPath } from '../../src/oci/agent-contract.js';
import { createContainerInstance, destroyContainerInstance } from '../../src/oci/container-instance.js';
import { prng } from '../helpers/prng.js';
import { REPO_ROOT } from '../helpers/env.js';
import { ADDON, BrokerSandbox, sleep, waitFor, type Server } from '../broker/support.js';
import { agentSkipReason, brokerLog, compileMnt, startBroker } from './agent-support.js';

const reason = agentSkipReason('seccomp agent handshake', false);
const CLIENT = path.join(REPO_ROOT, 'test', 'oci', 'fixtures', 'agent-client.cjs');
const NOBODY = 65534;

/** A process tree under the mount filter: setpriv → unshare -r -p -f → sh (the "init"). */
interface FakeContainer {
  id: string;
  /** The filter's first process (setpriv, then unshare): our child, reaped by us. */
  leader: number;
  init: number;
  listenerFd: number;
  dir: string;
  go: string;
  result: string;
}

function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    for (const p of fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').split(' ')) if (p.trim()) out.push(Number(p));
  }
  return out;
}

describe.skipIf(!!reason)('seccomp agent handshake', () => {
  let sb: BrokerSandbox;
  let broker: Server | null = null;
  /**
   * The broker's fds but the instance directories its live sync holds open for the fake
   * containers: it opens those when it adopts a container, on its own schedule, and they
   * say nothing about what the agent did with the fds it received.
   */
  const agentFds = () => broker!.fdTargets().filter((t) => !t.startsWith(`${sb.runtime}/`)).length;
  const cts: FakeContainer[] = [];

  async function fakeContainer(id: string): Promise<FakeContainer> {
    const n = native();
    const probe = sb.userDir(`probe-${id}`);
    const go = path.join(probe, 'go');
    const result = path.join(probe, 'result');
    fs.mkdirSync(path.join(probe, 'mnt'));
    sb.giveToUser(path.join(probe, 'mnt'));
    // after `go`: one mount(2) that is never a block device (the engine's verdict answers it)
    const script = `while [ ! -e ${go} ]; do sleep 0.05; done; ${sb.path('mnt-helper')} mount none ${probe}/mnt tmpfs 0 > ${result}.tmp; mv ${result}.tmp ${result}; exec sleep 600`;
    const env = ['PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'LANG=C.UTF-8'];
    const argv = ['setpriv', '--reuid', String(sb.user.uid), '--regid', String(sb.user.gid), '--clear-groups', 'unshare', '-r', '-p', '-f', '--kill-child', 'sh', '-c', script];
    const child = n.seccompSpawn('/usr/bin/setpriv', argv, env, sb.root);
    const ct: FakeContainer = { id, leader: child.pid, init: 0, listenerFd: child.listenerFd, dir: '', go, result };
    cts.push(ct);
    await waitFor(`the init of ${id}`, () => {
      try {
        ct.init = childrenOf(child.pid)[0] ?? 0;
      } catch {
        ct.init = 0;
      }
      return ct.init > 0 && fs.readlinkSync(`/proc/${ct.init}/ns/pid`) !== fs.readlinkSync('/proc/self/ns/pid');
    });
    // the record and instance the rootful hook would make (requester 0, owned by the container's root)
    ct.dir = createContainerInstance(
      { requester: 0, container: id, pid: ct.init, owner: { uid: sb.user.uid, gid: sb.user.gid }, policy: { max: 2, pool: 0 } },
      sb.env,
    ).dir;
    return ct;
  }

  function stopContainer(ct: FakeContainer): void {
    const n = native();
    if (ct.leader > 0) {
      try {
        process.kill(ct.leader, 'SIGKILL');
      } catch {
        /* gone */
      }
      n.waitPid(ct.leader, false);
      ct.leader = 0;
    }
    if (ct.listenerFd >= 0) n.close(ct.listenerFd);
    ct.listenerFd = -1;
    if (ct.dir) destroyContainerInstance(ct.dir, sb.env);
    ct.dir = '';
  }

  beforeAll(async () => {
    sb = new BrokerSandbox('loopfs-agent-fuzz');
    compileMnt(sb.path('mnt-helper'));
    broker = await startBroker(sb);
  }, 60_000);

  afterAll(async () => {
    try {
      for (const ct of cts) stopContainer(ct);
      await broker?.stop();
    } finally {
      await sb.teardown();
    }
  });

  const handshake = (ct: FakeContainer, over: Record<string, unknown> = {}, state: Record<string, unknown> = {}) => ({
    ociVersion: '1.0.2',
    fds: ['seccompFd'],
    pid: ct.init,
    metadata: formatMetadata({ kind: 'errno', errno: 13 }),
    state: { ociVersion: '1.0.2', id: ct.id, status: 'creating', pid: ct.init, bundle: '/nonexistent', annotations: {}, ...state },
    ...over,
  });

  /** Connect, send `pieces` (fds with the first), close our sending side when `eof`; whether the agent closed the connection. */
  async function attempt(pieces: Buffer[], fds: number[], eof: boolean, waitMs = 10_000): Promise<boolean> {
    const n = native();
    const fd = n.streamConnect(seccompSocketPath(sb.env));
    try {
      for (let i = 0; i < pieces.length; i++) {
        try {
          n.sendMsg(fd, pieces[i], i === 0 ? fds : []);
        } catch (e) {
          // the agent closed it already (a huge one past the limit)
          if ((e as { code?: string }).code === 'EPIPE' || (e as { code?: string }).code === 'ECONNRESET') return true;
          throw e;
        }
        if (i < pieces.length - 1) await sleep(5);
      }
      if (eof) n.shutdown(fd, n.constants.SHUT_WR);
      const end = Date.now() + waitMs;
      for (;;) {
        n.setRecvTimeout(fd, 50);
        let m;
        try {
          m = n.recvMsg(fd, 64, 0);
        } catch (e) {
          if ((e as { code?: string }).code === 'ECONNRESET') return true;
          throw e;
        }
        if (m?.eof) return true;
        if (Date.now() > end) return false;
        await sleep(1);
      }
    } finally {
      n.close(fd);
    }
  }

  it('refuses 1000+ malformed handshakes: each connection is closed, no fd stays in the agent, nothing is served', async () => {
    const a = await fakeContainer('fuzz-a');
    const b = await fakeContainer('fuzz-b');
    const n = native();
    // fds that are not seccomp listeners: a pipe (a FIFO opened read-write), a socket, /dev/null
    const fifo = sb.path('fifo');
    execFileSync('mkfifo', [fifo]);
    const pipeR = n.open(fifo, n.constants.O_RDWR);
    const [pipeW, sockOther] = n.socketPair(false);
    const devNull = n.open('/dev/null', n.constants.O_RDONLY);
    const baseline = agentFds();
    const rnd = prng(0x5ecc0);
    const pick = <T,>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)];
    const junk = (len: number) => Buffer.from(Array.from({ length: len }, () => Math.floor(rnd() * 256)));
    const json = (o: unknown) => Buffer.from(JSON.stringify(o));
    const L = a.listenerFd;

    type Case = { kind: string; pieces: Buffer[]; fds: number[]; eof: boolean };
    const cases: Array<() => Case> = [
      () => ({ kind: 'not JSON', pieces: [Buffer.concat([Buffer.from(pick(['', '{', '[', 'x'])), junk(1 + Math.floor(rnd() * 300))])], fds: [L], eof: true }),
      () => {
        const full = json(handshake(a));
        return { kind: 'truncated', pieces: [full.subarray(0, Math.floor(rnd() * (full.length - 1)) + 1)], fds: [L], eof: true };
      },
      () => ({ kind: 'no fd', pieces: [json(handshake(a))], fds: [], eof: pick([true, false]) }),
      () => ({ kind: 'two fds', pieces: [json(handshake(a))], fds: [L, pick([L, pipeR, devNull])], eof: pick([true, false]) }),
      () => ({ kind: 'many fds', pieces: [json(handshake(a))], fds: Array.from({ length: 3 + Math.floor(rnd() * 6) }, () => pick([L, pipeR, pipeW, devNull])), eof: true }),
      () => ({ kind: 'not a listener', pieces: [json(handshake(a))], fds: [pick([pipeR, pipeW, devNull])], eof: pick([true, false]) }),
      () => ({ kind: 'fds field', pieces: [json(handshake(a, { fds: pick([undefined, [], ['seccompFd', 'x'], 'seccompFd', ['other'], [1]]) }))], fds: [L], eof: true }),
      () => ({ kind: 'pid', pieces: [json(handshake(a, { pid: pick([undefined, '1', -1, 0, 1.5, 2 ** 40, null, [a.init]]) }))], fds: [L], eof: pick([true, false]) }),
      () => ({ kind: 'pid of another container', pieces: [json(handshake(a, { pid: b.init }))], fds: [L], eof: pick([true, false]) }),
      () => ({ kind: 'pid of a host process', pieces: [json(handshake(a, { pid: process.pid }))], fds: [L], eof: true }),
      () => ({ kind: 'state.pid', pieces: [json(handshake(a, {}, { pid: pick([b.init, process.pid, a.leader, 1, -5, 'x', undefined]) }))], fds: [L], eof: true }),
      () => ({ kind: 'unknown container', pieces: [json(handshake(a, {}, { id: pick(['fuzz-c', `x${Math.floor(rnd() * 1e9)}`, 'fuzz-a/../fuzz-b', '../0/fuzz-a', '', 'FUZZ-A', 'fuzz-a '.repeat(3), 42]) }))], fds: [L], eof: true }),
      () => ({ kind: 'metadata', pieces: [json(handshake(a, { metadata: pick([undefined, '', 'x', 'loopfs/1 mount=errno:0', 'loopfs/1 mount=cap:64:1', 'loopfs/2 mount=allow', 'loopfs/1 mount=allow ', 7, { a: 1 }, junk(20).toString('latin1')]) }))], fds: [L], eof: true }),
      () => ({ kind: 'ociVersion', pieces: [json(handshake(a, { ociVersion: pick([undefined, 1, null, ['1.0.2']]) }))], fds: [L], eof: true }),
      () => ({ kind: 'not an object', pieces: [json(pick([[handshake(a)], 1, 'x', null, true]))], fds: [L], eof: true }),
      () => ({ kind: 'state', pieces: [json(handshake(a, { state: pick([undefined, null, 'fuzz-a', [], { id: 'fuzz-a' }]) }))], fds: [L], eof: true }),
      () => {
        // a document the agent would refuse anyway (unknown id), in pieces
        const full = json(handshake(a, {}, { id: 'fuzz-zz' }));
        const cut = 1 + Math.floor(rnd() * (full.length - 2));
        return { kind: 'in pieces', pieces: [full.subarray(0, cut), full.subarray(cut)], fds: [L], eof: false };
      },
      () => ({ kind: 'empty', pieces: [], fds: [], eof: true }),
    ];
    const counts: Record<string, number> = {};
    let closed = 0;
    const total = 1100;
    for (let i = 0; i < total; i++) {
      const c = pick(cases)();
      counts[c.kind] = (counts[c.kind] ?? 0) + 1;
      if (c.pieces.length === 0) {
        n.close(n.streamConnect(seccompSocketPath(sb.env)));
        closed++;
        continue;
      }
      if (await attempt(c.pieces, c.fds, c.eof)) closed++;
      else throw new Error(`case ${i} (${c.kind}) left open`);
    }
    // huge: past the 1 MiB bound, with and without end of stream
    for (const eof of [true, false]) {
      const big = json(handshake(a, {}, { annotations: { pad: 'x'.repeat((1 << 20) + 100) } }));
      expect(await attempt([big], [L], eof)).toBe(true);
      closed++;
    }
    // pieces that each end in } but never make a document: the agent gives up after 64 tries
    expect(await attempt([Buffer.from('{"x":['), ...Array.from({ length: 70 }, () => Buffer.from('1}'))], [L], false)).toBe(true);
    closed++;
    await waitFor('the refusal in the log', () => /handshake refused: no complete handshake in 64 pieces/.test(brokerLog(broker!)));
    // an incomplete handshake that never ends is closed after the agent's timeout (5 s)
    const stalled = await Promise.all([0, 1, 2].map(() => attempt([json(handshake(a)).subarray(0, 40)], [L], false, 15_000)));
    expect(stalled).toEqual([true, true, true]);
    closed += 3;
    console.log(`[agent-fuzz] ${JSON.stringify({ closed, counts })}`);
    expect(closed).toBe(total + 6);

    // every fd the agent received went back: its count returns to the baseline
    await waitFor('the agent to close what it received', () => agentFds() === baseline, 10_000).catch(() => undefined);
    expect(agentFds()).toBe(baseline);
    expect(brokerLog(broker!)).not.toMatch(/serving pid/);
    for (const fd of [pipeR, pipeW, sockOther, devNull]) n.close(fd);
  }, 240_000);

  /** The fixture client as `uid`, sending `doc` with `listenerFd` as its fd 3. */
  async function clientAs(uid: number, gid: number, doc: object, listenerFd: number): Promise<{ code: number | null; out: string; err: string }> {
    const child = spawn(
      'setpriv',
      ['--reuid', String(uid), '--regid', String(gid), '--clear-groups', process.execPath, CLIENT, ADDON, 'send', seccompSocketPath(sb.env), JSON.stringify(doc)],
      { stdio: ['ignore', 'pipe', 'pipe', listenerFd] },
    );
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => err.push(d));
    const code = await new Promise<number | null>((res) => child.on('close', res));
    return { code, out: Buffer.concat(out).toString(), err: Buffer.concat(err).toString() };
  }

  it('refuses a peer uid that does not own the container, even with a valid handshake; serves its owner', async () => {
    const a = cts.find((c) => c.id === 'fuzz-a')!;
    const before = agentFds();
    for (let i = 0; i < 3; i++) {
      expect(await clientAs(NOBODY, NOBODY, handshake(a), a.listenerFd)).toEqual({ code: 0, out: 'closed\n', err: '' });
    }
    expect(brokerLog(broker!)).toMatch(new RegExp(`uid ${NOBODY} pid \\d+: handshake refused: container fuzz-a: uid ${NOBODY} does not own its instance`));
    await waitFor('the agent to close what it received', () => agentFds() === before, 10_000).catch(() => undefined);
    expect(agentFds()).toBe(before);
    expect(brokerLog(broker!)).not.toMatch(/serving pid/);

    // the container's root as the host sees it (the instance owner) is a runtime that may hand over
    const c = await fakeContainer('fuzz-c');
    expect(await clientAs(sb.user.uid, sb.user.gid, handshake(c), c.listenerFd)).toEqual({ code: 0, out: 'closed\n', err: '' });
    await waitFor('the agent to serve fuzz-c', () => new RegExp(`container fuzz-c .*serving pid ${c.init}'s listener, mount verdict errno 13, from uid ${sb.user.uid}`).test(brokerLog(broker!)));
    stopContainer(c);
    await waitFor('the agent to close its listener', () => agentFds() === before, 10_000).catch(() => undefined);
    expect(agentFds()).toBe(before);
  });

  it('a flood of idle connections from one uid is cut at its share; a valid handshake, in pieces, is then served: mount(2) gets the engine verdict, and the listener closes with the container', async () => {
    const a = cts.find((c) => c.id === 'fuzz-a')!;
    const baseline = agentFds();
    const flood = spawn('setpriv', ['--reuid', String(NOBODY), '--regid', String(NOBODY), '--clear-groups', process.execPath, CLIENT, ADDON, 'flood', seccompSocketPath(sb.env), '40'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      const out: Buffer[] = [];
      flood.stdout!.on('data', (d: Buffer) => out.push(d));
      await waitFor('the flood to report', () => Buffer.concat(out).toString().endsWith('\n'), 15_000);
      // 16 at most may wait (maxPendingPerUid); the agent closed the rest at once
      expect(Number(Buffer.concat(out).toString())).toBe(40 - 16);

      // the valid handshake, split at random points (the fd comes with the first piece)
      const full = Buffer.from(JSON.stringify(handshake(a)));
      const cuts = [7, 100, full.length - 3];
      const pieces = [full.subarray(0, cuts[0]), full.subarray(cuts[0], cuts[1]), full.subarray(cuts[1], cuts[2]), full.subarray(cuts[2])];
      expect(await attempt(pieces, [a.listenerFd], false)).toBe(true);
      await waitFor('the agent to serve the listener', () => /container fuzz-a .*serving pid \d+'s listener, mount verdict errno 13, from uid 0/.test(brokerLog(broker!)));
    } finally {
      flood.kill('SIGKILL');
    }
    // the test's own copy of the listener goes: the agent's is now the only one
    native().close(a.listenerFd);
    a.listenerFd = -1;
    fs.writeFileSync(a.go, '');
    await waitFor('the container to mount', () => fs.existsSync(a.result));
    expect(fs.readFileSync(a.result, 'utf8')).toBe('EACCES\n');

    // the container ends: its listener hangs up and the agent closes it (and its init pidfd)
    const withListener = agentFds();
    expect(withListener).toBeGreaterThan(baseline);
    stopContainer(a);
    await waitFor('the agent to close the listener', () => agentFds() === baseline, 10_000).catch(() => undefined);
    expect(agentFds()).toBe(baseline);
  }, 60_000);

  it('backs off when out of fds (EMFILE) instead of spinning, and serves again once fds are back', async () => {
    const b = cts.find((c) => c.id === 'fuzz-b')!;
    const n = native();
    const pid = broker!.pid;
    const cpuTicks = () => {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return Number(f[11]) + Number(f[12]); // utime + stime
    };
    // the soft limit only: root may lack CAP_SYS_RESOURCE to raise a hard one again
    const [soft, hard] = execFileSync('prlimit', ['--pid', String(pid), '--nofile', '--output', 'SOFT,HARD', '--noheadings'], { encoding: 'utf8' }).trim().split(/\s+/);
    const limit = broker!.fdCount() + 2;
    execFileSync('prlimit', ['--pid', String(pid), `--nofile=${limit}:${hard}`]);
    const held: number[] = [];
    try {
      // two idle connections take the last fds; the rest wait in the backlog while accept fails
      for (let i = 0; i < 8; i++) held.push(n.streamConnect(seccompSocketPath(sb.env)));
      await waitFor('the agent to hit EMFILE', () => /seccomp agent: accept: .*EMFILE|Too many open files.*pausing/.test(brokerLog(broker!)), 10_000);
      const before = cpuTicks();
      await sleep(1000);
      // a spinning accept loop burns a core (100 ticks/s); pausing costs next to nothing
      expect(cpuTicks() - before).toBeLessThan(20);
    } finally {
      execFileSync('prlimit', ['--pid', String(pid), `--nofile=${soft}:${hard}`]);
      for (const fd of held) n.close(fd);
    }
    expect(await attempt([Buffer.from(JSON.stringify(handshake(b)))], [b.listenerFd], false)).toBe(true);
    await waitFor('the agent to serve fuzz-b', () => /container fuzz-b .*serving pid/.test(brokerLog(broker!)));
    native().close(b.listenerFd);
    b.listenerFd = -1;
    fs.writeFileSync(b.go, '');
    await waitFor('the container to mount', () => fs.existsSync(b.result));
    expect(fs.readFileSync(b.result, 'utf8')).toBe('EACCES\n');
  }, 60_000);
});
