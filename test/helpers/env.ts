// Environment detection for the root-only integration tests: who we are, whether a real loop
// driver is present, where the reference util-linux losetup and the implementation under test live.
// Every check returns a human-readable *reason* (or undefined when fine) so that skipped tests say
// why they were skipped instead of silently passing.
import { accessSync, constants, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import os from 'node:os';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The reference implementation: util-linux 2.38.1 losetup. */
export const REF_LOSETUP = '/usr/sbin/losetup';
export const REF_VERSION_LINE = 'losetup from util-linux 2.38.1';

/** Why tests that need root and a working loop driver cannot run here, or undefined. */
export function loopSkipReason(): string | undefined {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    return `needs root (running as uid ${process.getuid?.() ?? '?'})`;
  }
  if (!existsSync('/dev/loop-control')) return 'no /dev/loop-control (loop driver not loaded?)';
  let loops: string[] = [];
  try {
    loops = readdirSync('/sys/block').filter((n) => /^loop\d+$/.test(n));
  } catch {
    return 'no /sys/block (sysfs not mounted)';
  }
  if (loops.length === 0) return 'no /sys/block/loopN entries (loop driver not loaded?)';
  return undefined;
}

/** Why the reference util-linux losetup cannot be used, or undefined. */
export function refSkipReason(): string | undefined {
  if (!existsSync(REF_LOSETUP)) return `${REF_LOSETUP} not installed`;
  const r = spawnSync(REF_LOSETUP, ['--version'], { encoding: 'utf8' });
  const line = (r.stdout ?? '').trim();
  if (line !== REF_VERSION_LINE) return `${REF_LOSETUP} is '${line}', the suite targets '${REF_VERSION_LINE}'`;
  return undefined;
}

let copiedRef: string | undefined;

/**
 * The implementation under test. `LOSETUP_TARGET` overrides the default `bin/losetup`:
 *  - a path (relative to the repo root or absolute), or
 *  - the word `util-linux-copy`: a copy of /usr/sbin/losetup at a different path
 *    (`<tmp>/bin/losetup`). Used to develop and self-check the harness: every scenario must pass,
 *    and argv[0]-bearing messages exercise the program-path normalisation.
 */
export function targetLosetup(): string {
  const t = process.env.LOSETUP_TARGET;
  if (t === 'util-linux-copy') {
    if (!copiedRef) {
      const dir = mkdtempSync(path.join(os.tmpdir(), 'loopfs-ulcopy-'));
      mkdirSync(path.join(dir, 'bin'));
      copiedRef = path.join(dir, 'bin', 'losetup');
      copyFileSync(REF_LOSETUP, copiedRef);
    }
    return copiedRef;
  }
  if (t) return path.resolve(REPO_ROOT, t);
  return path.join(REPO_ROOT, 'bin', 'losetup');
}

/** Remove the util-linux copy made for LOSETUP_TARGET=util-linux-copy (call from afterAll). */
export function cleanupTargetCopy(): void {
  if (copiedRef) rmSync(path.dirname(path.dirname(copiedRef)), { recursive: true, force: true });
  copiedRef = undefined;
}

/** Why the implementation under test cannot be run, or undefined. */
export function targetSkipReason(target = targetLosetup()): string | undefined {
  try {
    if (!statSync(target).isFile()) return `${target} is not a file`;
    accessSync(target, constants.X_OK);
  } catch (e) {
    return `implementation under test ${target} not runnable (${(e as NodeJS.ErrnoException).code ?? e}); ` +
      'set LOSETUP_TARGET=<path> or LOSETUP_TARGET=util-linux-copy';
  }
  return undefined;
}

const printed = new Set<string>();
/** Print a skip reason once per file, visibly (vitest shows console output of the test file). */
export function announceSkip(what: string, reason: string | undefined): void {
  if (!reason) return;
  const msg = `[skip] ${what}: ${reason}`;
  if (printed.has(msg)) return;
  printed.add(msg);
  console.warn(msg);
}

/** First reason among several, or undefined. */
export function firstReason(...reasons: (string | undefined)[]): string | undefined {
  return reasons.find((r) => r !== undefined);
}
