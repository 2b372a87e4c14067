/**
 * The doctor's checklist for humans: one aligned line per check, findings and the fix
 * command indented below. Colour only where it helps and cannot hurt: stdout is a
 * terminal and NO_COLOR (no-color.org) is not set; otherwise plain text for scripts.
 */
import { Chalk } from 'chalk';
import { alignedTable } from '../cli/base-command.js';
import type { CheckResult, Status } from './check.js';

export function colourWanted(stream: { isTTY?: boolean }, env: NodeJS.ProcessEnv = process.env): boolean {
  return stream.isTTY === true && !(env.NO_COLOR !== undefined && env.NO_COLOR !== '') && env.TERM !== 'dumb';
}

const MARK: Record<Status, string> = { ok: 'ok', warn: 'warn', fail: 'FAIL', skip: 'skip' };

export function renderChecks(results: CheckResult[], colour: boolean): string {
  const c = new Chalk({ level: colour ? 1 : 0 });
  const paint: Record<Status, (s: string) => string> = {
    ok: c.green,
    warn: c.yellow,
    fail: c.red.bold,
    skip: c.dim,
  };
  // pad on plain text, paint afterwards: escape codes would throw the columns off
  const lines = alignedTable(['', 'CHECK', 'DETAIL'], results.map((r) => [MARK[r.status], r.title, r.detail])).trimEnd().split('\n');
  const out: string[] = [lines[0]];
  results.forEach((r, i) => {
    const line = lines[i + 1];
    const mark = MARK[r.status];
    out.push(paint[r.status](mark) + line.slice(mark.length));
    if (r.status === 'fail' || r.status === 'warn') {
      for (const item of r.items ?? []) out.push(`      ${item}`);
      if (r.fix) out.push(`      fix: ${c.bold(r.fix.command)}${r.fix.safe ? c.dim('  (safe: loopfs doctor --fix runs it)') : ''}`);
    }
  });
  return `${out.join('\n')}\n`;
}

export function summary(results: CheckResult[]): string {
  const fails = results.filter((r) => r.status === 'fail').length;
  const warns = results.filter((r) => r.status === 'warn').length;
  if (fails === 0 && warns === 0) return 'no problems found';
  const parts = [`${fails} problem(s)`, `${warns} warning(s)`];
  return parts.join(', ');
}
