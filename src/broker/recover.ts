/**
 * `loopfs gc`'s share of broker crash safety: a broker SIGKILLed with live sessions left a
 * session record (sessions.ts) that only the next broker of that instance would settle.
 * An instance whose broker is never restarted (a container that is gone, a unit that was
 * disabled) would keep those devices attached for ever, so gc settles every record whose
 * broker is dead exactly as that next broker would (InstanceOps.recover).
 */
import type { GcFix } from '../instance/gc.js';
import { Runtime } from '../instance/runtime.js';
import { InstanceOps } from './ops.js';
import { otherBrokerAlive, readSessionRecord, removeSessionRecord, sessionRecordIds } from './sessions.js';

export function recoverAbandonedSessions(env: NodeJS.ProcessEnv = process.env): GcFix[] {
  const rt = Runtime.open(env);
  let entries;
  try {
    entries = rt.instances();
  } finally {
    rt.close();
  }
  const out: GcFix[] = [];
  const registered = new Set<string>();
  for (const entry of entries) {
    registered.add(entry.id);
    const rec = readSessionRecord(env, entry.id);
    if (!rec || otherBrokerAlive(rec.broker)) continue;
    // allowFs/fuseMode only matter for mounts, which recovery never makes
    const minors = new InstanceOps({ dir: entry.dir, id: entry.id, allowFs: [], fuseMode: 'never', env }).recover();
    for (const minor of minors) out.push({ dir: entry.dir, minor, action: 'settled session device of a dead broker' });
  }
  // The record of an instance that is gone names devices whose claims are now orphans:
  // gc's orphan pass detaches and returns those, so the record itself is just dropped.
  for (const id of sessionRecordIds(env)) {
    if (registered.has(id)) continue;
    const rec = readSessionRecord(env, id);
    if (rec && otherBrokerAlive(rec.broker)) continue;
    removeSessionRecord(env, id);
    out.push({ dir: null, minor: null, action: `dropped session record of vanished instance ${id}` });
  }
  return out;
}
