import { LoopfsCommand, alignedTable } from '../../cli/base-command.js';
import { listInstances, type ListedInstance } from '../../instance/describe.js';

export default class InstanceLs extends LoopfsCommand {
  static summary = 'List the instances on this machine with their device counts.';
  static examples = ['<%= config.bin %> instance ls', '<%= config.bin %> instance ls --json'];

  async run(): Promise<ListedInstance[]> {
    await this.parse(InstanceLs);
    const list = listInstances();
    if (list.length > 0) {
      this.log(
        alignedTable(
          ['DIR', 'ID', 'UID', 'DEVICES', 'BOUND', 'MAX'],
          list.map((i) => [
            i.dir,
            i.id,
            String(i.uid),
            String(i.devices),
            String(i.bound),
            i.ok ? (i.max === null ? '-' : String(i.max)) : 'broken (run: loopfs instance gc)',
          ]),
        ).trimEnd(),
      );
    }
    return list;
  }
}
