// bin/loopfs-runtime's shell half: it finds the subcommand after runc's and crun's global
// options in every form an engine writes them, execs the real runtime with exactly the
// argv it got (the same process: the engine's child), runs node only for create/run, and
// picks the real runtime from $LOOPFS_REAL_RUNTIME, the wrapper config or PATH. The "real
// runtime" here is a recorder script that writes its argv, cwd, pid, parent and
// environment; every expectation is compared with what the recorder writes when the
// engine calls it directly.
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { announceSkip, REPO_ROOT } from '../helpers/env.js';

const WRAPPER = path.join(REPO_ROOT, 'bin', 'loopfs-runtime');
const built = existsSync(path.join(REPO_ROOT, 'dist', 'oci', 'runtime-main.js'));
const reason = built ? undefined : 'dist/oci/runtime-main.js missing (run npm run build)';
announceSkip('loopfs-runtime dispatcher', reason);

const tmp = mkdtempSync(path.join(os.tmpdir(), 'loopfs-runtime-dispatch-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const LOG = path.join(tmp, 'recorder.log');
const BIN = path.join(tmp, 'bin'); // holds a recorder named runc, first on PATH
const RECORDER = path.join(BIN, 'runc');
mkdirSync(BIN);
writeFileSync(
  RECORDER,
  `#!/bin/sh
{ echo "name=$0"; echo "cwd=$(pwd)"; echo "pid=$$"; echo "ppid=$PPID"; for a do echo "arg=[$a]"; done; env | LC_ALL=C sort; } >"$RECORDER_LOG"
exit 7
`,
);
chmodSync(RECORDER, 0o755);
const OTHER = path.join(tmp, 'other-runtime');
writeFileSync(OTHER, readFileSync(RECORDER));
chmodSync(OTHER, 0o755);

const BASE_ENV = { PATH: `${BIN}:/usr/local/bin:/usr/bin:/bin`, RECORDER_LOG: LOG, LOOPFS_RUNTIME_CONFIG: path.join(tmp, 'no-such-runtime.json'), LOOPFS_RUNTIME_DIR: path.join(tmp, 'rt') };

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
  pid: number;
  record: string | null;
}

function run(cmd: string, args: string[], cwd: string, env: Record<string, string> = {}): Run {
  rmSync(LOG, { force: true });
  const r = spawnSync(cmd, args, { cwd, env: { ...BASE_ENV, ...env }, encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, pid: r.pid, record: existsSync(LOG) ? readFileSync(LOG, 'utf8') : null };
}

/** The recorder's record with this process's pids replaced, to compare two runs. */
const normal = (r: Run) => r.record?.replace(`pid=${r.pid}\n`, 'pid=SELF\n').replace(`ppid=${process.pid}\n`, 'ppid=ENGINE\n') ?? null;

/** Through the wrapper and directly: the same process sees the same everything. */
function expectSameAsDirect(args: string[], cwd: string, env: Record<string, string> = {}, runtime = RECORDER): Run {
  const direct = run(runtime, args, cwd, env);
  const wrapped = run(WRAPPER, args, cwd, env);
  expect(direct.record).toContain(`pid=${direct.pid}\nppid=${process.pid}\n`);
  expect([wrapped.stderr, wrapped.record ?? '']).toEqual(['', expect.stringContaining(`pid=${wrapped.pid}\nppid=${process.pid}\n`)]); // exec'd: the engine's own child
  expect(normal(wrapped)?.replace(`name=${WRAPPER}`, `name=${runtime}`)).toBe(normal(direct)?.replace(`name=${runtime}`, `name=${runtime}`));
  expect([wrapped.status, wrapped.stdout, wrapped.stderr]).toEqual([7, '', '']);
  return wrapped;
}

const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');

let n = 0;
/** A bundle whose container opted in (LOOPFS_OCI=1): any edit would show. */
function bundle(doc: object = { ociVersion: '1.0.2', process: { args: ['true'], env: ['PATH=/bin', 'LOOPFS_OCI=1'] }, root: { path: 'rootfs' } }): string {
  const dir = path.join(tmp, `bundle${n++}`);
  mkdirSync(dir);
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify(doc));
  return dir;
}

const edited = (dir: string) => JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8')).annotations?.['io.loopfs.instance'] === 'true';

describe.skipIf(reason)('loopfs-runtime dispatcher', () => {
  let cwd: string;
  beforeEach(() => {
    cwd = bundle(); // an opted-in bundle in the current directory too: the default bundle
  });

  it('create/run: every global-option form; the bundle from --bundle, -b, -bundle, --bundle=, or the current directory', () => {
    const forms: Array<(b: string) => string[]> = [
      // dockerd / containerd
      (b) => ['--root', '/run/x', '--log', '/tmp/x/log.json', '--log-format', 'json', 'create', '--bundle', b, '--pid-file', '/tmp/x/init.pid', 'ID'],
      // podman
      (b) => ['create', '--bundle', b, '--pid-file', '/tmp/x/pidfile', 'ID'],
      (b) => ['--root=/run/x', '--log=/tmp/x/l', '--log-format=text', 'create', '-b', b, 'ID'],
      (b) => ['-root', '/run/x', '-log', '/tmp/x/l', 'create', '-bundle', b, 'ID'],
      (b) => ['--debug', '--systemd-cgroup', '--rootless', 'true', '--criu', '/usr/sbin/criu', 'create', `--bundle=${b}`, 'ID'],
      (b) => ['--debug=false', '--rootless=auto', 'run', '--detach', '--pid-file', 'p', `-b=${b}`, 'ID'],
      // crun
      (b) => ['--cgroup-manager', 'cgroupfs', 'create', '--no-new-keyring', '--bundle', b, 'ID'],
      (b) => ['--cgroup-manager=systemd', '--root', '/run/crun', 'run', '--bundle', b, '--preserve-fds', '0', 'ID'],
      // options after the id (crun permutes), and a value that looks like an option
      (b) => ['create', '--console-socket', '--bundle', 'ID', '--bundle', b],
      (b) => ['--', 'create', '--bundle', b, 'ID'],
    ];
    for (const form of forms) {
      const b = bundle();
      expectSameAsDirect(form(b), cwd);
      expect([form(b).join(' '), edited(b), edited(cwd)]).toEqual([form(b).join(' '), true, false]);
    }
    // no --bundle: the current directory, as runc
    for (const args of [['run', 'ID'], ['--root', '/run/x', 'create', '--pid-file', 'p', 'ID']]) {
      const c = bundle();
      expectSameAsDirect(args, c);
      expect(edited(c)).toBe(true);
    }
  });

  it('every other subcommand, and version/help, is an exec of the runtime: no node, the bundle untouched', () => {
    const b = bundle();
    const before = [sha(path.join(b, 'config.json')), sha(path.join(cwd, 'config.json'))];
    for (const args of [
      ['start', 'ID'],
      ['--root', '/run/x', '--log', '/l', '--log-format', 'json', 'state', 'ID'],
      ['kill', 'ID', 'KILL'],
      ['delete', '--force', 'ID'],
      ['exec', '--process', '/tmp/p.json', '--detach', 'ID'],
      ['features'],
      ['ps', 'ID'],
      ['--version'],
      ['-v'],
      ['--help'],
      ['-h'],
      ['--version', 'create', '--bundle', b, 'ID'],
      ['--help', 'run', '--bundle', b, 'ID'],
      // the value of --root is not the subcommand
      ['--root', 'create', 'state', '--bundle', b, 'ID'],
      ['--log=create', 'delete', 'ID'],
      ['--root'],
      [],
    ]) {
      expectSameAsDirect(args, cwd);
      expect([args.join(' '), sha(path.join(b, 'config.json')), sha(path.join(cwd, 'config.json'))]).toEqual([args.join(' '), ...before]);
    }
    // no fork at all on this path: the wrapper's execve, then the runtime's, and nothing in
    // between (the recorder forks afterwards for its own pwd and env)
    const trace = path.join(tmp, 'trace');
    const st = spawnSync('strace', ['-f', '-qq', '-e', 'trace=execve,clone,clone3,fork,vfork', '-o', trace, WRAPPER, '--root', '/run/x', 'state', 'ID'], { env: { ...BASE_ENV } });
    if (st.error) announceSkip('loopfs-runtime: the no-fork check', 'strace not installed');
    else {
      const calls = readFileSync(trace, 'utf8').trim().split('\n').map((l) => l.replace(/^\d+ +/, '').replace(/\(.*$/, ''));
      expect(calls.slice(0, calls.indexOf('execve', 1) + 1)).toEqual(['execve', 'execve']);
    }
  });

  it('the real runtime: $LOOPFS_REAL_RUNTIME, else "runtime" of the wrapper config, else runc on PATH', () => {
    const cfg = path.join(tmp, 'runtime.json');
    const args = () => ['--root', '/run/x', 'create', '--bundle', bundle(), 'ID'];
    // no file: runc from PATH (the recorder named runc)
    expect(run(WRAPPER, args(), cwd).record).toContain(`name=${RECORDER}\n`);
    for (const text of [
      `{"runtime": "${OTHER}", "env": {"LOOPFS_RUNTIME_DIR": "/run/loopfs-test"}}`,
      `${JSON.stringify({ runtime: OTHER, env: { LOOPFS_LIMITS: '/etc/x' } }, null, 2)}\n`,
      `{"env":{"LOOPFS_LIMITS":"/etc/x"},\t"runtime"\t:\t"${OTHER}"}`,
    ]) {
      writeFileSync(cfg, text);
      for (const a of [args(), ['--root', '/run/x', 'start', 'ID']]) {
        expectSameAsDirect(a, cwd, { LOOPFS_RUNTIME_CONFIG: cfg }, OTHER);
      }
    }
    writeFileSync(cfg, '{"env": {}}');
    expect(run(WRAPPER, ['state', 'ID'], cwd, { LOOPFS_RUNTIME_CONFIG: cfg }).record).toContain(`name=${RECORDER}\n`);
    writeFileSync(cfg, `{"runtime": "${OTHER}"}`);
    expect(run(WRAPPER, ['state', 'ID'], cwd, { LOOPFS_RUNTIME_CONFIG: cfg, LOOPFS_REAL_RUNTIME: RECORDER }).record).toContain(`name=${RECORDER}\n`);
    expect(run(WRAPPER, ['state', 'ID'], cwd, { LOOPFS_RUNTIME_CONFIG: cfg }).record).toContain(`name=${OTHER}\n`);
  });

  it("the wrapper config's env is pinned into the hooks and decides the agent's socket", () => {
    const cfg = path.join(tmp, 'runtime-env.json');
    writeFileSync(cfg, JSON.stringify({ runtime: RECORDER, env: { LOOPFS_RUNTIME_DIR: '/run/loopfs-pinned', LOOPFS_LIMITS: '/etc/loopfs/limits-pinned' } }));
    const b = bundle();
    expect(run(WRAPPER, ['create', '--bundle', b, 'ID'], cwd, { LOOPFS_RUNTIME_CONFIG: cfg }).status).toBe(7);
    const doc = JSON.parse(readFileSync(path.join(b, 'config.json'), 'utf8'));
    const hook = (stage: string) => ({
      path: process.execPath,
      args: ['node', path.join(REPO_ROOT, 'bin', 'loopfs'), 'oci-hook', stage],
      env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'LOOPFS_DATA_DIR=/nonexistent', 'LOOPFS_RUNTIME_DIR=/run/loopfs-pinned', 'LOOPFS_LIMITS=/etc/loopfs/limits-pinned'],
    });
    expect(doc.hooks).toEqual({ createRuntime: [hook('createRuntime')], poststop: [hook('poststop')] });
    expect([doc.linux.seccomp.listenerPath, doc.linux.seccomp.listenerMetadata]).toEqual(['/run/loopfs-pinned/seccomp.sock', 'loopfs/1 mount=allow']);
  });

  it('an edited config.json keeps its mode and owner, is replaced by rename, and leaves no temporary file', () => {
    const b = bundle();
    const f = path.join(b, 'config.json');
    chmodSync(f, 0o640);
    chownSync(f, 1234, 2345);
    const before = statSync(f);
    expect(run(WRAPPER, ['create', '--bundle', b, 'ID'], cwd).status).toBe(7);
    const after = statSync(f);
    expect([after.mode & 0o7777, after.uid, after.gid, after.ino === before.ino]).toEqual([0o640, 1234, 2345, false]);
    expect(readdirSync(b)).toEqual(['config.json']);
  });

  it('64-bit seccomp argument values in the engine filter are written back exactly', () => {
    const b = bundle();
    const f = path.join(b, 'config.json');
    const rule = '{"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{"index":0,"value":18446744073709551615,"valueTwo":18446744073709551614,"op":"SCMP_CMP_MASKED_EQ"}]}';
    writeFileSync(f, `{"process":{"env":["LOOPFS_OCI=1"]},"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[${rule}]}}}`);
    expect(run(WRAPPER, ['create', '--bundle', b, 'ID'], cwd).status).toBe(7);
    const text = readFileSync(f, 'utf8');
    expect(text).toContain(`"syscalls":[${rule},{"names":["mount","umount2"],"action":"SCMP_ACT_NOTIFY"},`);
  });

  it('not opted in: the bundle is not even rewritten (same bytes, same inode, same mtime)', () => {
    const b = bundle({ ociVersion: '1.0.2', process: { args: ['true'], env: ['PATH=/bin', 'LOOPFS_OCI=0'] }, root: { path: 'rootfs' }, annotations: { a: 'b' } });
    const f = path.join(b, 'config.json');
    const [s0, st0] = [sha(f), statSync(f)];
    expectSameAsDirect(['create', '--bundle', b, 'ID'], cwd);
    const st1 = statSync(f);
    expect([sha(f), st1.ino, st1.mtimeMs, st1.ctimeMs]).toEqual([s0, st0.ino, st0.mtimeMs, st0.ctimeMs]);
    expect(readdirSync(b)).toEqual(['config.json']);
  });

  it('a malformed, missing or unreadable config.json: one line, exit 1, the runtime never runs, nothing written (also to --log as json)', () => {
    const bad = bundle();
    writeFileSync(path.join(bad, 'config.json'), '{"process": {"env": ["LOOPFS_OCI=1"');
    const notObj = bundle();
    writeFileSync(path.join(notObj, 'config.json'), '["io.loopfs.instance"]');
    const badOpt = bundle({ process: { env: ['LOOPFS_OCI=1', 'LOOPFS_OCI_POOL=999'] } });
    const other = bundle({ annotations: { 'io.loopfs.instance': 'true' }, linux: { seccomp: { defaultAction: 'SCMP_ACT_ALLOW', listenerPath: '/run/agent.sock' } } });
    const dirAsFile = bundle();
    rmSync(path.join(dirAsFile, 'config.json'));
    mkdirSync(path.join(dirAsFile, 'config.json'));
    const missing = path.join(tmp, 'no-bundle');
    for (const [b, line] of [
      [bad, `loopfs-runtime: ${bad}/config.json: not JSON`],
      [notObj, `loopfs-runtime: ${notObj}/config.json: expected a JSON object`],
      [badOpt, `loopfs-runtime: ${badOpt}/config.json: process.env LOOPFS_OCI*: annotation io.loopfs.pool=999: expected a number from 0 to 64`],
      [other, `loopfs-runtime: ${other}/config.json: linux.seccomp.listenerPath is already set (/run/agent.sock): another seccomp agent serves this container`],
      [dirAsFile, `loopfs-runtime: ${dirAsFile}/config.json: Is a directory`],
      [missing, `loopfs-runtime: ${missing}/config.json: No such file or directory`],
    ]) {
      const files = existsSync(b) ? readdirSync(b) : [];
      const sum = existsSync(path.join(b, 'config.json')) && statSync(path.join(b, 'config.json')).isFile() ? sha(path.join(b, 'config.json')) : null;
      const log = path.join(tmp, `log${n++}.json`);
      const r = run(WRAPPER, ['--root', '/run/x', '--log', log, '--log-format', 'json', 'create', '--bundle', b, 'ID'], cwd);
      expect([r.status, r.stdout, r.stderr, r.record]).toEqual([1, '', `${line}\n`, null]);
      const entry = JSON.parse(readFileSync(log, 'utf8'));
      expect([entry.level, entry.msg, Object.keys(entry)]).toEqual(['error', line, ['level', 'msg', 'time']]);
      expect(existsSync(b) ? readdirSync(b) : []).toEqual(files);
      if (sum) expect(sha(path.join(b, 'config.json'))).toBe(sum);
    }
    // --log without json: the line as it is
    const log = path.join(tmp, 'log-text');
    expect(run(WRAPPER, ['--log', log, 'run', '--bundle', bad, 'ID'], cwd).status).toBe(1);
    expect(readFileSync(log, 'utf8')).toBe(`loopfs-runtime: ${bad}/config.json: not JSON\n`);
  });

  it('a config.json without the opt-in words goes to the runtime without node, even a malformed one (the runtime reports it)', () => {
    const plain = bundle({ ociVersion: '1.0.2', process: { args: ['true'], env: ['PATH=/bin'] }, root: { path: 'rootfs' } });
    const broken = bundle();
    writeFileSync(path.join(broken, 'config.json'), '{"process": ');
    for (const b of [plain, broken]) {
      const sum = sha(path.join(b, 'config.json'));
      expectSameAsDirect(['--root', '/run/x', 'create', '--bundle', b, 'ID'], cwd);
      expect([sha(path.join(b, 'config.json')), readdirSync(b)]).toEqual([sum, ['config.json']]);
    }
    // what runs before the runtime: the wrapper, one grep, and no node
    const trace = path.join(tmp, 'trace-create');
    const st = spawnSync('strace', ['-f', '-qq', '-e', 'trace=execve', '-o', trace, WRAPPER, 'create', '--bundle', plain, 'ID'], { env: { ...BASE_ENV } });
    if (st.error) announceSkip('loopfs-runtime: the no-node check', 'strace not installed');
    else {
      const execs = readFileSync(trace, 'utf8').trim().split('\n').filter((l) => / execve\(/.test(l)).map((l) => l.replace(/^\d+ +execve\("([^"]+)".*$/, '$1'));
      expect(execs.slice(0, 3).map((e) => path.basename(e))).toEqual(['loopfs-runtime', 'grep', 'runc']);
    }
  });

  it('a malformed wrapper config: create refuses with one line (nothing run), other commands still exec', () => {
    const cfg = path.join(tmp, 'bad-runtime.json');
    for (const [text, line] of [
      ['{"runtime": ', 'not JSON'],
      ['["runc"]', 'expected a JSON object'],
      [`{"runtime": "${OTHER}", "debug": true}`, 'unknown key "debug" (expected "runtime", "env")'],
      [`{"runtime":\n"${OTHER}"}`, 'write "runtime" on one line as "runtime": "PATH" (bin/loopfs-runtime reads it without a JSON parser)'],
      ['{"runtime": "/usr/bin/ru\\u006ec"}', 'write "runtime" on one line as "runtime": "PATH" (bin/loopfs-runtime reads it without a JSON parser)'],
      ['{"runtime": "/a\\"b"}', '"runtime" must be a path or command name without quotes or backslashes'],
      ['{"runtime": 5}', '"runtime" must be a path or command name without quotes or backslashes'],
      ['{"env": {"PATH": "/x"}}', 'env: unknown variable PATH (expected LOOPFS_RUNTIME_DIR, LOOPFS_LIMITS)'],
      ['{"env": {"LOOPFS_LIMITS": 1}}', 'env: LOOPFS_LIMITS must be a string'],
      ['{"env": []}', '"env" must be an object'],
    ]) {
      writeFileSync(cfg, text);
      const b = bundle();
      const sum = sha(path.join(b, 'config.json'));
      const r = run(WRAPPER, ['create', '--bundle', b, 'ID'], cwd, { LOOPFS_RUNTIME_CONFIG: cfg });
      expect([text, r.status, r.stdout, r.stderr, r.record]).toEqual([text, 1, '', `loopfs-runtime: ${cfg}: ${line}\n`, null]);
      expect([sha(path.join(b, 'config.json')), readdirSync(b)]).toEqual([sum, ['config.json']]);
      expect(run(WRAPPER, ['state', 'ID'], cwd, { LOOPFS_RUNTIME_CONFIG: cfg }).status).toBe(7);
    }
  });
});
