import { LoopfsCommand, alignedTable } from '../../cli/base-command.js';
import { limitsFile, readLimits } from '../../instance/limits.js';

export default class LimitsShow extends LoopfsCommand {
  static summary = 'Show the per-uid loop device limits.';

  async run(): Promise<{ file: string; limits: Record<string, number> }> {
    await this.parse(LimitsShow);
    const table = readLimits();
    const limits = Object.fromEntries(table.entries);
    if (table.entries.size > 0) {
      this.log(alignedTable(['UID', 'LIMIT'], [...table.entries].map(([k, v]) => [k, String(v)])).trimEnd());
    }
    return { file: limitsFile(), limits };
  }
}
