// Issue 4, `loopfs instance destroy DIR [--force]`: detaches and removes the instance's devices and
// the instance; refuses with one clear line while a device is mounted, unless --force, which
// detaches lazily (the kernel frees the device at the last unmount); a later gc removes it.
//
// The mount lives in a private mount namespace (a background `unshare -m` holding it), so the host's
// mount table never changes; destroy runs on the host, where /proc/self/mountinfo cannot see that
// mount, and still has to notice it. Cleanup unmounts (nsenter) and ends the holder in finally.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isBound, readLoopState } from '../helpers/devices.js';
import { instanceSkipReason, loopEntries, LOOPFS, MiB, minorOf, Sandbox, skipTitle, sleep, text } from './support.js';

const reason =
  instanceSkipReason('instance destroy tests') ??
  (['/usr/sbin/mkfs.ext4', '/usr/bin/unshare', '/usr/bin/nsenter'].find((p) => !fs.existsSync(p)) ?? undefined)?.concat(' missing');

/** A process in its own mount namespace that mounts DEV on MNT and keeps the namespace alive. */
class NamespacedMount {
  private child: ChildProcess | null = null;
  pid = 0;

  async start(dev: string, mnt: string): Promise<void> {
    const child = spawn('/usr/bin/unshare', ['-m', '--propagation', 'private', 'sh', '-c', `mount "$0" "$1" && echo mounted && exec sleep 600`, dev, mnt], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    let out = '';
    let err = '';
    child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`mount in a namespace timed out: ${err}`)), 20_000);
      child.stdout!.on('data', (b: Buffer) => {
        out += b.toString();
        if (out.includes('mounted')) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`mount in a namespace failed (${code}): ${err}`));
      });
    });
    this.pid = child.pid!;
  }

  /** Run a command inside the namespace. */
  exec(cmd: string, args: string[], env?: NodeJS.ProcessEnv): { status: number | null; stdout: string; stderr: string } {
    try {
      const stdout = execFileSync('/usr/bin/nsenter', ['-t', String(this.pid), '-m', cmd, ...args], { encoding: 'utf8', env, stdio: ['ignore', 'pipe', 'pipe'] });
      return { status: 0, stdout, stderr: '' };
    } catch (e) {
      const x = e as { status: number | null; stdout: string; stderr: string };
      return { status: x.status, stdout: x.stdout, stderr: x.stderr };
    }
  }

  /** Unmount and end the namespace (idempotent). */
  async stop(mnt: string): Promise<void> {
    if (!this.child) return;
    if (this.child.exitCode === null) {
      this.exec('umount', [mnt]);
      const exited = new Promise((r) => this.child!.once('exit', r));
      this.child.kill('SIGKILL');
      await exited;
    }
    this.child = null;
  }
}

describe.skipIf(reason)(skipTitle('instance destroy', reason), () => {
  let sb: Sandbox;
  let ns: NamespacedMount;
  let mnt: string;
  beforeEach(() => {
    sb = new Sandbox('loopfs-destroy');
    ns = new NamespacedMount();
    mnt = sb.path('mnt');
    fs.mkdirSync(mnt);
  });
  afterEach(async () => {
    try {
      await ns.stop(mnt);
    } finally {
      await sb.cleanup();
    }
  });

  it('removes every device, node, state, claim and registry entry of an idle instance', async () => {
    const dir = sb.path('i');
    await sb.create(dir, ['--pool', '2']);
    const fa = sb.file('a.img');
    const a = minorOf(text((await sb.losetup(['--instance', dir, '-f', '--show', fa])).stdout).trim());
    const idle = minorOf(text((await sb.losetup(['--instance', dir, '-f'])).stdout).trim());
    const r = await sb.loopfs(['instance', 'destroy', dir, '--json']);
    expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
    const res = JSON.parse(text(r.stdout));
    expect(res.removed.sort()).toEqual([a, idle].sort());
    expect(res.deferred).toEqual([]);
    expect(fs.readdirSync(dir)).toEqual([]);
    expect(sb.claims()).toEqual([]);
    expect(sb.registry()).toEqual([]);
    expect(sb.bound()).toEqual([]);
    expect(readLoopState(`loop${a}`)?.backingFile).not.toBe(fa);
    // DIR can become an instance again
    await sb.create(dir);
  });

  it('destroys several DIRs in one call, in turn: one that is no instance prints its line, the others are still destroyed, exit 1', async () => {
    const [d1, d2, none] = [sb.path('j1'), sb.path('j2'), sb.path('none')];
    fs.mkdirSync(none);
    await sb.create(d1);
    await sb.create(d2);
    const [f1, f2] = [sb.file('j1.img'), sb.file('j2.img')];
    const m1 = minorOf(text((await sb.losetup(['--instance', d1, '-f', '--show', f1])).stdout).trim());
    const m2 = minorOf(text((await sb.losetup(['--instance', d2, '-f', '--show', f2])).stdout).trim());
    const ids = [sb.state(d1)!.id, sb.state(d2)!.id];
    // bin/loopfs's fast path (no oclif): DIRs and --force only
    const r = await sb.loopfs(['instance', 'destroy', d1, none, d2]);
    expect([r.exitCode, text(r.stderr)]).toEqual([1, `loopfs: ${none}: not a loop device instance\n`]);
    expect(text(r.stdout)).toBe(`destroyed instance ${ids[0]}: 1 device(s) removed\ndestroyed instance ${ids[1]}: 1 device(s) removed\n`);
    expect([fs.readdirSync(d1), fs.readdirSync(d2)]).toEqual([[], []]);
    expect(sb.claims()).toEqual([]);
    expect(sb.registry()).toEqual([]);
    expect(sb.bound()).toEqual([]);
    expect([readLoopState(`loop${m1}`)?.backingFile, readLoopState(`loop${m2}`)?.backingFile]).not.toContain(f1);
    expect([readLoopState(`loop${m1}`)?.backingFile, readLoopState(`loop${m2}`)?.backingFile]).not.toContain(f2);
  });

  it('--json (through oclif) gives one object for one DIR and an array for several', async () => {
    const [d1, d2] = [sb.path('k1'), sb.path('k2')];
    await sb.create(d1);
    await sb.create(d2);
    const m1 = minorOf(text((await sb.losetup(['--instance', d1, '-f', '--show', sb.file('k1.img')])).stdout).trim());
    const ids = [sb.state(d1)!.id, sb.state(d2)!.id];
    const r = await sb.loopfs(['instance', 'destroy', '--json', d1, d2]);
    expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
    expect(JSON.parse(text(r.stdout))).toEqual([
      { dir: d1, id: ids[0], removed: [m1], deferred: [] },
      { dir: d2, id: ids[1], removed: [], deferred: [] },
    ]);
    await sb.create(d1);
    const again = sb.state(d1)!.id;
    const one = await sb.loopfs(['instance', 'destroy', d1, '--json']);
    expect([one.exitCode, JSON.parse(text(one.stdout))]).toEqual([0, { dir: d1, id: again, removed: [], deferred: [] }]);
  });

  it('refuses while a device is mounted (also in another mount namespace); --force detaches lazily; gc removes it after umount', async () => {
    const dir = sb.path('i');
    await sb.create(dir, ['--owner', '1234:1234']);
    const img = sb.file('fs.img', 16 * MiB);
    execFileSync('/usr/sbin/mkfs.ext4', ['-q', '-F', img], { stdio: 'ignore' });
    const other = sb.file('other.img');
    const rm = await sb.losetup(['--instance', dir, '-f', '--show', img]);
    expect([rm.exitCode, text(rm.stderr)]).toEqual([0, '']);
    const node = text(rm.stdout).trim();
    const m = minorOf(node);
    const o = minorOf(text((await sb.losetup(['--instance', dir, '-f', '--show', other])).stdout).trim());
    await ns.start(node, mnt);
    const stateBefore = JSON.stringify(sb.state(dir));

    // host namespace: the mount is invisible in its mountinfo, still refused
    const r1 = await sb.loopfs(['instance', 'destroy', dir]);
    expect([r1.exitCode, text(r1.stdout)]).toEqual([1, '']);
    expect(text(r1.stderr)).toBe(`loopfs: ${dir}: ${node} is in use (mounted in another mount namespace?) (use --force to detach lazily)\n`);
    // inside the namespace the mount point is named
    const r2 = ns.exec(LOOPFS, ['instance', 'destroy', dir], sb.env);
    expect(r2.status).toBe(1);
    expect(r2.stderr).toBe(`loopfs: ${dir}: ${node} is mounted on ${mnt} (use --force to detach lazily)\n`);
    // nothing changed
    expect(JSON.stringify(sb.state(dir))).toBe(stateBefore);
    expect(readLoopState(`loop${m}`)?.backingFile).toBe(img);
    expect(readLoopState(`loop${o}`)?.backingFile).toBe(other);
    expect(loopEntries(dir).sort()).toEqual([`loop${m}`, `loop${o}`].sort());

    // --force: the unmounted device goes at once, the mounted one is detached lazily
    const r3 = await sb.loopfs(['instance', 'destroy', dir, '--force', '--json']);
    expect([r3.exitCode, text(r3.stderr)]).toEqual([0, '']);
    expect(JSON.parse(text(r3.stdout))).toMatchObject({ dir, removed: [o], deferred: [m] });
    expect(fs.readdirSync(dir)).toEqual([]);
    expect(sb.registry()).toEqual([]);
    expect(readLoopState(`loop${m}`)).toMatchObject({ backingFile: img, autoclear: '1' });
    // the mount still works (lazy detach)
    expect(ns.exec('ls', [mnt]).stdout).toContain('lost+found');
    // the claim stays until the device is really gone: no other instance can take it
    expect(sb.claims()).toEqual([expect.objectContaining({ minor: m, cleared: true })]);

    // gc while still mounted: pending, and the device is not touched again
    const g1 = JSON.parse(text((await sb.loopfs(['instance', 'gc', '--json'])).stdout));
    expect(g1.fixes).toEqual([]);
    expect(g1.pending).toEqual([{ dir, minor: m, action: 'device of a vanished instance is still in use' }]);
    expect(readLoopState(`loop${m}`)?.backingFile).toBe(img);

    // umount: autoclear frees the device; gc removes it and drops the claim
    await ns.stop(mnt);
    for (let i = 0; i < 250 && readLoopState(`loop${m}`)?.backingFile === img; i++) await sleep(20);
    expect(readLoopState(`loop${m}`)?.backingFile).not.toBe(img);
    const g2 = JSON.parse(text((await sb.loopfs(['instance', 'gc', '--json'])).stdout));
    if (isBound(`loop${m}`)) {
      // somebody bound the freed index meanwhile: theirs now, so gc waits (and never detaches it)
      expect(g2.pending).toHaveLength(1);
    } else {
      expect(g2.fixes).toEqual([{ dir, minor: m, action: 'removed device of a vanished instance' }]);
      expect(sb.claims()).toEqual([]);
    }
    expect(sb.bound()).toEqual([]);
  });
});
