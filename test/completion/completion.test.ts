// Shell completion, run for real: the script `loopfs completion bash` prints is sourced in a
// `bash --norc` whose COMP_WORDS/COMP_CWORD are set as readline would set them, the function the
// script registered with `complete -F` is called, and COMPREPLY is checked. Device completion is
// checked against real devices in a private instance (and one attached on the host). zsh runs the
// same functions through bashcompinit; it is checked where zsh is installed.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { COLUMNS } from '../../src/compat/losetup/columns.js';
import { LONGOPTS, SHORTOPTS } from '../../src/compat/losetup/options.js';
import { DeviceTracker, isBound } from '../helpers/devices.js';
import { announceSkip, REPO_ROOT } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import { instanceSkipReason, LOOPFS, minorOf, Sandbox, skipTitle, text } from '../instance/support.js';

const built = fs.existsSync(path.join(REPO_ROOT, 'dist', 'commands', 'completion.js')) ? undefined : 'dist/commands/completion.js missing (run npm run build)';
announceSkip('completion tests', built);

const noZsh = spawnSync('zsh', ['--version']).error ? 'zsh is not installed (CI installs only what .ci/run lists)' : undefined;
announceSkip('zsh completion', noZsh);

let scratch = '';
let bashScript = '';
let zshScript = '';

/** COMPREPLY for a command line; `words` ends with the word being completed ('' after a space). */
function completeBash(words: string[], env: NodeJS.ProcessEnv = process.env, cwd = scratch): string[] {
  const driver =
    'source "$1" || exit 9; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}; ' +
    'spec=$(complete -p "$1") || exit 8; fn=${spec#*-F }; fn=${fn%% *}; "$fn"; printf "%s\\n" "${COMPREPLY[@]}"';
  const r = spawnSync('bash', ['--norc', '--noprofile', '-c', driver, 'bash', bashScript, ...words], { env, cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`bash exit ${r.status}: ${r.stderr}`);
  expect(r.stderr).toBe('');
  return r.stdout.split('\n').filter((l) => l !== '');
}

beforeAll(() => {
  if (built) return;
  scratch = makeTempDir('loopfs-completion');
  bashScript = path.join(scratch, 'loopfs.bash');
  zshScript = path.join(scratch, 'loopfs.zsh');
  fs.writeFileSync(bashScript, execFileSync(LOOPFS, ['completion', 'bash'], { encoding: 'utf8' }));
  fs.writeFileSync(zshScript, execFileSync(LOOPFS, ['completion', 'zsh'], { encoding: 'utf8' }));
  fs.mkdirSync(path.join(scratch, 'files'));
  fs.writeFileSync(path.join(scratch, 'files', 'disk-a.img'), '');
  fs.writeFileSync(path.join(scratch, 'files', 'disk-b.img'), '');
  fs.mkdirSync(path.join(scratch, 'files', 'dir-c'));
});
afterAll(() => {
  if (scratch) removeTree(scratch);
});

describe.skipIf(built)(skipTitle('loopfs completion', built), () => {
  it('the script is valid bash and registers loopfs, losetup and mount.loop', () => {
    execFileSync('bash', ['-n', bashScript]);
    const out = execFileSync('bash', ['--norc', '-c', `source ${bashScript}; complete -p loopfs losetup mount.loop`], { encoding: 'utf8' });
    expect(out.split('\n').filter(Boolean)).toEqual([
      'complete -F _loopfs loopfs',
      'complete -F _losetup_loopfs losetup',
      'complete -F _mount_loop_loopfs mount.loop',
    ]);
  });

  it('loopfs: commands and topics, from the command metadata', () => {
    const top = completeBash(['loopfs', '']);
    for (const w of ['activate', 'completion', 'doctor', 'gc', 'install', 'instance', 'limits', 'losetup', 'serve', 'uninstall']) expect(top).toContain(w);
    expect(completeBash(['loopfs', 'd'])).toEqual(['doctor']);
    expect(completeBash(['loopfs', 'instance', ''])).toEqual(['create', 'destroy', 'gc', 'ls', 'show', 'watch']);
    expect(completeBash(['loopfs', 'limits', 's'])).toEqual(['set', 'show']);
    expect(completeBash(['loopfs', 'completion', ''])).toEqual(['bash', 'zsh']);
  });

  it('loopfs: flags of the command on the line, after other flags and their values', () => {
    expect(completeBash(['loopfs', 'instance', 'create', '--'])).toEqual(['--json', '--max', '--owner', '--mode', '--pool', '--help']);
    expect(completeBash(['loopfs', 'instance', 'create', '--max', '4', '--o'])).toEqual(['--owner']);
    expect(completeBash(['loopfs', 'doctor', '--f'])).toEqual(['--fix']);
    expect(completeBash(['loopfs', 'serve', '-'])).toEqual(expect.arrayContaining(['--all', '--allow-fs', '--verbose', '-v', '--help', '-h']));
  });

  it('loopfs: directories for instance arguments and directory flags, files for file flags', () => {
    const f = path.join(scratch, 'files');
    expect(completeBash(['loopfs', 'instance', 'show', `${f}/d`])).toEqual([`${f}/dir-c`]);
    expect(completeBash(['loopfs', 'activate', 'x', '--dev', `${f}/d`])).toEqual([`${f}/dir-c`]);
    expect(completeBash(['loopfs', 'uninstall', '--record', `${f}/disk-`]).sort()).toEqual([`${f}/disk-a.img`, `${f}/disk-b.img`]);
    // serve takes any number of instance directories
    expect(completeBash(['loopfs', 'serve', '/a', '/b', `${f}/d`])).toEqual([`${f}/dir-c`]);
  });

  it('losetup: every option of its getopt table, long and short', () => {
    const all = completeBash(['losetup', '-']);
    for (const o of LONGOPTS) expect(all).toContain(`--${o.name}`);
    for (const c of SHORTOPTS.replace(/:/g, '')) expect(all).toContain(`-${c}`);
    expect(completeBash(['losetup', '--out'])).toEqual(['--output', '--output-all']);
    expect(completeBash(['losetup', '--direct-io='])).toEqual(['--direct-io=on', '--direct-io=off']);
    // and `loopfs losetup …` is the same program
    expect(completeBash(['loopfs', 'losetup', '--out'])).toEqual(['--output', '--output-all']);
  });

  it('losetup: column names for -O, also after a comma', () => {
    expect(completeBash(['losetup', '-O', ''])).toEqual(COLUMNS.map((c) => c.name));
    expect(completeBash(['losetup', '--output', 'NAME,BACK-F'])).toEqual(['NAME,BACK-FILE']);
    expect(completeBash(['losetup', '-lO', 'SIZE'])).toEqual(['SIZELIMIT']);
  });

  it('losetup: files for the backing file, directories for --instance', () => {
    const f = path.join(scratch, 'files');
    expect(completeBash(['losetup', '-f', '--show', `${f}/disk-`]).sort()).toEqual([`${f}/disk-a.img`, `${f}/disk-b.img`]);
    expect(completeBash(['losetup', '-P', '/dev/loop0', `${f}/disk-a`])).toEqual([`${f}/disk-a.img`]);
    expect(completeBash(['losetup', '-j', `${f}/disk-b`])).toEqual([`${f}/disk-b.img`]);
    expect(completeBash(['losetup', '--instance', `${f}/d`])).toEqual([`${f}/dir-c`]);
    // a value attached to its short option is not followed by another value
    expect(completeBash(['losetup', '-fo512', `${f}/disk-a`])).toEqual([`${f}/disk-a.img`]);
    expect(completeBash(['losetup', '-o', '512', '-f', `${f}/disk-a`])).toEqual([`${f}/disk-a.img`]);
  });

  it.skipIf(noZsh)(skipTitle('zsh: the same script through bashcompinit', noZsh), () => {
    execFileSync('zsh', ['-n', zshScript]);
    // outside a completion widget zsh's compgen does not filter by the word (compadd does that
    // later): filter here as compadd would
    const out = execFileSync(
      'zsh',
      ['-f', '-c', `autoload -U compinit && compinit -u -d ${scratch}/zcompdump; source ${zshScript}; print -r -- $_comps[loopfs] $_comps[losetup]; ` +
        'COMP_WORDS=(loopfs instance ""); COMP_CWORD=2; _loopfs; print -r -- "A:${COMPREPLY[*]}"; ' +
        'COMP_WORDS=(losetup -O NAME,BACK-F); COMP_CWORD=2; _losetup_loopfs; print -r -- "B:${COMPREPLY[*]}"'],
      { encoding: 'utf8', cwd: scratch },
    ).split('\n');
    expect(out[0]).toBe('_bash_complete -F _loopfs _bash_complete -F _losetup_loopfs');
    expect(out[1]).toBe('A:create destroy gc ls show watch');
    expect(out[2].slice(2).split(' ').filter((w) => w.startsWith('NAME,BACK-F'))).toEqual(['NAME,BACK-FILE']);
  });

  it.skipIf(noZsh)(skipTitle('zsh: real completion widgets on a pty (zpty)', noZsh), () => {
    // keys typed into an interactive zsh: TAB completes in place, or lists when ambiguous
    const driver = [
      'zmodload zsh/zpty',
      "zpty -b z 'zsh -f -i'",
      `zpty -w z 'PS1="R""DY>"; autoload -U compinit; compinit -u -d ${scratch}/zdump; source ${zshScript}; cd ${scratch}'`,
      "zpty -r z ready '*RDY>*'", // the line editor is up: from here keys are keys
      "zpty -w -n z $'losetup -f --show files/disk-b\\t'",
      'sleep 1',
      "zpty -w -n z $'\\C-u'",
      "zpty -w -n z $'loopfs instance cr\\t'",
      'sleep 1',
      "zpty -w -n z $'\\C-u'",
      "zpty -w -n z $'losetup --out\\t\\t'",
      'sleep 1',
      'out=""; while zpty -r -t z chunk; do out+=$chunk; done',
      'print -r -- $out',
      'zpty -d z',
    ].join('\n');
    const out = execFileSync('zsh', ['-f', '-c', driver], { encoding: 'utf8', cwd: scratch, timeout: 30_000 }).replace(/\x1b\[[0-9;?]*[a-zA-Z]/g, '');
    expect(out).toContain('losetup -f --show files/disk-b.img');
    expect(out).toContain('loopfs instance create');
    expect(out).toMatch(/--output +--output-all/);
  });
});

const devReason = built ?? instanceSkipReason('device completion tests');

describe.skipIf(devReason)(skipTitle('losetup device completion', devReason), () => {
  let sb: Sandbox;
  const tracker = new DeviceTracker();
  beforeAll(() => {
    sb = new Sandbox('loopfs-completion-dev');
    tracker.ownDir(sb.root);
  });
  afterAll(async () => {
    await sb.cleanup();
    await tracker.detachAll();
  });

  it('-d and -c offer the bound devices of the instance on the line, $LOOPFS_INSTANCE, or the host', async () => {
    const dir = sb.path('i');
    await sb.create(dir);
    const take = async (file?: string) => {
      const r = await sb.losetup(['--instance', dir, '-f', ...(file ? ['--show', file] : [])]);
      expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
      return minorOf(text(r.stdout).trim());
    };
    const a = await take(sb.file('a.img'));
    const b = await take(sb.file('b.img'));
    const idle = `${dir}/loop${await take()}`; // idle: published, but nothing to detach
    const ab = [`${dir}/loop${a}`, `${dir}/loop${b}`].sort();
    // exactly the bound ones; the idle device counts only if somebody else's `losetup -f` bound
    // it meanwhile (LOOP_CTL_GET_FREE hands idle devices to anyone; DESIGN.md)
    const bound = expect.toSatisfy((got: string[]) => {
      const rest = got.filter((d) => d !== idle).sort();
      return JSON.stringify(rest) === JSON.stringify(ab) && (got.length === 2 || isBound(idle));
    });
    const env = { ...sb.env };
    delete env.LOOPFS_INSTANCE;
    expect(completeBash(['losetup', '--instance', dir, '-d', ''], env).sort()).toEqual(bound);
    expect(completeBash(['losetup', '--instance', '=', dir, '-c', ''], env).sort()).toEqual(bound); // bash's split of --instance=DIR
    expect(completeBash(['losetup', '-d', ''], { ...env, LOOPFS_INSTANCE: dir }).sort()).toEqual(bound);
    expect(completeBash(['loopfs', 'losetup', '--inst', dir, '-d', ''], env).sort()).toEqual(bound);
    // DEV FILE: any device of the instance, idle ones too
    expect(completeBash(['losetup', '--instance', dir, ''], env).length).toBe(3);

    // the host: /dev/loopN of bound devices, among them one attached here
    const hostDev = sb.hostAttach(sb.file('host.img'));
    tracker.add(hostDev);
    const host = completeBash(['losetup', '-d', ''], env);
    expect(host).toContain(hostDev);
    for (const d of host) expect(d).toMatch(/^\/dev\/loop\d+$/);
  });
});
