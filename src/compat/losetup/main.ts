/**
 * The losetup program: shared by `bin/losetup` (the hot path, no oclif) and the
 * `loopfs losetup` oclif command. Returns the exit status; never calls process.exit
 * itself so that callers can flush and clean up.
 */
import { basename } from 'node:path';
import { isSysError } from '../../kernel/errors.js';
import { QuotaError } from '../../instance/local-instance.js';
import { InstanceError, resolveScope } from '../../instance/resolve.js';
import type { LoopScope } from '../../instance/scope.js';
import { Exit, Output } from '../output.js';
import { runAction } from './actions.js';
import { parseLosetup, prescanInstance } from './options.js';

export interface LosetupInvocation {
  /** argv[0] as glibc would print it in getopt messages (our program path). */
  argv0: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
}

export function losetup({ argv0, args, env = process.env }: LosetupInvocation): number {
  const out = new Output(basename(argv0));
  try {
    // The instance is resolved only when something needs it, so that -h, -V and usage
    // errors behave as util-linux's do even when the instance is unusable (or a broker
    // that would be connected to for nothing). An unusable instance is reported like any
    // other failure: one line, status 1.
    let scope: LoopScope | undefined;
    const instance = (): LoopScope => (scope ??= resolveScope(prescanInstance(args, env), env));
    const plan = parseLosetup(args, { argv0, out, env, checkDevice: (arg) => instance().checkDevice(arg) });
    return runAction({ plan, scope: instance(), out });
  } catch (e) {
    if (e instanceof Exit) return e.status;
    return reportUnexpected(out, e, env);
  } finally {
    out.flush();
  }
}

/**
 * Anything not anticipated by an action (an unusable instance, a quota refusal, a state
 * file that cannot be written): still one line and status 1, never a stack trace. LOOPFS_DEBUG=1 shows it.
 */
function reportUnexpected(out: Output, e: unknown, env: NodeJS.ProcessEnv): number {
  if (env.LOOPFS_DEBUG) out.errRaw(`${(e as Error)?.stack ?? String(e)}\n`);
  if (e instanceof QuotaError || e instanceof InstanceError) out.warnx(e.message);
  else if (isSysError(e)) out.warn(e.path ?? e.syscall, e.description ?? e.message);
  else out.warnx(e instanceof Error ? e.message : String(e));
  return 1;
}
