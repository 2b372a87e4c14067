// Run a program with argv as given (no shell), capturing stdout/stderr as raw bytes.
import { spawn } from 'node:child_process';

export interface RunResult {
  stdout: Buffer;
  stderr: Buffer;
  /** exit status, or null when killed by a signal */
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
}

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
}

export function runProgram(file: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? 30_000);
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ stdout: Buffer.concat(out), stderr: Buffer.concat(err), exitCode: code, signal, timedOut });
    });
  });
}

/** A fixed environment for both implementations: the caller's, minus anything that changes
 *  util-linux output (debug masks, terminal geometry, POSIXLY_CORRECT), with a pinned locale. */
export function pinnedEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/^(LC_|LANG|LANGUAGE$|COLUMNS$|LINES$|POSIXLY_CORRECT$|TERM$)/.test(k)) continue;
    if (/_DEBUG$/.test(k)) continue; // LOOPDEV_DEBUG, LIBSMARTCOLS_DEBUG, ULPATH_DEBUG, ...
    if (/^(NODE_OPTIONS|NODE_V8_COVERAGE|VITEST.*)$/.test(k)) continue;
    env[k] = v;
  }
  env.LANG = 'C.UTF-8';
  return { ...env, ...extra };
}
