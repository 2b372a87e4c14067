// Setup / attach with -f: --show, relative and symlinked paths, size warnings, bad backing files.
import { sideBySide, type Scenario } from './harness.js';

const scenarios: Scenario[] = [
  { name: '-f prints the first free device and attaches nothing', steps: [{ run: ['-f'] }, { run: ['--find'] }] },
  {
    name: '-f skips devices in use',
    files: { img1: {}, img2: {} },
    steps: [{ fixture: ['-f', '--show', '{img1}'] }, { fixture: ['-f', '--show', '{img2}'] }, { run: ['-f'] }],
  },
  {
    name: '-f --show attaches and prints the device',
    files: { img1: {} },
    steps: [{ run: ['-f', '--show', '{img1}'], save: 'd' }, { observe: ['-a'] }, { observe: ['-l', '--output-all', '{d}'] }],
  },
  { name: '-f without --show is silent', files: { img1: {} }, steps: [{ run: ['-f', '{img1}'] }, { observe: ['-j', '{img1}'] }] },
  { name: '--find --show long forms', files: { img1: {} }, steps: [{ run: ['--find', '--show', '{img1}'] }] },
  { name: '--show before -f', files: { img1: {} }, steps: [{ run: ['--show', '-f', '{img1}'] }] },
  {
    name: 'relative paths are canonicalised',
    files: { 'sub/img1': {}, img2: {} },
    steps: [{ run: ['-f', '--show', 'sub/../sub/img1'] }, { run: ['-f', '--show', './img2'] }, { observe: ['-a'] }],
  },
  {
    name: 'symlink resolves to its target',
    files: { img1: {}, link: { symlink: 'img1' }, abslink: { symlink: '/nonexistent-target' } },
    steps: [{ run: ['-f', '--show', 'link'] }, { run: ['-f', '--show', '{abslink}'] }, { observe: ['-l', '-j', '{img1}'] }],
  },
  { name: '-v is accepted and ignored', files: { img1: {} }, steps: [{ run: ['-v', '-f'] }, { run: ['--verbose', '-f', '--show', '{img1}'] }] },
  {
    name: 'three setups in a row take consecutive devices',
    files: { img1: {}, img2: {}, img3: {} },
    steps: [{ run: ['-f', '--show', '{img1}'] }, { run: ['-f', '--show', '{img2}'] }, { run: ['-f', '--show', '{img3}'] }],
  },
  { name: '-f with two files: unexpected arguments', files: { img1: {}, img2: {} }, steps: [{ run: ['-f', '{img1}', '{img2}'] }] },
  { name: '--show alone: no loop device specified', steps: [{ run: ['--show'] }] },
  {
    name: 'missing backing file',
    steps: [{ run: ['-f', '--show', '{dir}/nonexist'] }, { run: ['-f', 'nonexist'] }, { run: ['-f', '--show', '-'] }],
  },
  { name: 'empty backing file name', steps: [{ run: ['-f', '--show', ''] }] },
  { name: 'directory as backing file', files: { d: { dir: true } }, steps: [{ run: ['-f', '--show', '{d}'] }, { run: ['-f', 'd'] }] },
  { name: '/dev/null as backing file', steps: [{ run: ['-f', '--show', '/dev/null'] }] },
  { name: 'file of 100 bytes: smaller-than-512 warning', files: { small: { size: 100 } }, steps: [{ run: ['-f', '--show', '{small}'] }, { run: ['-f', 'small'] }] },
  { name: 'file of 3000 bytes: does-not-fit warning', files: { odd: { size: 3000 } }, steps: [{ run: ['-f', '--show', '{odd}'] }, { run: ['-f', 'odd'] }] },
  { name: 'empty file (0 bytes)', files: { empty: { size: 0 } }, steps: [{ run: ['-f', '--show', '{empty}'] }] },
  { name: 'file of exactly 512 bytes: no warning', files: { one: { size: 512 } }, steps: [{ run: ['-f', '--show', '{one}'] }] },
  {
    name: 'file with data is exposed unchanged',
    files: { data: { content: 'loopfs side-by-side\n', size: 1024 * 1024 } },
    steps: [{ run: ['--show', '-f', '{data}'] }, { observe: ['-l', '-O', 'NAME,SIZELIMIT,OFFSET,BACK-FILE'] }],
  },
  {
    name: 'a loop device as backing file (no size warnings for block devices)',
    files: { small: { size: 1536 } },
    steps: [{ fixture: ['-f', '--show', '{small}'], save: 'dev1' }, { run: ['-f', '--show', '{dev1}'] }, { observe: ['-j', '{dev1}'] }],
  },
  { name: 'an unused loop device as backing file', freeDevices: 1, steps: [{ run: ['-f', '--show', '{freedev}'] }] },
];

sideBySide('setup', scenarios);
