import { Command } from '@oclif/core';
import { losetup } from '../compat/losetup/main.js';

/**
 * `loopfs losetup`: util-linux 2.38.1 losetup, option for option. The options are
 * parsed by our getopt_long emulation, not oclif's parser (which cannot express
 * `--direct-io[=on|off]`, size suffixes or getopt's error texts), so the command is
 * non-strict and hands its raw argv over. `bin/loopfs` dispatches here directly.
 */
export default class Losetup extends Command {
  static summary = 'Set up and control loop devices (drop-in for util-linux losetup).';
  static description =
    'Accepts every util-linux 2.38.1 losetup option with identical output, error texts and exit codes. See losetup(8).';
  static strict = false;
  static examples = [
    '<%= config.bin %> losetup -f --show disk.img',
    '<%= config.bin %> losetup -l -O NAME,BACK-FILE',
    '<%= config.bin %> losetup -d /dev/loop0',
  ];

  async run(): Promise<number> {
    const status = losetup({ argv0: 'losetup', args: this.argv });
    process.exitCode = status;
    return status;
  }
}
