// Error cases of the compat doc not covered by a more specific theme: missing file, directory,
// busy/unused/nonexistent devices, bad numbers, unknown columns, mutually exclusive options,
// setup-only options, "no loop device specified".
// (-D is never run on the host, not even in an exclusion check.)
import { sideBySide, type Scenario, type Step } from './harness.js';

const withDev: Step = { fixture: ['-f', '--show', '{img1}'], save: 'dev1' };
const files = { img1: {}, img2: {}, d: { dir: true } };
const err = (name: string, ...runs: string[][]): Scenario => ({ name, files, freeDevices: 1, steps: [withDev, ...runs.map((run) => ({ run }))] });

const scenarios: Scenario[] = [
  err('missing backing file', ['-f', '--show', '{dir}/nonexist'], ['{freedev}', 'nonexist']),
  err('directory as backing file', ['-f', '{d}'], ['--show', '-f', 'd']),
  err('busy device', ['{dev1}', '{img2}']),
  err('unused device', ['{freedev}'], ['-c', '{freedev}'], ['-d', '{freedev}']),
  err('device that does not exist', ['/dev/loop250'], ['-l', '/dev/loop250'], ['-d', '/dev/nonexistent'], ['-c', '/dev/nonexistent'], ['/dev/nonexistent']),
  err('-d on a detached device', ['-d', '{dev1}'], ['-d', '{dev1}']),
  err('bad numbers', ['-o', 'abc', '-f', '{img1}'], ['--sizelimit', 'xyz', '-f', '{img1}'], ['-b', 'abc', '-f', '{img1}'], ['-o', '1.5', '-f', '{img1}']),
  err('unknown column', ['-O', 'BOGUS'], ['-l', '-O', 'NAME,BOGUS', '{dev1}'], ['-l', '-O', ''], ['-l', '-O', 'NAME,,RO'], ['--output', 'name,bogus,ro']),
  err(
    'mutually exclusive arguments',
    ['-a', '-d', '{dev1}'],
    ['-a', '-f'],
    ['-a', '-j', '{img1}'],
    ['-l', '-d', '{dev1}'],
    ['-l', '-f'],
    ['-c', '{dev1}', '-f'],
    ['-J', '--raw'],
    ['--raw', '-J', '-l'],
    ['-a', '-c', '{dev1}'],
  ),
  err(
    'options allowed during setup only',
    ['-r', '{dev1}'],
    ['--sizelimit', '4096', '{dev1}'],
    ['-P', '{dev1}'],
    ['--show', '{dev1}'],
    ['-P', '-a'],
    ['--show', '-l'],
  ),
  err('offset not allowed in this context', ['-o', '512', '{dev1}'], ['-a', '-o', '512'], ['-c', '{dev1}', '-o', '512']),
  err('no loop device specified', ['-n'], ['-J', '-n'], ['--raw', '-n'], ['-v'], ['-L'], ['-J', '--output-all'], ['--output-all']),
  err('no file specified / lone setup flags on a device', ['-L', '{dev1}'], ['-v', '{dev1}'], ['-L', '{freedev}']),
  err('-f with -j', ['-f', '-j', '{img1}']),
  err('-j with several files', ['-j', '{img1}', '{img2}']),
];

sideBySide('errors', scenarios);
