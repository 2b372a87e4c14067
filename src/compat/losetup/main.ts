/**
 * The losetup program: shared by `bin/losetup` (the hot path, no oclif) and the
 * `loopfs losetup` oclif command. Returns the exit status; never calls process.exit
 * itself so that callers can flush and clean up.
 */
import { basename } from 'node:path';
import { assertLoopDevice } from '../../kernel/loop-device.js';
import { HostScope } from '../../instance/host.js';
import { Exit, Output } from '../output.js';
import { runAction } from './actions.js';
import { parseLosetup } from './options.js';

export interface LosetupInvocation {
  /** argv[0] as glibc would print it in getopt messages (our program path). */
  argv0: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
}

export function losetup({ argv0, args, env = process.env }: LosetupInvocation): number {
  const out = new Output(basename(argv0));
  try {
    const plan = parseLosetup(args, { argv0, out, env, checkDevice: assertLoopDevice });
    const scope = new HostScope();
    return runAction({ plan, scope, out });
  } catch (e) {
    if (e instanceof Exit) return e.status;
    throw e;
  } finally {
    out.flush();
  }
}
