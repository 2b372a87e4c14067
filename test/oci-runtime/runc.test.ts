// bin/loopfs-runtime in front of the real runc 1.1 with a busybox bundle:
//  - a container that did not opt in runs exactly as under plain runc (output, status,
//    the bundle's bytes);
//  - an opted-in container's edited config is accepted by runc: the Docker 20.10 default
//    filter with the agent rules compiles, runc hands the listener to the socket named
//    in listenerPath with our metadata and the opt-in annotation in its state, the
//    trapped mount(2) fails with ENOSYS once that listener is gone, and the loopfs hooks
//    run at createRuntime and poststop (nothing of the instance is left);
//  - with nobody listening on listenerPath runc refuses to start the container.
// The listener here is the test's own (it only reads the handshake); the real agent is
// engineer C's `loopfs oci-broker`, tested with real engines in test/engines.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { announceSkip, firstReason, loopSkipReason, REPO_ROOT } from '../helpers/env.js';
import { runProgram } from '../helpers/run.js';
import { buildRootfs } from '../oci/support.js';

const WRAPPER = path.join(REPO_ROOT, 'bin', 'loopfs-runtime');
const RUNC = spawnSync('sh', ['-c', 'command -v runc'], { encoding: 'utf8' }).stdout.trim();
const reason = firstReason(
  loopSkipReason(),
  RUNC ? undefined : 'runc not installed',
  existsSync('/bin/busybox') ? undefined : '/bin/busybox missing (busybox-static)',
  existsSync(path.join(REPO_ROOT, 'dist', 'oci', 'runtime-main.js')) ? undefined : 'dist/oci/runtime-main.js missing (run npm run build)',
);
announceSkip('loopfs-runtime with real runc', reason);

const tmp = mkdtempSync(path.join(os.tmpdir(), 'loopfs-runtime-runc-'));
const RUNC_ROOT = path.join(tmp, 'runc-root'); // runc's state: private, never /run/runc
const RT = path.join(tmp, 'rt'); // loopfs runtime dir of the hooks and the agent socket
const WRAPPER_CONFIG = path.join(tmp, 'runtime.json');
const ROOTFS = path.join(tmp, 'rootfs');
afterAll(() => {
  // every container is deleted by its test; this only catches a failed one
  for (const id of existsSync(RUNC_ROOT) ? readdirSync(RUNC_ROOT) : []) spawnSync(RUNC, ['--root', RUNC_ROOT, 'delete', '--force', id]);
  rmSync(tmp, { recursive: true, force: true });
});

const env = () => ({ PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', LOOPFS_RUNTIME_CONFIG: WRAPPER_CONFIG });
const sha = (f: string) => createHash('sha256').update(readFileSync(f)).digest('hex');
const docker = JSON.parse(readFileSync(path.join(REPO_ROOT, 'test', 'oci-runtime', 'fixtures', 'docker-20.10.json'), 'utf8'));

let n = 0;
/** A bundle from `runc spec` running `script` in the busybox rootfs. */
function bundle(script: string, edit: (c: Record<string, any>) => void = () => {}): string {
  const dir = path.join(tmp, `bundle${n++}`);
  mkdirSync(dir);
  execFileSync(RUNC, ['spec', '--bundle', dir]);
  const c = JSON.parse(readFileSync(path.join(dir, 'config.json'), 'utf8'));
  c.root = { path: ROOTFS, readonly: true };
  c.process.terminal = false;
  c.process.args = ['sh', '-c', script];
  edit(c);
  writeFileSync(path.join(dir, 'config.json'), JSON.stringify(c, null, '\t'));
  return dir;
}

async function runc(cmd: string, args: string[]) {
  const r = await runProgram(cmd, ['--root', RUNC_ROOT, ...args], { env: env(), timeoutMs: 30_000 });
  return { status: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** The test's stand-in for the agent: records each handshake's JSON, then closes. */
async function listener(sock: string): Promise<{ messages: unknown[]; close: () => Promise<void> }> {
  const messages: unknown[] = [];
  const server = net.createServer((c) => {
    const chunks: Buffer[] = [];
    c.on('data', (b) => chunks.push(b));
    c.on('end', () => {
      messages.push(JSON.parse(Buffer.concat(chunks).toString()));
      c.end();
    });
  });
  await new Promise<void>((res, rej) => server.once('error', rej).listen(sock, res));
  return { messages, close: () => new Promise<void>((res) => server.close(() => res())) };
}

const leftovers = () => ['instances', 'claims'].flatMap((d) => (existsSync(path.join(RT, d)) ? readdirSync(path.join(RT, d)).map((f) => `${d}/${f}`) : []));

describe.skipIf(reason)('loopfs-runtime with real runc', () => {
  beforeAll(() => {
    mkdirSync(ROOTFS);
    buildRootfs(ROOTFS);
  });

  it('a container that did not opt in: `runc run` through the wrapper behaves exactly as plain runc', async () => {
    writeFileSync(WRAPPER_CONFIG, JSON.stringify({ runtime: RUNC, env: { LOOPFS_RUNTIME_DIR: RT } }));
    for (const [script, status] of [
      ['echo hi', 0],
      ['echo hi; echo oops >&2; exit 3', 3],
    ] as const) {
      const b = bundle(script);
      const sum = sha(path.join(b, 'config.json'));
      const direct = await runc(RUNC, ['run', '--bundle', b, `plain${n}`]);
      const wrapped = await runc(WRAPPER, ['run', '--bundle', b, `wrapped${n}`]);
      expect(direct).toEqual({ status, stdout: 'hi\n', stderr: status ? 'oops\n' : '' });
      expect(wrapped).toEqual(direct);
      expect([sha(path.join(b, 'config.json')), readdirSync(b)]).toEqual([sum, ['config.json']]);
    }
    expect(readdirSync(RUNC_ROOT)).toEqual([]); // run deleted both
  });

  it("an opted-in container: runc accepts the edited Docker filter, hands the listener over with the engine's verdict, the hooks run", async () => {
    const sock = path.join(RT, 'seccomp.sock');
    mkdirSync(RT, { recursive: true });
    writeFileSync(WRAPPER_CONFIG, JSON.stringify({ runtime: RUNC, env: { LOOPFS_RUNTIME_DIR: RT, LOOPFS_LIMITS: path.join(tmp, 'limits') } }));
    const agent = await listener(sock);
    const id = `loopfs-rt-${process.pid}`;
    try {
      const b = bundle('mount -t tmpfs t /mnt; echo "mount=$?"; ls /dev/loopfs >/dev/null && echo has-instance', (c) => {
        c.process.env.push('LOOPFS_OCI=1', 'LOOPFS_OCI_POOL=1');
        c.linux.seccomp = docker.linux.seccomp; // Docker 20.10's resolved default profile
      });
      const r = await runc(WRAPPER, ['run', '--bundle', b, id]);
      expect(r).toEqual({ status: 0, stdout: 'mount=255\nhas-instance\n', stderr: 'mount: mounting t on /mnt failed: Function not implemented\n' });
      const edited = JSON.parse(readFileSync(path.join(b, 'config.json'), 'utf8'));
      expect(edited.annotations).toEqual({ 'io.loopfs.instance': 'true', 'io.loopfs.pool': '1' });
      expect(agent.messages).toHaveLength(1);
      const m = agent.messages[0] as Record<string, any>;
      expect([m.fds, m.metadata, m.state.id, m.state.bundle, m.state.annotations, typeof m.pid, m.pid > 0]).toEqual([
        ['seccompFd'],
        'loopfs/1 mount=errno:1', // Docker refuses mount(2) without CAP_SYS_ADMIN: EPERM
        id,
        b,
        { 'io.loopfs.instance': 'true', 'io.loopfs.pool': '1' },
        'number',
        true,
      ]);
    } finally {
      await agent.close();
      spawnSync(RUNC, ['--root', RUNC_ROOT, 'delete', '--force', id]);
    }
    expect(leftovers()).toEqual([]); // poststop destroyed the instance
    expect(readdirSync(RUNC_ROOT)).toEqual([]);
  });

  it('engine-style create, state, delete of an opted-in container: created with the annotations in its state; delete runs poststop', async () => {
    const sock = path.join(RT, 'seccomp.sock');
    mkdirSync(RT, { recursive: true });
    writeFileSync(WRAPPER_CONFIG, JSON.stringify({ runtime: RUNC, env: { LOOPFS_RUNTIME_DIR: RT, LOOPFS_LIMITS: path.join(tmp, 'limits') } }));
    const agent = await listener(sock);
    const id = `loopfs-rt-created-${process.pid}`;
    const log = path.join(tmp, `${id}.log`);
    try {
      const b = bundle('echo never started', (c) => c.process.env.push('LOOPFS_OCI=1'));
      // the container's stdio is runc create's: a file, as engines give it one
      const out = openSync(path.join(tmp, `${id}.out`), 'w');
      const created = await new Promise<number | null>((res, rej) => {
        const child = spawn(WRAPPER, ['--root', RUNC_ROOT, '--log', log, '--log-format', 'json', 'create', '--bundle', b, '--pid-file', path.join(tmp, `${id}.pid`), id], {
          env: env(),
          stdio: ['ignore', out, out],
        });
        child.on('error', rej).on('exit', (code) => res(code));
      });
      closeSync(out);
      expect([created, readFileSync(path.join(tmp, `${id}.out`), 'utf8')]).toEqual([0, '']);
      const state = JSON.parse((await runc(WRAPPER, ['state', id])).stdout);
      expect([state.status, state.annotations]).toEqual(['created', { 'io.loopfs.instance': 'true' }]);
      expect(agent.messages.map((m) => (m as Record<string, any>).metadata)).toEqual(['loopfs/1 mount=allow']); // runc spec has no filter
      expect(leftovers().filter((f) => f.startsWith('instances/'))).toHaveLength(1); // createRuntime made the instance
      expect(await runc(WRAPPER, ['delete', id])).toEqual({ status: 0, stdout: '', stderr: '' });
    } finally {
      await agent.close();
      spawnSync(RUNC, ['--root', RUNC_ROOT, 'delete', '--force', id]);
    }
    expect(leftovers()).toEqual([]); // poststop destroyed it
    expect(readdirSync(RUNC_ROOT)).toEqual([]);
  });

  it('version, help and state of a missing container: the same bytes and status as the runtime itself (runc, and crun where installed)', async () => {
    writeFileSync(WRAPPER_CONFIG, '{}');
    const crun = spawnSync('sh', ['-c', 'command -v crun'], { encoding: 'utf8' }).stdout.trim();
    if (!crun) announceSkip('loopfs-runtime: crun pass-through', 'crun not installed');
    for (const rt of [RUNC, ...(crun ? [crun] : [])]) {
      for (const args of [['--version'], ['-v'], ['--help'], ['state', 'no-such-container'], ['features']]) {
        const direct = await runProgram(rt, args, { env: env() });
        const wrapped = await runProgram(WRAPPER, args, { env: { ...env(), LOOPFS_REAL_RUNTIME: rt } });
        const norm = (r: typeof direct) => [r.exitCode, r.stdout.toString(), r.stderr.toString().replace(/time="[^"]+"/g, 'time=T')];
        expect([rt, ...args, ...norm(wrapped)]).toEqual([rt, ...args, ...norm(direct)]);
      }
    }
  });

  it('nobody listening on listenerPath: runc refuses to start the container, nothing is left', async () => {
    const rt = path.join(tmp, 'rt-silent');
    mkdirSync(rt);
    writeFileSync(WRAPPER_CONFIG, JSON.stringify({ runtime: RUNC, env: { LOOPFS_RUNTIME_DIR: rt } }));
    const b = bundle('echo started', (c) => c.process.env.push('LOOPFS_OCI=1'));
    const r = await runc(WRAPPER, ['run', '--bundle', b, `silent${process.pid}`]);
    expect([r.status, r.stdout]).toEqual([1, '']);
    expect(r.stderr).toMatch(
      new RegExp(`^time="[^"]+" level=error msg="runc run failed: unable to start container process: failed to connect with seccomp agent specified in the seccomp profile: dial unix ${rt}/seccomp.sock: connect: no such file or directory"\\n$`),
    );
    expect(readdirSync(RUNC_ROOT)).toEqual([]);
    expect(['instances', 'claims'].flatMap((d) => (existsSync(path.join(rt, d)) ? readdirSync(path.join(rt, d)) : []))).toEqual([]);
  });
});
