// Symlink safety: an instance directory may belong to an untrusted owner, who can put a symlink
// (or their own directory) wherever our tools write, chown or chmod. Nothing outside may ever be
// written, chowned or chmodded through one: every operation works through the pinned directory fd
// and never follows a symlink in the last component (pinned-dir.ts).
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readLoopState } from '../helpers/devices.js';
import { instanceSkipReason, loopEntries, minorOf, nodeInfo, Sandbox, skipTitle, text } from './support.js';

const reason = instanceSkipReason('instance symlink-safety tests');

/** Everything about a file that a write, chown or chmod would change. */
function fingerprint(p: string): string {
  const st = fs.lstatSync(p);
  const content = st.isFile() ? fs.readFileSync(p, 'utf8') : st.isDirectory() ? fs.readdirSync(p).sort().join(',') : '';
  return JSON.stringify({ mode: st.mode, uid: st.uid, gid: st.gid, size: st.size, mtime: st.mtimeMs, ino: st.ino, content });
}

describe.skipIf(reason)(skipTitle('instance symlink safety', reason), () => {
  let sb: Sandbox;
  let outside: string;
  let outsideDir: string;
  beforeEach(() => {
    sb = new Sandbox('loopfs-pinned');
    // root's files outside the instance: what an attacker would like to overwrite or chown
    outside = sb.path('outside.txt');
    fs.writeFileSync(outside, 'root only\n');
    fs.chmodSync(outside, 0o600);
    outsideDir = sb.path('outside-dir');
    fs.mkdirSync(outsideDir, { mode: 0o700 });
  });
  afterEach(async () => {
    await sb.cleanup();
  });

  it('state.json replaced by a symlink: every command refuses with one line; nothing outside is written', async () => {
    const dir = sb.path('i');
    await sb.create(dir, ['--owner', '1234:1234']);
    const file = sb.file('a.img');
    const m = minorOf(text((await sb.losetup(['--instance', dir, '-f', '--show', file])).stdout).trim());
    const before = fingerprint(outside);
    const state = path.join(dir, '.loopfs', 'state.json');
    fs.renameSync(state, `${state}.saved`);
    fs.symlinkSync(outside, state);
    const runs = [
      await sb.losetup(['--instance', dir, '-f', '--show', sb.file('b.img')]),
      await sb.losetup(['--instance', dir, '-a']),
      await sb.losetup(['--instance', dir, '-d', `${dir}/loop${m}`]),
      await sb.losetup(['--instance', dir, '-D']),
      await sb.loopfs(['instance', 'destroy', dir, '--force']),
      await sb.loopfs(['instance', 'show', dir]),
    ];
    for (const r of runs) {
      expect(r.exitCode).toBe(1);
      expect(text(r.stderr).split('\n').filter(Boolean)).toHaveLength(1);
    }
    expect(text(runs[0].stderr)).toBe(`losetup: ${state}: Too many levels of symbolic links\n`);
    // gc leaves an instance whose state it cannot read alone (pending), and writes nothing
    const gc = await sb.loopfs(['instance', 'gc', '--json']);
    expect(gc.exitCode).toBe(0);
    expect(JSON.parse(text(gc.stdout)).pending).toEqual([{ dir, minor: null, action: 'instance state cannot be read; left alone' }]);
    expect(fingerprint(outside)).toBe(before);
    expect(fs.lstatSync(state).isSymbolicLink()).toBe(true);
    // the device was neither detached nor handed out
    expect(readLoopState(`loop${m}`)?.backingFile).toBe(file);
    expect(sb.bound()).toHaveLength(1);
    // put the real state back: the instance works again
    fs.unlinkSync(state);
    fs.renameSync(`${state}.saved`, state);
    expect(text((await sb.losetup(['--instance', dir, '-a'])).stdout)).toContain(`${dir}/loop${m}: `);
  });

  it('device nodes replaced by symlinks to outside files: never chowned, chmodded or written through', async () => {
    const dir = sb.path('i');
    await sb.create(dir, ['--owner', '1234:1234', '--mode', '0666']);
    const fa = sb.file('a.img');
    const a = minorOf(text((await sb.losetup(['--instance', dir, '-f', '--show', fa])).stdout).trim());
    const before = fingerprint(outside);
    const beforeDir = fingerprint(outsideDir);
    // the owner swaps its node for a symlink, and plants symlinks under every name a new device
    // could get, pointing at root's file and directory
    fs.unlinkSync(`${dir}/loop${a}`);
    fs.symlinkSync(outside, `${dir}/loop${a}`);
    const max = Math.max(...fs.readdirSync('/sys/block').filter((n) => /^loop\d+$/.test(n)).map((n) => Number(n.slice(4))));
    for (let i = 0; i <= max + 200; i++) {
      if (i === a) continue;
      fs.symlinkSync(i % 2 ? outside : outsideDir, `${dir}/loop${i}`);
    }
    // listing: the symlink is not the instance's node
    const list = await sb.losetup(['--instance', dir, '-a']);
    expect([list.exitCode, text(list.stdout)]).toEqual([0, '']);
    // a new device: its node replaces the planted symlink (rename over it), never follows it
    const fb = sb.file('b.img');
    const rb = await sb.losetup(['--instance', dir, '-f', '--show', fb]);
    expect([rb.exitCode, text(rb.stderr)]).toEqual([0, '']);
    const b = minorOf(text(rb.stdout).trim());
    expect(nodeInfo(`${dir}/loop${b}`)).toEqual({ uid: 1234, gid: 1234, mode: 0o666, block: true, major: 7, minor: b });
    // -d through the symlinked name: not a loop device, refused
    const d = await sb.losetup(['--instance', dir, '-d', `${dir}/loop${a}`]);
    expect([d.exitCode, text(d.stderr)]).toEqual([1, `losetup: ${dir}/loop${a}: failed to use device: No such device\n`]);
    expect(readLoopState(`loop${a}`)?.backingFile).toBe(fa);
    // gc: the held node is published again in place of the symlink; planted symlinks are removed
    const gc = await sb.loopfs(['instance', 'gc', '--json']);
    expect(gc.exitCode).toBe(0);
    const report = JSON.parse(text(gc.stdout)) as { fixes: Array<{ action: string; minor: number | null }> };
    expect(report.fixes).toContainEqual({ dir, minor: a, action: 'restored missing device node' });
    expect(report.fixes.filter((f) => f.action.startsWith('removed stray'))).toHaveLength(max + 200 - 1);
    expect(nodeInfo(`${dir}/loop${a}`)).toEqual({ uid: 1234, gid: 1234, mode: 0o666, block: true, major: 7, minor: a });
    expect(loopEntries(dir).sort()).toEqual([`loop${a}`, `loop${b}`].sort());
    // plant again, then destroy: unlinking removes the links, not their targets
    fs.unlinkSync(`${dir}/loop${b}`);
    fs.symlinkSync(outside, `${dir}/loop${b}`);
    const destroy = await sb.loopfs(['instance', 'destroy', dir]);
    expect([destroy.exitCode, text(destroy.stderr)]).toEqual([0, '']);
    expect(fingerprint(outside)).toBe(before);
    expect(fingerprint(outsideDir)).toBe(beforeDir);
    expect(sb.bound()).toEqual([]);
  });

  it('.loopfs or its lock replaced (symlink, or a directory of the owner): refused; nothing written outside', async () => {
    const dir = sb.path('i');
    await sb.create(dir, ['--owner', '1234:1234']);
    const file = sb.file('a.img');
    const sd = path.join(dir, '.loopfs');
    const beforeDir = fingerprint(outsideDir);
    // 1. the lock file is a symlink to root's file
    const before = fingerprint(outside);
    fs.unlinkSync(path.join(sd, 'lock'));
    fs.symlinkSync(outside, path.join(sd, 'lock'));
    const r1 = await sb.losetup(['--instance', dir, '-f', '--show', file]);
    expect(r1.exitCode).toBe(1);
    expect(text(r1.stderr)).toMatch(/^losetup: .*: Too many levels of symbolic links\n$/);
    expect(fingerprint(outside)).toBe(before);
    fs.unlinkSync(path.join(sd, 'lock'));
    // 2. .loopfs itself is a symlink to a directory outside
    fs.renameSync(sd, `${sd}.saved`);
    fs.symlinkSync(outsideDir, sd);
    const r2 = await sb.losetup(['--instance', dir, '-f', '--show', file]);
    expect([r2.exitCode, text(r2.stdout)]).toEqual([1, '']);
    expect(text(r2.stderr).split('\n').filter(Boolean)).toHaveLength(1);
    const c2 = await sb.loopfs(['instance', 'create', dir]);
    expect(c2.exitCode).toBe(1);
    expect(fingerprint(outsideDir)).toBe(beforeDir);
    fs.unlinkSync(sd);
    // 3. .loopfs is a directory the owner made, with a forged state in it
    fs.mkdirSync(sd, { mode: 0o755 });
    fs.copyFileSync(path.join(`${sd}.saved`, 'state.json'), path.join(sd, 'state.json'));
    fs.chownSync(sd, 1234, 1234);
    const r3 = await sb.losetup(['--instance', dir, '-f', '--show', file]);
    expect([r3.exitCode, text(r3.stderr)]).toEqual([1, `losetup: ${sd}: Operation not permitted\n`]);
    expect(sb.bound()).toEqual([]);
    // restore: works again
    fs.rmSync(sd, { recursive: true });
    fs.renameSync(`${sd}.saved`, sd);
    const ok = await sb.losetup(['--instance', dir, '-f', '--show', file]);
    expect([ok.exitCode, text(ok.stderr)]).toEqual([0, '']);
  });
});
