// A device whose backing file was deleted: the kernel appends " (deleted)" to the sysfs name.
import { unlinkSync, writeFileSync } from 'node:fs';
import { sideBySide, type Scenario, type Step } from './harness.js';

const attachAndDelete: Step[] = [
  { fixture: ['-f', '--show', '{del.img}'], save: 'dev1' },
  { fs: 'delete del.img', do: (ctx) => unlinkSync(ctx.p('del.img')) },
];
const files = { 'del.img': {}, other: {} };

const scenarios: Scenario[] = [
  {
    name: 'listing a deleted backing file',
    files,
    steps: [
      ...attachAndDelete,
      { run: ['-a'] },
      { run: ['{dev1}'] },
      { run: ['-l'] },
      { run: ['-l', '--raw'] },
      { run: ['-l', '-J', '{dev1}'] },
      { run: ['-l', '-O', 'NAME,BACK-FILE,BACK-INO', '{dev1}'] },
    ],
  },
  { name: '-j on the deleted path', files, steps: [...attachAndDelete, { run: ['-j', '{del.img}'] }, { run: ['-j', 'del.img'] }] },
  {
    name: 'a new file at the deleted path',
    files,
    steps: [
      ...attachAndDelete,
      { fs: 'recreate del.img', do: (ctx) => writeFileSync(ctx.p('del.img'), Buffer.alloc(4096)) },
      { run: ['-j', '{del.img}'] },
      { run: ['-L', '-f', '--show', '{del.img}'] },
    ],
  },
  { name: '-c and -d on a deleted backing file', files, steps: [...attachAndDelete, { run: ['-c', '{dev1}'] }, { run: ['-d', '{dev1}'] }] },
  { name: 'a deleted file among other devices', files, steps: [{ fixture: ['-f', '--show', '{other}'] }, ...attachAndDelete, { run: ['-l', '--output-all'] }] },
];

sideBySide('deleted', scenarios);
