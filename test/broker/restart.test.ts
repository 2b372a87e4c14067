// A broker that restarts after a SIGKILL never leaves its instance without DIR/loop-control:
// the new socket is made under a temporary name and renamed over the stale one. A client
// that looked in between used to find no socket and take DIR for no instance at all ("not a
// loop device instance", seen by the chaos soak). Watched with lstat in a tight loop while
// the new broker starts; each restart must swap the inode with no moment of absence.
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { skipTitle } from '../instance/support.js';
import { AsyncClient, BrokerSandbox, brokerSkipReason, LOOPFS, Server } from './support.js';

const reason = brokerSkipReason('broker/restart');
const RESTARTS = 5;

describe.skipIf(reason !== undefined)(skipTitle('loopfs serve restarted over a stale socket', reason), () => {
  it(`${RESTARTS} restarts after SIGKILL: loop-control is never missing, the new broker serves, no temporary name is left`, async () => {
    const sb = new BrokerSandbox('loopfs-restart');
    let server: Server | null = null;
    try {
      const inst = await sb.instance('inst');
      const socket = path.join(inst, 'loop-control');
      server = await Server.start(sb, [inst]);
      for (let i = 0; i < RESTARTS; i++) {
        server.child.kill('SIGKILL');
        await server.stop();
        const stale = fs.lstatSync(socket).ino;
        // the event loop is blocked while we watch: the child's "ready" waits in its pipe
        const child = spawn(LOOPFS, ['serve', inst], { env: sb.env, stdio: ['ignore', 'pipe', 'pipe'] });
        let missing = 0;
        let swapped = false;
        const end = Date.now() + 20_000;
        while (!swapped && Date.now() < end) {
          try {
            swapped = fs.lstatSync(socket).ino !== stale;
          } catch {
            missing++;
          }
        }
        child.kill('SIGKILL');
        await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r(null) : child.once('exit', r)));
        expect({ restart: i, swapped, missing }).toEqual({ restart: i, swapped: true, missing: 0 });
        server = await Server.start(sb, [inst]);
      }
      const c = AsyncClient.connect(socket);
      try {
        expect(await c.request({ v: 2, id: 1, op: 'hello' })).toMatchObject({ id: 1, ok: true, server: 'loopfs' });
      } finally {
        c.close();
      }
      expect(fs.readdirSync(inst).filter((n) => n.startsWith('.lc.'))).toEqual([]);
    } finally {
      await server?.stop();
      await sb.teardown();
    }
  }, 180_000);
});
