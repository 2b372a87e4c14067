// --help / --version: exact text, exit status, interaction with other options.
import { sideBySide, type Scenario } from './harness.js';

import { readFileSync } from 'node:fs';

const version = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version as string;

/**
 * loopfs's two intended differences: -V names loopfs and keeps "util-linux 2.38.1" in
 * the line; -h adds the --instance option in its own block before -h/-V.
 */
export function loopfsDifferences(text: string): string {
  return text
    .replace(/^(losetup from util-linux 2\.38\.1)$/gm, `$1 (loopfs ${version})`)
    .replace(
      /^( {5}--raw {21}use raw --list output format\n\n)/m,
      '$1     --instance <dir>          use the loop devices of instance <dir>\n' +
        '                                 (default: $LOOPFS_INSTANCE, then /dev/loopfs)\n\n',
    );
}

const p = (name: string, ...runs: string[][]): Scenario => ({
  name,
  steps: runs.map((run) => ({ run })),
  intendedDifferences: loopfsDifferences,
});

const scenarios: Scenario[] = [
  p('-h and --help', ['-h'], ['--help']),
  p('-V and --version', ['-V'], ['--version']),
  p('abbreviated --hel and --vers', ['--hel'], ['--vers']),
  p('ambiguous --v', ['--v']),
  p('help wins when seen first', ['-h', '-x'], ['-fh'], ['-hV'], ['--help', '--version']),
  p('error or version when seen first', ['-x', '-h'], ['-Vh'], ['--version', '--help']),
  p('version with other arguments', ['-V', '-a'], ['--version', 'extra'], ['-a', '-V']),
  p('help with mutually exclusive options before it', ['-a', '-f', '-h'], ['-h', '-a', '-f']),
  p('-h=x and --help=x', ['--help=x'], ['--version=x']),
];

sideBySide('help-version', scenarios);
