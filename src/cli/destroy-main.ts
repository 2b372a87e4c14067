/**
 * `loopfs instance destroy DIR...`: each DIR destroyed in turn, the way `losetup -d` takes
 * several devices: a DIR that fails prints its one line and the others are still destroyed;
 * the exit status is 1 when any failed. Shared by the oclif command and by bin/loopfs's fast
 * path (destroyFastPath): a container host tearing down jobs calls destroy in a loop, and
 * oclif's start-up (≈ 2× `node -e 0` here) would be most of the cost of a small instance.
 */
import { BusyError, destroyInstance, type DestroyResult } from '../instance/destroy.js';
import { LocalInstance } from '../instance/local-instance.js';
import { describeError } from './describe-error.js';
import { Progress } from './progress.js';

export interface DestroyOutput {
  /** A result line (stdout; the oclif command leaves it out under --json). */
  log(line: string): void;
  /** A failure line, "loopfs: …" (stderr). */
  error(line: string): void;
}

export interface DestroyOutcome {
  results: DestroyResult[];
  failed: number;
}

export function destroyDirs(dirs: readonly string[], force: boolean, out: DestroyOutput, env: NodeJS.ProcessEnv = process.env): DestroyOutcome {
  const results: DestroyResult[] = [];
  let failed = 0;
  for (const dir of dirs) {
    if (!LocalInstance.isInstance(dir)) {
      out.error(`loopfs: ${dir}: not a loop device instance`);
      failed++;
      continue;
    }
    const progress = new Progress('destroy'); // stderr, on a terminal only
    let result: DestroyResult;
    try {
      result = destroyInstance(dir, force, env, progress.callback);
    } catch (e) {
      progress.end();
      out.error(`loopfs: ${e instanceof BusyError ? `${dir}: ${e.message}` : describeError(e)}`);
      failed++;
      continue;
    }
    progress.end();
    results.push(result);
    out.log(
      `destroyed instance ${result.id}: ${result.removed.length} device(s) removed` +
        (result.deferred.length ? `, ${result.deferred.length} still in use (autoclear; gc removes them later)` : ''),
    );
  }
  return { results, failed };
}

/**
 * bin/loopfs's fast path for the arguments after `instance destroy`: only DIRs and at most
 * one `--force`, in any order. Anything else (--help, --json, `--`, an unknown option, no
 * DIR) returns null and goes to the oclif command, which parses it as it always did.
 * Otherwise returns the exit status, after the same output the command prints.
 */
export function destroyFastPath(args: readonly string[]): number | null {
  const dirs = args.filter((a) => a !== '--force');
  if (dirs.length === 0 || args.length - dirs.length > 1) return null;
  if (dirs.some((d) => d === '' || d.startsWith('-'))) return null;
  const { failed } = destroyDirs(dirs, args.length > dirs.length, {
    log: (line) => process.stdout.write(`${line}\n`),
    error: (line) => process.stderr.write(`${line}\n`),
  });
  return failed > 0 ? 1 : 0;
}
