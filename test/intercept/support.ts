// Fixtures for the `loopfs run` tests (test/intercept/*.test.ts): the broker tests' sandbox
// (a real unprivileged user, an ext4 image it owns, instances it owns), plus an activated
// container /dev per instance and a way to run a script as that user's user-namespace root
// under `loopfs run`:
//
//   loopfs run --instance DIR -- unshare -m --propagation private sh -c '
//     mount --bind DEV /dev &&                # root, before dropping privileges (continued)
//     exec setpriv --reuid U --regid G --clear-groups unshare -r -m sh -c SCRIPT'
//
// Every mount happens in those private namespaces and dies with them; the host's /dev is
// never touched. The namespace scripts never name /dev/null (there /dev is DEV, and a
// redirection would create a file in it). A compiled helper (fixtures/mnt.c, built with gcc
// into the sandbox) calls mount(2) directly so that tests see the exact errno.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { runProgram, type RunResult } from '../helpers/run.js';
import { BrokerSandbox, brokerSkipReason, LOOPFS, text } from '../broker/support.js';
import { firstReason, REPO_ROOT, announceSkip } from '../helpers/env.js';

export { LOOPFS, text };

const MNT_SOURCE = path.join(REPO_ROOT, 'test', 'intercept', 'fixtures', 'mnt.c');

export function installed(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/** Why the `loopfs run` tests cannot run here (printed once per file), or undefined. */
export function runSkipReason(what: string): string | undefined {
  const base = brokerSkipReason(what);
  if (base) return base;
  const reason = firstReason(
    fs.existsSync(path.join(REPO_ROOT, 'dist', 'commands', 'run.js')) ? undefined : 'dist/commands/run.js missing (run npm run build)',
    ...['gcc', 'mksquashfs'].map((t) => (installed(t) ? undefined : `${t} not installed`)),
    process.arch === 'x64' ? undefined : `the mount filter is built for x86_64 only (this is ${process.arch})`,
  );
  announceSkip(what, reason);
  return reason;
}

export function describeRun(r: RunResult): string {
  return `exit ${r.exitCode}${r.signal ? ` (${r.signal})` : ''}${r.timedOut ? ' (timed out)' : ''}\n--- stdout\n${text(r.stdout)}--- stderr\n${text(r.stderr)}`;
}

export class RunSandbox extends BrokerSandbox {
  /** The compiled fixtures/mnt.c, readable and executable by the user. */
  readonly mnt: string;

  constructor(prefix: string) {
    super(prefix);
    this.mnt = this.path('mnt-helper');
    execFileSync('gcc', ['-O2', '-Wall', '-pthread', '-o', this.mnt, MNT_SOURCE], { stdio: 'pipe' });
    fs.chmodSync(this.mnt, 0o755);
  }

  /** An instance of the user with an activated container /dev (`pool` idle devices). Returns [DIR, DEV]. */
  async activated(name: string, pool = 2): Promise<[string, string]> {
    const dir = await this.instance(name);
    const dev = this.path(`${name}-dev`);
    fs.mkdirSync(dev);
    const r = await this.loopfs(['activate', dir, '--dev', dev, '--pool', String(pool)]);
    if (r.exitCode !== 0) throw new Error(`activate ${dir}: ${describeRun(r)}`);
    return [dir, dev];
  }

  /** argv of `loopfs run` running SCRIPT as the user's user-namespace root with DEV as /dev. */
  runArgv(dir: string, dev: string, script: string, runFlags: string[] = []): string[] {
    const inner = [
      'setpriv', '--reuid', String(this.user.uid), '--regid', String(this.user.gid), '--clear-groups',
      'unshare', '-r', '-m', 'sh', '-c', script,
    ];
    const outer = `mount --bind "$RUN_DEV" /dev && exec ${inner.map(shellQuote).join(' ')}`;
    return ['run', '--instance', dir, ...runFlags, '--', 'unshare', '-m', '--propagation', 'private', 'sh', '-c', outer];
  }

  /** Run SCRIPT under `loopfs run` (see runArgv); `vars` are in its environment. */
  underRun(dir: string, dev: string, script: string, vars: Record<string, string> = {}, runFlags: string[] = [], timeoutMs = 60_000): Promise<RunResult> {
    return runProgram(LOOPFS, this.runArgv(dir, dev, script, runFlags), {
      env: { ...this.env, ...vars, RUN_DEV: dev, M: this.mnt },
      cwd: this.root,
      timeoutMs,
    });
  }

  /** Minors the instance holds. */
  held(dir: string): number[] {
    return Object.keys(this.state(dir)?.devices ?? {}).map(Number);
  }

  /** A squashfs image of the sandbox's source tree (hello.txt), owned by the user. */
  squashImage(): string {
    const img = path.join(this.files, 'squash.img');
    execFileSync('mksquashfs', [this.path('src'), img, '-quiet', '-noappend'], { stdio: 'pipe' });
    this.giveToUser(img);
    return img;
  }

  /** A second ext4 image with its own content, owned by the user. */
  ext4Image(name: string, content: string): string {
    const src = this.path(`${name}-src`);
    fs.mkdirSync(src);
    fs.writeFileSync(path.join(src, 'hello.txt'), content);
    const img = path.join(this.files, name);
    execFileSync('mkfs.ext4', ['-q', '-F', '-d', src, img, '8M'], { stdio: 'pipe' });
    this.giveToUser(img);
    return img;
  }
}

export function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./=:,@+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** FUSE drivers (fuse2fs, squashfuse) holding an fd of something under `root` (an instance node). */
export function fuseDriversUnder(root: string): number[] {
  return fs.readdirSync('/proc').filter((p) => {
    try {
      return (
        /^\d+$/.test(p) &&
        /^(fuse2fs|squashfuse)$/.test(fs.readFileSync(`/proc/${p}/comm`, 'utf8').trim()) &&
        fs.readdirSync(`/proc/${p}/fd`).some((fd) => fs.readlinkSync(`/proc/${p}/fd/${fd}`).startsWith(root))
      );
    } catch {
      return false;
    }
  }).map(Number);
}
