/**
 * `loopfs doctor`: every check, in the order an operator would look (driver first, then
 * limits, leftovers, brokers, what is installed, the engines' runtime, the kernel), and the safe repairs.
 */
import { join } from 'node:path';
import { execaSync } from 'execa';
import { packageRoot } from '../install/install.js';
import { brokersCheck } from './brokers.js';
import type { Check, CheckResult, DoctorContext, Fix } from './check.js';
import { loopDriverCheck } from './driver.js';
import { enginesCheck } from './engines.js';
import { mountHelperCheck, ociHookCheck } from './installed.js';
import { kernelLoopfsCheck } from './kernel-loopfs.js';
import { orphanDevicesCheck, staleNodesCheck, unreadableCheck } from './leftovers.js';
import { limitsCheck } from './limits.js';

export const CHECKS: readonly Check[] = [
  loopDriverCheck,
  limitsCheck,
  orphanDevicesCheck,
  staleNodesCheck,
  unreadableCheck,
  brokersCheck,
  mountHelperCheck,
  ociHookCheck,
  enginesCheck,
  kernelLoopfsCheck,
];

export function runChecks(env: NodeJS.ProcessEnv = process.env): CheckResult[] {
  const ctx: DoctorContext = { env, root: process.geteuid?.() === 0 };
  return CHECKS.map((c) => {
    try {
      return { id: c.id, title: c.title, ...c.run(ctx) };
    } catch (e) {
      // a check that breaks is itself a finding, never the end of the diagnosis
      return { id: c.id, title: c.title, status: 'fail', detail: `check failed: ${e instanceof Error ? e.message : String(e)}` };
    }
  });
}

export interface AppliedFix {
  command: string;
  exitCode: number | null;
  output: string;
}

/** The safe fixes the results name, each once, in check order. */
export function safeFixes(results: CheckResult[]): Fix[] {
  const seen = new Set<string>();
  const fixes: Fix[] = [];
  for (const r of results) {
    if (!r.fix?.safe || (r.status !== 'fail' && r.status !== 'warn') || seen.has(r.fix.command)) continue;
    seen.add(r.fix.command);
    fixes.push(r.fix);
  }
  return fixes;
}

/**
 * Run a safe fix exactly as shown: safe fixes are `loopfs …` commands, run with this
 * package's own bin/loopfs (not whatever `loopfs` PATH finds) in the same environment.
 */
export function applyFix(fix: Fix, env: NodeJS.ProcessEnv = process.env): AppliedFix {
  const [prog, ...args] = fix.command.split(' ');
  if (!fix.safe || prog !== 'loopfs') throw new Error(`not a safe loopfs fix: ${fix.command}`);
  // `all`: stdout and stderr interleaved as the fix wrote them; exactly `env`, not ours on top
  const r = execaSync(process.execPath, [join(packageRoot(), 'bin', 'loopfs'), ...args], { env, extendEnv: false, reject: false, all: true });
  return { command: fix.command, exitCode: r.exitCode ?? null, output: (r.all ?? '').trimEnd() };
}
