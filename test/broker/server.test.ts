// The broker's server side on its own, in-process: BrokerServer (src/broker/server.ts: the
// served set, start, sync, stop, recovered), Endpoint (endpoint.ts: one instance's socket and
// who may connect) and Connection (connection.ts: request dispatch, fds, session end), built
// directly on real instances of a private sandbox and driven by in-process clients
// (AsyncClient). What a `loopfs serve` process shows from outside is in unprivileged.test.ts,
// fuzz.test.ts, kill.test.ts and restart.test.ts; this file pins what only the objects show:
// sync()'s exact result, the server's log lines, its connection count, which fds it closes,
// and that stop() resolves only once the sessions it ended are settled.
//
// The instance worker thread: node cannot load src/broker/worker.ts in a worker_threads
// thread (no TypeScript there), so the Worker that InstanceWorker starts is pointed at the
// built dist/broker/worker.js (the same source, built; the file is skipped without it).
// InstanceOps, which that thread runs, has its own unit tests (ops.test.ts).
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { BrokerServer, ServeError, type ServeOptions } from '../../src/broker/server.js';
import { MAX_VIOLATIONS } from '../../src/broker/connection.js';
import { writeSessionRecord } from '../../src/broker/sessions.js';
import { native } from '../../src/kernel/native.js';
import { MAX_MESSAGE_BYTES, OPS } from '../../src/protocol/broker.js';
import { readLoopState } from '../helpers/devices.js';
import { REPO_ROOT } from '../helpers/env.js';
import { ADDON, AsyncClient, BrokerSandbox, brokerSkipReason, CLIENT, waitFor } from './support.js';
import { minorOf, skipTitle, text } from '../instance/support.js';

vi.mock('node:worker_threads', async (importOriginal) => {
  const orig = await importOriginal<typeof import('node:worker_threads')>();
  const src = new URL('../../src/broker/worker.js', import.meta.url).href;
  const built = new URL('../../dist/broker/worker.js', import.meta.url);
  class Worker extends orig.Worker {
    constructor(file: string | URL, options?: import('node:worker_threads').WorkerOptions) {
      super(String(file) === src ? built : file, options);
    }
  }
  return { ...orig, default: { ...orig, Worker }, Worker };
});

const reason = brokerSkipReason('broker/server') ?? (fs.existsSync(path.join(REPO_ROOT, 'dist', 'broker', 'worker.js')) ? undefined : 'dist/broker/worker.js missing (run npm run build)');

const SOCKET = 'loop-control';
type Reply = Record<string, unknown> | null;
/** The ops a version 1 hello lists (version 2 lists all of OPS). */
const V1_OPS = ['hello', 'list', 'get-free', 'attach', 'detach', 'set-capacity', 'mount'];
/** What LocalInstance.open says of a DIR without an instance, as ServeError words it. */
const notAnInstance = (dir: string): string => `${dir}: not a loop device instance (${dir}/.loopfs: No such file or directory (ENOENT))`;

describe.skipIf(reason !== undefined)(skipTitle('BrokerServer, Endpoint and Connection, in-process on real instances', reason), () => {
  let sb: BrokerSandbox;
  let servers: BrokerServer[];
  let clients: AsyncClient[];
  let fds: number[];
  let logs: string[];
  const n = native();

  beforeEach(() => {
    sb = new BrokerSandbox('loopfs-server');
    servers = [];
    clients = [];
    fds = [];
    logs = [];
  });

  afterEach(async () => {
    // clients first (their sessions end), then the servers (they settle them), then the sandbox
    try {
      for (const c of clients) c.close();
      for (const fd of fds) {
        try {
          n.close(fd);
        } catch {
          // the tests never close these themselves: a failure here leaves nothing to give back
        }
      }
      for (const s of servers) await s.stop();
    } finally {
      await sb.teardown();
    }
  });

  /** BrokerServer.start in the sandbox's environment, logging into `logs`, stopped after the test. */
  const start = (dirs: string[], opts: Partial<ServeOptions> = {}): BrokerServer => {
    const s = BrokerServer.start({ env: sb.env, log: (line) => logs.push(line), ...opts, dirs });
    servers.push(s);
    return s;
  };

  const connect = (dir: string): AsyncClient => {
    const c = AsyncClient.connect(path.join(dir, SOCKET));
    clients.push(c);
    return c;
  };

  /** An fd of ours, closed after the test. */
  const openFd = (p: string, flags = n.constants.O_RDWR): number => {
    const fd = n.open(p, flags);
    fds.push(fd);
    return fd;
  };

  const socketIno = (dir: string): number | null => {
    try {
      const st = fs.lstatSync(path.join(dir, SOCKET));
      return st.isSocket() ? st.ino : null;
    } catch {
      return null; // no socket file
    }
  };

  const idOf = (dir: string): string => sb.state(dir)!.id;
  const backing = (minor: number): string | null => readLoopState(`loop${minor}`)?.backingFile ?? null;
  const held = (dir: string): number[] => Object.keys(sb.ownDevices(dir)).map(Number).sort((a, b) => a - b);

  it('hello answers with exactly the instance id, the peer (root), the ops of the version asked, the allow-list and the FUSE mode', async () => {
    const inst = await sb.instance('inst');
    const server = start([inst], { allowFs: ['ext4'], fuseMode: 'never' });
    const c = connect(inst);
    expect(await c.request({ v: 2, id: 1, op: 'hello', client: 'test' })).toEqual({
      v: 2,
      id: 1,
      ok: true,
      server: 'loopfs',
      protocol: 2,
      instance: idOf(inst),
      uid: 0,
      gid: 0,
      ops: [...OPS],
      fs: ['ext4'],
      fuseMode: 'never',
      fuseDrivers: server.fuseDrivers,
    });
    expect(await c.request({ v: 1, id: 2, op: 'hello' })).toEqual({
      v: 1,
      id: 2,
      ok: true,
      server: 'loopfs',
      protocol: 2,
      instance: idOf(inst),
      uid: 0,
      gid: 0,
      ops: V1_OPS,
      fs: ['ext4'],
    });
    expect(server.instances).toEqual([{ dir: inst, id: idOf(inst), socket: path.join(inst, SOCKET), owner: { uid: sb.user.uid, gid: sb.user.gid } }]);
    expect(server.connectionCount).toBe(1);
  });

  it('sync serves exactly the dirs listed: adds the new one, stops the one left out (socket removed, client ended), reports the one that cannot be served and skips it', async () => {
    const a = await sb.instance('a');
    const b = await sb.instance('b');
    const c = await sb.instance('c');
    const plain = sb.path('plain');
    fs.mkdirSync(plain);
    const server = start([a, b]);
    await server.recovered();
    const bIno = socketIno(b);
    const onA = connect(a);
    expect(await onA.request({ v: 2, id: 1, op: 'list' })).toEqual({ v: 2, id: 1, ok: true, devices: [] });
    // a relative path and a repeated dir name the same instances
    const r = await server.sync([path.relative(process.cwd(), b), c, `${c}/`, plain]);
    expect(r.added).toEqual([c]);
    expect(r.removed).toEqual([a]);
    expect(r.failed).toEqual([notAnInstance(plain)]);
    expect(server.instances.map((i) => i.dir)).toEqual([b, c]);
    expect([socketIno(a), socketIno(b), socketIno(c) !== null, socketIno(plain)]).toEqual([null, bIno, true, null]);
    expect(await onA.recv()).toMatchObject({ eof: true });
    expect(server.connectionCount).toBe(0);
    const onC = connect(c);
    expect(await onC.request({ v: 2, id: 1, op: 'list' })).toEqual({ v: 2, id: 1, ok: true, devices: [] });
    // the same list again changes nothing
    expect(await server.sync([b, c, plain])).toEqual({ added: [], removed: [], failed: [r.failed[0]] });
    expect(server.instances.map((i) => i.dir)).toEqual([b, c]);
    expect(socketIno(b)).toBe(bIno);
  });

  it('sync replaces an instance destroyed and made again in the same DIR: removed and added, served under its new id', async () => {
    const a = await sb.instance('a');
    const server = start([a]);
    await server.recovered();
    const oldId = idOf(a);
    expect(server.instances.map((i) => i.id)).toEqual([oldId]);
    expect((await sb.loopfs(['instance', 'destroy', '--force', a])).exitCode).toBe(0);
    await sb.instance('a');
    const newId = idOf(a);
    expect(newId).not.toBe(oldId);
    expect(await server.sync([a])).toEqual({ added: [a], removed: [a], failed: [] });
    expect(server.instances.map((i) => i.id)).toEqual([newId]);
    const c = connect(a);
    expect(await c.request({ v: 2, id: 1, op: 'hello' })).toMatchObject({ ok: true, instance: newId });
  });

  it('start serves nothing when one dir cannot be served: ServeError, and the sockets of the dirs before it are removed again', async () => {
    const a = await sb.instance('a');
    const plain = sb.path('plain');
    fs.mkdirSync(plain);
    let thrown: unknown = null;
    try {
      start([a, plain]);
    } catch (e) {
      thrown = e;
    }
    expect(thrown).toBeInstanceOf(ServeError);
    expect((thrown as Error).message).toBe(notAnInstance(plain));
    expect(socketIno(a)).toBeNull();
    expect(fs.readdirSync(a).filter((f) => f === SOCKET || f.startsWith('.lc.'))).toEqual([]);
  });

  // `loopfs serve` on SIGHUP prints "cannot serve " and this: the DIR once (it once printed it twice)
  it('sync reports a DIR it cannot serve with the DIR named once, in ServeError\'s words', async () => {
    const plain = sb.path('plain');
    fs.mkdirSync(plain);
    const server = start([]);
    expect(await server.sync([plain])).toEqual({ added: [], removed: [], failed: [notAnInstance(plain)] });
  });

  it('start serves a dir named twice (also relative or with a trailing slash) once', async () => {
    const a = await sb.instance('a');
    const server = start([a, `${a}/`, path.relative(process.cwd(), a)]);
    expect(server.instances.map((i) => i.dir)).toEqual([a]);
  });

  it('listen refuses a DIR whose loop-control is not a socket (left as it was) and a DIR another live broker serves (which keeps serving)', async () => {
    const a = await sb.instance('a');
    const b = await sb.instance('b');
    fs.writeFileSync(path.join(a, SOCKET), 'not a socket\n');
    expect(() => start([a])).toThrow(new ServeError(`${path.join(a, SOCKET)} exists and is not a socket`));
    expect(fs.readFileSync(path.join(a, SOCKET), 'utf8')).toBe('not a socket\n');
    const first = start([b]);
    const ino = socketIno(b);
    expect(() => start([b])).toThrow(new ServeError(`${b}: already served by another broker`));
    expect(socketIno(b)).toBe(ino);
    expect(first.instances.map((i) => i.dir)).toEqual([b]);
    const c = connect(b);
    expect(await c.request({ v: 2, id: 1, op: 'list' })).toEqual({ v: 2, id: 1, ok: true, devices: [] });
  });

  it('listen takes over a stale socket (nobody listening) with a new one; stop removes the socket only while it is still its own', async () => {
    const a = await sb.instance('a');
    const b = await sb.instance('b');
    // a killed broker's socket: bound, nobody listening
    const staleFd = n.seqpacketListen(path.join(a, SOCKET), 1, 0o600);
    n.close(staleFd);
    const staleIno = socketIno(a);
    const server = start([a, b]);
    expect(socketIno(a)).not.toBe(staleIno);
    expect(socketIno(a)).not.toBeNull();
    // b's socket replaced by somebody else's file: not ours to remove
    fs.rmSync(path.join(b, SOCKET));
    fs.writeFileSync(path.join(b, SOCKET), 'someone else\n');
    await server.stop();
    expect(socketIno(a)).toBeNull();
    expect(fs.readFileSync(path.join(b, SOCKET), 'utf8')).toBe('someone else\n');
  });

  it('admit: beyond maxConnections a client gets the EAGAIN denial and end-of-file; a place freed admits the next', async () => {
    const a = await sb.instance('a');
    const server = start([a], { maxConnections: 1 });
    const first = connect(a);
    expect(await first.request({ v: 2, id: 1, op: 'list' })).toEqual({ v: 2, id: 1, ok: true, devices: [] });
    const second = connect(a);
    const refused = await second.recv();
    expect(JSON.parse(refused.data.toString('utf8'))).toEqual({
      v: 1,
      id: null,
      ok: false,
      error: { code: 'EAGAIN', kind: 'denied', message: 'the broker has too many connections; try again' },
    });
    expect(await second.recv()).toMatchObject({ eof: true });
    expect(server.connectionCount).toBe(1);
    first.close();
    await waitFor('the first connection ended', () => server.connectionCount === 0);
    const third = connect(a);
    expect(await third.request({ v: 2, id: 1, op: 'list' })).toEqual({ v: 2, id: 1, ok: true, devices: [] });
    expect(server.connectionCount).toBe(1);
  });

  it('admit checks SO_PEERCRED even with the socket opened up: uid 65534 is refused (EACCES reply, logged), the owner and root are served', async () => {
    const a = await sb.instance('a');
    const server = start([a]);
    const socket = path.join(a, SOCKET);
    fs.chmodSync(socket, 0o666);
    const asUid = async (uid: number, gid: number, argv: string[]): Promise<unknown> => {
      const r = await sb.asPlainUser([process.execPath, ...argv], {}, uid, gid);
      expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
      return JSON.parse(text(r.stdout));
    };
    // the refused peer only reads: the broker shuts the socket down at once, so a request sent
    // after the accept could already meet EPIPE; what it reads is the reason, then end-of-file
    const readAll = `const a = require(process.argv[1]); const fd = a.seqpacketConnect(process.argv[2]); const out = [];
      for (;;) { const m = a.recvMsg(fd, 65536, 1); if (m.eof) { out.push('eof'); break; } out.push(JSON.parse(m.data.toString('utf8'))); }
      process.stdout.write(JSON.stringify(out));`;
    expect(await asUid(65534, 65534, ['-e', readAll, ADDON, socket])).toEqual([
      { v: 1, id: null, ok: false, error: { code: 'EACCES', kind: 'denied', message: `only the instance owner (uid ${sb.user.uid}) and root may use this broker` } },
      'eof',
    ]);
    expect(server.connectionCount).toBe(0);
    expect(logs.filter((l) => l.includes('refused'))).toHaveLength(1);
    expect(logs.find((l) => l.includes('refused'))).toMatch(new RegExp(`^${a}: refused uid 65534 \\(pid \\d+\\): not the owner$`));
    expect(await asUid(sb.user.uid, sb.user.gid, [CLIENT, ADDON, 'steps', socket, JSON.stringify([{ msg: { op: 'hello' } }])])).toEqual([
      { eof: false, fds: 0, reply: { v: 1, id: 1, ok: true, server: 'loopfs', protocol: 2, instance: idOf(a), uid: sb.user.uid, gid: sb.user.gid, ops: V1_OPS, fs: server.allowFs } },
    ]);
    const root = connect(a);
    expect(await root.request({ v: 1, id: 1, op: 'hello' })).toEqual({ v: 1, id: 1, ok: true, server: 'loopfs', protocol: 2, instance: idOf(a), uid: 0, gid: 0, ops: V1_OPS, fs: server.allowFs });
    expect(server.connectionCount).toBe(1);
  });

  it(`malformed requests each get their exact protocol error and the connection keeps serving; fds they carried are closed; the ${MAX_VIOLATIONS}th violation's reply comes, then the close`, async () => {
    const a = await sb.instance('a');
    const server = start([a]);
    const c = connect(a);
    /** Send (our copies of `sent` are closed once sent) and read the reply; null on end-of-file. */
    const send = async (data: Buffer, sent: number[] = []): Promise<Reply> => {
      const ok = c.send(data, sent);
      for (const fd of sent) n.close(fd);
      expect(ok).toBe(true);
      const m = await c.recv();
      if (m.eof) return null;
      return JSON.parse(m.data.toString('utf8')) as Reply;
    };
    const json = (o: object) => Buffer.from(JSON.stringify(o));
    const protocolError = (id: number | null, code: string, message: string) => ({ v: 1, id, ok: false, error: { code, message, kind: 'protocol' } });
    /** A socketpair: one end to send, the other to tell whether every copy of it was closed. */
    const pair = (): { send: number; peer: number } => {
      const [x, y] = n.socketPair(true);
      fds.push(y);
      return { send: x, peer: y };
    };
    const closedEverywhere = (peer: number): boolean => n.recvMsg(peer, 16, 0)?.eof === true;

    expect(await send(Buffer.from('not json'))).toEqual(protocolError(null, 'EBADMSG', 'message is not valid JSON'));
    expect(await send(json({ v: 2, id: 3, op: 'nope' }))).toEqual(protocolError(3, 'EOPNOTSUPP', 'unknown op "nope"'));
    expect(await send(json({ v: 2, id: 4, op: 'list', start: -1 }))).toEqual(protocolError(4, 'EINVAL', 'list: start must be an integer in 0..2^32-1'));
    expect(await send(json({ v: 1, id: 5, op: 'set-direct-io', minor: 0, on: true }))).toEqual(protocolError(5, 'EOPNOTSUPP', 'unknown op "set-direct-io"'));
    const one = pair();
    expect(await send(json({ v: 2, id: 6, op: 'list' }), [one.send])).toEqual(protocolError(6, 'EBADF', 'list carries 0 file descriptor(s), not 1'));
    expect(closedEverywhere(one.peer)).toBe(true);
    const [p, q] = [pair(), pair()];
    expect(await send(json({ v: 2, id: 7, op: 'list' }), [p.send, q.send])).toEqual(protocolError(null, 'EBADF', 'a message carries at most 1 file descriptor'));
    expect([closedEverywhere(p.peer), closedEverywhere(q.peer)]).toEqual([true, true]);
    // still served, and the violations so far did not close it
    expect(await send(json({ v: 2, id: 8, op: 'list' }))).toEqual({ v: 2, id: 8, ok: true, devices: [] });
    expect(server.connectionCount).toBe(1);
    expect(await send(Buffer.alloc(MAX_MESSAGE_BYTES + 1, 0x20))).toEqual(protocolError(null, 'EMSGSIZE', `message longer than ${MAX_MESSAGE_BYTES} bytes`));
    expect(server.connectionCount).toBe(1);
    expect(logs.filter((l) => l.includes('protocol errors'))).toEqual([]);
    // the eighth
    expect(await send(json({ v: 3, id: 9, op: 'list' }))).toEqual(protocolError(9, 'EPROTONOSUPPORT', 'protocol version 3 is not supported (this broker speaks 1, 2)'));
    expect(await c.recv()).toMatchObject({ eof: true });
    expect(server.connectionCount).toBe(0);
    expect(logs.filter((l) => l.includes('protocol errors'))).toEqual([`${a}: closing connection of pid ${process.pid} after ${MAX_VIOLATIONS} protocol errors`]);
  });

  it('pipelined requests are answered in the order sent: a hello behind a list waits for the list (reading pauses while the worker runs)', async () => {
    const a = await sb.instance('a');
    const server = start([a]);
    const c = connect(a);
    for (const msg of [{ v: 2, id: 1, op: 'list' }, { v: 1, id: 2, op: 'hello' }, { v: 2, id: 3, op: 'list' }]) expect(c.send(Buffer.from(JSON.stringify(msg)))).toBe(true);
    const replies: unknown[] = [];
    for (let i = 0; i < 3; i++) replies.push(JSON.parse((await c.recv()).data.toString('utf8')));
    expect(replies).toEqual([
      { v: 2, id: 1, ok: true, devices: [] },
      { v: 1, id: 2, ok: true, server: 'loopfs', protocol: 2, instance: idOf(a), uid: 0, gid: 0, ops: V1_OPS, fs: server.allowFs },
      { v: 2, id: 3, ok: true, devices: [] },
    ]);
  });

  it('a connection that ends releases its session devices; a device another connection bound since (get-free then attach) and plain attaches stay', async () => {
    const a = await sb.instance('a');
    const server = start([a]);
    await server.recovered();
    const one = connect(a);
    const two = connect(a);
    const found = (await one.request({ v: 2, id: 1, op: 'get-free', session: true }))!;
    expect(found).toEqual({ v: 2, id: 1, ok: true, minor: expect.any(Number) });
    const kept = sb.file('kept.img');
    const bound = await two.request({ v: 2, id: 1, op: 'attach' }, [openFd(kept)]);
    // get-free does not bind: the attach of the other connection takes the idle device it found
    expect(bound).toEqual({ v: 2, id: 1, ok: true, minor: found.minor, readOnly: false });
    const sess = sb.file('session.img');
    const s = (await one.request({ v: 2, id: 2, op: 'attach', session: true }, [openFd(sess)]))!;
    const plain = sb.file('plain.img');
    const p = (await one.request({ v: 2, id: 3, op: 'attach' }, [openFd(plain)]))!;
    const auto = sb.file('auto.img');
    const ac = (await one.request({ v: 2, id: 4, op: 'attach', autoclear: true }, [openFd(auto)]))!;
    const [km, sm, pm, am] = [found.minor, s.minor, p.minor, ac.minor] as number[];
    expect(new Set([km, sm, pm, am]).size).toBe(4);
    expect([backing(km), backing(sm), backing(pm), backing(am)]).toEqual([kept, sess, plain, auto]);
    one.close();
    await waitFor('the ended connection is settled', () => server.connectionCount === 1 && String(held(a)) === String([km, pm].sort((x, y) => x - y)));
    expect([backing(km), backing(pm)]).toEqual([kept, plain]);
    expect([backing(sm) === sess, backing(am) === auto]).toEqual([false, false]);
    two.close();
    await waitFor('the second connection ended', () => server.connectionCount === 0);
    expect(held(a)).toEqual([km, pm].sort((x, y) => x - y));
    expect([backing(km), backing(pm)]).toEqual([kept, plain]);
  });

  it('detach of an autoclear device another connection holds open unbinds it at once (the holder is dropped)', async () => {
    const a = await sb.instance('a');
    const server = start([a]);
    await server.recovered();
    const one = connect(a);
    const two = connect(a);
    const auto = sb.file('auto.img');
    const ac = (await one.request({ v: 2, id: 1, op: 'attach', autoclear: true }, [openFd(auto)]))!;
    const minor = ac.minor as number;
    expect(backing(minor)).toBe(auto);
    expect(await two.request({ v: 2, id: 1, op: 'detach', minor })).toEqual({ v: 2, id: 1, ok: true });
    expect(backing(minor)).toBeNull();
    expect(held(a)).toEqual([]);
  });

  it('stop ends every connection and resolves only once their session devices are released; the socket file is gone', async () => {
    const a = await sb.instance('a');
    const server = start([a]);
    await server.recovered();
    const c = connect(a);
    const sess = sb.file('session.img');
    const s = (await c.request({ v: 2, id: 1, op: 'attach', session: true }, [openFd(sess)]))!;
    expect(backing(s.minor as number)).toBe(sess);
    await server.stop();
    expect(backing(s.minor as number)).toBeNull();
    expect(held(a)).toEqual([]);
    expect(socketIno(a)).toBeNull();
    expect(server.connectionCount).toBe(0);
    expect(await c.recv()).toMatchObject({ eof: true });
  });

  it('recovered() resolves once the sessions of a broker that is gone are settled: its session device detached and released, logged', async () => {
    const a = await sb.instance('a');
    const file = sb.file('left.img');
    const r = await sb.losetup(['-f', '--show', file], { env: { LOOPFS_INSTANCE: a } });
    expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
    const minor = minorOf(text(r.stdout).trim());
    expect(backing(minor)).toBe(file);
    // a broker that no longer runs (no such pid) left this device as a session device
    writeSessionRecord(sb.env, idOf(a), { broker: { pid: 0x3ffffff, start: '1' }, sessions: [minor], released: [] });
    const server = start([a]);
    await server.recovered();
    expect(backing(minor)).toBeNull();
    expect(held(a)).toEqual([]);
    expect(logs).toEqual([`${a}: settled 1 device(s) of a previous broker's sessions: loop${minor}`]);
    expect(fs.existsSync(path.join(sb.runtime, 'broker', `${idOf(a)}.json`))).toBe(false);
  });
});
