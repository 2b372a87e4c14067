import { Args, Flags } from '@oclif/core';
import { LoopfsCommand } from '../../cli/base-command.js';
import { destroyDirs } from '../../cli/destroy-main.js';
import type { DestroyResult } from '../../instance/destroy.js';

export default class InstanceDestroy extends LoopfsCommand {
  static summary = 'Detach and remove every device of an instance, then remove the instance.';
  static description =
    'Refuses while one of its devices is mounted, unless --force: then mounted devices are detached lazily ' +
    '(the kernel frees them at the last unmount) and `loopfs instance gc` removes them afterwards. ' +
    'Several DIRs are destroyed in turn; one that fails prints its error and the others are still destroyed ' +
    '(exit status 1 if any failed).';
  static examples = [
    '<%= config.bin %> instance destroy /run/ci/job42',
    '<%= config.bin %> instance destroy /run/ci/job42 --force',
    '<%= config.bin %> instance destroy /run/ci/job41 /run/ci/job42',
  ];
  static args = { dir: Args.string({ required: true, description: 'instance directory (several: each in turn)' }) };
  static strict = false;
  static flags = { force: Flags.boolean({ description: 'detach mounted devices lazily (autoclear)' }) };

  /** --json: the result of one DIR as an object, of several as an array. */
  async run(): Promise<DestroyResult | DestroyResult[]> {
    const { argv, flags } = await this.parse(InstanceDestroy);
    const dirs = argv as string[];
    const { results, failed } = destroyDirs(dirs, flags.force, {
      log: (line) => this.log(line),
      error: (line) => process.stderr.write(`${line}\n`),
    });
    if (failed > 0) this.exit(1);
    return dirs.length === 1 ? results[0] : results;
  }
}
