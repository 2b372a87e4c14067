import { Args } from '@oclif/core';
import { LoopfsCommand } from '../../cli/base-command.js';
import { limitsFile, setLimit } from '../../instance/limits.js';

export default class LimitsSet extends LoopfsCommand {
  static summary = 'Limit how many loop devices a uid may hold across all of its instances.';
  static examples = ['<%= config.bin %> limits set 1000 16', "<%= config.bin %> limits set '*' 64"];
  static args = {
    uid: Args.string({ required: true, description: "uid, or '*' for the default" }),
    limit: Args.integer({ required: true, min: 0, description: 'maximum number of devices' }),
  };

  async run(): Promise<{ uid: string; limit: number; file: string }> {
    const { args } = await this.parse(LimitsSet);
    if (!/^(\*|\d+)$/.test(args.uid)) this.fail(`invalid uid '${args.uid}'`);
    setLimit(args.uid, args.limit);
    this.log(`uid ${args.uid}: at most ${args.limit} loop devices (${limitsFile()})`);
    return { uid: args.uid, limit: args.limit, file: limitsFile() };
  }
}
