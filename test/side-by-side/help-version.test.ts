// --help / --version: exact text, exit status, interaction with other options.
import { sideBySide, type Scenario } from './harness.js';

import { readFileSync } from 'node:fs';

const version = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')).version as string;

/**
 * loopfs's two intended differences: -V names loopfs and keeps "util-linux 2.38.1" in
 * the line; -h adds the --instance option in its own block before -h/-V.
 */
export function loopfsDifferences(text: string): string {
  // transcripts prefix stdout lines ("  out| "); raw captures have no prefix
  const lines = text.split('\n');
  const result: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const m = /^(\s*out\| ?)?(.*)$/.exec(lines[i])!;
    const prefix = m[1] ?? '';
    if (m[2] === 'losetup from util-linux 2.38.1') {
      result.push(`${prefix}${m[2]} (loopfs ${version})`);
      continue;
    }
    result.push(lines[i]);
    if (m[2] === '     --raw                     use raw --list output format') {
      result.push(lines[++i]); // the blank separator line
      const blank = lines[i];
      result.push(`${prefix}     --instance <dir>          use the loop devices of instance <dir>`);
      result.push(`${prefix}                                 (default: $LOOPFS_INSTANCE, then /dev/loopfs)`);
      result.push(blank);
    }
  }
  return result.join('\n');
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
