// A container that vanished without its poststop hook (the runtime or conmon was killed):
// `loopfs gc` destroys its instance, and leaves the instance of a running one alone. The
// "container" is a real process in a private mount namespace (unshare -m, private
// propagation), so the hook's bind mount happens there and never on the host; the hook is
// the real `loopfs oci-hook createRuntime` with an OCI state on stdin.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { runProgram } from '../helpers/run.js';
import { BrokerSandbox } from '../broker/support.js';
import { sleep } from '../instance/support.js';
import { podmanSkipReason, text, LOOPFS } from './support.js';

const reason = podmanSkipReason('OCI hook gc');

describe.skipIf(!!reason)('loopfs gc and containers that vanished without poststop', () => {
  let sb: BrokerSandbox | null = null;
  let ct: ChildProcess | null = null;

  afterEach(async () => {
    if (ct && ct.exitCode === null && ct.signalCode === null) ct.kill('SIGKILL');
    ct = null;
    await sb?.teardown();
    sb = null;
  });

  it('gc keeps the instance while the init runs and destroys it once the init is gone', async () => {
    sb = new BrokerSandbox('loopfs-oci-gc');
    const rootfs = sb.path('bundle', 'rootfs');
    fs.mkdirSync(path.join(rootfs, 'dev'), { recursive: true });
    fs.writeFileSync(
      sb.path('bundle', 'config.json'),
      JSON.stringify({
        root: { path: 'rootfs' },
        annotations: { 'io.loopfs.instance': 'true', 'io.loopfs.pool': '2' },
        linux: { resources: { devices: [{ allow: false, access: 'rwm' }, { allow: true, type: 'b', major: 7, access: 'rw' }] } },
        process: { capabilities: { bounding: ['CAP_CHOWN'] } },
      }),
    );
    ct = spawn('unshare', ['-m', '--propagation', 'private', 'sleep', '600'], { stdio: 'ignore' });
    await sleep(200);
    const pid = ct.pid!;
    const id = 'vanished0123456789abcdef';
    const state = JSON.stringify({ ociVersion: '1.0.2', id, status: 'creating', pid, bundle: sb.path('bundle') });
    const hook = await runWithStdin(sb, ['oci-hook', 'createRuntime'], state);
    expect(text(hook.stderr)).toBe('');
    expect(hook.exitCode).toBe(0);

    const dir = path.join(sb.runtime, 'oci', '0', id);
    expect(Object.keys(sb.state(dir)?.devices ?? {}).length).toBe(2);
    // the links are in the container's /dev (its mount namespace shares the rootfs directory)
    expect(fs.readdirSync(path.join(rootfs, 'dev')).filter((n) => /^loop\d+$/.test(n)).length).toBe(2);
    // ... and the bind mount is only in the container's namespace
    expect(sb.mounts()).toEqual([]);
    const inNs = fs.readFileSync(`/proc/${pid}/mountinfo`, 'utf8');
    expect(inNs).toContain(`${rootfs}/dev/loopfs`);

    const alive = await sb.loopfs(['gc']);
    expect(alive.exitCode).toBe(0);
    expect(text(alive.stdout)).not.toContain('vanished container');
    expect(sb.state(dir)).not.toBeNull();

    ct.kill('SIGKILL');
    await new Promise((r) => ct!.once('exit', r));
    const gone = await sb.loopfs(['gc']);
    expect(gone.exitCode).toBe(0);
    expect(text(gone.stdout)).toContain(`destroyed the instance of vanished container ${id}`);
    expect(fs.existsSync(dir)).toBe(false);
    expect(sb.claims()).toEqual([]);
    expect(sb.registry()).toEqual([]);

    // poststop after all that: nothing to do, no error
    const post = await runWithStdin(sb, ['oci-hook', 'poststop'], JSON.stringify({ id, status: 'stopped', bundle: sb.path('bundle') }));
    expect(post.exitCode).toBe(0);
  });

  it('a malformed state or annotation is one error line, and nothing is created', async () => {
    sb = new BrokerSandbox('loopfs-oci-gc');
    const bad = await runWithStdin(sb, ['oci-hook', 'createRuntime'], '{"id":"../x","bundle":"/tmp"}');
    expect(text(bad.stderr)).toBe('loopfs: oci-hook: OCI state: invalid container id "../x"\n');
    expect(bad.exitCode).toBe(1);
    fs.mkdirSync(sb.path('b2', 'rootfs'), { recursive: true });
    fs.writeFileSync(sb.path('b2', 'config.json'), JSON.stringify({ root: { path: 'rootfs' }, annotations: { 'io.loopfs.instance': 'true', 'io.loopfs.pool': 'many' } }));
    const r = await runWithStdin(sb, ['oci-hook', 'createRuntime'], JSON.stringify({ id: 'abc', pid: process.pid, bundle: sb.path('b2') }));
    expect(text(r.stderr)).toBe('loopfs: oci-hook: annotation io.loopfs.pool=many: expected a number from 0 to 64\n');
    expect(r.exitCode).toBe(1);
    expect(fs.existsSync(path.join(sb.runtime, 'oci'))).toBe(false);
  });
});

/** `loopfs ARGS` with `input` on stdin, in the sandbox's environment. */
function runWithStdin(sb: BrokerSandbox, args: string[], input: string) {
  const file = sb.path(`stdin-${Date.now()}-${Math.random().toString(16).slice(2)}.json`);
  fs.writeFileSync(file, input);
  return runProgram('sh', ['-c', `exec "$0" "$@" < "${file}"`, LOOPFS, ...args], { env: sb.env, cwd: sb.root });
}
