import { Args } from '@oclif/core';
import { LoopfsCommand } from '../../cli/base-command.js';
import { limitsFile, setLimit } from '../../instance/limits.js';

export default class LimitsUnset extends LoopfsCommand {
  static summary = 'Remove the device limit of a uid.';
  static args = { uid: Args.string({ required: true, description: "uid, or '*' for the default" }) };

  async run(): Promise<{ uid: string; file: string }> {
    const { args } = await this.parse(LimitsUnset);
    setLimit(args.uid, null);
    this.log(`uid ${args.uid}: no limit in ${limitsFile()}`);
    return { uid: args.uid, file: limitsFile() };
  }
}
