// Direct I/O: --direct-io[=on|off] at setup and on a live device, bad values.
import { sideBySide, type Scenario } from './harness.js';

const live = (name: string, fixtureArgs: string[], ...runs: string[][]): Scenario => ({
  name,
  files: { img1: {} },
  freeDevices: 1,
  steps: [{ fixture: [...fixtureArgs, '-f', '--show', '{img1}'], save: 'dev1' }, ...runs.map((run) => ({ run })), { observe: ['-l', '-O', 'NAME,DIO,LOG-SEC', '{dev1}'] }],
});

const scenarios: Scenario[] = [
  {
    name: '--direct-io, =on, =off at setup',
    files: { img1: {}, img2: {}, img3: {} },
    steps: [
      { run: ['-f', '--show', '--direct-io', '{img1}'] },
      { run: ['-f', '--show', '--direct-io=on', '{img2}'] },
      { run: ['-f', '--show', '--direct-io=off', '-b', '4096', '{img3}'] },
      { observe: ['-l', '-O', 'NAME,DIO,LOG-SEC,BACK-FILE'] },
    ],
  },
  { name: '--direct-io on a 3000-byte file', files: { odd: { size: 3000 } }, steps: [{ run: ['--direct-io=on', '-f', '--show', '{odd}'] }] },
  {
    name: 'bad --direct-io values at setup',
    files: { img1: {} },
    steps: [
      { run: ['--direct-io=maybe', '-f', '{img1}'] },
      { run: ['--direct-io=ON', '-f', '--show', '{img1}'] },
      { run: ['--direct-io=', '-f', '{img1}'] },
      { run: ['--direct-io', 'on', '-f', '{img1}'] },
    ],
  },
  live('--direct-io=on on a live device', [], ['--direct-io=on', '{dev1}']),
  live('--direct-io without value on a live device', [], ['--direct-io', '{dev1}']),
  live('--direct-io=off on a live device with DIO', ['--direct-io=on'], ['--direct-io=off', '{dev1}']),
  live('--direct-io=on twice', [], ['--direct-io=on', '{dev1}'], ['--direct-io=on', '{dev1}']),
  live('--direct-io=maybe on a live device', [], ['--direct-io=maybe', '{dev1}']),
  live('--direct-io=on on an unused device', [], ['--direct-io=on', '{freedev}']),
  live('--direct-io with -b on a live device', [], ['--direct-io=on', '-b', '4096', '{dev1}']),
];

sideBySide('direct-io', scenarios);
