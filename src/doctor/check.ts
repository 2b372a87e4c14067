/**
 * The shape of one `loopfs doctor` check and its result. A check only looks; it never
 * changes anything. What would repair a problem is named as the exact command, and
 * marked `safe` only when running it cannot break anything in use: `loopfs gc` settles
 * leftovers, and the one device it detaches that may still be mounted (one of a vanished
 * instance) is detached lazily, so it works until its last unmount.
 */
export type Status = 'ok' | 'warn' | 'fail' | 'skip';

export interface Fix {
  /** The command to run, exactly as an operator would type it. */
  command: string;
  /** Whether `loopfs doctor --fix` may run it on its own. */
  safe: boolean;
}

export interface CheckResult {
  id: string;
  title: string;
  status: Status;
  /** One line: what was found. */
  detail: string;
  /** The individual findings behind a warn or fail (one per device, instance, file). */
  items?: string[];
  fix?: Fix;
}

export interface DoctorContext {
  env: NodeJS.ProcessEnv;
  /** Whether we run as root: most machine-wide records are root's alone. */
  root: boolean;
}

export interface Check {
  id: string;
  title: string;
  run(ctx: DoctorContext): Omit<CheckResult, 'id' | 'title'>;
}

/** The fix that settles every leftover a crash can leave; safe at any time (see gc). */
export const GC_FIX: Fix = { command: 'loopfs gc', safe: true };
