// `loopfs doctor` against real machines states: a healthy sandbox, a planted leak (an instance
// whose directory vanished with devices still tagged for it), stale nodes inside a live instance,
// an unreadable instance state, a broken limits file, and a broker that was SIGKILLed. Every case
// runs in its own runtime dir and limits file ($LOOPFS_RUNTIME_DIR, $LOOPFS_LIMITS), so the
// assertions about leftovers concern only what the test planted.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readLoopState } from '../helpers/devices.js';
import { AsyncClient, Server } from '../broker/support.js';
import { native } from '../../src/kernel/native.js';
import { instanceSkipReason, LOOPFS, minorOf, Sandbox, skipTitle, text } from '../instance/support.js';

const reason = instanceSkipReason('doctor tests');

interface Check {
  id: string;
  title: string;
  status: 'ok' | 'warn' | 'fail' | 'skip';
  detail: string;
  items?: string[];
  fix?: { command: string; safe: boolean };
}
interface Report {
  ok: boolean;
  checks: Check[];
  fixed: Array<{ command: string; exitCode: number | null; output: string }>;
}

describe.skipIf(reason)(skipTitle('loopfs doctor', reason), () => {
  let sb: Sandbox;
  beforeEach(() => {
    sb = new Sandbox('loopfs-doctor');
  });
  afterEach(async () => {
    await sb.cleanup();
  });

  async function doctor(args: string[] = []): Promise<{ exitCode: number | null; report: Report; stderr: string }> {
    const r = await sb.loopfs(['doctor', '--json', ...args]);
    return { exitCode: r.exitCode, report: JSON.parse(text(r.stdout)) as Report, stderr: text(r.stderr) };
  }
  const check = (rep: Report, id: string): Check => {
    const c = rep.checks.find((x) => x.id === id);
    if (!c) throw new Error(`no check ${id} in ${JSON.stringify(rep)}`);
    return c;
  };
  /** Checks that fail for reasons outside the sandbox (the host's own state): shown on failure. */
  const failing = (rep: Report) => rep.checks.filter((c) => c.status === 'fail').map((c) => `${c.id}: ${c.detail}`);

  async function take(dir: string, file?: string): Promise<number> {
    const r = await sb.losetup(['--instance', dir, '-f', ...(file ? ['--show', file] : [])]);
    expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
    return minorOf(text(r.stdout).trim());
  }

  it('healthy: a live instance with a bound and an idle device: every check passes, exit 0', async () => {
    const dir = sb.path('i');
    await sb.create(dir);
    await take(dir, sb.file('a.img'));
    await take(dir); // `-f` alone: an idle device, published
    const { exitCode, report, stderr } = await doctor();
    expect(stderr).toBe('');
    expect(failing(report)).toEqual([]);
    expect(exitCode).toBe(0);
    expect(report.ok).toBe(true);
    for (const id of ['loop-driver', 'limits', 'orphan-devices', 'stale-nodes', 'instance-state', 'brokers']) {
      expect(check(report, id).status, JSON.stringify(check(report, id))).toBe('ok');
    }
    // every check is there, each with a title and a detail line
    expect(report.checks.map((c) => c.id)).toEqual([
      'loop-driver', 'limits', 'orphan-devices', 'stale-nodes', 'instance-state', 'brokers', 'mount-helper', 'oci-hook', 'engines', 'kernel-loopfs',
    ]);
    for (const c of report.checks) expect(c.detail).not.toBe('');
  });

  it('planted leak: devices tagged for a vanished instance fail the check, name `loopfs gc`; --fix repairs, exit 0', async () => {
    const dir = sb.path('i');
    const st = await sb.create(dir);
    const file = sb.file('a.img');
    const bound = await take(dir, file);
    const idle = await take(dir);
    // the instance vanishes with its devices still claimed (rm -rf of a CI job's directory)
    fs.rmSync(dir, { recursive: true, force: true });

    const before = await doctor();
    expect(before.exitCode).toBe(1);
    expect(before.report.ok).toBe(false);
    const orphans = check(before.report, 'orphan-devices');
    expect(orphans.status).toBe('fail');
    expect(orphans.fix).toEqual({ command: 'loopfs gc', safe: true });
    expect(orphans.items).toEqual(expect.arrayContaining([
      `${dir}: registered instance ${st.id} is gone`,
      `loop${bound} (bound): tagged for instance ${st.id} (${dir}), which no longer exists`,
      `loop${idle}: tagged for instance ${st.id} (${dir}), which no longer exists`,
    ]));
    // nothing was changed by looking
    expect(sb.claims().map((c) => c.minor).sort()).toEqual([bound, idle].sort());
    expect(readLoopState(`loop${bound}`)?.backingFile).toBe(file);

    // the human output names the fix too, without colour (not a terminal)
    const human = await sb.loopfs(['doctor']);
    expect(human.exitCode).toBe(1);
    expect(text(human.stdout)).toMatch(/^FAIL +devices of vanished instances +3 leftover/m);
    expect(text(human.stdout)).toContain('fix: loopfs gc');
    expect(text(human.stdout)).not.toContain('\x1b[');

    const fixed = await doctor(['--fix']);
    expect(fixed.report.fixed.map((f) => [f.command, f.exitCode])).toEqual([['loopfs gc', 0]]);
    expect(fixed.report.fixed[0].output).toContain('removed device of a vanished instance');
    expect(check(fixed.report, 'orphan-devices').status).toBe('ok');
    expect(failing(fixed.report)).toEqual([]);
    expect(fixed.exitCode).toBe(0);
    expect(sb.claims()).toEqual([]);
    expect(sb.bound()).toEqual([]);
    expect((await doctor()).exitCode).toBe(0);
  });

  it('a container that vanished without its poststop hook: doctor names it (the pass gc runs first); --fix destroys its instance', async () => {
    const id = 'doctorvanished0123456789abcdef';
    const dir = path.join(sb.runtime, 'oci', '0', id);
    fs.mkdirSync(path.dirname(dir), { recursive: true });
    await sb.create(dir);
    const file = sb.file('a.img');
    await take(dir, file);
    // the record of a container whose init is gone: a pid that exited, a start time it never had
    const pid = spawnSync('true').pid;
    fs.writeFileSync(path.join(dir, '.oci.json'), JSON.stringify({ version: 1, container: id, pid, startTime: '1', requester: 0, createdAt: new Date().toISOString() }));

    const before = await doctor();
    expect(before.exitCode).toBe(1);
    const orphans = check(before.report, 'orphan-devices');
    expect(orphans.status).toBe('fail');
    expect(orphans.detail).toBe('1 leftover(s) of containers or instances that no longer exist');
    expect(orphans.items).toEqual([`${dir}: container ${id} is gone; its instance is still there`]);
    expect(orphans.fix).toEqual({ command: 'loopfs gc', safe: true });
    // nothing was changed by looking
    expect(sb.state(dir)).not.toBeNull();
    expect(sb.bound().map((b) => b.backingFile)).toEqual([file]);

    const fixed = await doctor(['--fix']);
    expect(fixed.report.fixed.map((f) => [f.command, f.exitCode])).toEqual([['loopfs gc', 0]]);
    expect(fixed.report.fixed[0].output).toContain(`destroyed the instance of vanished container ${id}`);
    expect(check(fixed.report, 'orphan-devices').status).toBe('ok');
    expect(fs.existsSync(dir)).toBe(false);
    expect(sb.bound()).toEqual([]);
    expect(sb.claims()).toEqual([]);
  });

  it('a live instance whose registry entry was lost: named as such, never as orphans; --fix registers it again and keeps its devices', async () => {
    const dir = sb.path('i');
    const st = await sb.create(dir);
    const file = sb.file('a.img');
    const m = await take(dir, file);
    fs.unlinkSync(path.join(sb.runtime, 'instances', `${st.id}.json`));

    const before = await doctor();
    expect(before.exitCode).toBe(1);
    expect(check(before.report, 'orphan-devices').status).toBe('ok');
    const stale = check(before.report, 'stale-nodes');
    expect(stale.status).toBe('fail');
    expect(stale.items).toEqual([`${dir}: instance ${st.id} holds devices but is not registered (its registry entry was lost)`]);

    const fixed = await doctor(['--fix']);
    expect(fixed.report.fixed.map((f) => [f.command, f.exitCode])).toEqual([['loopfs gc', 0]]);
    expect(check(fixed.report, 'stale-nodes').status).toBe('ok');
    expect(sb.registry().map((e) => [e.id, e.dir])).toEqual([[st.id, dir]]);
    expect(sb.claims().map((c) => [c.minor, c.id])).toEqual([[m, st.id]]);
    expect(readLoopState(`loop${m}`)?.backingFile).toBe(file);
    expect(Object.keys(sb.state(dir)!.devices)).toEqual([String(m)]);
  });

  it('stale nodes inside a live instance: a planted stray node and a missing node; --fix restores them', async () => {
    const dir = sb.path('i');
    await sb.create(dir);
    const m = await take(dir, sb.file('a.img'));
    fs.unlinkSync(path.join(dir, `loop${m}`));
    execFileSync('mknod', [path.join(dir, 'loop100000'), 'b', '7', '100000']);
    const before = await doctor();
    expect(before.exitCode).toBe(1);
    const stale = check(before.report, 'stale-nodes');
    expect(stale.status).toBe('fail');
    expect(stale.fix).toEqual({ command: 'loopfs gc', safe: true });
    expect(stale.items?.sort()).toEqual([
      `${dir}/loop${m}: node missing or wrong`,
      `${dir}/loop100000: not a node of any device the instance holds`,
    ].sort());
    const after = await doctor(['--fix']);
    expect(check(after.report, 'stale-nodes').status).toBe('ok');
    expect(after.exitCode).toBe(0);
    expect(fs.lstatSync(path.join(dir, `loop${m}`)).isBlockDevice()).toBe(true);
    expect(fs.existsSync(path.join(dir, 'loop100000'))).toBe(false);
  });

  it('an unreadable instance state: fails with the manual fix, which --fix does not run', async () => {
    const dir = sb.path('i');
    await sb.create(dir);
    fs.writeFileSync(path.join(dir, '.loopfs', 'state.json'), '{ torn');
    const r = await doctor(['--fix']);
    expect(r.exitCode).toBe(1);
    const c = check(r.report, 'instance-state');
    expect(c.status).toBe('fail');
    expect(c.fix).toEqual({ command: `rm -r ${dir}/.loopfs && loopfs gc`, safe: false });
    expect(r.report.fixed).toEqual([]);
    expect(fs.readFileSync(path.join(dir, '.loopfs', 'state.json'), 'utf8')).toBe('{ torn');
  });

  it('a limits file that does not parse: fails, and the fix deletes exactly the bad line', async () => {
    fs.writeFileSync(sb.limits, '# limits\n1000 8\n1001 lots\n');
    const r = await doctor();
    expect(r.exitCode).toBe(1);
    const c = check(r.report, 'limits');
    expect(c.status).toBe('fail');
    expect(c.fix).toEqual({ command: `sed -i '3d' ${sb.limits}`, safe: false });
    execFileSync('sh', ['-c', c.fix!.command]);
    expect(check((await doctor()).report, 'limits').status).toBe('ok');
  });

  it('a uid above its limit is a warning naming the limit to set', async () => {
    const dir = sb.path('i');
    await sb.create(dir, ['--owner', '1234:1234']);
    await take(dir, sb.file('a.img'));
    await take(dir, sb.file('b.img'));
    fs.writeFileSync(sb.limits, '1234 1\n');
    const c = check((await doctor()).report, 'limits');
    expect(c.status).toBe('warn');
    expect(c.items).toEqual([`uid 1234 holds 2 device(s), limit 1 (${sb.limits})`]);
    expect(c.fix).toEqual({ command: 'loopfs limits set 1234 2', safe: false });
  });

  it('a brokered instance whose broker was SIGKILLed: fails with `loopfs serve DIR`; a running broker is fine', async () => {
    const dir = sb.path('i');
    await sb.create(dir);
    const server = await Server.start(sb as never, [dir]);
    const n = native();
    const client = AsyncClient.connect(path.join(dir, 'loop-control'));
    const fd = n.open(sb.file('f.img'), n.constants.O_RDONLY);
    try {
      expect(check((await doctor()).report, 'brokers')).toMatchObject({ status: 'ok', detail: '1 brokered instance(s), every broker answers' });
      // a session device the broker will die holding
      const reply = await client.request({ v: 2, id: 1, op: 'attach', session: true }, [fd]);
      expect(reply?.ok, JSON.stringify(reply)).toBe(true);
      server.child.kill('SIGKILL');
      await server.stop();
    } finally {
      n.close(fd);
      client.close();
      await server.stop();
    }
    expect(fs.lstatSync(path.join(dir, 'loop-control')).isSocket()).toBe(true); // the stale socket
    const r = await doctor(['--fix']);
    expect(r.exitCode).toBe(1);
    const c = check(r.report, 'brokers');
    expect(c.status).toBe('fail');
    expect(c.items).toEqual([`${dir}/loop-control: connection refused; 1 session device(s) left attached (loopfs gc settles them)`]);
    expect(c.fix).toEqual({ command: `loopfs serve ${dir}`, safe: false });
    expect(r.report.fixed).toEqual([]); // starting a daemon is never automatic
    // gc settles the dead broker's session device, as the item says
    expect((await sb.loopfs(['gc'])).exitCode).toBe(0);
    expect(check((await doctor()).report, 'brokers').items).toEqual([`${dir}/loop-control: connection refused`]);
  });

  it('as an unprivileged user: the checks that need root say so instead of guessing', async () => {
    const dir = sb.path('i');
    await sb.create(dir);
    const r = spawnSync('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', LOOPFS, 'doctor', '--json'], {
      env: { ...sb.env, HOME: '/tmp' },
      cwd: '/',
      encoding: 'utf8',
    });
    const report = JSON.parse(r.stdout) as Report;
    for (const id of ['orphan-devices', 'stale-nodes', 'instance-state']) expect(check(report, id).status).toBe('skip');
    expect(check(report, 'loop-driver').status).toBe('ok');
  });

  it('the OCI hook: not installed is a warning, installed is ok, a hook naming a loopfs that is gone fails', async () => {
    // podman's hooks directories, overlaid with a tmpfs in a private mount namespace: the
    // machine's own are never touched
    const hooks = '/etc/containers/oci/hooks.d';
    const record = sb.path('install.json');
    const script = [
      'set -e',
      'mount -t tmpfs tmpfs /etc/containers',
      'mkdir -p /usr/share/containers/oci && mount -t tmpfs tmpfs /usr/share/containers/oci',
      `${LOOPFS} doctor --json > ${sb.path('none.json')} || true`,
      `${LOOPFS} install --no-losetup --helper-dir ${sb.path('helpers')} --prefix ${sb.path('prefix')} --record ${record} --oci-hooks ${hooks} > /dev/null`,
      `${LOOPFS} doctor --json > ${sb.path('installed.json')} || true`,
      `sed -i 's#"path": "[^"]*"#"path": "/nonexistent/node"#' ${hooks}/loopfs-poststop.json`,
      `${LOOPFS} doctor --json > ${sb.path('broken.json')} || true`,
    ].join('\n');
    execFileSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script], { env: sb.env, stdio: 'inherit' });
    const read = (name: string) => check(JSON.parse(fs.readFileSync(sb.path(name), 'utf8')) as Report, 'oci-hook');
    expect(read('none.json')).toMatchObject({ status: 'warn', fix: { command: `loopfs install --oci-hooks ${hooks}`, safe: false } });
    expect(read('installed.json')).toMatchObject({ status: 'ok', detail: `installed in ${hooks}` });
    expect(read('broken.json')).toMatchObject({
      status: 'fail',
      items: [`${hooks}: poststop broken`],
      fix: { command: `loopfs uninstall && loopfs install --oci-hooks ${hooks}`, safe: false },
    });
  });

  it('colour only on a terminal, and never with NO_COLOR', async () => {
    const dir = sb.path('i');
    await sb.create(dir);
    const pty = (env: Record<string, string>) =>
      execFileSync('script', ['-qec', `${LOOPFS} doctor`, '/dev/null'], { env: { ...sb.env, TERM: 'xterm', ...env }, encoding: 'utf8' });
    let out = '';
    try {
      out = pty({});
    } catch (e) {
      out = String((e as { stdout?: string }).stdout ?? ''); // exit 1 when the host has a failing check
    }
    expect(out).toMatch(/\x1b\[32mok\x1b\[39m +loop driver/);
    let plain = '';
    try {
      plain = pty({ NO_COLOR: '1' });
    } catch (e) {
      plain = String((e as { stdout?: string }).stdout ?? '');
    }
    expect(plain).toMatch(/^ok +loop driver/m);
    expect(plain).not.toContain('\x1b[');
  });
});
