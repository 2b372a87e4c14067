// Clients of a broker that never answers: a real SOCK_SEQPACKET listener at DIR/loop-control
// that accepts connections (so connect succeeds) and then stays silent — from the start, or
// after answering hello. losetup and mount.loop must fail with one clear line after
// $LOOPFS_BROKER_TIMEOUT seconds instead of hanging.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { native, type FdWatcher } from '../../src/kernel/native.js';
import { runProgram } from '../helpers/run.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import { brokerSkipReason, LOSETUP, MOUNT_LOOP, text } from './support.js';

const reason = brokerSkipReason('broker/timeout');

/** A listener that accepts everything and answers at most `hello`. */
class SilentBroker {
  private readonly listenFd: number;
  private readonly watchers: FdWatcher[] = [];
  private readonly fds: number[] = [];
  requests = 0;

  constructor(
    socket: string,
    private readonly answerHello: boolean,
  ) {
    const n = native();
    this.listenFd = n.seqpacketListen(socket, 16, 0o666);
    this.watchers.push(n.watchFd(this.listenFd, () => this.accept()));
  }

  private accept(): void {
    const n = native();
    for (let fd = n.seqpacketAccept(this.listenFd); fd !== null; fd = n.seqpacketAccept(this.listenFd)) {
      const conn = fd;
      this.fds.push(conn);
      this.watchers.push(
        n.watchFd(conn, () => {
          for (;;) {
            let m;
            try {
              m = n.recvMsg(conn, 65536, 1);
            } catch {
              return;
            }
            if (m === null || m.eof) return;
            for (const f of m.fds) n.close(f);
            this.requests++;
            const req = JSON.parse(m.data.toString('utf8')) as { v: number; id: number; op: string };
            if (req.op === 'hello' && this.answerHello) {
              const hello = { v: req.v, id: req.id, ok: true, server: 'loopfs', protocol: 2, instance: 'x', uid: 0, gid: 0, ops: [], fs: [] };
              n.sendMsg(conn, Buffer.from(JSON.stringify(hello)), []);
            }
            // anything else: never answered
          }
        }),
      );
    }
  }

  close(): void {
    for (const w of this.watchers) w.close();
    for (const fd of [...this.fds, this.listenFd]) native().close(fd);
  }
}

describe.skipIf(reason !== undefined)('broker clients time out', () => {
  for (const answerHello of [false, true]) {
    it(`a broker that ${answerHello ? 'answers hello, then nothing' : 'never answers'}: one line after LOOPFS_BROKER_TIMEOUT, no hang`, async () => {
      const dir = makeTempDir('loopfs-timeout');
      const broker = new SilentBroker(path.join(dir, 'loop-control'), answerHello);
      try {
        const img = path.join(dir, 'img');
        fs.writeFileSync(img, Buffer.alloc(1 << 20));
        const mnt = path.join(dir, 'mnt');
        fs.mkdirSync(mnt);
        const env = { ...process.env, LOOPFS_INSTANCE: dir, LOOPFS_BROKER_TIMEOUT: '1' };
        const started = Date.now();
        const lo = await runProgram(LOSETUP, answerHello ? ['-f', '--show', img] : ['-a'], { env, timeoutMs: 20_000 });
        const took = Date.now() - started;
        expect(lo.exitCode).toBe(1);
        const line = `${dir}: the loopfs broker did not answer within 1 second (LOOPFS_BROKER_TIMEOUT)`;
        expect(text(lo.stderr)).toBe(`losetup: ${line}\n`);
        expect(took).toBeLessThan(15_000); // bounded (the timeout is 1 s; node start-up is the rest)
        const ml = await runProgram(MOUNT_LOOP, [img, mnt], { env, timeoutMs: 20_000 });
        expect(ml.exitCode).toBe(32);
        expect(text(ml.stderr)).toBe(`mount: ${mnt}: ${line}.\n`);
        expect(broker.requests).toBeGreaterThanOrEqual(2);
        // the default applies to a malformed value; 0 means no timeout (not tested: it would hang)
      } finally {
        broker.close();
        removeTree(dir);
      }
    }, 60_000);
  }
});
