/**
 * The record an instance keeps of itself, in `DIR/.loopfs/state.json`:
 * identity, owner, limits and the loop device minors it holds.
 *
 * Only the minors are recorded, not whether they are bound: the kernel (sysfs) is the
 * truth for that, so the record cannot go stale when a device is detached by autoclear
 * or by a stock tool. A minor is recorded *after* its global claim exists (claims.ts)
 * and forgotten *before* its claim is dropped, so that after a crash at any point the
 * claims are a superset of what states say, and `gc` can settle every difference.
 */
import { randomHex } from './random.js';
import type { PinnedDir } from './pinned-dir.js';

export const STATE_DIR = '.loopfs';
export const STATE_FILE = 'state.json';
export const LOCK_FILE = 'lock';
export const STATE_VERSION = 1;

/** What a held device is doing: `held` normally; `removing` once LOOP_CTL_REMOVE is due. */
export type HeldState = 'held' | 'removing';

export interface HeldDevice {
  state: HeldState;
  /** Partition nodes published for it (`loopNpM`), so they can be removed again. */
  partitions?: string[];
}

export interface InstanceState {
  version: typeof STATE_VERSION;
  id: string;
  owner: { uid: number; gid: number };
  /** Mode of the device nodes (default 0660). */
  mode: number;
  /** Per-instance device limit, or null for none. */
  max: number | null;
  /** Unbound devices kept ready after a detach (for tools that scan nodes). */
  pool: number;
  createdAt: string;
  /** Keyed by minor, as a decimal string. */
  devices: Record<string, HeldDevice>;
}

export function newInstanceId(): string {
  return randomHex(8);
}

export class StateError extends Error {
  constructor(
    readonly dir: string,
    message: string,
  ) {
    super(message);
    this.name = 'StateError';
  }
}

function isUint(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
}

/** Parse and validate; anything unexpected is an error, never silently repaired here. */
export function parseState(dir: string, text: string): InstanceState {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new StateError(dir, 'instance state is not valid JSON');
  }
  const s = raw as Partial<InstanceState>;
  const ok =
    s &&
    s.version === STATE_VERSION &&
    typeof s.id === 'string' &&
    /^[0-9a-f]{16}$/.test(s.id) &&
    s.owner &&
    isUint(s.owner.uid) &&
    isUint(s.owner.gid) &&
    isUint(s.mode) &&
    s.mode <= 0o7777 &&
    (s.max === null || isUint(s.max)) &&
    isUint(s.pool) &&
    typeof s.createdAt === 'string' &&
    s.devices &&
    typeof s.devices === 'object' &&
    Object.entries(s.devices).every(
      ([k, v]) =>
        /^\d+$/.test(k) &&
        v &&
        (v.state === 'held' || v.state === 'removing') &&
        (v.partitions === undefined || (Array.isArray(v.partitions) && v.partitions.every((p) => /^loop\d+p\d+$/.test(p)))),
    );
  if (!ok) throw new StateError(dir, 'instance state is malformed');
  return s as InstanceState;
}

export function serializeState(s: InstanceState): string {
  return `${JSON.stringify(s, null, 2)}\n`;
}

export function readState(stateDir: PinnedDir): InstanceState | null {
  const text = stateDir.readFile(STATE_FILE);
  return text === null ? null : parseState(stateDir.path, text);
}

export function writeState(stateDir: PinnedDir, s: InstanceState): void {
  stateDir.writeFileAtomic(STATE_FILE, serializeState(s), 0o644);
}

/** Minors held by the instance, ascending. */
export function heldMinors(s: InstanceState): number[] {
  return Object.keys(s.devices)
    .map(Number)
    .sort((a, b) => a - b);
}
