// `loopfs doctor`'s engines check against real states: the runtime registered by a real
// `loopfs install --runtime` into scratch engine files (found through the install record,
// $LOOPFS_INSTALL_RECORD), with the seccomp agent down and with a real `loopfs oci-broker`
// listening on the sandbox's RUNTIME/seccomp.sock; files that do not register it; and a
// registration naming a wrapper that is gone. Every case has its own runtime dir.
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/env.js';
import { Server } from '../broker/support.js';
import { instanceSkipReason, Sandbox, skipTitle, text } from '../instance/support.js';

const reason = instanceSkipReason('doctor engines tests');
const WRAPPER = path.join(REPO_ROOT, 'bin', 'loopfs-runtime');

interface Check {
  id: string;
  status: 'ok' | 'warn' | 'fail' | 'skip';
  detail: string;
  items?: string[];
  fix?: { command: string; safe: boolean };
}

describe.skipIf(reason)(skipTitle('loopfs doctor: container engines', reason), () => {
  let sb: Sandbox;
  let broker: Server | undefined;
  beforeEach(() => {
    sb = new Sandbox('loopfs-doctor-engines');
  });
  afterEach(async () => {
    await broker?.stop();
    broker = undefined;
    await sb.cleanup();
  });

  const record = () => sb.path('install.json');
  const files = () => ({
    docker: sb.path('etc/docker/daemon.json'),
    containerd: sb.path('etc/containerd/config.toml'),
    podman: sb.path('etc/containers/containers.conf.d/loopfs.conf'),
  });
  async function engines(): Promise<{ exitCode: number | null; check: Check }> {
    const r = await sb.loopfs(['doctor', '--json'], { env: { LOOPFS_INSTALL_RECORD: record() } });
    const rep = JSON.parse(text(r.stdout)) as { checks: Check[] };
    const check = rep.checks.find((c) => c.id === 'engines');
    if (!check) throw new Error(`no engines check in ${text(r.stdout)}`);
    return { exitCode: r.exitCode, check };
  }
  async function installRuntimes(): Promise<void> {
    const r = await sb.loopfs([
      'install', '--runtime', 'docker,containerd,podman', '--prefix', sb.path('usr'), '--helper-dir', sb.path('sbin'),
      '--record', record(), '--docker-config', files().docker, '--containerd-config', files().containerd,
      '--containers-conf-dir', path.dirname(files().podman), '--runtime-config', sb.path('etc/loopfs/runtime.json'),
    ]);
    expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
  }
  const socket = () => path.join(sb.env.LOOPFS_RUNTIME_DIR as string, 'seccomp.sock');
  const registeredItems = () => [
    `docker: runtime loopfs registered in ${files().docker} (${WRAPPER})`,
    `containerd: runtime loopfs registered in ${files().containerd} (${WRAPPER})`,
    `podman: runtime loopfs registered in ${files().podman} (${WRAPPER})`,
  ];

  it('registered with all three, agent down: fail, each engine named, fix `loopfs oci-broker`, exit 1', async () => {
    await installRuntimes();
    const { exitCode, check } = await engines();
    expect(check).toEqual({
      id: 'engines',
      title: 'container engines',
      status: 'fail',
      detail: 'runtime loopfs is registered (docker,containerd,podman) but the seccomp agent is not listening: containers that ask for an instance fail to start',
      items: [...registeredItems(), `seccomp agent: not listening on ${socket()}`],
      fix: { command: 'loopfs oci-broker', safe: false },
    });
    expect(exitCode).toBe(1);
    // the human output says the same, with the fix
    const human = await sb.loopfs(['doctor'], { env: { LOOPFS_INSTALL_RECORD: record() } });
    expect(text(human.stdout)).toMatch(/^FAIL +container engines +runtime loopfs is registered/m);
    expect(text(human.stdout)).toContain(`seccomp agent: not listening on ${socket()}\n`);
  });

  it('registered, and a real loopfs oci-broker listening on seccomp.sock: ok', async () => {
    await installRuntimes();
    broker = await Server.launch(sb, ['oci-broker']);
    const { check } = await engines();
    expect(check.status).toBe('ok');
    expect(check.detail).toBe(
      `runtime loopfs registered with docker (${files().docker}), containerd (${files().containerd}), podman (${files().podman}); the seccomp agent is listening`,
    );
    expect(check.items).toEqual([...registeredItems(), `seccomp agent: listening on ${socket()}`]);
    expect(check.fix).toBeUndefined();
    // asking was a bare connect: the agent did not take it for a refused handshake
    expect(broker.stdout.join('') + broker.stderr.join('')).not.toContain('handshake refused');

    // and after the agent stops, the same files fail again
    await broker.stop();
    broker = undefined;
    expect((await engines()).check.status).toBe('fail');
  });

  it('engine files without the runtime: warn with the install command; after uninstall too', async () => {
    await installRuntimes();
    // uninstall gives the files back; keep a record naming them, as an install that registered nothing would
    const rec = fs.readFileSync(record(), 'utf8');
    const u = await sb.loopfs(['uninstall', '--record', record()]);
    expect(u.exitCode).toBe(0);
    fs.mkdirSync(path.dirname(files().docker), { recursive: true });
    fs.mkdirSync(path.dirname(files().containerd), { recursive: true });
    fs.writeFileSync(files().docker, '{"debug": true}\n');
    fs.writeFileSync(files().containerd, 'version = 2\n');
    fs.writeFileSync(record(), rec);
    const { check } = await engines();
    expect(check.status).toBe('warn');
    expect(check.detail).toBe('runtime loopfs is not registered with docker, containerd, podman: their containers cannot ask for an instance through it');
    expect(check.items).toEqual([
      `docker: not registered (${files().docker})`,
      `containerd: not registered (${files().containerd})`,
      `podman: not registered (${files().podman})`,
      `seccomp agent: not listening on ${socket()}`,
    ]);
    expect(check.fix).toEqual({ command: 'loopfs install --runtime docker,containerd,podman', safe: false });
  });

  it('a registration naming a wrapper that is gone: fail, named, with the reinstall', async () => {
    await installRuntimes();
    const gone = sb.path('old-checkout/bin/loopfs-runtime');
    fs.writeFileSync(files().docker, `${JSON.stringify({ runtimes: { loopfs: { path: gone } } })}\n`);
    const { exitCode, check } = await engines();
    expect(check.status).toBe('fail');
    expect(check.detail).toBe('runtime loopfs names a wrapper that is gone (docker): containers run with --runtime loopfs fail to start');
    expect(check.items?.[0]).toBe(`docker: runtime loopfs registered in ${files().docker} (${gone}: missing)`);
    expect(check.fix).toEqual({ command: 'loopfs uninstall && loopfs install --runtime docker', safe: false });
    expect(exitCode).toBe(1);
  });
});
