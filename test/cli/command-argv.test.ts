// Which words of a launcher's command line are its options and which are CMD's argv
// (src/cli/command-argv.ts): CMD's words are never parsed, reordered or dropped.
import { describe, expect, it } from 'vitest';
import { splitLauncherArgv, valueFlags } from '../../src/cli/command-argv.js';

const VALUE = new Set(['instance', 'allow-fs']);
const split = (...argv: string[]) => splitLauncherArgv(argv, VALUE);

describe('splitLauncherArgv', () => {
  it('ends the options at the first --, which is dropped, and keeps every later word as given', () => {
    expect(split('--instance', 'D', '-v', '--', 'printf', '%s|', 'a', '1', 'b', '1', 'c')).toEqual({
      options: ['--instance', 'D', '-v'],
      command: ['printf', '%s|', 'a', '1', 'b', '1', 'c'],
    });
    expect(split('--', 'x', '--instance', '-v', '--', '--help', '-x', '', '')).toEqual({
      options: [],
      command: ['x', '--instance', '-v', '--', '--help', '-x', '', ''],
    });
  });

  it('takes the value of a value option as its own, with or without =', () => {
    expect(split('--instance', '--', '--', 'cmd')).toEqual({ options: ['--instance', '--'], command: ['cmd'] });
    expect(split('--instance=D', '--allow-fs', 'ext4', 'cmd', '-v')).toEqual({
      options: ['--instance=D', '--allow-fs', 'ext4'],
      command: ['cmd', '-v'],
    });
    // a value option at the end: left to the flag parser, which says the value is missing
    expect(split('-v', '--instance')).toEqual({ options: ['-v', '--instance'], command: [] });
  });

  it('without --, starts CMD at the first operand (a word, "-" or ""), so CMD keeps its own --', () => {
    expect(split('-v', 'sh', '-c', 'echo "$0"', '--', 'x')).toEqual({ options: ['-v'], command: ['sh', '-c', 'echo "$0"', '--', 'x'] });
    expect(split('', '-v')).toEqual({ options: [], command: ['', '-v'] });
    expect(split('-v', '-', 'a')).toEqual({ options: ['-v'], command: ['-', 'a'] });
    expect(split()).toEqual({ options: [], command: [] });
    expect(split('--')).toEqual({ options: [], command: [] });
  });

  it('valueFlags lists the option flags of an oclif table, not the booleans', () => {
    expect([...valueFlags({ instance: { type: 'option' }, fuse: { type: 'boolean' }, 'allow-fs': { type: 'option' } })]).toEqual(['instance', 'allow-fs']);
  });
});
