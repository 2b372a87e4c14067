// --help / --version: exact text, exit status, interaction with other options.
import { sideBySide, type Scenario } from './harness.js';

const p = (name: string, ...runs: string[][]): Scenario => ({ name, steps: runs.map((run) => ({ run })) });

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
