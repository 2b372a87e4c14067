// Logical sector size: -b/--sector-size at setup and on a live device, bad values.
import { sideBySide, type Scenario } from './harness.js';

const setup = (name: string, ...args: string[][]): Scenario => ({
  name,
  files: { img1: {} },
  steps: [...args.map((a) => ({ run: [...a, '-f', '--show', '{img1}'] })), { observe: ['-l', '-O', 'NAME,LOG-SEC,OFFSET', '-j', '{img1}'] }],
});
const live = (name: string, fixtureArgs: string[], ...runs: string[][]): Scenario => ({
  name,
  files: { img1: {} },
  freeDevices: 1,
  steps: [{ fixture: [...fixtureArgs, '-f', '--show', '{img1}'], save: 'dev1' }, ...runs.map((run) => ({ run })), { observe: ['-l', '-O', 'NAME,LOG-SEC', '{dev1}'] }],
});

const scenarios: Scenario[] = [
  setup('-b 4096 at setup', ['-b', '4096']),
  setup('--sector-size N and --sector-size=N', ['--sector-size', '1024'], ['--sector-size=2048']),
  setup('-b 512 and -b 1KiB', ['-b', '512'], ['-b', '1KiB']),
  setup('-b 8192', ['-b', '8192']),
  setup('-b 1000: invalid', ['-b', '1000']),
  setup('-b abc and -b 0', ['-b', 'abc'], ['-b', '0']),
  setup('-b 4096 with -o 512', ['-b', '4096', '-o', '512']),
  {
    name: '-b 4096 with a 3000-byte file',
    files: { odd: { size: 3000 } },
    steps: [{ run: ['-b', '4096', '-f', '--show', '{odd}'] }],
  },
  live('-b 1024 on a live device', [], ['-b', '1024', '{dev1}']),
  live('-b 4096 then 512 on a live device', [], ['-b', '4096', '{dev1}'], ['--sector-size', '512', '{dev1}']),
  live('-b 1000 on a live device', [], ['-b', '1000', '{dev1}']),
  live('-b on a live device that already has that size', ['-b', '2048'], ['-b', '2048', '{dev1}']),
  live('-b on an unused device', [], ['-b', '1024', '{freedev}']),
  live('-b on a live device with -a', [], ['-b', '1024', '-a']),
];

sideBySide('sector-size', scenarios);
