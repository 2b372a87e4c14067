import { recoverAbandonedSessions } from '../../broker/recover.js';
import { LoopfsCommand, alignedTable } from '../../cli/base-command.js';
import { Progress } from '../../cli/progress.js';
import { gc, type GcReport } from '../../instance/gc.js';
import { reapVanishedContainers } from '../../oci/container-instance.js';

export default class InstanceGc extends LoopfsCommand {
  static summary = 'Reconcile every instance with the kernel and report what was fixed.';
  static description =
    'Settles whatever a crash (even SIGKILL) left half-done: devices claimed but not recorded, half-released ' +
    'devices, missing or stray nodes, devices of vanished instances. Safe to run at any time.';
  static aliases = ['gc'];
  static examples = ['<%= config.bin %> instance gc', '<%= config.bin %> gc --json'];

  async run(): Promise<GcReport> {
    await this.parse(InstanceGc);
    // containers that vanished without their poststop hook first: their instances go whole
    const reaped = reapVanishedContainers();
    // then session devices of brokers that died (SIGKILL) and were not restarted
    const recovered = recoverAbandonedSessions(process.env);
    const progress = new Progress('gc'); // stderr, on a terminal only
    let report: GcReport;
    try {
      report = gc(process.env, progress.callback);
    } finally {
      progress.end();
    }
    report.fixes.unshift(
      ...reaped.map((r) => ({ dir: r.dir, minor: null, action: `destroyed the instance of vanished container ${r.container}` })),
      ...recovered,
    );
    const rows = [
      ...report.fixes.map((f) => ['fixed', f.dir ?? '-', f.minor !== null ? `loop${f.minor}` : '-', f.action]),
      ...report.pending.map((p) => ['pending', p.dir ?? '-', p.minor !== null ? `loop${p.minor}` : '-', p.action]),
    ];
    if (rows.length > 0) this.log(alignedTable(['RESULT', 'DIR', 'DEVICE', 'ACTION'], rows).trimEnd());
    this.log(`${report.instances} instance(s) checked, ${report.fixes.length} fix(es), ${report.pending.length} pending`);
    return report;
  }
}
