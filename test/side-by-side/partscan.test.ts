// Partition scanning: -P/--partscan creates loopNpM partitions (visible in the harness's sysfs
// state lines as parts=[...]), PARTSCAN column, -P outside setup.
// Note: the kernel of the reference VMs has no partition parsers (CONFIG_MSDOS_PARTITION and
// CONFIG_EFI_PARTITION unset), so parts=[] there even with -P; where parsers exist the partition
// list is compared as well.
import { sideBySide, type Scenario } from './harness.js';

const scenarios: Scenario[] = [
  {
    name: '-P on an image with an MBR',
    files: { 'disk.img': { mbr: true } },
    steps: [{ run: ['-P', '-f', '--show', '{disk.img}'], save: 'd' }, { observe: ['-l', '-O', 'NAME,PARTSCAN,BACK-FILE', '{d}'] }],
  },
  { name: '--partscan after --show', files: { 'disk.img': { mbr: true } }, steps: [{ run: ['--show', '-f', '--partscan', '{disk.img}'] }] },
  { name: '-fP combined short options', files: { 'disk.img': { mbr: true } }, steps: [{ run: ['-fP', '--show', '{disk.img}'] }] },
  { name: 'no -P: no partitions', files: { 'disk.img': { mbr: true } }, steps: [{ run: ['-f', '--show', '{disk.img}'] }] },
  { name: '-P on an image without a partition table', files: { img1: {} }, steps: [{ run: ['-P', '-f', '--show', '{img1}'] }] },
  { name: '-P with an explicit device', files: { 'disk.img': { mbr: true } }, freeDevices: 1, steps: [{ run: ['-P', '{freedev}', '{disk.img}'] }] },
  {
    name: '-P with an offset that hides the MBR',
    files: { 'disk.img': { mbr: true } },
    steps: [{ run: ['-P', '-o', '512', '-f', '--show', '{disk.img}'] }],
  },
  {
    name: 'PARTSCAN column across devices',
    files: { 'disk.img': { mbr: true }, img1: {} },
    steps: [
      { fixture: ['-P', '-f', '--show', '{disk.img}'], save: 'd1' },
      { fixture: ['-f', '--show', '{img1}'], save: 'd2' },
      { run: ['-l', '-O', 'NAME,PARTSCAN'] },
      { run: ['-l', '-J', '-O', 'NAME,PARTSCAN', '{d1}'] },
    ],
  },
  {
    name: '-P outside setup',
    files: { img1: {} },
    steps: [{ fixture: ['-f', '--show', '{img1}'], save: 'dev1' }, { run: ['-P', '{dev1}'] }, { run: ['--partscan', '-l'] }],
  },
  {
    name: 'detach a partitioned device removes its partitions',
    files: { 'disk.img': { mbr: true } },
    steps: [{ fixture: ['-P', '-f', '--show', '{disk.img}'], save: 'd1' }, { run: ['-d', '{d1}'] }],
  },
];

sideBySide('partscan', scenarios);
