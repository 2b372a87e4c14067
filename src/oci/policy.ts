/**
 * The opt-in annotations, per container:
 *
 *   io.loopfs.instance=true   give the container a private instance (required)
 *   io.loopfs.max=N           at most N loop devices in it (default: unlimited, within
 *                             the owner's per-uid limit)
 *   io.loopfs.pool=N          devices pre-allocated as /dev/loopN (default 4)
 *
 * Annotations from the OCI state win over those in config.json (they are the same for
 * podman; other runtimes fill only one of them).
 */
import { OciError } from './bundle.js';

export const ANNOTATION_INSTANCE = 'io.loopfs.instance';
export const ANNOTATION_MAX = 'io.loopfs.max';
export const ANNOTATION_POOL = 'io.loopfs.pool';
export const DEFAULT_POOL = 4;

/** The hook stages loopfs acts in. */
export const STAGES = ['createRuntime', 'poststop'] as const;
export type Stage = (typeof STAGES)[number];
/** A pool is pre-allocated at every start: keep a typo from taking hundreds of devices. */
export const MAX_POOL = 64;

export interface Policy {
  max: number | null;
  pool: number;
}

const TRUE = /^(true|1|yes|on)$/i;

export function enabled(annotations: Record<string, string>): boolean {
  return TRUE.test(annotations[ANNOTATION_INSTANCE] ?? '');
}

function count(annotations: Record<string, string>, key: string, upTo: number): number | null {
  const v = annotations[key];
  if (v === undefined) return null;
  if (!/^\d{1,6}$/.test(v) || Number(v) > upTo) throw new OciError(`annotation ${key}=${v}: expected a number from 0 to ${upTo}`);
  return Number(v);
}

export function policyOf(annotations: Record<string, string>): Policy {
  const max = count(annotations, ANNOTATION_MAX, 1 << 20);
  const pool = count(annotations, ANNOTATION_POOL, MAX_POOL) ?? Math.min(DEFAULT_POOL, max ?? DEFAULT_POOL);
  if (max !== null && pool > max) throw new OciError(`annotation ${ANNOTATION_POOL}=${pool} exceeds ${ANNOTATION_MAX}=${max}`);
  return { max, pool };
}
