import { Args } from '@oclif/core';
import { LoopfsCommand } from '../cli/base-command.js';
import { bashScript } from '../completion/bash.js';
import { buildModel } from '../completion/model.js';
import { zshScript } from '../completion/zsh.js';

export default class Completion extends LoopfsCommand {
  static summary = 'Print the shell completion script for loopfs, losetup and mount.loop.';
  static description =
    'Completes loopfs commands and flags, losetup options (long and short), the loop devices of the instance ' +
    'the command line works in (--instance DIR, $LOOPFS_INSTANCE, /dev/loopfs, else the host) for -d and -c, ' +
    'and files for backing files. Generated from the command metadata and losetup\'s option table.';
  static examples = [
    '<%= config.bin %> completion bash > /etc/bash_completion.d/loopfs',
    'source <(<%= config.bin %> completion zsh)   # in ~/.zshrc, after compinit',
  ];
  static enableJsonFlag = false;
  static args = { shell: Args.string({ required: true, options: ['bash', 'zsh'], description: 'shell to complete in' }) };

  async run(): Promise<void> {
    const { args } = await this.parse(Completion);
    const model = buildModel(this.config.commands);
    process.stdout.write(args.shell === 'zsh' ? zshScript(model) : bashScript(model));
  }
}
