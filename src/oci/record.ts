/**
 * Where container instances live and what they remember about their container.
 *
 *   RUNTIME/oci/UID/ID/          the instance of container ID, made for UID: 0 for the
 *                                rootful hook, the rootless user's uid for instances the
 *                                OCI broker made (one directory per requester, so no user
 *                                can take a name another one's container will need)
 *   RUNTIME/oci/UID/ID/.oci.json the container record (root-only, written before the
 *                                instance exists, removed after it is gone)
 *
 * The record names the container's init process by pid *and* start time, so that `gc`
 * can tell a container that vanished without its poststop hook (conmon killed, host
 * crash of the runtime) from one that still runs, also after the pid was reused.
 */
import { mkdirSync, readdirSync, readFileSync, rmdirSync, rmSync } from 'node:fs';
import { hasCode } from '../kernel/errors.js';
import { PinnedDir } from '../instance/pinned-dir.js';
import { runtimeDir } from '../instance/runtime.js';

export const RECORD_FILE = '.oci.json';

export interface ContainerRecord {
  version: 1;
  container: string;
  /** Host pid of the container's init at createRuntime, and its start time (clock ticks). */
  pid: number;
  startTime: string;
  /** Who asked for the instance (kernel-verified): 0 for the hook as root. */
  requester: number;
  createdAt: string;
}

export function ociRoot(env: NodeJS.ProcessEnv = process.env): string {
  return `${runtimeDir(env)}/oci`;
}

/**
 * Directory names keep at most 32 characters of the container id: the broker's socket
 * DIR/loop-control must fit in sun_path (108 bytes), and podman's ids are 64 hex digits.
 * The record holds the whole id; a prefix shared by two live containers is refused at
 * create (never silently shared), and destroy acts only on the record of that very id.
 */
export const DIR_ID_LENGTH = 32;

export function instanceDirFor(requester: number, container: string, env: NodeJS.ProcessEnv = process.env): string {
  return `${ociRoot(env)}/${requester}/${container.slice(0, DIR_ID_LENGTH)}`;
}

/** Make RUNTIME/oci/UID (root-owned 0755: the broker serves only root-owned trees). */
export function makeParent(requester: number, env: NodeJS.ProcessEnv = process.env): void {
  mkdirSync(`${ociRoot(env)}/${requester}`, { recursive: true, mode: 0o755 });
}

/** Start time of a process (field 22 of /proc/PID/stat), or null when it does not exist. */
export function processStartTime(pid: number): string | null {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    // the process is gone (ENOENT, ESRCH): no start time
    return null;
  }
  // comm (field 2) may contain spaces and parentheses: count from the last ')'
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return fields[19] ?? null;
}

export function containerAlive(r: ContainerRecord): boolean {
  return processStartTime(r.pid) === r.startTime;
}

export function writeRecord(dir: string, r: ContainerRecord): void {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const d = PinnedDir.open(dir);
  try {
    d.writeFileAtomic(RECORD_FILE, `${JSON.stringify(r)}\n`);
  } finally {
    d.close();
  }
}

export function readRecord(dir: string): ContainerRecord | null {
  let d: PinnedDir;
  try {
    d = PinnedDir.open(dir);
  } catch {
    // no such instance (ENOENT, ENOTDIR): no record
    return null;
  }
  try {
    const text = d.readFile(RECORD_FILE);
    if (text === null) return null;
    const r = JSON.parse(text) as ContainerRecord;
    return r && r.version === 1 && typeof r.container === 'string' && typeof r.pid === 'number' ? r : null;
  } catch {
    // unreadable or not JSON: not a record of ours
    return null;
  } finally {
    d.close();
  }
}

/**
 * Remove the record and the (then empty) directory; what else is left stays, for gc.
 * Plain paths: DIR and its parents are root's and writable by nobody else.
 */
export function removeRecordAndDir(dir: string): void {
  try {
    rmSync(`${dir}/${RECORD_FILE}`, { force: true });
    rmdirSync(dir);
  } catch (e) {
    if (!hasCode(e, 'ENOENT', 'ENOTEMPTY', 'EEXIST')) throw e;
  }
}

/** Every container directory: [requester uid, container id, dir]. */
export function containerDirs(env: NodeJS.ProcessEnv = process.env): Array<{ requester: number; container: string; dir: string }> {
  const out: Array<{ requester: number; container: string; dir: string }> = [];
  const root = ociRoot(env);
  for (const u of listQuiet(root).filter((n) => /^\d+$/.test(n))) {
    const ids = listQuiet(`${root}/${u}`);
    for (const id of ids) if (!id.startsWith('.')) out.push({ requester: Number(u), container: id, dir: `${root}/${u}/${id}` });
  }
  return out;
}

function listQuiet(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    // no such directory (ENOENT): nothing listed
    return [];
  }
}
