/**
 * Device limits: the loop driver's own (max_loop), the kernel loopfs knob where it exists,
 * and loopfs's per-uid limits file, which must parse (every allocation reads it) and
 * which no uid should exceed (a limit lowered below what a uid holds already).
 */
import { readFileSync } from 'node:fs';
import { isSysError } from '../kernel/errors.js';
import { LimitsSyntaxError, limitForUid, limitsFile, readLimits } from '../instance/limits.js';
import { Runtime } from '../instance/runtime.js';
import type { Check } from './check.js';

const MAX_LOOP = '/sys/module/loop/parameters/max_loop';
const KERNEL_KNOB = '/proc/sys/user/max_loop_devices';

function readNumber(path: string): number | null {
  try {
    const v = Number(readFileSync(path, 'utf8').trim());
    return Number.isInteger(v) ? v : null;
  } catch {
    // no such knob (ENOENT) or unreadable: unknown
    return null;
  }
}

export const limitsCheck: Check = {
  id: 'limits',
  title: 'device limits',
  run(ctx) {
    const facts: string[] = [];
    const maxLoop = readNumber(MAX_LOOP);
    if (maxLoop !== null) facts.push(`max_loop=${maxLoop === 0 ? '0 (no fixed count)' : maxLoop}`);
    const knob = readNumber(KERNEL_KNOB);
    facts.push(knob === null ? `no ${KERNEL_KNOB}` : `max_loop_devices=${knob}`);

    const file = limitsFile(ctx.env);
    let entries: Map<string, number>;
    try {
      entries = readLimits(ctx.env).entries;
    } catch (e) {
      if (isSysError(e)) {
        return { status: 'fail', detail: `${file} cannot be read (${e.description}): allocations in instances fail until it can` };
      }
      if (!(e instanceof LimitsSyntaxError)) throw e;
      const line = /:(\d+):/.exec(e.message)?.[1];
      return {
        status: 'fail',
        detail: `${file} does not parse: allocations in instances fail until it does`,
        items: [e.message],
        // the exact repair is deleting that line; never automatic: it is the admin's file
        fix: line ? { command: `sed -i '${line}d' ${file}`, safe: false } : undefined,
      };
    }
    facts.push(entries.size === 0 ? `${file}: no per-uid limits` : `${file}: ${entries.size} limit(s)`);

    // a uid above its limit keeps its devices but gets no new ones: say so
    const over: string[] = [];
    let fixUid: { uid: number; held: number } | null = null;
    let held = new Map<number, number>();
    try {
      const rt = Runtime.open(ctx.env);
      try {
        for (const c of rt.claims()) held.set(c.uid, (held.get(c.uid) ?? 0) + 1);
      } finally {
        rt.close();
      }
    } catch {
      held = new Map(); // no runtime dir we may read: nothing is held through loopfs
    }
    for (const [uid, count] of held) {
      const limit = limitForUid(uid, ctx.env);
      if (limit && count > limit.limit) {
        over.push(`uid ${uid} holds ${count} device(s), limit ${limit.limit} (${limit.source})`);
        fixUid ??= { uid, held: count };
      }
    }
    if (fixUid) {
      return {
        status: 'warn',
        detail: `${over.length} uid(s) above their device limit (no new devices for them)`,
        items: over,
        fix: { command: `loopfs limits set ${fixUid.uid} ${fixUid.held}`, safe: false },
      };
    }
    return { status: 'ok', detail: facts.join('; ') };
  },
};
