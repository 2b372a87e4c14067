import { LoopfsCommand } from '../../cli/base-command.js';
import { gc, type GcReport } from '../../instance/manage.js';

export default class InstanceGc extends LoopfsCommand {
  static summary = 'Reconcile every instance with the kernel and report what was fixed.';
  static description =
    'Settles whatever a crash (even SIGKILL) left half-done: devices claimed but not recorded, half-released ' +
    'devices, missing or stray nodes, devices of vanished instances. Safe to run at any time.';
  static aliases = ['gc'];
  static examples = ['<%= config.bin %> instance gc', '<%= config.bin %> gc --json'];

  async run(): Promise<GcReport> {
    await this.parse(InstanceGc);
    const report = gc();
    for (const f of report.fixes) this.log(`fixed: ${f.dir ?? '-'}${f.minor !== null ? ` loop${f.minor}` : ''}: ${f.action}`);
    for (const p of report.pending) this.log(`pending: ${p.dir ?? '-'}${p.minor !== null ? ` loop${p.minor}` : ''}: ${p.action}`);
    this.log(`${report.instances} instance(s) checked, ${report.fixes.length} fix(es), ${report.pending.length} pending`);
    return report;
  }
}
