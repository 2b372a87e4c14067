// Detach (-d, several devices, failures) and set-capacity (-c).
// -D / --detach-all is deliberately absent: it would detach every device on the host. It is tested
// inside private instances only.
import { truncateSync } from 'node:fs';
import { sideBySide, type Scenario, type Step } from './harness.js';

const three = { img1: {}, img2: {}, img3: {} };
const attach3: Step[] = [
  { fixture: ['-f', '--show', '{img1}'], save: 'dev1' },
  { fixture: ['-f', '--show', '{img2}'], save: 'dev2' },
  { fixture: ['-f', '--show', '{img3}'], save: 'dev3' },
];

const scenarios: Scenario[] = [
  { name: '-d one device', files: three, steps: [...attach3, { run: ['-d', '{dev2}'] }, { observe: ['-a'] }] },
  { name: '--detach and --detach=', files: three, steps: [...attach3, { run: ['--detach', '{dev1}'] }, { run: ['--detach={dev3}'] }] },
  { name: '-d several devices', files: three, steps: [...attach3, { run: ['-d', '{dev1}', '{dev2}', '{dev3}'] }] },
  { name: '-d the same device twice', files: three, steps: [...attach3, { run: ['-d', '{dev1}'] }, { run: ['-d', '{dev1}'] }] },
  { name: '-d a device twice in one command', files: three, steps: [...attach3, { run: ['-d', '{dev1}', '{dev1}'] }] },
  { name: '-d an unused device', freeDevices: 2, steps: [{ run: ['-d', '{freedev}'] }, { run: ['-d', '{freedev}', '{freedev2}'] }] },
  { name: '-d a device that does not exist', steps: [{ run: ['-d', '/dev/nonexistent'] }, { run: ['-d', '/dev/loop250'] }] },
  { name: '-d a regular file', files: { img1: {} }, steps: [{ run: ['-d', '{img1}'] }, { run: ['-d', 'img1'] }] },
  { name: '-d a bare name is relative to cwd', freeDevices: 1, steps: [{ run: ['-d', '{freedev:name}'] }] },
  { name: '-d without argument', steps: [{ run: ['-d'] }] },
  {
    name: '-d: a bad later argument warns and continues',
    files: three,
    steps: [...attach3, { run: ['-d', '{dev1}', '/dev/nonexistent', '{dev2}', '{img3}'] }],
  },
  { name: '-d: a bad first argument aborts', files: three, steps: [...attach3, { run: ['-d', '/dev/nonexistent', '{dev1}'] }] },
  { name: '-d: unused device in the middle', files: three, freeDevices: 1, steps: [...attach3, { run: ['-d', '{dev1}', '{freedev}', '{dev2}'] }] },
  { name: '-O with -d is not rejected', files: three, steps: [...attach3, { run: ['-O', 'NAME', '-d', '{dev1}'] }, { run: ['-d', '{dev2}', '-O', 'NAME'] }] },
  { name: '-l with -d is mutually exclusive', files: three, steps: [...attach3, { run: ['-l', '-d', '{dev1}'] }, { run: ['-d', '{dev1}', '-a'] }] },
  { name: '-d with -f is mutually exclusive', files: three, steps: [...attach3, { run: ['-d', '{dev1}', '-f'] }] },
  { name: '-c on an attached device', files: three, steps: [...attach3, { run: ['-c', '{dev1}'] }, { run: ['--set-capacity', '{dev2}'] }, { run: ['--set-capacity={dev3}'] }] },
  {
    name: '-c after the backing file grew',
    files: { img1: { size: 4 * 1024 * 1024 } },
    steps: [
      { fixture: ['-f', '--show', '{img1}'], save: 'dev1' },
      { fs: 'grow img1 to 6 MiB', do: (ctx) => truncateSync(ctx.p('img1'), 6 * 1024 * 1024) },
      { run: ['-c', '{dev1}'] },
    ],
  },
  {
    name: '-c after the backing file shrank',
    files: { img1: { size: 4 * 1024 * 1024 } },
    steps: [
      { fixture: ['-f', '--show', '{img1}'], save: 'dev1' },
      { fs: 'shrink img1 to 1 MiB + 100 bytes', do: (ctx) => truncateSync(ctx.p('img1'), 1024 * 1024 + 100) },
      { run: ['-c', '{dev1}'] },
    ],
  },
  { name: '-c on an unused device', freeDevices: 1, steps: [{ run: ['-c', '{freedev}'] }] },
  { name: '-c on a device that does not exist', steps: [{ run: ['-c', '/dev/nonexist'] }] },
  { name: '-c without argument', steps: [{ run: ['-c'] }] },
  { name: '-c with two devices', files: three, steps: [...attach3, { run: ['-c', '{dev1}', '{dev2}'] }] },
  { name: '-c with -O', files: three, steps: [...attach3, { run: ['-c', '{dev1}', '-O', 'NAME'] }] },
];

sideBySide('detach', scenarios);
