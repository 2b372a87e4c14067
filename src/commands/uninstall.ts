import { Flags } from '@oclif/core';
import { LoopfsCommand } from '../cli/base-command.js';
import { defaultRecord, InstallError, uninstall, type Change } from '../install/install.js';

export default class Uninstall extends LoopfsCommand {
  static summary = 'Undo exactly what `loopfs install` did (files changed since are left alone).';
  static flags = {
    record: Flags.string({ description: 'the install record (default: /var/lib/loopfs/install.json)' }),
  };

  async run(): Promise<{ removed: Change[]; skipped: string[]; notes: string[] }> {
    const { flags } = await this.parse(Uninstall);
    try {
      const result = uninstall(flags.record ?? defaultRecord());
      for (const c of result.removed) this.log(`undone: ${c.path}`);
      for (const n of result.notes) this.log(n);
      for (const s of result.skipped) this.warn(s);
      return result;
    } catch (e) {
      if (e instanceof InstallError) this.fail(e.message);
      throw e;
    }
  }
}
