/**
 * The private instance of one container: made at createRuntime (by the hook as root, or
 * by the OCI broker for a rootless user), destroyed at poststop — or by `gc` / the OCI
 * broker when the container's init is gone and nobody ran poststop.
 *
 * Order, so that a SIGKILL at any step leaves something gc settles: the record is
 * written first (it names the container and its init), then the instance is created
 * and its pool reserved; destroy runs the instance's own destroy (detach, LOOP_CTL_REMOVE,
 * nodes, state, registry) and removes the record last.
 */
import { statSync } from 'node:fs';
import { hasCode } from '../kernel/errors.js';
import { LocalInstance } from '../instance/local-instance.js';
import { destroyInstance, type DestroyResult } from '../instance/destroy.js';
import { heldMinors } from '../instance/state.js';
import { OciError } from './bundle.js';
import type { Policy } from './policy.js';
import {
  containerAlive,
  containerDirs,
  instanceDirFor,
  makeParent,
  processStartTime,
  readRecord,
  removeRecordAndDir,
  writeRecord,
} from './record.js';

export interface ContainerInstanceRequest {
  /** Kernel-verified uid of whoever asked: 0 for the rootful hook. */
  requester: number;
  container: string;
  /** Host pid of the container's init. */
  pid: number;
  owner: { uid: number; gid: number };
  policy: Policy;
}

export interface ContainerInstance {
  dir: string;
  /** Pool devices, as node names in DIR (loopN). */
  nodes: string[];
}

export function createContainerInstance(req: ContainerInstanceRequest, env: NodeJS.ProcessEnv = process.env): ContainerInstance {
  const dir = instanceDirFor(req.requester, req.container, env);
  const startTime = processStartTime(req.pid);
  if (startTime === null) throw new OciError(`container ${req.container}: its init (pid ${req.pid}) is gone`);
  makeParent(req.requester, env);
  const old = readRecord(dir);
  if (old) {
    // a container id is used again (restart) after a poststop that never ran, or
    // another container's id starts the same way (see DIR_ID_LENGTH)
    if (containerAlive(old)) throw new OciError(`${dir}: in use by running container ${old.container} (pid ${old.pid})`);
    destroyContainerInstance(dir, env);
  }
  try {
    writeRecord(dir, {
      version: 1,
      container: req.container,
      pid: req.pid,
      startTime,
      requester: req.requester,
      createdAt: new Date().toISOString(),
    });
    const inst = LocalInstance.create(dir, { owner: req.owner, mode: 0o660, max: req.policy.max, pool: req.policy.pool }, env);
    try {
      inst.lock();
      inst.ensurePool(req.policy.pool);
      const s = inst.state();
      return { dir: inst.dir, nodes: heldMinors(s).filter((m) => s.devices[m].state === 'held').map((m) => `loop${m}`) };
    } finally {
      inst.close();
    }
  } catch (e) {
    destroyContainerInstance(dir, env);
    throw e;
  }
}

/** Destroy the instance in DIR (lazily detaching what is still in use) and its record. */
export function destroyContainerInstance(dir: string, env: NodeJS.ProcessEnv = process.env): DestroyResult | null {
  let result: DestroyResult | null = null;
  try {
    if (LocalInstance.isInstance(dir)) result = destroyInstance(dir, true, env);
  } catch (e) {
    // destroyed meanwhile by the other party (poststop vs gc vs the OCI broker's watch)
    if (!hasCode(e, 'ENOENT')) throw e;
  }
  removeRecordAndDir(dir);
  return result;
}

export interface ReapedContainer {
  dir: string;
  container: string;
  result: DestroyResult | null;
}

/**
 * `gc` for containers: destroy the instance of every container whose init is gone (no
 * poststop ran: the runtime or conmon was killed, or the hook failed). Instances of
 * running containers are left alone.
 */
export function reapVanishedContainers(env: NodeJS.ProcessEnv = process.env): ReapedContainer[] {
  return vanishedContainers(env).map((c) => ({ ...c, result: destroyContainerInstance(c.dir, env) }));
}

/** The containers reapVanishedContainers destroys the instances of, without touching any (doctor). */
export function vanishedContainers(env: NodeJS.ProcessEnv = process.env): Array<{ dir: string; container: string }> {
  const vanished: Array<{ dir: string; container: string }> = [];
  for (const c of containerDirs(env)) {
    const r = readRecord(c.dir);
    if (r && containerAlive(r)) continue;
    // no record: a create killed before writing it left an empty directory (or the
    // record went with a destroy that was killed before rmdir) — unless a create is
    // writing it right now
    if (!r && ageMs(c.dir) < RECORDLESS_GRACE_MS) continue;
    vanished.push({ dir: c.dir, container: c.container });
  }
  return vanished;
}

/** A directory without a record younger than this may be a create in progress. */
const RECORDLESS_GRACE_MS = 60_000;

function ageMs(dir: string): number {
  try {
    return Date.now() - statSync(dir).mtimeMs;
  } catch {
    // gone already (ENOENT): as old as can be
    return Infinity;
  }
}
