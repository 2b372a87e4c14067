// getopt_long compatibility: combined short options, attached arguments, --opt=value, unique
// abbreviations, ambiguous prefixes, --, permutation, unknown options, missing arguments.
// The program path util-linux prints in getopt messages is normalised to <PROG> (see harness.ts).
import { sideBySide, type Scenario } from './harness.js';

const files = { img1: {}, img2: {}, '-dash.img': {} };
const p = (name: string, ...runs: string[][]): Scenario => ({ name, files, steps: runs.map((run) => ({ run })) });

const scenarios: Scenario[] = [
  p('combined short options -fP, -fPr, -rfv', ['-fP', '--show', '{img1}'], ['-fPr', '--show', '{img2}']),
  p('combined -vf and -fv', ['-vf'], ['-fv']),
  p('attached short argument -o1024', ['-o1024', '-f', '--show', '{img1}']),
  p('-o=1024 is the value =1024', ['-o=1024', '-f', '--show', '{img1}']),
  p('--offset=1024 and --offset 1024', ['--offset=1024', '-f', '--show', '{img1}'], ['--offset', '2048', '-f', '--show', '{img1}']),
  p('combined with attached argument -fo512', ['-fo512', '--show', '{img1}']),
  p('abbreviation --sho', ['-f', '--sho', '{img1}'], ['--sho']),
  p('abbreviations --fi --part --read --size', ['--fi', '--part', '--read', '--sh', '--size', '1M', '{img1}']),
  p('abbreviation with =value: --off=512 --sizel=1M', ['--off=512', '--sizel=1M', '-f', '--show', '{img1}']),
  p('abbreviations of listing options --li --raw --noh --out', ['--li', '--noh', '--out', 'NAME']),
  // Not tested: the ambiguous prefixes --d/--de/--det (detach, detach-all, direct-io). A parser bug
  // that resolved them to --detach-all would detach every loop device on the host.
  p('ambiguous --s and --se', ['--s'], ['--se', '4096']),
  p('ambiguous --ver and --o', ['--ver'], ['--o', 'NAME']),
  p('-- ends options', ['-f', '--show', '--', '{img1}'], ['-f', '--show', '--', '-dash.img']),
  p('a dash-file without -- is an option', ['-f', '--show', '-dash.img']),
  p('-- alone and -- -a', ['--'], ['--', '-a']),
  p('options after operands are permuted', ['{img1}', '-f', '--show'], ['img2', '--show', '-f', '-r']),
  {
    name: 'POSIXLY_CORRECT stops at the first operand',
    files,
    env: { POSIXLY_CORRECT: '1' },
    steps: [{ run: ['{img1}', '-f', '--show'] }, { run: ['-f', '--show', '{img1}'] }],
  },
  p('unknown short option', ['-x'], ['-fx', '{img1}'], ['-x', '-f'], ['-xyz']),
  p('unknown long option', ['--bogus'], ['--bogus=1'], ['--show-me']),
  p('option that takes no argument given one', ['--show=yes', '-f', '{img1}'], ['--find=x'], ['--all=1']),
  p(
    'missing arguments',
    ['-o'],
    ['-f', '--show', '{img1}', '-o'],
    ['--offset'],
    ['-O'],
    ['--output'],
    ['-j'],
    ['--associated'],
    ['-b'],
    ['--sector-size'],
    ['--sizelimit'],
    ['-c'],
    ['--set-capacity'],
    ['-d'],
    ['--detach'],
  ),
  p('repeated options: last value wins', ['-o', '512', '-o', '1024', '-f', '--show', '{img1}'], ['-a', '-a'], ['-l', '-l', '-n', '-n', '-O', 'NAME', '-O', 'NAME']),
  p('long options with separate and attached values', ['--output', 'NAME,RO'], ['--output=NAME,RO', '--list']),
  p('lone dash is a file name', ['-f', '--show', '-']),
];

sideBySide('option-parsing', scenarios);
