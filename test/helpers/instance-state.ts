// An instance's state as the tests look at it: the header (`.loopfs/state.json`) and every
// device record (`.loopfs/devices/loopN`, format version 2; version 1 kept them all in
// state.json), read as one object, the shape version 1 had on disk.
import fs from 'node:fs';
import path from 'node:path';

export interface DeviceRecord {
  state: 'held' | 'removing';
  partitions?: string[];
}

export interface InstanceStateFile {
  version: number;
  id: string;
  owner: { uid: number; gid: number };
  mode: number;
  max: number | null;
  pool: number;
  createdAt: string;
  devices: Record<string, DeviceRecord>;
  /** `instance destroy` has begun (`.loopfs/destroying`). */
  destroying?: boolean;
}

const devicesDir = (dir: string) => path.join(dir, '.loopfs', 'devices');

/** The whole state of DIR's instance, or null when DIR holds none (or it cannot be read). */
export function readInstanceState(dir: string): InstanceStateFile | null {
  let s: InstanceStateFile;
  try {
    s = JSON.parse(fs.readFileSync(path.join(dir, '.loopfs', 'state.json'), 'utf8')) as InstanceStateFile;
  } catch {
    return null;
  }
  if (s.version === 1) return s;
  const devices: Record<string, DeviceRecord> = {};
  let names: string[] = [];
  try {
    names = fs.readdirSync(devicesDir(dir));
  } catch {
    /* no records */
  }
  for (const n of names.filter((x) => /^loop\d+$/.test(x)).sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)))) {
    try {
      // an empty record is a held device without partitions (src/instance/state.ts)
      const text = fs.readFileSync(path.join(devicesDir(dir), n), 'utf8');
      devices[n.slice(4)] = text === '' ? { state: 'held' } : (JSON.parse(text) as DeviceRecord);
    } catch {
      /* removed meanwhile */
    }
  }
  s.devices = devices;
  if (fs.existsSync(path.join(dir, '.loopfs', 'destroying'))) s.destroying = true;
  return s;
}

/**
 * Change device records by hand the way loopfs writes them (write, then rename), as a crash
 * or tampering would leave them: records deleted by `edit` are unlinked, changed ones replaced.
 */
export function editInstanceState(dir: string, edit: (s: InstanceStateFile) => void): void {
  const before = readInstanceState(dir);
  if (!before) throw new Error(`${dir}: no instance state`);
  const after = JSON.parse(JSON.stringify(before)) as InstanceStateFile;
  edit(after);
  if (before.version === 1) {
    const p = path.join(dir, '.loopfs', 'state.json');
    fs.writeFileSync(`${p}.edit`, `${JSON.stringify(after, null, 2)}\n`);
    fs.renameSync(`${p}.edit`, p);
    return;
  }
  for (const m of Object.keys(before.devices)) if (!after.devices[m]) fs.rmSync(path.join(devicesDir(dir), `loop${m}`), { force: true });
  for (const [m, d] of Object.entries(after.devices)) {
    if (JSON.stringify(before.devices[m]) === JSON.stringify(d)) continue;
    const p = path.join(devicesDir(dir), `loop${m}`);
    fs.writeFileSync(`${p}.edit`, `${JSON.stringify(d)}\n`);
    fs.renameSync(`${p}.edit`, p);
  }
}
