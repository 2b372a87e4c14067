// Setup on an explicitly named device: losetup <loopdev> <file>.
// Only devices that already exist are named ({freedev} = the highest-numbered free ones): naming
// a missing /dev/loopN would make losetup create it with LOOP_CTL_ADD on the host.
import { sideBySide, type Scenario } from './harness.js';

const scenarios: Scenario[] = [
  {
    name: '<loopdev> <file> is silent',
    files: { img1: {} },
    freeDevices: 1,
    steps: [{ run: ['{freedev}', '{img1}'] }, { observe: ['{freedev}'] }, { observe: ['-l', '--output-all', '{freedev}'] }],
  },
  { name: '--show with an explicit device', files: { img1: {} }, freeDevices: 1, steps: [{ run: ['--show', '{freedev}', '{img1}'] }] },
  { name: 'extra argument is silently ignored', files: { img1: {}, img2: {} }, freeDevices: 1, steps: [{ run: ['{freedev}', '{img1}', '{img2}'] }] },
  { name: 'bare device name (loopN) means /dev/loopN', files: { img1: {} }, freeDevices: 1, steps: [{ run: ['{freedev:name}', 'img1'] }] },
  {
    name: 'busy device',
    files: { img1: {}, img2: {} },
    steps: [{ fixture: ['-f', '--show', '{img1}'], save: 'dev1' }, { run: ['{dev1}', '{img2}'] }, { run: ['--show', '{dev1}', '{img1}'] }],
  },
  { name: 'missing backing file', freeDevices: 1, steps: [{ run: ['{freedev}', '{dir}/nonexist'] }] },
  { name: 'directory as backing file', files: { d: { dir: true } }, freeDevices: 1, steps: [{ run: ['{freedev}', '{d}'] }] },
  { name: 'unused loop device as backing file', freeDevices: 2, steps: [{ run: ['{freedev}', '{freedev2}'] }] },
  { name: '-l with two arguments sets up (util-linux quirk)', freeDevices: 2, files: { img1: {} }, steps: [{ run: ['-l', '{freedev}', '{img1}'] }, { run: ['-l', '{freedev2}', '{freedev}'] }] },
  { name: 'a non-loop block-device path as device', files: { img1: {} }, steps: [{ run: ['/dev/nonexistent', '{img1}'] }, { run: ['{img1}', '{img1}'] }] },
  { name: '100-byte file on an explicit device', files: { small: { size: 100 } }, freeDevices: 1, steps: [{ run: ['{freedev}', '{small}'] }] },
  {
    name: '-f together with an explicit device argument',
    files: { img1: {} },
    freeDevices: 1,
    steps: [{ run: ['-f', '{freedev}', '{img1}'] }, { run: ['-f', '--show', '{freedev}'] }],
  },
];

sideBySide('explicit-device', scenarios);
