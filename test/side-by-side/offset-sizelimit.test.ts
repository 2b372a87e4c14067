// --offset / --sizelimit: forms, size suffixes, warnings, past-the-end, bad numbers, contexts.
import { MiB, sideBySide, type Scenario } from './harness.js';

const img = { img1: {} };
const setup = (name: string, ...args: string[][]): Scenario => ({
  name,
  files: img,
  steps: [...args.map((a) => ({ run: [...a, '-f', '--show', '{img1}'] })), { observe: ['-j', '{img1}'] }],
});

const scenarios: Scenario[] = [
  setup('-o 1024 --sizelimit 4096000', ['-o', '1024', '--sizelimit', '4096000']),
  setup('offset forms: -o1024, --offset=1024, --offset 1024', ['-o1024'], ['--offset=2048'], ['--offset', '3072']),
  setup('sizelimit forms: --sizelimit=N, --sizelimit N', ['--sizelimit=1048576'], ['--sizelimit', '2097152']),
  setup('size suffixes: 1MiB, 3MiB, 1KiB, 2M, 1KB', ['-o', '1MiB', '--sizelimit', '3MiB'], ['-o', '1KiB'], ['--sizelimit', '2M'], ['-o', '1KB']),
  setup('hex offset 0x400', ['-o', '0x400']),
  setup('offset past the end of the file: size 0, no warning', ['-o', '20M']),
  setup('offset equal to the file size', ['-o', String(10 * MiB)]),
  setup('offset not a multiple of 512: does-not-fit warning', ['-o', '100']),
  setup('sizelimit not a multiple of 512: warning', ['--sizelimit', '1000']),
  setup('sizelimit below 512: smaller-than warning', ['--sizelimit', '100']),
  setup('sizelimit larger than the file', ['--sizelimit', '20M']),
  setup('offset plus sizelimit past the end', ['-o', '9M', '--sizelimit', '4M']),
  {
    name: 'offset with a 3000-byte file',
    files: { odd: { size: 3000 } },
    steps: [{ run: ['-o', '1024', '-f', '--show', '{odd}'] }, { run: ['-o', '2560', '-f', '--show', '{odd}'] }],
  },
  {
    name: 'bad numbers',
    files: img,
    steps: [
      { run: ['-o', 'abc', '-f', '{img1}'] },
      { run: ['--sizelimit', 'xyz', '-f', '{img1}'] },
      { run: ['-o', '-1', '-f', '{img1}'] },
      { run: ['--sizelimit=-5', '-f', '{img1}'] },
      { run: ['-o', '', '-f', '{img1}'] },
      { run: ['-o', '1Q', '-f', '{img1}'] },
      { run: ['-o', '=1024', '-f', '{img1}'] },
    ],
  },
  {
    name: 'offset and sizelimit with an explicit device',
    files: img,
    freeDevices: 1,
    steps: [{ run: ['-o', '4096', '--sizelimit', '1MiB', '{freedev}', '{img1}'] }, { observe: ['{freedev}'] }],
  },
  {
    name: '--offset not allowed outside setup and -j',
    files: img,
    steps: [
      { fixture: ['-f', '--show', '{img1}'], save: 'dev1' },
      { run: ['-o', '512', '{dev1}'] },
      { run: ['-a', '-o', '512'] },
      { run: ['-l', '-o', '512'] },
      { run: ['-o', '512', '-d', '{dev1}'] },
    ],
  },
  {
    name: '--sizelimit outside setup',
    files: img,
    steps: [{ fixture: ['-f', '--show', '{img1}'], save: 'dev1' }, { run: ['--sizelimit', '1M', '{dev1}'] }, { run: ['-a', '--sizelimit', '1M'] }],
  },
];

sideBySide('offset-sizelimit', scenarios);
