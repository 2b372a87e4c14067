// `npm pack` yields a tarball that installs globally on a fresh machine: `npm install -g` of it
// builds the addon on the target (the package's install script, offline: node's own headers) and
// puts losetup, mount.loop and loopfs on PATH, with no devDependencies and no build step. The
// tarball holds only what an installed copy needs. The installed copy then attaches and detaches
// a real device.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DeviceTracker, isBound } from '../helpers/devices.js';
import { announceSkip, firstReason, loopSkipReason, REPO_ROOT } from '../helpers/env.js';
import { pinnedEnv } from '../helpers/run.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';

const pkg = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { name: string; version: string };
const built = ['dist/bundle/losetup.mjs', 'dist/commands/doctor.js'].every((p) => fs.existsSync(path.join(REPO_ROOT, p)))
  ? undefined
  : 'dist missing (run npm run build)';
announceSkip('pack tests', built);

/** npm in the test's environment: the repo's .npmrc applies (cwd), nothing of vitest's. */
function npm(args: string[], cwd: string, env: NodeJS.ProcessEnv = pinnedEnv()): string {
  return execFileSync('npm', args, { cwd, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20 });
}

describe.skipIf(built)('npm pack', () => {
  let work = '';
  let tarball = '';
  let files: string[] = [];
  beforeAll(() => {
    work = makeTempDir('loopfs-pack');
    // --ignore-scripts: pack what was built (npm ci ran prepare); no rebuild of the shared dist
    const out = JSON.parse(npm(['pack', '--json', '--ignore-scripts', '--pack-destination', work], REPO_ROOT)) as Array<{
      filename: string;
      files: Array<{ path: string }>;
    }>;
    tarball = path.join(work, out[0].filename);
    files = out[0].files.map((f) => f.path).sort();
  }, 120_000);
  afterAll(() => {
    if (work) removeTree(work);
  });

  it('holds what an installed copy needs, and nothing of the development tree', () => {
    expect(path.basename(tarball)).toBe(`${pkg.name}-${pkg.version}.tgz`);
    for (const f of [
      'package.json',
      'README.md',
      'oclif.manifest.json',
      'bin/losetup',
      'bin/loopfs',
      'bin/mount.loop',
      'bin/mount-loop.mjs',
      'dist/bundle/losetup.mjs',
      'dist/bundle/mount.loop.mjs',
      'dist/commands/doctor.js',
      'dist/commands/completion.js',
      'native/binding.gyp',
      'native/build.mjs',
      'native/addon.cc',
      'native/exports.h',
      'man/losetup.8',
      'man/loopfs.8',
      'man/mount.loop.8',
    ]) {
      expect(files, f).toContain(f);
    }
    const stray = files.filter((f) => /^(src|test|bench|scripts|\.ci|node_modules|native\/build)\//.test(f) || /\.ts$|tsconfig|vitest|package-lock/.test(f));
    expect(stray).toEqual([]);
    // every source binding.gyp compiles is in the tarball
    const gyp = fs.readFileSync(path.join(REPO_ROOT, 'native', 'binding.gyp'), 'utf8');
    for (const src of gyp.match(/[\w-]+\.cc/g) ?? []) expect(files).toContain(`native/${src}`);
  });

  const devReason = firstReason(built, loopSkipReason());
  announceSkip('installed-copy device test', devReason);

  it('installs globally (addon built on the target) and the installed commands run', () => {
    const prefix = path.join(work, 'prefix');
    // offline where the cache has everything, the registry otherwise; JOBS: compile in parallel
    const env = pinnedEnv({ JOBS: 'max' });
    npm(['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', tarball], work, env);
    const installed = path.join(prefix, 'lib', 'node_modules', pkg.name);
    expect(fs.existsSync(path.join(installed, 'native', 'build', 'Release', 'loopfs.node'))).toBe(true);
    // no development dependency came along
    for (const dev of ['typescript', 'vitest', 'oclif', 'esbuild']) expect(fs.existsSync(path.join(installed, 'node_modules', dev)), dev).toBe(false);

    const bin = (name: string) => path.join(prefix, 'bin', name);
    const run = (name: string, args: string[]) => spawnSync(bin(name), args, { encoding: 'utf8', env: pinnedEnv() });
    expect(run('losetup', ['--version']).stdout).toBe(`losetup from util-linux 2.38.1 (loopfs ${pkg.version})\n`);
    const help = run('loopfs', ['--help']);
    expect(help.status).toBe(0);
    expect(help.stdout).toContain('doctor');
    const usage = run('mount.loop', []);
    expect([usage.status, usage.stderr]).toEqual([1, "mount.loop: no image or mount point specified\nTry 'mount.loop --help' for more information.\n"]);
    const compl = run('loopfs', ['completion', 'bash']);
    expect(compl.status).toBe(0);
    expect(compl.stdout).toContain('complete -F _losetup_loopfs losetup');
  }, 300_000);

  it.skipIf(devReason)('the installed losetup attaches and detaches a real device', async () => {
    const losetup = path.join(work, 'prefix', 'bin', 'losetup');
    if (!fs.existsSync(losetup)) throw new Error('the install test did not run first');
    const file = path.join(work, 'disk.img');
    fs.writeFileSync(file, Buffer.alloc(1 << 20));
    const tracker = new DeviceTracker();
    tracker.ownDir(work);
    try {
      const dev = execFileSync(losetup, ['-f', '--show', file], { encoding: 'utf8', env: pinnedEnv() }).trim();
      expect(dev).toMatch(/^\/dev\/loop\d+$/);
      expect(fs.readFileSync(`/sys/block/${dev.slice(5)}/loop/backing_file`, 'utf8').trim()).toBe(file);
      execFileSync(losetup, ['-d', dev], { env: pinnedEnv() });
      expect(isBound(dev) && fs.readFileSync(`/sys/block/${dev.slice(5)}/loop/backing_file`, 'utf8').trim() === file).toBe(false);
    } finally {
      await tracker.detachAll();
    }
  });
});
