/**
 * Per-uid device limits: the seeds' hierarchical `max_loop_devices`. A uid may hold at
 * most N devices across all of its instances. Sources, strictest wins:
 *   - /etc/loopfs/limits ($LOOPFS_LIMITS): lines "UID N" (or "* N" for everybody),
 *     '#' comments; written by `loopfs limits set`;
 *   - /proc/sys/user/max_loop_devices, where a kernel has the loopfs patches.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { hasCode, sysError, toSysError } from '../kernel/errors.js';

export function limitsFile(env: NodeJS.ProcessEnv = process.env): string {
  return env.LOOPFS_LIMITS || '/etc/loopfs/limits';
}

const KERNEL_KNOB = '/proc/sys/user/max_loop_devices';

export interface LimitsTable {
  /** uid → limit; key '*' applies to every uid without its own line. */
  entries: Map<string, number>;
}

export class LimitsSyntaxError extends Error {}

export function parseLimits(text: string, file: string): LimitsTable {
  const entries = new Map<string, number>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) return;
    const m = /^(\*|\d+)\s+(\d+)$/.exec(line);
    if (!m) throw new LimitsSyntaxError(`${file}:${i + 1}: expected "UID LIMIT", got "${raw.trim()}"`);
    entries.set(m[1], Number(m[2]));
  });
  return { entries };
}

export function readLimits(env: NodeJS.ProcessEnv = process.env): LimitsTable {
  const file = limitsFile(env);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    // no limits file: no per-uid limits. One that is there but cannot be read (a directory,
    // EIO, a mode root's tools cannot pass) is an error: taking it for "no limits" would let
    // every uid past the limits an administrator wrote.
    if (hasCode(e, 'ENOENT')) return { entries: new Map() };
    // named by the file (node's error for EISDIR names only the read)
    const se = toSysError(e);
    throw sysError(se.code, se.syscall, file);
  }
  return parseLimits(text, file);
}

function kernelLimit(): number | null {
  try {
    const v = Number(readFileSync(KERNEL_KNOB, 'utf8').trim());
    return Number.isInteger(v) && v >= 0 ? v : null;
  } catch {
    // no such knob on this kernel (ENOENT): no kernel limit
    return null;
  }
}

/** The limit for `uid`, or null when unlimited. */
export function limitForUid(uid: number, env: NodeJS.ProcessEnv = process.env): { limit: number; source: string } | null {
  const table = readLimits(env);
  const candidates: Array<{ limit: number; source: string }> = [];
  const own = table.entries.get(String(uid)) ?? table.entries.get('*');
  if (own !== undefined) candidates.push({ limit: own, source: limitsFile(env) });
  const k = kernelLimit();
  if (k !== null) candidates.push({ limit: k, source: KERNEL_KNOB });
  if (candidates.length === 0) return null;
  return candidates.reduce((a, b) => (b.limit < a.limit ? b : a));
}

/** Set (or with null, remove) the limit of a uid ('*' for the default); atomic rewrite. */
export function setLimit(key: string, limit: number | null, env: NodeJS.ProcessEnv = process.env): void {
  const file = limitsFile(env);
  const table = readLimits(env);
  if (limit === null) table.entries.delete(key);
  else table.entries.set(key, limit);
  const lines = ['# loopfs per-uid loop device limits: "UID LIMIT" ("*" = default). Managed by `loopfs limits`.'];
  const keys = [...table.entries.keys()].sort((a, b) => (a === '*' ? -1 : b === '*' ? 1 : Number(a) - Number(b)));
  for (const k of keys) lines.push(`${k} ${table.entries.get(k)}`);
  mkdirSync(dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${lines.join('\n')}\n`, { mode: 0o644 });
  renameSync(tmp, file);
}
