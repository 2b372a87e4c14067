// Backing files with spaces, very long paths (util-linux truncates lo_file_name to 64 bytes but
// prints the full sysfs path), quotes, backslashes, newlines, non-ASCII, leading dashes.
import { sideBySide, type FileSpec, type Scenario } from './harness.js';

const LONG = `${'d'.repeat(90)}/${'f'.repeat(100)}_with space x.img`; // ~230-byte path
const LONGER = `${'e'.repeat(200)}/${'g'.repeat(200)}/${'h'.repeat(200)}.img`; // > 600-byte path
const MID = `${'m'.repeat(50)}.img`; // path well over 64 bytes, single component

const listAll = (name: string, file: string, spec: FileSpec = {}, env?: Record<string, string>): Scenario => ({
  name,
  files: { [file]: spec },
  env,
  steps: [
    { run: ['-f', '--show', `{${file}}`], save: 'd' },
    { run: ['-a'] },
    { run: ['{d}'] },
    { run: ['-l'] },
    { run: ['-l', '--raw'] },
    { run: ['-l', '-J', '{d}'] },
    { run: ['-l', '-O', 'BACK-FILE,NAME', '{d}'] },
    { run: ['-j', `{${file}}`] },
  ],
});

const scenarios: Scenario[] = [
  listAll('space in the name', 'with space.img'),
  listAll('path longer than 64 bytes', MID),
  listAll('path of about 230 bytes with a space', LONG),
  listAll('path of more than 600 bytes', LONGER),
  listAll('double quote and backslash', 'q"uote\\back.img'),
  listAll('newline and tab in the name', 'new\nline\tx.img'),
  listAll('non-ASCII name (UTF-8 locale)', 'ümlaut-ß.img'),
  listAll('non-ASCII name (C locale)', 'ümlaut-ß.img', {}, { LANG: 'C', LC_ALL: 'C' }),
  {
    name: 'relative path with a space',
    files: { 'sub dir/a b.img': {} },
    steps: [{ run: ['-f', '--show', 'sub dir/a b.img'] }, { run: ['-j', 'sub dir/a b.img'] }, { run: ['-j', './sub dir/../sub dir/a b.img'] }],
  },
  {
    name: 'name starting with a dash needs --',
    files: { '-dash.img': {} },
    steps: [{ run: ['-f', '--show', '-dash.img'] }, { run: ['-f', '--show', '--', '-dash.img'] }, { run: ['-j', './-dash.img'] }],
  },
  {
    name: 'file named like a device in cwd',
    files: { loop7: {} },
    steps: [{ run: ['-d', 'loop7'] }, { run: ['-c', 'loop7'] }, { run: ['-f', '--show', 'loop7'] }],
  },
];

sideBySide('odd-names', scenarios);
