/**
 * The broker's session record of one instance, so that a broker killed with SIGKILL does
 * not leave its clients' session devices attached for ever:
 *
 *   RUNTIME/broker/ID.json   {"broker":{"pid":P,"start":"T"},"sessions":[…],"released":[…]}
 *
 * `sessions`: devices to detach and give back when their connection ends (live session
 * devices, and those whose deferred clear still waits for an unmount); `released`:
 * autoclear devices held by a connection, settled by the pool policy once free. The
 * worker of the instance rewrites the record (atomically, under the instance lock) before
 * it answers the request that changed it; the next broker serving the instance finds a
 * record of a broker that is gone and settles it as if those connections had ended
 * (InstanceOps.recover), which is exactly what they did.
 *
 * The runtime dir is tmpfs (/run/loopfs): the record vanishes at reboot with the devices
 * it names. A broker is identified by pid and start time (/proc/PID/stat field 22), so a
 * recycled pid is never taken for the broker that wrote the record.
 */
import { readFileSync } from 'node:fs';
import { mkdirSync } from 'node:fs';
import { hasCode } from '../kernel/errors.js';
import { PinnedDir } from '../instance/pinned-dir.js';
import { runtimeDir } from '../instance/runtime.js';

export const SESSIONS_DIR = 'broker';

export interface BrokerIdentity {
  pid: number;
  /** Start time in clock ticks since boot, decimal (/proc/PID/stat field 22). */
  start: string;
}

export interface SessionRecord {
  broker: BrokerIdentity;
  sessions: number[];
  released: number[];
}

/** Start time of a process, or null when there is no such process. */
function startTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // the command name (field 2) may hold spaces and parentheses: count from the last ')'
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    // ENOENT: no such process; any other error leaves nothing to compare with either
    return null;
  }
}

let self: BrokerIdentity | null = null;

/** This process. */
export function ownIdentity(): BrokerIdentity {
  self ??= { pid: process.pid, start: startTime(process.pid) ?? '0' };
  return self;
}

/** Whether the broker that wrote a record still runs (and is not this process). */
export function otherBrokerAlive(id: BrokerIdentity): boolean {
  const me = ownIdentity();
  if (id.pid === me.pid && id.start === me.start) return false;
  return startTime(id.pid) === id.start;
}

function isMinorList(v: unknown): v is number[] {
  return Array.isArray(v) && v.every((m) => Number.isInteger(m) && m >= 0 && m < 1 << 20);
}

function openDir(env: Record<string, string | undefined>, create: boolean): PinnedDir | null {
  const rt = runtimeDir(env as NodeJS.ProcessEnv);
  try {
    return PinnedDir.open(`${rt}/${SESSIONS_DIR}`);
  } catch (e) {
    if (!create || !hasCode(e, 'ENOENT')) return null;
    mkdirSync(`${rt}/${SESSIONS_DIR}`, { recursive: true, mode: 0o700 });
    return PinnedDir.open(`${rt}/${SESSIONS_DIR}`);
  }
}

/** The record of instance `id`, or null (none, or unreadable: nothing to settle). */
export function readSessionRecord(env: Record<string, string | undefined>, id: string): SessionRecord | null {
  const dir = openDir(env, false);
  if (!dir) return null;
  try {
    const raw = JSON.parse(dir.readFile(`${id}.json`) ?? 'null') as Partial<SessionRecord> | null;
    if (!raw || typeof raw.broker?.pid !== 'number' || typeof raw.broker.start !== 'string') return null;
    if (!isMinorList(raw.sessions) || !isMinorList(raw.released)) return null;
    return { broker: raw.broker, sessions: raw.sessions, released: raw.released };
  } catch {
    // a missing, torn or foreign record is no record: nothing to recover
    return null;
  } finally {
    dir.close();
  }
}

/** Replace the record (atomically); an empty one is removed. Call with the instance lock held. */
export function writeSessionRecord(env: Record<string, string | undefined>, id: string, rec: SessionRecord): void {
  const empty = rec.sessions.length === 0 && rec.released.length === 0;
  const dir = openDir(env, !empty);
  if (!dir) return;
  try {
    if (empty) dir.unlinkQuiet(`${id}.json`);
    else dir.writeFileAtomic(`${id}.json`, `${JSON.stringify(rec)}\n`, 0o600);
  } finally {
    dir.close();
  }
}

/** Instance ids that have a record. */
export function sessionRecordIds(env: Record<string, string | undefined>): string[] {
  const dir = openDir(env, false);
  if (!dir) return [];
  try {
    return dir.list().filter((n) => /^[0-9a-f]+\.json$/.test(n)).map((n) => n.slice(0, -'.json'.length));
  } finally {
    dir.close();
  }
}

/** Drop the record of an instance that no longer exists. */
export function removeSessionRecord(env: Record<string, string | undefined>, id: string): void {
  const dir = openDir(env, false);
  if (!dir) return;
  try {
    dir.unlinkQuiet(`${id}.json`);
  } finally {
    dir.close();
  }
}
