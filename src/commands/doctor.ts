import { Flags } from '@oclif/core';
import { LoopfsCommand } from '../cli/base-command.js';
import type { CheckResult } from '../doctor/check.js';
import { applyFix, runChecks, safeFixes, type AppliedFix } from '../doctor/doctor.js';
import { colourWanted, renderChecks, summary } from '../doctor/render.js';

export interface DoctorReport {
  ok: boolean;
  checks: CheckResult[];
  /** With --fix: the safe fixes that ran (the checks above are from after them). */
  fixed: AppliedFix[];
}

export default class Doctor extends LoopfsCommand {
  static summary = 'Check the loop driver, limits, instances, brokers and installation; say how to fix each problem.';
  static description =
    'Prints a checklist: the loop driver and /dev/loop-control, device limits, devices tagged for instances that no ' +
    'longer exist, stale nodes inside instances, brokered instances whose broker is down, whether mount.loop and the ' +
    'OCI hook are installed, whether the kernel has loopfs. Each problem comes with the exact command that fixes it. ' +
    'Exits 1 when a check fails. --fix runs the safe fixes (loopfs gc) and checks again.';
  static examples = ['<%= config.bin %> doctor', '<%= config.bin %> doctor --fix', '<%= config.bin %> doctor --json'];
  static flags = {
    fix: Flags.boolean({ description: 'run the safe fixes, then check again' }),
  };

  async run(): Promise<DoctorReport> {
    const { flags } = await this.parse(Doctor);
    let checks = runChecks();
    const fixed: AppliedFix[] = [];
    if (flags.fix) {
      for (const fix of safeFixes(checks)) {
        const r = applyFix(fix);
        fixed.push(r);
        this.log(`ran: ${r.command} (exit ${r.exitCode ?? 'signal'})`);
        if (r.output) this.log(r.output.replace(/^/gm, '  '));
      }
      if (fixed.length > 0) checks = runChecks();
    }
    const ok = !checks.some((c) => c.status === 'fail');
    this.log(renderChecks(checks, colourWanted(process.stdout)).trimEnd());
    const safe = safeFixes(checks).length;
    this.log(`${summary(checks)}${safe > 0 && !flags.fix ? '; run `loopfs doctor --fix` for the safe fixes' : ''}`);
    // exitCode, not exit(): --json still prints the report
    if (!ok) process.exitCode = 1;
    return { ok, checks, fixed };
  }
}
