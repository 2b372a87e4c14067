// Loop-device state read straight from sysfs (independent of any losetup implementation) and a
// tracker that detaches every device a test attached — and only those — even when the test fails.
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { REF_LOSETUP } from './env.js';
import { runProgram } from './run.js';

export interface LoopState {
  /** e.g. "loop3" */
  name: string;
  /** "/dev/loop3" */
  dev: string;
  minor: number;
  backingFile: string;
  offset: string;
  sizelimit: string;
  autoclear: string;
  partscan: string;
  dio: string;
  ro: string;
  logicalBlockSize: string;
  /** device size in bytes (sysfs `size` is in 512-byte units) */
  sizeBytes: string;
  /** partition entries (loop3p1, ...) */
  partitions: string[];
}

function rd(p: string): string | undefined {
  try {
    return readFileSync(p, 'utf8').replace(/\n$/, '');
  } catch {
    return undefined;
  }
}

/** Names of all loop devices that exist (bound or not), sorted by minor number. */
export function loopDeviceNames(): string[] {
  let names: string[];
  try {
    names = readdirSync('/sys/block').filter((n) => /^loop\d+$/.test(n));
  } catch {
    return [];
  }
  return names.sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)));
}

/** Sysfs state of a bound loop device, or undefined when it is unbound or does not exist. */
export function readLoopState(nameOrDev: string): LoopState | undefined {
  const name = nameOrDev.replace(/^\/dev\//, '');
  const base = `/sys/block/${name}`;
  const backingFile = rd(`${base}/loop/backing_file`);
  if (backingFile === undefined) return undefined;
  let partitions: string[] = [];
  try {
    partitions = readdirSync(base).filter((n) => n.startsWith(`${name}p`)).sort();
  } catch {
    /* device went away */
  }
  const sectors = rd(`${base}/size`);
  return {
    name,
    dev: `/dev/${name}`,
    minor: Number(name.slice(4)),
    backingFile,
    offset: rd(`${base}/loop/offset`) ?? '?',
    sizelimit: rd(`${base}/loop/sizelimit`) ?? '?',
    autoclear: rd(`${base}/loop/autoclear`) ?? '?',
    partscan: rd(`${base}/loop/partscan`) ?? '?',
    dio: rd(`${base}/loop/dio`) ?? '?',
    ro: rd(`${base}/ro`) ?? '?',
    logicalBlockSize: rd(`${base}/queue/logical_block_size`) ?? '?',
    sizeBytes: sectors === undefined ? '?' : String(BigInt(sectors) * 512n),
    partitions,
  };
}

export function isBound(nameOrDev: string): boolean {
  const name = nameOrDev.replace(/^\/dev\//, '');
  return existsSync(`/sys/block/${name}/loop/backing_file`);
}

/** All bound loop devices, sorted by minor. */
export function boundLoopDevices(): LoopState[] {
  return loopDeviceNames()
    .map((n) => readLoopState(n))
    .filter((s): s is LoopState => s !== undefined);
}

/** Existing but unbound devices, sorted by minor. */
export function freeLoopDevices(): string[] {
  return loopDeviceNames().filter((n) => !isBound(n));
}

/** The sysfs backing_file of a device whose file lives under `dir` (also after deletion,
 *  when the kernel appends " (deleted)"). */
export function backedUnder(state: LoopState, dir: string): boolean {
  const d = dir.endsWith('/') ? dir : `${dir}/`;
  return state.backingFile.startsWith(d);
}

export function devicesBackedUnder(dir: string): LoopState[] {
  return boundLoopDevices().filter((s) => backedUnder(s, dir));
}

export function formatState(s: LoopState): string {
  return (
    `${s.name}: back=${JSON.stringify(s.backingFile)} offset=${s.offset} sizelimit=${s.sizelimit} ` +
    `size=${s.sizeBytes} ro=${s.ro} dio=${s.dio} log-sec=${s.logicalBlockSize} partscan=${s.partscan} ` +
    `autoclear=${s.autoclear} parts=[${s.partitions.join(',')}]`
  );
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Wait until a device is unbound (a detach can be deferred while someone holds it open). */
export async function waitUnbound(nameOrDev: string, timeoutMs = 10_000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (isBound(nameOrDev)) {
    if (Date.now() > end) return false;
    await sleep(20);
  }
  return true;
}

/** Detach with util-linux (never our implementation: cleanup must not depend on the code under
 *  test) and wait for the kernel to really release the device. Throws when it stays bound. */
export async function detachDevice(nameOrDev: string): Promise<void> {
  const dev = nameOrDev.startsWith('/') ? nameOrDev : `/dev/${nameOrDev}`;
  if (!isBound(dev)) return;
  const r = await runProgram(REF_LOSETUP, ['-d', dev]);
  if (!(await waitUnbound(dev))) {
    throw new Error(`cleanup: ${dev} still bound after '${REF_LOSETUP} -d' (rc ${r.exitCode}: ${r.stderr.toString().trim()})`);
  }
}

/**
 * Records which devices a test is responsible for and detaches exactly those.
 *  - `ownDir(dir)`: every device whose backing file lives under `dir` (the test's private directory);
 *  - `add(dev, expectBacking)`: a specific device, detached only if its backing file is still the one
 *    the test attached (so a device that was freed and re-used by someone else is left alone).
 */
export class DeviceTracker {
  private dirs = new Set<string>();
  private devs = new Map<string, string | undefined>();

  ownDir(dir: string): void {
    this.dirs.add(dir);
  }

  add(dev: string, expectBacking?: string): void {
    const d = dev.startsWith('/') ? dev : `/dev/${dev}`;
    this.devs.set(d, expectBacking);
  }

  /** Devices currently bound that belong to this tracker. */
  owned(): LoopState[] {
    return boundLoopDevices().filter((s) => {
      for (const dir of this.dirs) if (backedUnder(s, dir)) return true;
      if (!this.devs.has(s.dev)) return false;
      const expect = this.devs.get(s.dev);
      return expect === undefined || s.backingFile === expect || s.backingFile === `${expect} (deleted)`;
    });
  }

  /** Detach all owned devices; returns the devices detached. Collects errors and throws once. */
  async detachAll(): Promise<string[]> {
    const errors: string[] = [];
    const done: string[] = [];
    const failed = new Set<string>();
    // A device that is the backing file of another bound device (a loop on a loop) stays open
    // until that other device is gone, so its detach would only be deferred: detach the upper
    // devices first, in rounds.
    for (;;) {
      const bound = boundLoopDevices();
      const own = this.owned().filter((s) => !failed.has(s.dev));
      if (own.length === 0) break;
      const lower = new Set(bound.map((s) => s.backingFile));
      const round = own.filter((s) => !lower.has(s.dev));
      for (const s of round.length ? round : own) {
        try {
          await detachDevice(s.dev);
          done.push(s.dev);
        } catch (e) {
          failed.add(s.dev);
          errors.push(String((e as Error).message ?? e));
        }
      }
    }
    this.devs.clear();
    if (errors.length) throw new Error(errors.join('\n'));
    return done;
  }
}
