// A release never takes a device somebody bound after it was found idle (issue 16: the chaos
// soak saw a view's util-linux lose the device it had just been given). An idle device's node
// stays published until the release unlinks it, so a stock tool may bind it in between; the
// release holds the device exclusively while it looks and unlinks (src/kernel/bind-guard.ts),
// and a device found bound stays held, published and bound. In-process LocalInstance on a real
// instance; devices: only the sandbox's (Sandbox.cleanup).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LocalInstance } from '../../src/instance/local-instance.js';
import { readLoopState } from '../helpers/devices.js';
import { REF_LOSETUP } from '../helpers/env.js';
import { instanceSkipReason, minorOf, Sandbox, skipTitle, text } from './support.js';

const reason = instanceSkipReason('release guard tests');

describe.skipIf(reason)(skipTitle('release of an idle device', reason), () => {
  let sb: Sandbox;
  beforeEach(() => {
    sb = new Sandbox('loopfs-relguard');
  });
  afterEach(async () => {
    await sb.cleanup();
  });

  /** An idle device of a new instance (`losetup -f` without a file reserves one). */
  async function idleDevice(dir: string): Promise<number> {
    await sb.create(dir);
    const r = await sb.losetup(['--instance', dir, '-f']);
    expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
    const minor = minorOf(text(r.stdout).trim());
    expect(readLoopState(`loop${minor}`)).toBeUndefined();
    return minor;
  }

  function release(dir: string, minor: number, waitMs = 0): boolean {
    const inst = LocalInstance.open(dir, sb.env);
    try {
      inst.lock();
      try {
        return inst.release(minor, waitMs);
      } finally {
        inst.unlock();
      }
    } finally {
      inst.close();
    }
  }

  it('bound through its published node after the idle look: the release leaves it held, published and bound', async () => {
    const dir = sb.path('inst');
    const minor = await idleDevice(dir);
    const file = sb.file('a.img');
    // what a stock tool does with the node it found unbound
    execFileSync(REF_LOSETUP, [`${dir}/loop${minor}`, file]);
    expect(release(dir, minor)).toBe(false);
    expect(sb.state(dir)!.devices).toEqual({ [minor]: { state: 'held' } });
    expect(fs.statSync(`${dir}/loop${minor}`).isBlockDevice()).toBe(true);
    expect(readLoopState(`loop${minor}`)?.backingFile).toBe(file);
    // the tool detaches through the same node, and then the device may leave
    execFileSync(REF_LOSETUP, ['-d', `${dir}/loop${minor}`]);
    expect(release(dir, minor, 2000)).toBe(true);
    expect(sb.state(dir)!.devices).toEqual({});
    expect(fs.existsSync(`${dir}/loop${minor}`)).toBe(false);
    expect(fs.existsSync(`/sys/block/loop${minor}`)).toBe(false);
    expect(sb.claims()).toEqual([]);
  });

  it('unbound and idle: it leaves the instance, its node and its claim go', async () => {
    const dir = sb.path('inst');
    const minor = await idleDevice(dir);
    expect(release(dir, minor)).toBe(true);
    expect(sb.state(dir)!.devices).toEqual({});
    expect(fs.existsSync(`${dir}/loop${minor}`)).toBe(false);
    expect(sb.claims()).toEqual([]);
  });
});
