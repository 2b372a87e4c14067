/**
 * `loopfs install` / `uninstall`: real files in scratch directories, and the
 * --replace-losetup case inside a private mount namespace whose /usr/sbin is an overlay,
 * so the host's /usr/sbin is never touched.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readlinkSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { announceSkip, REPO_ROOT } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';

const LOOPFS = join(REPO_ROOT, 'bin', 'loopfs');

function loopfs(args: string[]) {
  const r = spawnSync(LOOPFS, args, { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function tree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(rel, e.name);
      out.push(e.isSymbolicLink() ? `${p} -> ${readlinkSync(join(d, e.name))}` : e.isDirectory() ? `${p}/` : p);
      if (e.isDirectory()) walk(join(d, e.name), p);
    }
  };
  walk(dir, '');
  return out.sort();
}

describe('loopfs install / uninstall', () => {
  let scratch = '';
  afterEach(() => {
    if (scratch) removeTree(scratch);
    scratch = '';
  });

  const flags = () => [
    '--prefix',
    join(scratch, 'usr/local'),
    '--helper-dir',
    join(scratch, 'sbin'),
    '--record',
    join(scratch, 'var/install.json'),
  ];

  it('links mount.loop and losetup, copies the man pages, and uninstall undoes exactly that', () => {
    scratch = makeTempDir('loopfs-install-');
    mkdirSync(join(scratch, 'sbin'));
    writeFileSync(join(scratch, 'sbin', 'mount.other'), 'not ours\n');
    const before = tree(scratch);

    const r = loopfs(['install', ...flags()]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(readlinkSync(join(scratch, 'sbin/mount.loop'))).toBe(join(REPO_ROOT, 'bin/mount.loop'));
    expect(readlinkSync(join(scratch, 'usr/local/sbin/losetup'))).toBe(join(REPO_ROOT, 'bin/losetup'));
    expect(existsSync(join(scratch, 'usr/local/share/man/man8/losetup.8'))).toBe(true);
    expect(existsSync(join(scratch, 'usr/local/share/man/man8/mount.loop.8'))).toBe(true);

    // the installed helper is runnable through its link, as mount(8) runs it
    const h = spawnSync(join(scratch, 'sbin/mount.loop'), ['--help'], { encoding: 'utf8' });
    expect(h.status).toBe(0);
    expect(h.stdout).toContain('mount.loop');

    const u = loopfs(['uninstall', '--record', join(scratch, 'var/install.json')]);
    expect(u.status).toBe(0);
    expect(tree(scratch).filter((p) => !p.startsWith('var'))).toEqual(before);
    expect(existsSync(join(scratch, 'var/install.json'))).toBe(false);
  });

  it('refuses to replace an existing file and changes nothing', () => {
    scratch = makeTempDir('loopfs-install-');
    mkdirSync(join(scratch, 'usr/local/sbin'), { recursive: true });
    writeFileSync(join(scratch, 'usr/local/sbin/losetup'), 'someone else\n');
    const before = tree(scratch);
    const r = loopfs(['install', ...flags()]);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`loopfs: ${join(scratch, 'usr/local/sbin/losetup')} exists; not replacing it\n`);
    expect(tree(scratch)).toEqual(before);
  });

  it('refuses a second install and an uninstall without a record', () => {
    scratch = makeTempDir('loopfs-install-');
    expect(loopfs(['install', ...flags()]).status).toBe(0);
    const again = loopfs(['install', ...flags()]);
    expect(again.status).toBe(1);
    expect(again.stderr).toMatch(/^loopfs: already installed/);
    expect(loopfs(['uninstall', '--record', join(scratch, 'var/install.json')]).status).toBe(0);
    const none = loopfs(['uninstall', '--record', join(scratch, 'var/install.json')]);
    expect(none.status).toBe(1);
    expect(none.stderr).toMatch(/^loopfs: not installed/);
  });

  it('leaves files alone that changed after install', () => {
    scratch = makeTempDir('loopfs-install-');
    expect(loopfs(['install', ...flags()]).status).toBe(0);
    const page = join(scratch, 'usr/local/share/man/man8/losetup.8');
    writeFileSync(page, 'edited by the admin\n');
    const u = loopfs(['uninstall', '--record', join(scratch, 'var/install.json')]);
    expect(u.status).toBe(0);
    expect(existsSync(page)).toBe(true);
    expect(lstatSync(join(scratch, 'sbin/mount.loop'), { throwIfNoEntry: false })).toBeUndefined();
  });

  const nsReason =
    process.getuid?.() !== 0
      ? 'needs root for a private mount namespace'
      : spawnSync('unshare', ['-m', 'true']).status !== 0
        ? 'unshare -m is not available'
        : undefined;
  announceSkip('install --replace-losetup (overlay /usr/sbin)', nsReason);

  it.skipIf(!!nsReason)('--replace-losetup backs up /usr/sbin/losetup and uninstall restores it (overlay, private namespace)', () => {
    scratch = makeTempDir('loopfs-install-');
    const script = `
set -e
mkdir -p ${scratch}/upper ${scratch}/work
mount -t overlay overlay -o lowerdir=/usr/sbin,upperdir=${scratch}/upper,workdir=${scratch}/work /usr/sbin
orig=$(sha256sum /usr/sbin/losetup | cut -d' ' -f1)
${LOOPFS} install --replace-losetup --no-losetup --prefix ${scratch}/usr/local --helper-dir ${scratch}/sbin --record ${scratch}/rec.json >/dev/null
readlink /usr/sbin/losetup
/usr/sbin/losetup --version
test "$(sha256sum /usr/sbin/losetup.util-linux | cut -d' ' -f1)" = "$orig"
${LOOPFS} uninstall --record ${scratch}/rec.json >/dev/null
test ! -e /usr/sbin/losetup.util-linux
test "$(sha256sum /usr/sbin/losetup | cut -d' ' -f1)" = "$orig"
/usr/sbin/losetup --version
`;
    const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'bash', '-c', script], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toBe(join(REPO_ROOT, 'bin/losetup'));
    expect(lines[1]).toMatch(/^losetup from util-linux 2\.38\.1 \(loopfs /);
    expect(lines[2]).toBe('losetup from util-linux 2.38.1');
    // and the host's /usr/sbin never saw any of it
    expect(existsSync('/usr/sbin/losetup.util-linux')).toBe(false);
    expect(lstatSync('/usr/sbin/losetup').isSymbolicLink()).toBe(false);
  });
});
