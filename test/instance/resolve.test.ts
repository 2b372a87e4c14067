// Issue 4, "Resolution": `--instance DIR`, then $LOOPFS_INSTANCE, then /dev/loopfs when it is an
// instance, else the host instance; and the recognition of a real kernel loopfs mount (statfs
// magic 0x6c6f6f71), tested with a fake statfs result since these kernels lack the filesystem.
//
// /dev/loopfs is exercised only inside a private mount namespace (`unshare -m`): there a tmpfs
// covers /dev, `loop-control` and `loopN` are symlinks into a bind mount of the real /dev (so new
// devices still appear), and the instance directory is bind-mounted on /dev/loopfs. The host's
// /dev is never changed.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { native, type NativeStatfs } from '../../src/kernel/native.js';
import { LoopDevice } from '../../src/kernel/loop-device.js';
import { KernelInstance, LOOPFS_SUPER_MAGIC } from '../../src/instance/kernel-instance.js';
import { detectKind, instanceDirFor, openScope } from '../../src/instance/resolve.js';
import { readLoopState } from '../helpers/devices.js';
import { runProgram } from '../helpers/run.js';
import { instanceSkipReason, LOSETUP, lines, minorOf, Sandbox, skipTitle, text } from './support.js';

const reason = instanceSkipReason('instance resolution tests');
const unshareReason = reason ?? (fs.existsSync('/usr/bin/unshare') ? undefined : 'no /usr/bin/unshare');

const fakeStatfs = (type: number) => (): NativeStatfs => ({ type, bsize: 4096, blocks: 0n, bfree: 0n }) as unknown as NativeStatfs;

describe('detectKind() and instanceDirFor() (no devices)', () => {
  it('recognises a kernel loopfs mount from its statfs magic', () => {
    expect(LOOPFS_SUPER_MAGIC).toBe(0x6c6f6f71);
    expect(detectKind('/nonexistent/loopfs', fakeStatfs(0x6c6f6f71))).toBe('kernel');
    const scope = openScope('/nonexistent/loopfs', {}, fakeStatfs(0x6c6f6f71));
    expect(scope).toBeInstanceOf(KernelInstance);
    expect(scope.controlPath).toBe('/nonexistent/loopfs/loop-control');
    expect(scope.devicePath('loop3')).toBe('/nonexistent/loopfs/loop3');
  });

  it('any other filesystem is not a kernel instance; an unstat-able path is no instance', () => {
    const dir = fs.mkdtempSync('/tmp/loopfs-detect-');
    try {
      expect(detectKind(dir, fakeStatfs(0x01021994 /* tmpfs */))).toBeNull();
      expect(detectKind(dir, fakeStatfs(0xef53 /* ext4 */))).toBeNull();
      expect(
        detectKind(dir, () => {
          throw Object.assign(new Error('ENOENT'), { code: 'ENOENT' });
        }),
      ).toBeNull();
      expect(() => openScope(dir, {}, fakeStatfs(0xef53))).toThrow(/not a loop device instance/);
      // the real statfs of a plain directory: nothing
      expect(detectKind(dir)).toBeNull();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('--instance beats $LOOPFS_INSTANCE, which beats the default', () => {
    expect(instanceDirFor('/a', { LOOPFS_INSTANCE: '/b' })).toBe('/a');
    expect(instanceDirFor(null, { LOOPFS_INSTANCE: '/b' })).toBe('/b');
    // the default applies only when /dev/loopfs is an instance; on this host it is not
    if (!fs.existsSync('/dev/loopfs')) expect(instanceDirFor(null, {})).toBeNull();
  });
});

describe.skipIf(reason)(skipTitle('instance resolution with real devices', reason), () => {
  let sb: Sandbox;
  beforeEach(() => {
    sb = new Sandbox('loopfs-resolve');
  });
  afterEach(async () => {
    await sb.cleanup();
  });

  it('--instance beats $LOOPFS_INSTANCE', async () => {
    const a = sb.path('a');
    const b = sb.path('b');
    await sb.create(a);
    await sb.create(b);
    const fa = sb.file('a.img');
    const fb = sb.file('b.img');
    const rb = await sb.losetup(['-f', '--show', fb], { env: { LOOPFS_INSTANCE: b } });
    expect(text(rb.stdout)).toMatch(new RegExp(`^${b}/loop\\d+\\n$`));
    const ra = await sb.losetup(['--instance', a, '-f', '--show', fa], { env: { LOOPFS_INSTANCE: b } });
    expect(text(ra.stdout)).toMatch(new RegExp(`^${a}/loop\\d+\\n$`));
    const ma = minorOf(text(ra.stdout).trim());
    expect(Object.keys(sb.state(a)!.devices)).toEqual([String(ma)]);
    const la = await sb.losetup(['--instance', a, '-a'], { env: { LOOPFS_INSTANCE: b } });
    expect(lines(la.stdout)).toEqual([expect.stringMatching(new RegExp(`^${a}/loop${ma}: .*\\(${fa}\\)$`))]);
    // --instance after the action operands counts too (prescanned)
    const late = await sb.losetup(['-a', '--instance', a], { env: { LOOPFS_INSTANCE: b } });
    expect(text(late.stdout)).toBe(text(la.stdout));
    const lb = await sb.losetup(['-a'], { env: { LOOPFS_INSTANCE: b } });
    expect(lines(lb.stdout)).toHaveLength(1);
    expect(text(lb.stdout)).toContain(`(${fb})`);
  });

  it('an explicit directory that is not an instance: one error line, status 1, nothing attached', async () => {
    const plain = sb.path('plain');
    fs.mkdirSync(plain);
    const missing = sb.path('missing');
    const file = sb.file('f.img');
    for (const [args, env, dir] of [
      [['--instance', plain, '-f', '--show', file], {}, plain],
      [['-f', '--show', file], { LOOPFS_INSTANCE: plain }, plain],
      [['--instance', missing, '-a'], {}, missing],
      [['--instance', file, '-a'], {}, file],
    ] as Array<[string[], Record<string, string>, string]>) {
      const r = await sb.losetup(args, { env });
      expect([r.exitCode, text(r.stdout), text(r.stderr)], args.join(' ')).toEqual([
        1,
        '',
        `losetup: ${dir}: not a loop device instance\n`,
      ]);
    }
    expect(sb.bound()).toEqual([]);
    expect(fs.readdirSync(plain)).toEqual([]);
    // -h, -V and usage errors never need the instance: they behave exactly as without it
    const help = await sb.losetup(['--instance', missing, '-h']);
    expect([help.exitCode, text(help.stderr)]).toEqual([0, '']);
    expect(text(help.stdout)).toMatch(/^\nUsage:\n losetup \[options\]/);
    const version = await sb.losetup(['--instance', missing, '-V']);
    expect([version.exitCode, text(version.stdout), text(version.stderr)]).toEqual([0, 'losetup from util-linux 2.38.1 (loopfs 0.1.0)\n', '']);
    const usage = await sb.losetup(['--instance', missing, '--bogus']);
    expect([usage.exitCode, text(usage.stdout)]).toEqual([1, '']);
    expect(text(usage.stderr)).toMatch(/unrecognized option '--bogus'\nTry 'losetup --help' for more information\.\n$/);
  });

  it.skipIf(unshareReason)('/dev/loopfs is the default instance when it is one (private mount namespace)', async () => {
    const inst = sb.path('inst');
    const other = sb.path('other');
    await sb.create(inst);
    await sb.create(other);
    const fInst = sb.file('inst.img');
    const fOther = sb.file('other.img');
    const fHost = sb.file('host.img');
    const hostDev = sb.hostAttach(fHost);
    const maxMinor = Math.max(
      ...fs.readdirSync('/sys/block').filter((n) => /^loop\d+$/.test(n)).map((n) => Number(n.slice(4))),
    );
    const script = sb.path('in-namespace.mjs');
    fs.writeFileSync(
      script,
      `
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
const [losetup, root, inst, other, fInst, fOther, fHost, maxMinor] = process.argv.slice(2);
const run = (args, env = {}) => {
  const r = spawnSync(losetup, args, { env: { ...process.env, ...env }, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
  return { args, env, status: r.status, stdout: r.stdout, stderr: r.stderr };
};
const realdev = root + '/realdev';
fs.mkdirSync(realdev);
execFileSync('mount', ['--bind', '/dev', realdev]);
execFileSync('mount', ['-t', 'tmpfs', '-o', 'mode=0755', 'loopfs-test-dev', '/dev']);
for (const n of ['null', 'zero', 'full', 'random', 'urandom', 'loop-control']) fs.symlinkSync(realdev + '/' + n, '/dev/' + n);
for (let i = 0; i <= Number(maxMinor) + 2048; i++) fs.symlinkSync(realdev + '/loop' + i, '/dev/loop' + i);
fs.mkdirSync('/dev/loopfs');
const out = {};
out.hostBefore = run(['-a']);
execFileSync('mount', ['--bind', inst, '/dev/loopfs']);
out.attach = run(['-f', '--show', fInst]);
out.stateAfterAttach = { devices: Object.fromEntries(fs.readdirSync(inst + '/.loopfs/devices').filter((n) => /^loop\\d+$/.test(n)).map((n) => [n.slice(4), ((t) => (t === '' ? { state: 'held' } : JSON.parse(t)))(fs.readFileSync(inst + '/.loopfs/devices/' + n, 'utf8'))])) };
out.list = run(['-a']);
out.listJ = run(['-j', fHost]);
out.override = run(['-a'], { LOOPFS_INSTANCE: other });
out.overrideArg = run(['--instance', other, '-f', '--show', fOther]);
const dev = out.attach.stdout.trim();
out.detach = run(['-d', dev]);
out.listAfter = run(['-a']);
execFileSync('umount', ['/dev/loopfs']);
out.plain = run(['-a']);
process.stdout.write(JSON.stringify(out));
`,
    );
    // clean environment: neither --instance nor $LOOPFS_INSTANCE
    const r = await runProgram('/usr/bin/unshare', ['-m', '--propagation', 'private', process.execPath, script, LOSETUP, sb.root, inst, other, fInst, fOther, fHost, String(maxMinor)], {
      env: sb.env,
      timeoutMs: 60_000,
    });
    expect(text(r.stderr)).toBe('');
    expect(r.exitCode).toBe(0);
    const out = JSON.parse(text(r.stdout)) as Record<string, { status: number; stdout: string; stderr: string }> & {
      stateAfterAttach: { devices: Record<string, unknown> };
    };
    // before /dev/loopfs became an instance (an empty directory): the host instance
    expect(out.hostBefore.stdout).toContain(`${hostDev}: `);
    // /dev/loopfs is the instance: -f allocates into it and names the node there
    expect(out.attach).toMatchObject({ status: 0, stderr: '' });
    expect(out.attach.stdout).toMatch(/^\/dev\/loopfs\/loop\d+\n$/);
    const m = minorOf(out.attach.stdout.trim());
    expect(Object.keys(out.stateAfterAttach.devices)).toEqual([String(m)]);
    expect(out.list.stdout).toMatch(new RegExp(`^/dev/loopfs/loop${m}: \\[\\d+\\]:\\d+ \\(${fInst}\\)\\n$`));
    expect(out.list.stdout).not.toContain(fHost);
    expect(out.listJ).toMatchObject({ status: 0, stdout: '' });
    // $LOOPFS_INSTANCE and --instance still win over /dev/loopfs
    expect(out.override).toMatchObject({ status: 0, stdout: '' });
    expect(out.overrideArg.stdout).toMatch(new RegExp(`^${other}/loop\\d+\\n$`));
    expect(Object.keys(sb.state(other)!.devices)).toHaveLength(1);
    expect(out.detach).toMatchObject({ status: 0, stderr: '' });
    expect(out.listAfter).toMatchObject({ status: 0, stdout: '' });
    expect(readLoopState(`loop${m}`)?.backingFile).not.toBe(fInst);
    expect(sb.ownDevices(inst)).toEqual({});
    // /dev/loopfs that is not an instance: the host instance again
    expect(out.plain.stdout).toContain(`${hostDev}: `);
    // the host's /dev was never touched
    expect(fs.existsSync('/dev/loopfs')).toBe(false);
  });

  it('a KernelInstance (what a kernel loopfs mount is driven as) scopes by the nodes in DIR', async () => {
    // A stand-in for a kernel loopfs mount: a directory holding one node of a device we attached.
    const dir = sb.path('kdir');
    fs.mkdirSync(dir);
    const mine = sb.hostAttach(sb.file('k.img'));
    const theirs = sb.hostAttach(sb.file('h.img'));
    const m = minorOf(mine);
    const n = native();
    n.mknod(path.join(dir, `loop${m}`), n.constants.S_IFBLK | 0o600, 7, m);
    const k = new KernelInstance(dir);
    expect(k.usedDevices().map((d) => d.path)).toEqual([`${dir}/loop${m}`]);
    expect(k.contains(new LoopDevice(mine))).toBe(true);
    expect(k.contains(new LoopDevice(theirs))).toBe(false);
    expect(() => k.checkDevice(theirs)).toThrow(/No such device|ENODEV/);
    expect(() => k.checkDevice(`loop${m}`)).not.toThrow();
    // never attached through it: the node is only looked at
    expect(readLoopState(mine)?.backingFile).toBe(sb.path('files', 'k.img'));
    expect(execFileSync('ls', [dir], { encoding: 'utf8' }).trim()).toBe(`loop${m}`);
  });
});
