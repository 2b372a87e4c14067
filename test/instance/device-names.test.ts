// The names a container gives its instance's devices (src/instance/device-names.ts): read from
// the /dev/loopK links into the instance directory, and used by the scopes for every device
// they hand out and for relative operands, so that our losetup prints /dev/loopK as util-linux
// and busybox do in the same container. The OCI hook's side (the layout it makes) is tested
// with real podman in test/oci/podman.test.ts.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DeviceNames } from '../../src/instance/device-names.js';
import { LoopDevice } from '../../src/kernel/loop-device.js';
import { LocalInstance } from '../../src/instance/local-instance.js';
import { deviceNamesFor } from '../../src/instance/resolve.js';
import { containerLoopNames } from '../../src/oci/container-dev.js';
import { makeTempDir } from '../helpers/tmp.js';
import { instanceSkipReason, lines, minorOf, Sandbox, skipTitle } from './support.js';

describe('DeviceNames (links in a directory, no devices)', () => {
  let root: string;
  let dev: string;
  let inst: string;

  beforeEach(() => {
    root = makeTempDir('loopfs-names');
    dev = path.join(root, 'dev');
    inst = path.join(dev, 'loopfs');
    fs.mkdirSync(inst, { recursive: true });
  });
  afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

  const link = (name: string, target: string) => fs.symlinkSync(target, path.join(dev, name));

  it('maps each loopK link into the instance to its minor: relative or absolute targets; anything else is ignored', () => {
    link('loop0', 'loopfs/loop8');
    link('loop1', `${inst}/loop9`);
    link('loop2', 'elsewhere/loop3'); // not into the instance
    link('loop3', 'loopfs/sub/loop4'); // not directly in it
    link('loop4', 'loopfs/loop-control'); // not a device name
    link('loop-control', 'loopfs/loop-control');
    link('loopx', 'loopfs/loop10');
    fs.writeFileSync(path.join(dev, 'loop5'), ''); // not a link
    link('loop12', 'loopfs/loop8'); // a second name of loop8: the lower one wins
    const names = DeviceNames.read(inst, dev);
    expect(names.size).toBe(2);
    expect(names.pathOf(8)).toBe(`${dev}/loop0`);
    expect(names.pathOf(9)).toBe(`${dev}/loop1`);
    for (const m of [3, 4, 10, 12, 0]) expect(names.pathOf(m)).toBeNull();
    expect(names.operand('loop1')).toBe(`${dev}/loop1`);
    expect(names.operand('loop12')).toBeNull();
    expect(names.operand('loop2')).toBeNull();
  });

  it('reads the kernel minor of a /sys/block entry from its link when there are names, from its name when not', () => {
    link('loop0', 'loopfs/loop8');
    const sys = path.join(root, 'sys-block');
    fs.mkdirSync(sys);
    fs.symlinkSync('/sys/devices/virtual/block/loop8', path.join(sys, 'loop0')); // the hook's overlay
    fs.symlinkSync('../devices/virtual/block/loop7', path.join(sys, 'loop7')); // the kernel's own
    const names = DeviceNames.read(inst, dev);
    expect(names.sysBlockMinor('loop0', sys)).toBe(8);
    expect(names.sysBlockMinor('loop7', sys)).toBe(7);
    expect(names.sysBlockMinor('loop3', sys)).toBeNull();
    expect(DeviceNames.NONE.sysBlockMinor('loop0', sys)).toBe(0);
  });

  it('no links, or no directory: no names', () => {
    expect(DeviceNames.read(inst, dev)).toBe(DeviceNames.NONE);
    expect(DeviceNames.read(inst, path.join(root, 'missing'))).toBe(DeviceNames.NONE);
    expect(DeviceNames.NONE.pathOf(0)).toBeNull();
    expect(DeviceNames.NONE.operand('loop0')).toBeNull();
  });

  it('deviceNamesFor reads them only for the seeds\' /dev/loopfs', () => {
    link('loop0', '/dev/loopfs/loop8');
    expect(deviceNamesFor('/dev/loopfs', dev).pathOf(8)).toBe(`${dev}/loop0`);
    expect(deviceNamesFor('/dev/./loopfs', dev).pathOf(8)).toBe(`${dev}/loop0`);
    expect(deviceNamesFor(inst, dev)).toBe(DeviceNames.NONE);
  });

  it('the hook names the pool loop0, loop1, ... by ascending minor, whatever order it gets them in', () => {
    expect(containerLoopNames(['loop103', 'loop9', 'loop100', 'loop9', 'bad', 'loop1p1'])).toEqual([
      { name: 'loop0', node: 'loop9', minor: 9 },
      { name: 'loop1', node: 'loop100', minor: 100 },
      { name: 'loop2', node: 'loop103', minor: 103 },
    ]);
    expect(containerLoopNames([])).toEqual([]);
  });
});

const reason = instanceSkipReason('device names with real devices');

describe.skipIf(reason)(skipTitle('a local instance with container names (real devices)', reason), () => {
  let sb: Sandbox;
  beforeEach(() => {
    sb = new Sandbox('loopfs-names-dev');
  });
  afterEach(async () => {
    await sb.cleanup();
  });

  it('lists devices under their container names, a device without a link as DIR/loopN; a container name is an operand of the instance', async () => {
    const dir = sb.path('inst');
    await sb.create(dir);
    const a = await sb.losetup(['--instance', dir, '-f', '--show', sb.file('a.img')]);
    const b = await sb.losetup(['--instance', dir, '-f', '--show', sb.file('b.img')]);
    const [ma, mb] = [minorOf(lines(a.stdout)[0]), minorOf(lines(b.stdout)[0])];
    const dev = sb.path('dev');
    fs.mkdirSync(dev);
    fs.symlinkSync(`${dir}/loop${ma}`, path.join(dev, 'loop0'));
    const inst = LocalInstance.open(dir, sb.env, DeviceNames.read(dir, dev));
    try {
      const used = inst.usedDevices().map((d) => d.path).sort();
      expect(used).toEqual([`${dev}/loop0`, `${dir}/loop${mb}`].sort());
      expect(inst.devicePath('loop0')).toBe(`${dev}/loop0`);
      expect(inst.devicePath(`loop${mb}`)).toBe(`${dir}/loop${mb}`);
      expect(inst.contains(new LoopDevice(`${dev}/loop0`))).toBe(true);
    } finally {
      inst.close();
    }
  });
});
