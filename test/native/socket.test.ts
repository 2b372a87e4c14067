// Unix SOCK_SEQPACKET sockets, SCM_RIGHTS and the fd watcher (native/socket.cc,
// native/fdwatch.cc) against the real kernel. Most tests run as any user; the one with an
// unprivileged client process needs root (setpriv) and says so when skipped.
//
// fd hygiene: every fd a test makes is closed in `finally`; the tests about hostile
// messages count /proc/self/fd around synchronous code, so nothing else in this process
// can open or close an fd in between.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { native, type FdWatcher } from '../../src/kernel/native.js';
import { announceSkip, REPO_ROOT } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import { sysErrorOf } from '../helpers/errors.js';

const addon = native();
const C = addon.constants;
const ADDON_PATH = path.join(REPO_ROOT, 'native', 'build', 'Release', 'loopfs.node');
const O_CLOEXEC = 0o2000000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function openFdCount(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

function fdFlags(fd: number): number {
  const m = /^flags:\s+([0-7]+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return parseInt(m?.[1] ?? '0', 8);
}

function isOpen(fd: number): boolean {
  return fs.existsSync(`/proc/self/fd/${fd}`);
}

/** Closes each fd that is still a number >= 0, ignoring errors (cleanup only). */
function closeAll(...fds: (number | null | undefined)[]): void {
  for (const fd of fds) {
    if (typeof fd === 'number' && fd >= 0) {
      try {
        addon.close(fd);
      } catch {
        /* already closed */
      }
    }
  }
}

/** Runs a node script that loads the addon as `a` (constants as `C`). */
function runNode(
  body: string,
  opts: { timeoutMs?: number; args?: string[]; prefix?: string[]; nodeFlags?: string[] } = {},
) {
  const code = `const a = require(${JSON.stringify(ADDON_PATH)}); const C = a.constants;\n${body}`;
  const argv = [...(opts.prefix ?? []), process.execPath, ...(opts.nodeFlags ?? []), '-e', code, ...(opts.args ?? [])];
  return spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', timeout: opts.timeoutMs ?? 15_000 });
}

let tmp: string;

beforeAll(() => {
  tmp = makeTempDir('loopfs-socket');
});

afterAll(() => {
  if (tmp) removeTree(tmp);
});

describe('seqpacket sockets: datagrams and SCM_RIGHTS', () => {
  it('round trip: data and two fds arrive; received fds are new, close-on-exec and usable', () => {
    const [a, b] = addon.socketPair(true);
    const file = path.join(tmp, 'payload');
    fs.writeFileSync(file, 'file contents');
    const fileFd = addon.open(file, C.O_RDONLY);
    const [pr, pw] = pipe();
    let got: number[] = [];
    try {
      expect(addon.sendMsg(a, Buffer.from('hello'), [fileFd, pr])).toBe(5);
      const msg = addon.recvMsg(b, 64, 4);
      expect(msg).not.toBeNull();
      got = msg!.fds;
      expect(msg!.data.toString()).toBe('hello');
      expect(msg).toMatchObject({ truncated: false, ctrlTruncated: false, eof: false });
      expect(got).toHaveLength(2);
      for (const fd of got) {
        expect([fileFd, pr, pw]).not.toContain(fd);
        expect(fdFlags(fd) & O_CLOEXEC, `received fd ${fd} is O_CLOEXEC`).toBe(O_CLOEXEC);
      }
      // The same open files: read the file through the copy, and the pipe end through its copy.
      expect(addon.fstat(got[0]).ino).toBe(addon.fstat(fileFd).ino);
      expect(fs.readFileSync(got[0], 'utf8')).toBe('file contents');
      fs.writeSync(pw, 'through the pipe');
      const buf = Buffer.alloc(64);
      const n = fs.readSync(got[1], buf, 0, 64, null);
      expect(buf.subarray(0, n).toString()).toBe('through the pipe');
      // The sender's fds stay open.
      expect(isOpen(fileFd) && isOpen(pr)).toBe(true);
      // Nothing else queued: a non-blocking socket answers null.
      expect(addon.recvMsg(b, 64, 4)).toBeNull();
    } finally {
      closeAll(a, b, fileFd, pr, pw, ...got);
    }
  });

  it('a datagram with more fds than maxFds: all received fds are closed, ctrlTruncated', () => {
    const [a, b] = addon.socketPair(true);
    const extra = [0, 1, 2].map(() => addon.open('/dev/null', C.O_RDONLY));
    try {
      // maxFds 1 (odd: CMSG_SPACE's padding would fit a second fd), 2 and 0, with 3 fds sent.
      for (const maxFds of [1, 2, 0]) {
        addon.sendMsg(a, Buffer.from(`max ${maxFds}`), extra);
        const before = openFdCount();
        const msg = addon.recvMsg(b, 64, maxFds);
        const after = openFdCount();
        expect(msg).toMatchObject({ fds: [], ctrlTruncated: true, truncated: false, eof: false });
        expect(msg!.data.toString()).toBe(`max ${maxFds}`);
        expect(after, `no fd left behind with maxFds ${maxFds}`).toBe(before);
      }
      // Exactly maxFds is fine.
      addon.sendMsg(a, Buffer.from('x'), extra);
      const ok = addon.recvMsg(b, 64, 3);
      expect(ok?.fds).toHaveLength(3);
      expect(ok?.ctrlTruncated).toBe(false);
      closeAll(...ok!.fds);
    } finally {
      closeAll(a, b, ...extra);
    }
  });

  it('a datagram longer than maxBytes is flagged truncated, and its fds are closed', () => {
    const [a, b] = addon.socketPair(true);
    const devnull = addon.open('/dev/null', C.O_RDONLY);
    try {
      addon.sendMsg(a, Buffer.from('0123456789abcdef'), []);
      const m1 = addon.recvMsg(b, 10, 0);
      expect(m1).toMatchObject({ truncated: true, ctrlTruncated: false, eof: false, fds: [] });
      expect(m1!.data.toString()).toBe('0123456789');
      // The rest of a SEQPACKET datagram is discarded, not delivered as the next message.
      expect(addon.recvMsg(b, 64, 0)).toBeNull();

      addon.sendMsg(a, Buffer.from('0123456789abcdef'), [devnull, devnull]);
      const before = openFdCount();
      const m2 = addon.recvMsg(b, 4, 8);
      expect(openFdCount()).toBe(before);
      expect(m2).toMatchObject({ truncated: true, fds: [] });
    } finally {
      closeAll(a, b, devnull);
    }
  });

  it('EAGAIN: recvMsg gives null, a full socket throws code EAGAIN from sendMsg', () => {
    const [a, b] = addon.socketPair(true);
    try {
      expect(addon.recvMsg(b, 16, 0)).toBeNull();
      let sent = 0;
      const e = sysErrorOf(() => {
        for (;;) {
          addon.sendMsg(a, Buffer.alloc(4096), []);
          sent++;
        }
      });
      expect(sent).toBeGreaterThan(0);
      expect([e.code, e.syscall, e.fd]).toEqual(['EAGAIN', 'sendmsg', a]);
    } finally {
      closeAll(a, b);
    }
  });

  it('end of file: the peer closing (or shutting down) reads as eof, after queued datagrams', () => {
    const [a, b] = addon.socketPair(true);
    const [c, d] = addon.socketPair(true);
    try {
      addon.sendMsg(a, Buffer.from('last words'), []);
      addon.close(a);
      expect(addon.recvMsg(b, 64, 0)?.data.toString()).toBe('last words');
      const eof = addon.recvMsg(b, 64, 4);
      expect(eof).toEqual({ data: Buffer.alloc(0), fds: [], truncated: false, ctrlTruncated: false, eof: true });
      // Stays at eof.
      expect(addon.recvMsg(b, 64, 4)?.eof).toBe(true);

      addon.shutdown(c);
      expect(addon.recvMsg(d, 64, 0)?.eof).toBe(true);
      const e = sysErrorOf(() => addon.sendMsg(c, Buffer.from('x'), []));
      expect(e.code).toBe('EPIPE'); // and no SIGPIPE (MSG_NOSIGNAL)
    } finally {
      closeAll(a, b, c, d);
    }
  });

  it('argument checks: empty data, too many fds, bad limits', () => {
    const [a, b] = addon.socketPair(true);
    const x = addon as unknown as Record<string, (...args: unknown[]) => unknown>;
    try {
      expect(() => addon.sendMsg(a, Buffer.alloc(0), [])).toThrow(RangeError);
      expect(() => x.sendMsg(a, 'text', [])).toThrow(TypeError);
      expect(() => x.sendMsg(a, Buffer.from('x'), 3)).toThrow(TypeError);
      expect(() => addon.sendMsg(a, Buffer.from('x'), [-1])).toThrow(RangeError);
      expect(() => addon.sendMsg(a, Buffer.from('x'), new Array(C.SCM_MAX_FD + 1).fill(0))).toThrow(RangeError);
      expect(() => addon.recvMsg(b, 0, 0)).toThrow(RangeError);
      expect(() => addon.recvMsg(b, 2 ** 26 + 1, 0)).toThrow(RangeError);
      expect(() => addon.recvMsg(b, 16, C.SCM_MAX_FD + 1)).toThrow(RangeError);
      expect(() => x.socketPair(1)).toThrow(TypeError);
      // Nothing was sent by the refused calls.
      expect(addon.recvMsg(b, 16, 0)).toBeNull();
      expect(C.SCM_MAX_FD).toBe(253);
      // A Uint8Array is accepted as data.
      expect(addon.sendMsg(a, new Uint8Array([1, 2, 3]), [])).toBe(3);
      expect([...addon.recvMsg(b, 16, 0)!.data]).toEqual([1, 2, 3]);
    } finally {
      closeAll(a, b);
    }
  });
});

describe('seqpacket sockets: listen, connect, accept, peer identity', () => {
  it('listen/connect/accept over a path; the socket file gets exactly the mode asked for', () => {
    const sock = path.join(tmp, 'listen.sock');
    const l = addon.seqpacketListen(sock, 8, 0o666);
    let c = -1;
    let s: number | null = null;
    try {
      const st = fs.lstatSync(sock);
      expect(st.isSocket()).toBe(true);
      expect(st.mode & 0o7777).toBe(0o666); // the umask (usually 022) does not apply
      expect(fdFlags(l) & (O_CLOEXEC | C.O_NONBLOCK)).toBe(O_CLOEXEC | C.O_NONBLOCK);
      expect(addon.seqpacketAccept(l)).toBeNull(); // nobody waiting

      c = addon.seqpacketConnect(sock);
      expect(fdFlags(c) & (O_CLOEXEC | C.O_NONBLOCK)).toBe(O_CLOEXEC); // the client blocks
      s = addon.seqpacketAccept(l);
      expect(s).not.toBeNull();
      expect(fdFlags(s!) & (O_CLOEXEC | C.O_NONBLOCK)).toBe(O_CLOEXEC | C.O_NONBLOCK);

      addon.sendMsg(c, Buffer.from('ping'), []);
      expect(addon.recvMsg(s!, 16, 0)?.data.toString()).toBe('ping');
      addon.sendMsg(s!, Buffer.from('pong'), []);
      expect(addon.recvMsg(c, 16, 0)?.data.toString()).toBe('pong'); // blocking read, data is there

      const uid = process.getuid?.() ?? -1;
      const gid = process.getgid?.() ?? -1;
      expect(addon.peerCred(s!)).toEqual({ pid: process.pid, uid, gid });
      expect(addon.peerCred(c)).toEqual({ pid: process.pid, uid, gid });

      const again = sysErrorOf(() => addon.seqpacketListen(sock, 8, 0o600));
      expect([again.code, again.syscall, again.path]).toEqual(['EADDRINUSE', 'bind', sock]);
    } finally {
      closeAll(l, c, s);
    }
    // A stale socket file: nobody listens any more.
    const refused = sysErrorOf(() => addon.seqpacketConnect(sock));
    expect([refused.code, refused.syscall, refused.path]).toEqual(['ECONNREFUSED', 'connect', sock]);
  });

  it('mode 0600 and 0660 are exact too; bad paths fail cleanly', () => {
    for (const mode of [0o600, 0o660]) {
      const sock = path.join(tmp, `mode-${mode.toString(8)}.sock`);
      const l = addon.seqpacketListen(sock, 1, mode);
      try {
        expect(fs.lstatSync(sock).mode & 0o7777).toBe(mode);
      } finally {
        addon.close(l);
      }
    }
    const long = path.join(tmp, 'x'.repeat(120));
    const e = sysErrorOf(() => addon.seqpacketListen(long, 1, 0o600));
    expect([e.code, e.syscall]).toEqual(['ENAMETOOLONG', 'bind']);
    const missing = path.join(tmp, 'no-such-dir', 's');
    expect(sysErrorOf(() => addon.seqpacketListen(missing, 1, 0o600)).code).toBe('ENOENT');
    expect(sysErrorOf(() => addon.seqpacketConnect(missing)).code).toBe('ENOENT');
    expect(sysErrorOf(() => addon.seqpacketConnect('')).code).toBe('ENOENT');
    expect(() => addon.seqpacketListen(path.join(tmp, 'm'), 1, 0o10000)).toThrow(RangeError);
  });

  it('peerPidfd names the peer process, close-on-exec', () => {
    const [a, b] = addon.socketPair();
    let pidfd = -1;
    try {
      pidfd = addon.peerPidfd(a);
      const info = fs.readFileSync(`/proc/self/fdinfo/${pidfd}`, 'utf8');
      expect(/^Pid:\s+(\d+)$/m.exec(info)?.[1]).toBe(String(process.pid));
      expect(fdFlags(pidfd) & O_CLOEXEC).toBe(O_CLOEXEC);
    } finally {
      closeAll(a, b, pidfd);
    }
    const devnull = addon.open('/dev/null', C.O_RDONLY);
    try {
      const e = sysErrorOf(() => addon.peerCred(devnull));
      expect([e.code, e.syscall]).toEqual(['ENOTSOCK', 'getsockopt(SO_PEERCRED)']);
    } finally {
      addon.close(devnull);
    }
  });

  const asRoot = process.getuid?.() === 0;
  const rootReason = asRoot ? undefined : `needs root to run a client as uid 1000 (running as uid ${process.getuid?.()})`;
  announceSkip('socket test with an unprivileged client', rootReason);

  it.skipIf(!asRoot)('a client process as uid 1000: peerCred, mode enforcement, accept driven by watchFd', async () => {
    const dir = path.join(tmp, 'public');
    fs.mkdirSync(dir);
    fs.chmodSync(tmp, 0o755);
    fs.chmodSync(dir, 0o755);
    const open = path.join(dir, 'open.sock');
    const closed = path.join(dir, 'closed.sock');
    const l = addon.seqpacketListen(open, 8, 0o666);
    const l2 = addon.seqpacketListen(closed, 8, 0o600);
    const conns: number[] = [];
    const peers: { pid: number; uid: number; gid: number; text: string }[] = [];
    const watchers: FdWatcher[] = [];
    try {
      watchers.push(
        addon.watchFd(l, () => {
          for (let fd = addon.seqpacketAccept(l); fd !== null; fd = addon.seqpacketAccept(l)) {
            const conn = fd;
            conns.push(conn);
            const cred = addon.peerCred(conn);
            watchers.push(
              addon.watchFd(conn, function () {
                for (let m = addon.recvMsg(conn, 256, 0); m !== null; m = addon.recvMsg(conn, 256, 0)) {
                  if (m.eof) {
                    this.close();
                    return;
                  }
                  peers.push({ ...cred, text: m.data.toString() });
                  addon.sendMsg(conn, Buffer.from(`hi ${cred.uid}`), []);
                }
              }),
            );
          }
        }),
      );
      const client = `
        let fd;
        try { fd = a.seqpacketConnect(process.argv[1]); } catch (e) { console.log(e.code); process.exit(0); }
        a.sendMsg(fd, Buffer.from('pid ' + process.pid), []);
        console.log(a.recvMsg(fd, 64, 0).data.toString());`;
      const setpriv = ['setpriv', '--reuid', '1000', '--regid', '1000', '--clear-groups'];
      const child = spawn(setpriv[0], [...setpriv.slice(1), process.execPath, '-e',
        `const a = require(${JSON.stringify(ADDON_PATH)});${client}`, open], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.on('data', (b: Buffer) => (out += b));
      child.stderr.on('data', (b: Buffer) => (err += b));
      const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
      expect(err).toBe('');
      expect(code).toBe(0);
      expect(out.trim()).toBe('hi 1000');
      expect(peers).toHaveLength(1);
      // setpriv execs node in place: the pid the kernel recorded is the child's.
      expect(peers[0]).toEqual({ pid: child.pid, uid: 1000, gid: 1000, text: `pid ${child.pid}` });

      // The 0600 socket refuses uid 1000 at connect time.
      const denied = runNode(client, { prefix: setpriv, args: [closed] });
      expect(denied.stdout.trim()).toBe('EACCES');
    } finally {
      for (const w of watchers) w.close();
      closeAll(l, l2, ...conns);
    }
  });
});

describe('watchFd: readable callbacks on the event loop', () => {
  it('fires when readable (this = the watcher), not after close(); close() is idempotent', async () => {
    const [a, b] = addon.socketPair(true);
    const seen: string[] = [];
    let self: unknown;
    let wake: () => void = () => {};
    const w = addon.watchFd(b, function () {
      // the test is about what `this` is in the callback
      // eslint-disable-next-line @typescript-eslint/no-this-alias
      self = this;
      for (let m = addon.recvMsg(b, 64, 0); m; m = addon.recvMsg(b, 64, 0)) seen.push(m.data.toString());
      wake();
    });
    try {
      expect(w.fd).toBe(b);
      expect(w.closed).toBe(false);
      await sleep(20);
      expect(seen).toEqual([]); // nothing readable yet
      const fired = new Promise<void>((r) => (wake = r));
      addon.sendMsg(a, Buffer.from('one'), []);
      addon.sendMsg(a, Buffer.from('two'), []);
      await fired;
      expect(seen).toEqual(['one', 'two']);
      expect(self).toBe(w);

      w.close();
      w.close();
      expect(w.closed).toBe(true);
      addon.sendMsg(a, Buffer.from('three'), []);
      await sleep(50);
      expect(seen).toEqual(['one', 'two']);
      // A new watcher on the same fd is allowed once the old one is closed.
      const again = new Promise<void>((r) => (wake = r));
      const w2 = addon.watchFd(b, function () {
        for (let m = addon.recvMsg(b, 64, 0); m; m = addon.recvMsg(b, 64, 0)) seen.push(m.data.toString());
        this.close();
        wake();
      });
      await again;
      expect(w2.closed).toBe(true);
      expect(seen).toEqual(['one', 'two', 'three']);
    } finally {
      w.close();
      closeAll(a, b);
    }
  });

  it('close() from inside the callback stops further calls even with data left unread', async () => {
    const [a, b] = addon.socketPair(true);
    let calls = 0;
    const w = addon.watchFd(b, function () {
      calls++;
      this.close();
      this.close();
    });
    try {
      addon.sendMsg(a, Buffer.from('never read'), []);
      await sleep(50);
      expect(calls).toBe(1);
      expect(w.closed).toBe(true);
    } finally {
      closeAll(a, b);
    }
  });

  it('fires on hang-up, so a server sees eof', async () => {
    const [a, b] = addon.socketPair(true);
    const eof = new Promise<boolean>((resolve) => {
      addon.watchFd(b, function () {
        const m = addon.recvMsg(b, 16, 0);
        if (m?.eof) {
          this.close();
          resolve(true);
        }
      });
    });
    try {
      addon.close(a);
      expect(await eof).toBe(true);
    } finally {
      closeAll(b);
    }
  });

  it('refuses regular files (EPERM), a second watcher on one fd (EEXIST), non-functions', () => {
    const [a, b] = addon.socketPair(true);
    const file = addon.open('/dev/null', C.O_RDONLY);
    const reg = fs.openSync(path.join(tmp, 'regular'), 'w');
    const w = addon.watchFd(b, () => {});
    try {
      const e = sysErrorOf(() => addon.watchFd(reg, () => {}));
      expect([e.code, e.syscall, e.fd]).toEqual(['EPERM', 'uv_poll_init', reg]);
      expect(sysErrorOf(() => addon.watchFd(b, () => {})).code).toBe('EEXIST');
      expect(() => (addon.watchFd as (...x: unknown[]) => unknown)(b, 'not a function')).toThrow(TypeError);
      expect(() => addon.watchFd(-1, () => {})).toThrow(RangeError);
    } finally {
      w.close();
      closeAll(a, b, file, reg);
    }
  });

  it('an exception in the callback reaches uncaughtException; the loop goes on', () => {
    const r = runNode(`
      const [x, y] = a.socketPair(true);
      let calls = 0;
      process.on('uncaughtException', (e) => {
        console.log('caught ' + e.message);
        if (calls === 2) w.close();
      });
      const w = a.watchFd(y, function () {
        calls++;
        a.recvMsg(y, 16, 0);
        if (calls === 1) setImmediate(() => a.sendMsg(x, Buffer.from('again'), []));
        throw new Error('boom ' + calls);
      });
      a.sendMsg(x, Buffer.from('go'), []);
      process.on('exit', () => console.log('exit calls=' + calls + ' closed=' + w.closed));`);
    expect(r.error).toBeUndefined();
    expect(r.stdout.trim().split('\n')).toEqual(['caught boom 1', 'caught boom 2', 'exit calls=2 closed=true']);
    expect(r.status).toBe(0);
  });

  it('an unhandled exception in the callback ends the process like any uncaught error', () => {
    const r = runNode(`
      const [x, y] = a.socketPair(true);
      a.watchFd(y, () => { throw new Error('unhandled boom'); });
      a.sendMsg(x, Buffer.from('go'), []);`);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('unhandled boom');
  });

  it('an open watcher keeps the process alive; closed or unref()d ones do not', () => {
    const alive = runNode(`const [x, y] = a.socketPair(true); a.watchFd(y, () => {});`, { timeoutMs: 1500 });
    expect(alive.signal).toBe('SIGTERM'); // still running when the timeout hit

    const closed = runNode(`
      const [x, y] = a.socketPair(true);
      const w = a.watchFd(y, () => {});
      setTimeout(() => { w.close(); console.log('closed'); }, 50);`);
    expect([closed.status, closed.signal, closed.stdout.trim()]).toEqual([0, null, 'closed']);

    const unrefd = runNode(`
      const [x, y] = a.socketPair(true);
      const w = a.watchFd(y, () => {}).unref();
      console.log(w.closed);`);
    expect([unrefd.status, unrefd.signal, unrefd.stdout.trim()]).toEqual([0, null, 'false']);

    // Closed from inside its own callback, with nothing else pending: the process ends.
    const inside = runNode(`
      const [x, y] = a.socketPair(true);
      a.watchFd(y, function () { this.close(); console.log('fired'); });
      a.sendMsg(x, Buffer.from('go'), []);`);
    expect([inside.status, inside.signal, inside.stdout.trim()]).toEqual([0, null, 'fired']);
  });

  it('a watcher dropped without close() keeps working through GC (it holds itself), then is collectable', () => {
    const r = runNode(
      `
      const [x, y] = a.socketPair(true);
      let calls = 0;
      const ref = new WeakRef((() => a.watchFd(y, function () {
        while (a.recvMsg(y, 16, 0)) calls++;
        if (calls === 2) this.close();
      }))());
      globalThis.gc();
      a.sendMsg(x, Buffer.from('1'), []);
      setTimeout(() => {
        globalThis.gc();
        a.sendMsg(x, Buffer.from('2'), []);
        setTimeout(async () => {
          // Closed: nothing holds it any more.
          for (let i = 0; i < 10 && ref.deref(); i++) { await new Promise((r) => setImmediate(r)); globalThis.gc(); }
          console.log('calls=' + calls + ' collected=' + (ref.deref() === undefined));
        }, 50);
      }, 50);`,
      { nodeFlags: ['--expose-gc'] },
    );
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('calls=2 collected=true');
    expect(r.status).toBe(0);
  });

  it('works in a worker thread, and a worker ending with an open watcher exits cleanly', () => {
    const r = runNode(`
      const { Worker } = require('node:worker_threads');
      const src = 'const a = require(' + JSON.stringify(${JSON.stringify(ADDON_PATH)}) + ');' +
        'const { parentPort } = require("node:worker_threads");' +
        'const [x, y] = a.socketPair(true);' +
        'a.watchFd(y, () => { a.recvMsg(y, 16, 0); parentPort.postMessage("fired"); });' +
        'a.sendMsg(x, Buffer.from("go"), []);';
      const w = new Worker(src, { eval: true });
      w.on('message', (m) => { console.log(m); w.terminate(); });
      w.on('exit', (c) => console.log('worker exit ' + c));`);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim().split('\n')).toEqual(['fired', 'worker exit 1']);
    expect(r.status).toBe(0);
  });
});

/** A pipe as [readFd, writeFd], both close-on-exec. */
function pipe(): [number, number] {
  // node has no pipe(2) binding: take both ends of a FIFO in our temp dir.
  const fifo = path.join(tmp, `fifo-${Math.random().toString(36).slice(2)}`);
  const r = spawnSync('mkfifo', [fifo]);
  if (r.status !== 0) throw new Error(`mkfifo failed: ${r.stderr}`);
  const rd = addon.open(fifo, C.O_RDONLY | C.O_NONBLOCK);
  const wr = addon.open(fifo, C.O_WRONLY);
  fs.unlinkSync(fifo);
  return [rd, wr];
}
