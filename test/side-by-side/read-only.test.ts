// Read-only: -r/--read-only, -r outside setup, silent fallback to read-only on a read-only mount.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { sideBySide, type Scenario, type SideContext } from './harness.js';

function mountedAt(p: string): boolean {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[4] === p);
}

/** Make {dir}/rodir a read-only bind mount of itself (backing files there cannot be opened O_RDWR). */
const roBind = {
  fs: 'bind-mount {dir}/rodir read-only',
  do: (ctx: SideContext) => {
    const p = ctx.p('rodir');
    execFileSync('mount', ['--bind', p, p]);
    execFileSync('mount', ['-o', 'remount,bind,ro', p]);
  },
};
const unmountRo = (ctx: SideContext) => {
  const p = ctx.p('rodir');
  while (mountedAt(p)) execFileSync('umount', [p]);
};

const scenarios: Scenario[] = [
  { name: '-r --show -f', files: { img1: {} }, steps: [{ run: ['-r', '--show', '-f', '{img1}'] }, { observe: ['-l', '-O', 'NAME,RO,BACK-FILE'] }] },
  { name: '--read-only with a relative path', files: { img1: {} }, steps: [{ run: ['--read-only', '-f', '--show', 'img1'] }] },
  { name: '-r with an explicit device', files: { img1: {} }, freeDevices: 1, steps: [{ run: ['-r', '{freedev}', '{img1}'] }] },
  { name: '-r on a 100-byte file', files: { small: { size: 100 } }, steps: [{ run: ['-r', '-f', '--show', '{small}'] }] },
  {
    name: 'file mode 0444 (root still opens read-write)',
    files: { img1: { mode: 0o444 } },
    steps: [{ run: ['-f', '--show', '{img1}'] }],
  },
  {
    name: 'read-only mount: silent fallback to a read-only device',
    files: { 'rodir/img1': {} },
    steps: [roBind, { run: ['-f', '--show', '{rodir/img1}'] }, { run: ['-r', '-f', '--show', '{rodir/img1}'] }, { observe: ['-l', '-j', '{rodir/img1}'] }],
    cleanup: unmountRo,
  },
  {
    name: 'read-only mount with --direct-io',
    files: { 'rodir/img1': {} },
    steps: [roBind, { run: ['--direct-io=on', '-f', '--show', '{rodir/img1}'] }],
    cleanup: unmountRo,
  },
  {
    name: '-r outside setup',
    files: { img1: {} },
    steps: [{ fixture: ['-f', '--show', '{img1}'], save: 'dev1' }, { run: ['-r', '{dev1}'] }, { run: ['--read-only', '-a'] }, { run: ['-r', '-d', '{dev1}'] }],
  },
];

sideBySide('read-only', scenarios);
