import { LoopfsCommand, alignedTable } from '../../cli/base-command.js';
import { Progress } from '../../cli/progress.js';
import { runGc } from '../../doctor/machine-gc.js';
import type { GcReport } from '../../instance/gc.js';

export default class InstanceGc extends LoopfsCommand {
  static summary = 'Reconcile every instance with the kernel and report what was fixed.';
  static description =
    'Settles whatever a crash (even SIGKILL) left half-done: devices claimed but not recorded, half-released ' +
    'devices, missing or stray nodes, devices of vanished instances. Safe to run at any time.';
  static aliases = ['gc'];
  static examples = ['<%= config.bin %> instance gc', '<%= config.bin %> gc --json'];

  async run(): Promise<GcReport> {
    await this.parse(InstanceGc);
    const progress = new Progress('gc'); // stderr, on a terminal only
    let report: GcReport;
    try {
      report = runGc(process.env, progress.callback); // every pass (doctor/machine-gc.ts)
    } finally {
      progress.end();
    }
    const rows = [
      ...report.fixes.map((f) => ['fixed', f.dir ?? '-', f.minor !== null ? `loop${f.minor}` : '-', f.action]),
      ...report.pending.map((p) => ['pending', p.dir ?? '-', p.minor !== null ? `loop${p.minor}` : '-', p.action]),
    ];
    if (rows.length > 0) this.log(alignedTable(['RESULT', 'DIR', 'DEVICE', 'ACTION'], rows).trimEnd());
    this.log(`${report.instances} instance(s) checked, ${report.fixes.length} fix(es), ${report.pending.length} pending`);
    return report;
  }
}
