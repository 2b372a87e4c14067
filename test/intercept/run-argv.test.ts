// Issue 12 item 0: `loopfs run` hands CMD every word after the first `--` exactly as given
// (oclif's parser reordered and dropped them), and the form of the `loopfs run --help`
// example (setpriv to an unprivileged user, then unshare -r -m sh) runs and mounts an instance
// device for that user's namespace root.
import { spawnSync } from 'node:child_process';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { HELLO } from '../broker/support.js';
import { describeRun, LOOPFS, RunSandbox, runSkipReason, text } from './support.js';

const reason = runSkipReason('loopfs run argv tests');

describe.skipIf(reason)(reason ? `loopfs run argv (skipped: ${reason})` : 'loopfs run argv', () => {
  let sb: RunSandbox;

  beforeEach(() => {
    sb = new RunSandbox('loopfs-run-argv');
  });

  afterEach(async () => {
    await sb.teardown();
  });

  const WORDS = ['a', '1', 'b', '1', 'c', 'a', '--instance', '/x', '-v', '--', '--help', '-x', '', '--fuse', '', '-', 'a b', '1'];
  const lines = (words: string[]) => words.map((w) => `<${w}>`).join('\n') + '\n';

  it('passes every word after the first -- to CMD in order: repeated, flag-like and empty words included', async () => {
    const dir = await sb.instance('inst');
    const r = await sb.loopfs(['run', '--instance', dir, '--', 'printf', '<%s>\\n', ...WORDS]);
    expect(r.exitCode, describeRun(r)).toBe(0);
    expect(text(r.stdout)).toBe(lines(WORDS));
    // the issue's own example
    const bar = await sb.loopfs(['run', '--instance', dir, '--', 'printf', '%s|', 'a', '1', 'b', '1', 'c']);
    expect(text(bar.stdout), describeRun(bar)).toBe('a|1|b|1|c|');
    // options of loopfs run before the --, in either form, are still its own
    const opts = await sb.loopfs(['run', '-v', `--instance=${dir}`, '--allow-fs', 'ext4', '--', 'printf', '<%s>\\n', '-v', '--allow-fs', '']);
    expect(text(opts.stdout), describeRun(opts)).toBe('<-v>\n<--allow-fs>\n<>\n');
  });

  it('without --, CMD starts at the first word that is not an option and keeps its own --', async () => {
    const dir = await sb.instance('inst');
    const words = WORDS.filter((w) => w !== '--help');
    const r = await sb.loopfs(['run', '--instance', dir, 'printf', '<%s>\\n', ...words]);
    expect(r.exitCode, describeRun(r)).toBe(0);
    expect(text(r.stdout)).toBe(lines(words));
    const none = await sb.loopfs(['run', '--instance', dir, '--']);
    expect(none.exitCode).toBe(1);
    expect(text(none.stderr)).toBe('loopfs: run: no command given (loopfs run [--instance DIR] -- CMD [ARG...])\n');
  });

  it('the --help example form: setpriv to the unprivileged user, unshare -r -m sh, whose mount(2) of an instance device is performed', async () => {
    const dir = await sb.instance('inst');
    const a = await sb.losetup(['--instance', dir, '-f', '--show', sb.image]);
    expect(a.exitCode, describeRun(a)).toBe(0);
    const dev = text(a.stdout).trim();
    expect(dev.startsWith(`${dir}/loop`), dev).toBe(true);
    const mnt = sb.userDir('mnt');
    const { uid, gid } = sb.user;
    // `sh` reads its script from stdin, as the example's interactive shell would; the maps
    // (as seen from inside) show the namespace's root is the user, not root
    const script = [
      'id -u; id -g',
      'awk \'{print "uid_map", $1, $2, $3}\' /proc/self/uid_map',
      'awk \'{print "gid_map", $1, $2, $3}\' /proc/self/gid_map',
      'grep NoNewPrivs: /proc/self/status | tr -s "\\t" " "',
      `echo "mount $("$M" mount '${dev}' '${mnt}' ext4 0)"`,
      `cat '${mnt}/hello.txt'`,
      `umount '${mnt}'; echo "umount $?"`,
    ].join('\n');
    const argv = ['run', '--instance', dir, '--', 'setpriv', '--reuid', String(uid), '--regid', String(gid), '--clear-groups', 'unshare', '-r', '-m', 'sh'];
    const r = spawnSync(LOOPFS, argv, { input: script, env: { ...sb.env, M: sb.mnt }, cwd: sb.root, timeout: 60_000 });
    const log = `exit ${r.status}\n--- stdout\n${r.stdout}--- stderr\n${r.stderr}`;
    expect(r.status, log).toBe(0);
    expect(r.stdout.toString(), log).toBe(
      [
        '0',
        '0',
        `uid_map 0 ${uid} 1`,
        `gid_map 0 ${gid} 1`,
        'NoNewPrivs: 1',
        'mount ok',
        HELLO.trimEnd(),
        'umount 0',
        '',
      ].join('\n'),
    );
    expect(sb.hostMounts()).toEqual([]);
    const d = await sb.losetup(['--instance', dir, '-d', dev]);
    expect(d.exitCode, describeRun(d)).toBe(0);
  });
});
