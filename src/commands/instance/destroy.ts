import { Args, Flags } from '@oclif/core';
import { LoopfsCommand } from '../../cli/base-command.js';
import { Progress } from '../../cli/progress.js';
import { LocalInstance } from '../../instance/local-instance.js';
import { BusyError, destroyInstance, type DestroyResult } from '../../instance/destroy.js';

export default class InstanceDestroy extends LoopfsCommand {
  static summary = 'Detach and remove every device of an instance, then remove the instance.';
  static description =
    'Refuses while one of its devices is mounted, unless --force: then mounted devices are detached lazily ' +
    '(the kernel frees them at the last unmount) and `loopfs instance gc` removes them afterwards.';
  static examples = ['<%= config.bin %> instance destroy /run/ci/job42', '<%= config.bin %> instance destroy /run/ci/job42 --force'];
  static args = { dir: Args.string({ required: true, description: 'instance directory' }) };
  static flags = { force: Flags.boolean({ description: 'detach mounted devices lazily (autoclear)' }) };

  async run(): Promise<DestroyResult> {
    const { args, flags } = await this.parse(InstanceDestroy);
    if (!LocalInstance.isInstance(args.dir)) this.fail(`${args.dir}: not a loop device instance`);
    let result: DestroyResult;
    const progress = new Progress('destroy'); // stderr, on a terminal only
    try {
      result = destroyInstance(args.dir, flags.force, process.env, progress.callback);
    } catch (e) {
      progress.end();
      if (e instanceof BusyError) this.fail(`${args.dir}: ${e.message}`);
      throw e;
    }
    progress.end();
    this.log(
      `destroyed instance ${result.id}: ${result.removed.length} device(s) removed` +
        (result.deferred.length ? `, ${result.deferred.length} still in use (autoclear; gc removes them later)` : ''),
    );
    return result;
  }
}
