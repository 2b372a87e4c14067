import { Args } from '@oclif/core';
import { LoopfsCommand, alignedTable } from '../../cli/base-command.js';
import { LocalInstance } from '../../instance/local-instance.js';
import { describeInstance, type InstanceInfo } from '../../instance/describe.js';

export default class InstanceShow extends LoopfsCommand {
  static summary = "Show an instance and its devices.";
  static examples = ['<%= config.bin %> instance show /run/ci/job42'];
  static args = { dir: Args.string({ required: true, description: 'instance directory' }) };

  async run(): Promise<InstanceInfo> {
    const { args } = await this.parse(InstanceShow);
    if (!LocalInstance.isInstance(args.dir)) this.fail(`${args.dir}: not a loop device instance`);
    const inst = LocalInstance.open(args.dir);
    try {
      const info = describeInstance(inst);
      this.log(`instance ${info.id}  owner ${info.owner.uid}:${info.owner.gid}  mode ${info.mode}  max ${info.max ?? '-'}  pool ${info.pool}`);
      if (info.devices.length > 0) {
        this.log(
          alignedTable(
            ['NODE', 'STATE', 'BACK-FILE', 'MOUNTED'],
            info.devices.map((d) => [d.node, d.state, d.backingFile ?? '-', d.mountpoints.join(',') || '-']),
          ).trimEnd(),
        );
      }
      return info;
    } finally {
      inst.close();
    }
  }
}
