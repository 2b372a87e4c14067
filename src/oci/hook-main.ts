/**
 * The hook's own entry, taken by bin/loopfs for exactly `loopfs oci-hook STAGE`: a
 * runtime starts it twice per container, on the container's start-up path, and oclif's
 * start-up (≈ 160 ms here) would be most of its cost. `loopfs oci-hook --help` and every
 * other form still go through the oclif command, which shares this error format.
 */
import { readFileSync } from 'node:fs';
import { isSysError } from '../kernel/errors.js';
import { OciError } from './bundle.js';
import { runHook } from './hook.js';
import { STAGES, type Stage } from './policy.js';

export function isHookStage(v: string | undefined): v is Stage {
  return (STAGES as readonly string[]).includes(v ?? '');
}

/** One line, as every loopfs command reports a failure. */
export function hookErrorLine(e: unknown): string {
  if (e instanceof OciError) return `loopfs: oci-hook: ${e.message}`;
  if (isSysError(e)) return `loopfs: oci-hook: ${e.path ? `${e.path}: ` : ''}${e.description ?? e.message}`;
  return `loopfs: oci-hook: ${e instanceof Error ? e.message : String(e)}`;
}

/** Run the hook on stdin; returns the exit status. */
export function hookMain(stage: Stage): number {
  try {
    runHook(stage, readFileSync(0, 'utf8'));
    return 0;
  } catch (e) {
    process.stderr.write(`${hookErrorLine(e)}\n`);
    return 1;
  }
}
