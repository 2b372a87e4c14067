/**
 * `loopfs gc` (`loopfs instance gc`), every pass in the order it runs them, and its
 * preview: what those passes would settle now, read only, which `loopfs doctor` reports.
 * One module for both, so that doctor never misses a leftover gc settles, nor names one it
 * does not.
 *
 *   1. containers whose init is gone without a poststop hook: their instances go whole
 *      (oci/container-instance.ts vanishedContainers);
 *   2. session devices of brokers that died (SIGKILL) and were not restarted
 *      (broker/recover.ts; no preview: doctor's brokers check names the dead broker);
 *   3. every instance, claim and registry entry (instance/gc.ts; gcPreview). Its last step
 *      per instance, the pool rule (idle devices above the instance's pool go back), has no
 *      preview either: an idle device is no leftover, and how many an instance keeps is its
 *      pool policy, which doctor does not judge.
 *
 * It lives in the doctor layer because that is the lowest layer that may import all three
 * (lint/layers.mjs); the gc command only renders it.
 */
import { recoverAbandonedSessions } from '../broker/recover.js';
import { gc, gcPreview, type GcReport, type Leftover } from '../instance/gc.js';
import type { ProgressFn } from '../instance/progress.js';
import { reapVanishedContainers, vanishedContainers } from '../oci/container-instance.js';

/** A container that is gone while its instance is still there (pass 1 destroys it). */
export interface VanishedContainer {
  kind: 'vanished-container';
  dir: string;
  container: string;
}

/** Something `loopfs gc` would settle now. */
export type GcLeftover = Leftover | VanishedContainer;

/** Run every gc pass; the fixes in the order they were made. */
export function runGc(env: NodeJS.ProcessEnv = process.env, progress?: ProgressFn): GcReport {
  const reaped = reapVanishedContainers(env);
  const recovered = recoverAbandonedSessions(env);
  const report = gc(env, progress);
  report.fixes.unshift(
    ...reaped.map((r) => ({ dir: r.dir, minor: null, action: `destroyed the instance of vanished container ${r.container}` })),
    ...recovered,
  );
  return report;
}

/** What runGc would settle now, without changing or waiting for anything. */
export function previewGc(env: NodeJS.ProcessEnv = process.env): GcLeftover[] {
  const containers = vanishedContainers(env).map((c): VanishedContainer => ({ kind: 'vanished-container', ...c }));
  return [...containers, ...gcPreview(env)];
}
