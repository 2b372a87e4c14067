// Listing: -a, -l, --raw, -J, -n, -O (every column), --output-all, single-device forms, -j.
import { sideBySide, type FileSpec, type Scenario, type Step } from './harness.js';

const ALL_COLUMNS = [
  'NAME', 'AUTOCLEAR', 'BACK-FILE', 'BACK-INO', 'BACK-MAJ:MIN', 'MAJ:MIN',
  'OFFSET', 'PARTSCAN', 'RO', 'SIZELIMIT', 'DIO', 'LOG-SEC',
];

/** Three devices with different attributes, attached by util-linux on both sides. */
const files: Record<string, FileSpec> = { img1: {}, img2: {}, img3: { size: 4 * 1024 * 1024 } };
const fixture: Step[] = [
  { fixture: ['-f', '--show', '{img1}'], save: 'dev1' },
  { fixture: ['-f', '--show', '-o', '1024', '--sizelimit', '4096000', '{img2}'], save: 'dev2' },
  { fixture: ['-f', '--show', '-r', '-P', '--direct-io=on', '-b', '4096', '{img3}'], save: 'dev3' },
];
const listed = (name: string, ...runs: string[][]): Scenario => ({
  name,
  files,
  freeDevices: 1,
  steps: [...fixture, ...runs.map((run) => ({ run }))],
});

const scenarios: Scenario[] = [
  listed('no arguments lists all (table)', []),
  listed('-a and --all', ['-a'], ['--all']),
  listed('-l and -l -a', ['-l'], ['-l', '-a']),
  listed('-l -n (no headings)', ['-l', '-n']),
  listed('--raw alone lists all', ['--raw']),
  listed('-l --raw, with -n', ['-l', '--raw'], ['-l', '--raw', '-n']),
  listed('-J alone, --json alone', ['-J'], ['--json']),
  listed('-l -J and -l -J -n', ['-l', '-J'], ['-l', '-J', '-n']),
  listed('single device: -a style line', ['{dev1}'], ['{dev2}'], ['{dev3}']),
  listed('single device with -J or --raw but no -l is the -a line', ['-J', '{dev2}'], ['--raw', '{dev2}']),
  listed('single device tables', ['-l', '{dev1}'], ['-n', '-l', '{dev2}'], ['-J', '-l', '{dev3}'], ['-l', '--raw', '{dev2}']),
  listed('-O selects columns; names case-insensitive', ['-l', '-O', 'NAME,BACK-FILE'], ['-l', '-O', 'name,back-file']),
  listed('-O implies --list', ['-O', 'NAME,RO']),
  listed('-O with every column, one at a time', ...ALL_COLUMNS.map((c) => ['-l', '-O', c, '{dev2}'])),
  listed(
    'all columns in reverse order: table, raw, json',
    ['-l', '-O', [...ALL_COLUMNS].reverse().join(','), '{dev3}'],
    ['-l', '--raw', '-O', [...ALL_COLUMNS].reverse().join(',')],
    ['-l', '-J', '-O', [...ALL_COLUMNS].reverse().join(',')],
  ),
  listed('--output-all: table, raw, json', ['-l', '--output-all'], ['-l', '--output-all', '--raw'], ['-l', '--output-all', '-J']),
  listed('--output-all single device', ['--output-all', '-l', '{dev2}']),
  listed('--output-all does not imply --list', ['-J', '--output-all']),
  listed('-O and --output-all together', ['-l', '-O', 'NAME', '--output-all', '{dev1}'], ['-l', '--output-all', '-O', 'NAME', '{dev1}']),
  listed('unused device: table row, json nulls, raw', ['-l', '{freedev}'], ['-J', '-l', '{freedev}'], ['-l', '--raw', '-n', '{freedev}'], ['-l', '--output-all', '{freedev}']),
  listed('unused device: -a style line is an error', ['{freedev}']),
  listed('test-suite form --list --raw -n -O OFFSET', ['--list', '--raw', '-n', '-O', 'OFFSET', '{dev2}']),
  listed('-j absolute and relative', ['-j', '{img1}'], ['-j', 'img1'], ['--associated', '{img2}'], ['--associated=img3']),
  listed('-j with -o filters by offset', ['-j', '{img2}', '-o', '1024'], ['-j', '{img2}', '-o', '512'], ['-j', '{img1}', '--offset', '0']),
  listed('-j with -l, -J, --raw, -O', ['-j', '{img2}', '-l'], ['-j', '{img2}', '-l', '-J'], ['-j', '{img3}', '-l', '--raw', '-n'], ['-j', '{img1}', '-O', 'NAME,BACK-INO']),
  listed('-j on a file with no device, and on a missing file', ['-j', '{dir}'], ['-j', '{dir}/nonexist']),
  listed('-j -J without -l', ['-j', '{img1}', '-J']),
];

sideBySide('listing', scenarios);
