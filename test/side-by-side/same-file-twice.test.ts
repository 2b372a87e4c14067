// The same backing file on several devices, and -L/--nooverlap re-use and overlap detection.
import { sideBySide, type Scenario, type Step } from './harness.js';

const files = { img1: {}, img2: {}, link: { symlink: 'img1' }, hard: { hardlink: 'img1' } };
const first: Step = { fixture: ['-f', '--show', '{img1}'], save: 'dev1' };

const scenarios: Scenario[] = [
  {
    name: 'same file on two devices, listed',
    files,
    steps: [
      { run: ['-f', '--show', '{img1}'] },
      { run: ['-f', '--show', '{img1}'] },
      { run: ['-j', '{img1}'] },
      { run: ['-j', 'link'] },
      { run: ['-j', 'hard'] },
      { run: ['-l', '-j', '{img1}'] },
    ],
  },
  { name: '-L re-uses a full match', files, steps: [first, { run: ['-L', '-f', '--show', '{img1}'] }, { run: ['--nooverlap', '-f', '--show', 'img1'] }] },
  { name: '-L without --show re-uses silently', files, steps: [first, { run: ['-L', '-f', '{img1}'] }] },
  { name: '-L re-use through a symlink and a hard link', files, steps: [first, { run: ['-L', '-f', '--show', 'link'] }, { run: ['-L', '-f', '--show', 'hard'] }] },
  { name: '-L with a different offset overlaps', files, steps: [first, { run: ['-L', '-f', '--show', '-o', '512', '{img1}'] }] },
  { name: '-L with a different sizelimit overlaps', files, steps: [first, { run: ['-L', '-f', '--show', '--sizelimit', '1M', '{img1}'] }] },
  {
    name: '-L with disjoint ranges attaches a new device',
    files,
    steps: [
      { fixture: ['-f', '--show', '--sizelimit', '1M', '{img1}'], save: 'dev1' },
      { run: ['-L', '-f', '--show', '-o', '1M', '{img1}'] },
      { run: ['-L', '-f', '--show', '-o', '2M', '--sizelimit', '1M', '{img1}'] },
      { run: ['-L', '-f', '--show', '-o', '512K', '{img1}'] },
    ],
  },
  {
    name: '-L: new range ending before an existing offset',
    files,
    steps: [{ fixture: ['-f', '--show', '-o', '4M', '{img1}'] }, { run: ['-L', '-f', '--show', '--sizelimit', '4M', '{img1}'] }, { run: ['-L', '-f', '--show', '--sizelimit', '5M', '{img1}'] }],
  },
  { name: '-L with an explicit device overlaps', files, freeDevices: 1, steps: [first, { run: ['-L', '{freedev}', '{img1}'] }] },
  { name: '-L read-only request re-uses a read-write device', files, steps: [first, { run: ['-L', '-f', '--show', '-r', '{img1}'] }] },
  {
    name: '-L read-write request on a read-only device',
    files,
    steps: [{ fixture: ['-r', '-f', '--show', '{img1}'] }, { run: ['-L', '-f', '--show', '{img1}'] }, { run: ['-L', '-r', '-f', '--show', '{img1}'] }],
  },
  { name: '-L with another file attaches a new device', files, steps: [first, { run: ['-L', '-f', '--show', '{img2}'] }] },
  { name: '-L with no existing device', files, steps: [{ run: ['-L', '-f', '--show', '{img1}'] }] },
  { name: '-L alone on a device is not setup', files, steps: [first, { run: ['-L', '{dev1}'] }] },
  { name: '-L re-use ignores --direct-io and -b', files, steps: [first, { run: ['-L', '--direct-io=on', '-b', '4096', '-f', '--show', '{img1}'] }] },
];

sideBySide('same-file-twice', scenarios);
