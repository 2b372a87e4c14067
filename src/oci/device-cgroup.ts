/**
 * Loop devices in a rootful container's device cgroup.
 *
 * The runtime sets the device cgroup up before createRuntime, from the rules in
 * config.json. On cgroup v1 (the devices controller) root may still add rules: the hook
 * grants exactly the instance's pool devices (`b 7:N rw`), so the container needs no
 * broad rule, and a node it might make for a host loop device stays denied. On cgroup v2
 * the rules are a BPF program the runtime attached, which a hook cannot extend: there the
 * operator must grant loop devices (`--device-cgroup-rule='b 7:* rw'`).
 */
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { LOOP_MAJOR } from '../kernel/devnum.js';

const V1_ROOT = '/sys/fs/cgroup/devices';

/** `devices.allow` of the v1 devices cgroup of PID, or null (no v1 devices controller). */
export function deviceCgroupAllowFile(pid: number): string | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/cgroup`, 'utf8');
  } catch {
    // the process is gone (ENOENT, ESRCH): no cgroup to tell
    return null;
  }
  for (const line of text.split('\n')) {
    const [, controllers, path] = line.split(':');
    if (path === undefined || !controllers.split(',').includes('devices')) continue;
    // the path as PID's cgroup namespace shows it: "/" is what a private cgroupns shows
    // (or the root cgroup): either way not a container's own cgroup we could name
    if (path === '/') return null;
    const file = `${V1_ROOT}${path === '/' ? '' : path}/devices.allow`;
    return existsSync(file) ? file : null;
  }
  return null;
}

/** Allow read/write of exactly these loop minors in PID's v1 device cgroup. */
export function allowLoopMinors(allowFile: string, minors: number[]): void {
  // one rule per write: the kernel parses a single rule per write(2)
  for (const m of minors) appendFileSync(allowFile, `b ${LOOP_MAJOR}:${m} rw`);
}
