/**
 * What `loopfs instance show`, `create` and `ls` print: one instance described device by
 * device (binding, partitions, mount points), and every registered instance in a line.
 * Returns data; the oclif commands render it.
 */
import { readFileSync } from 'node:fs';
import { LOOP_MAJOR } from '../kernel/devnum.js';
import { SysfsLoop } from '../kernel/sysfs.js';
import { LocalInstance, partitionsOf } from './local-instance.js';
import { Runtime } from './runtime.js';
import { heldMinors } from './state.js';

export interface DeviceInfo {
  minor: number;
  node: string;
  state: 'bound' | 'idle' | 'removing';
  backingFile: string | null;
  partitions: string[];
  mountpoints: string[];
}

export interface InstanceInfo {
  dir: string;
  id: string;
  owner: { uid: number; gid: number };
  mode: string;
  max: number | null;
  pool: number;
  devices: DeviceInfo[];
}

/** Mount points by "major:minor", from /proc/self/mountinfo. */
export function mountsByDevno(): Map<string, string[]> {
  const map = new Map<string, string[]>();
  let text = '';
  try {
    text = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    // no /proc here (any error): no mount points known
    return map;
  }
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length < 5) continue;
    const list = map.get(f[2]) ?? [];
    list.push(f[4].replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))));
    map.set(f[2], list);
  }
  return map;
}

/** Where loopN and its partitions are mounted (this mount namespace). */
export function mountpointsOf(minor: number, mounts: Map<string, string[]>): string[] {
  const result = [...(mounts.get(`${LOOP_MAJOR}:${minor}`) ?? [])];
  for (const p of partitionsOf(minor)) result.push(...(mounts.get(`${p.major}:${p.minor}`) ?? []));
  return result;
}

export function describeInstance(inst: LocalInstance): InstanceInfo {
  const s = inst.state();
  const mounts = mountsByDevno();
  const devices = heldMinors(s).map((minor): DeviceInfo => {
    const sys = SysfsLoop.forName(`loop${minor}`);
    const backingFile = sys.backingFile();
    return {
      minor,
      node: inst.nodePath(minor),
      state: s.devices[minor].state === 'removing' ? 'removing' : backingFile !== null ? 'bound' : 'idle',
      backingFile,
      partitions: s.devices[minor].partitions ?? [],
      mountpoints: mountpointsOf(minor, mounts),
    };
  });
  return {
    dir: inst.dir,
    id: s.id,
    owner: s.owner,
    mode: `0${s.mode.toString(8)}`,
    max: s.max,
    pool: s.pool,
    devices,
  };
}

export interface ListedInstance {
  dir: string;
  id: string;
  uid: number;
  devices: number;
  bound: number;
  max: number | null;
  ok: boolean;
}

/** Every registered instance; `ok` is false for entries whose directory no longer is one. */
export function listInstances(env: NodeJS.ProcessEnv = process.env): ListedInstance[] {
  const rt = Runtime.open(env);
  try {
    return rt.instances().map((e) => {
      try {
        const inst = LocalInstance.open(e.dir, env);
        try {
          const s = inst.header();
          if (s.id !== e.id) throw new Error('replaced');
          const minors = inst.minors();
          const bound = minors.filter((m) => SysfsLoop.forName(`loop${m}`).isBound()).length;
          return { dir: e.dir, id: e.id, uid: s.owner.uid, devices: minors.length, bound, max: s.max, ok: true };
        } finally {
          inst.close();
        }
      } catch {
        // DIR unreachable or its state unreadable, whatever the reason: listed as not ok (gc decides)
        return { dir: e.dir, id: e.id, uid: e.uid, devices: 0, bound: 0, max: null, ok: false };
      }
    });
  } finally {
    rt.close();
  }
}
