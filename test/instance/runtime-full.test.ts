// Issue 16 (chaos soak): `losetup --instance DIR -f` with its runtime directory on a full
// filesystem. The claim of the new device cannot be written: the command fails with one
// util-linux-style line naming the claim file, and the device it had made (LOOP_CTL_ADD)
// is removed again, not left unbound and unclaimed on the host. The next-index hint is only
// a hint: it is written best-effort and never fails an attach.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { native } from '../../src/kernel/native.js';
import { instanceSkipReason, lines, MiB, Sandbox, skipTitle, text } from './support.js';

const reason = instanceSkipReason('full runtime dir tests');

/** Fill the filesystem under `dir`: big writes, then ever smaller ones, until not one byte fits. */
function fill(dir: string): void {
  const fd = fs.openSync(path.join(dir, 'fill'), 'w');
  try {
    for (let chunk = 64 * 1024; chunk >= 1; chunk = Math.floor(chunk / 4)) {
      try {
        for (;;) fs.writeSync(fd, Buffer.alloc(chunk));
      } catch {
        /* ENOSPC at this size */
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Remove loop index `minor` if it exists and is unbound (cleanup after a failure). */
function removeIndexIfPresent(minor: number): void {
  if (!fs.existsSync(`/sys/block/loop${minor}`)) return;
  const n = native();
  const fd = n.open('/dev/loop-control', n.constants.O_RDWR);
  try {
    n.ctlRemove(fd, minor);
  } catch {
    /* bound or busy: the sandbox cleanup reports a bound device */
  } finally {
    n.close(fd);
  }
}

describe.skipIf(reason)(skipTitle('runtime dir full', reason), () => {
  let sb: Sandbox;
  // an index far above the machine's devices, unique to this run: the hint sends the new
  // device there, so whether it stayed behind is seen without counting anybody's devices
  const hinted = 40000 + Math.floor(Math.random() * 10000);
  beforeEach(() => {
    sb = new Sandbox('loopfs-rtfull');
  });
  afterEach(async () => {
    removeIndexIfPresent(hinted);
    await sb.cleanup();
  });

  it('an attach that cannot write its claim fails with one line naming the claim file and leaves no device, claim or record', async () => {
    const run = sb.path('run-full');
    fs.mkdirSync(run);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k,mode=0755', 'loopfs-rtfull', run]);
    const env = { LOOPFS_RUNTIME_DIR: run };
    const dir = sb.path('inst');
    const c = await sb.loopfs(['instance', 'create', dir, '--max', '4'], { env });
    expect(text(c.stderr)).toBe('');
    expect(c.exitCode).toBe(0);
    fs.writeFileSync(path.join(run, 'next-index'), `${String(hinted).padStart(10, '0')} 064\n`);
    const file = sb.file('disk.img', MiB);
    fill(run);

    const r = await sb.losetup(['--instance', dir, '-f', '--show', file], { env });
    expect(lines(r.stderr)).toEqual([`losetup: ${run}/claims/loop${hinted}: No space left on device`]);
    expect(text(r.stdout)).toBe('');
    expect(r.exitCode).toBe(1);
    // the device made for the attach went again; nothing of it is bound, claimed or recorded
    expect(fs.existsSync(`/sys/block/loop${hinted}`)).toBe(false);
    expect(sb.bound()).toEqual([]);
    expect(fs.readdirSync(path.join(run, 'claims'))).toEqual([]);
    expect(sb.state(dir)?.devices).toEqual({});

    // space again: the same command works, nothing of the failed one in its way
    fs.rmSync(path.join(run, 'fill'));
    const ok = await sb.losetup(['--instance', dir, '-f', '--show', file], { env });
    expect(text(ok.stderr)).toBe('');
    expect(ok.exitCode).toBe(0);
    expect(lines(ok.stdout)).toEqual([expect.stringMatching(new RegExp(`^${dir}/loop\\d+$`))]);
    const d = await sb.loopfs(['instance', 'destroy', dir], { env });
    expect(d.exitCode).toBe(0);
    expect(sb.bound()).toEqual([]);
  });

  it('a next-index hint that cannot be written does not fail the attach', async () => {
    const run = sb.path('run-full');
    fs.mkdirSync(run);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k,mode=0755', 'loopfs-rtfull', run]);
    const env = { LOOPFS_RUNTIME_DIR: run };
    const dir = sb.path('inst');
    expect((await sb.loopfs(['instance', 'create', dir, '--max', '4'], { env })).exitCode).toBe(0);
    // claims and the uid index ready; the hint file absent, so writing it needs a new page
    fs.mkdirSync(path.join(run, 'uids', '0'), { recursive: true });
    fs.rmSync(path.join(run, 'next-index'), { force: true });
    const file = sb.file('disk.img', MiB);
    // room for the claim (one page) but not for the hint as well: a page-sized reserve,
    // filled, then given back
    fs.writeFileSync(path.join(run, 'reserve'), Buffer.alloc(4096));
    fill(run);
    fs.rmSync(path.join(run, 'reserve'));
    const r = await sb.losetup(['--instance', dir, '-f', '--show', file], { env });
    expect(text(r.stderr)).toBe('');
    expect(r.exitCode).toBe(0);
    const dev = text(r.stdout).trim();
    expect(dev).toMatch(new RegExp(`^${dir}/loop\\d+$`));
    const minor = Number(dev.slice(dev.lastIndexOf('loop') + 4));
    expect(fs.readdirSync(path.join(run, 'claims'))).toEqual([`loop${minor}`]);
    fs.rmSync(path.join(run, 'fill'));
    expect((await sb.loopfs(['instance', 'destroy', dir], { env })).exitCode).toBe(0);
    expect(sb.bound()).toEqual([]);
  });
});
