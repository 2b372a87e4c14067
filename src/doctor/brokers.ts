/**
 * Brokered instances whose broker is down: DIR/loop-control is a socket (a broker made
 * it) that refuses connections (the broker was killed and left it). Its users get
 * "the loopfs broker of this instance is not running" until a broker serves DIR again
 * (`loopfs serve` replaces a stale socket itself).
 */
import { lstatSync } from 'node:fs';
import { hasCode } from '../kernel/errors.js';
import { native } from '../kernel/native.js';
import { BROKER_SOCKET } from '../protocol/broker.js';
import { Runtime, type RegistryEntry } from '../instance/runtime.js';
import { readSessionRecord } from '../broker/sessions.js';
import type { Check } from './check.js';

/** Whether a broker listens on `socket`; null when we may not connect (not its owner, not root). */
function brokerAnswers(socket: string): boolean | null {
  const n = native();
  let fd: number;
  try {
    fd = n.seqpacketConnect(socket);
  } catch (e) {
    if (hasCode(e, 'ECONNREFUSED', 'ENOENT')) return false;
    if (hasCode(e, 'EACCES', 'EPERM')) return null;
    throw e;
  }
  n.close(fd); // connecting is enough: a listening socket has a broker behind it
  return true;
}

export const brokersCheck: Check = {
  id: 'brokers',
  title: 'instance brokers',
  run(ctx) {
    let entries: RegistryEntry[];
    try {
      const rt = Runtime.open(ctx.env);
      try {
        entries = rt.instances();
      } finally {
        rt.close();
      }
    } catch {
      // no registry (ENOENT) or not ours to read (EACCES): skipped, and said so
      return { status: 'skip', detail: 'no instance registry we may read' };
    }
    const served = entries.filter((e) => {
      try {
        return lstatSync(`${e.dir}/${BROKER_SOCKET}`).isSocket();
      } catch {
        // no socket there (ENOENT) or DIR unreachable: not a brokered instance
        return false;
      }
    });
    const answers = served.map((e) => brokerAnswers(`${e.dir}/${BROKER_SOCKET}`));
    const down = served.filter((_, i) => answers[i] === false);
    // session devices the dead broker could not detach: the next broker, or gc, settles them
    const stranded = (e: RegistryEntry) => {
      const rec = readSessionRecord(ctx.env, e.id);
      const n = rec ? rec.sessions.length + rec.released.length : 0;
      return n > 0 ? `; ${n} session device(s) left attached (loopfs gc settles them)` : '';
    };
    const unknown = answers.filter((a) => a === null).length;
    if (down.length > 0) {
      return {
        status: 'fail',
        detail: `${down.length} of ${served.length} brokered instance(s) without a running broker`,
        items: down.map((e) => `${e.dir}/${BROKER_SOCKET}: connection refused${stranded(e)}`),
        // starting a daemon is the admin's decision (systemd unit or not): never automatic
        fix: { command: `loopfs serve ${down.map((e) => e.dir).join(' ')}`, safe: false },
      };
    }
    if (unknown > 0) return { status: 'skip', detail: `${unknown} of ${served.length} broker socket(s) not ours to try (needs root)` };
    return { status: 'ok', detail: served.length === 0 ? 'no brokered instances' : `${served.length} brokered instance(s), every broker answers` };
  },
};
