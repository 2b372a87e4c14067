/**
 * `loopfs install --runtime docker|containerd|podman` and its uninstall, on engine files in
 * a scratch directory (never the host's /etc/docker, /etc/containerd, /etc/containers),
 * then with the real engines: a private dockerd (own data-root, exec-root, socket, pidfile)
 * reloads the merged daemon.json; a private containerd (own root, state, sockets) loads the
 * edited config.toml with its CRI plugin intact; podman, in a private mount namespace whose
 * /etc/containers is an overlay, knows the runtime from the drop-in.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { announceSkip, firstReason, REPO_ROOT } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';

const LOOPFS = join(REPO_ROOT, 'bin', 'loopfs');
const WRAPPER = join(REPO_ROOT, 'bin', 'loopfs-runtime');

function loopfs(args: string[], env: NodeJS.ProcessEnv = process.env) {
  const r = spawnSync(LOOPFS, args, { encoding: 'utf8', env });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Every file under dir with its sha256 (symlinks by target, directories by name): what "unchanged" means. */
function snapshot(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(rel, e.name);
      const full = join(d, e.name);
      if (e.isSymbolicLink()) out.push(`${p} -> ${readlinkSync(full)}`);
      else if (e.isDirectory()) {
        out.push(`${p}/`);
        walk(full, p);
      } else out.push(`${p} ${createHash('sha256').update(readFileSync(full)).digest('hex')}`);
    }
  };
  walk(dir, '');
  return out.sort();
}

/** Debian 12's /etc/containerd/config.toml (containerd 1.6.20~ds1-1+deb12u3), byte for byte. */
const DEBIAN_CONTAINERD = `version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
`;

const CONTAINERD_BLOCK = `# BEGIN loopfs: the runtime loopfs (loopfs install --runtime containerd; loopfs uninstall removes this block)
# configuring any runtime replaces containerd's built-in list: keep the default one
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.loopfs]
  runtime_type = "io.containerd.runc.v2"
  pod_annotations = ["io.loopfs.*"]
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.loopfs.options]
    BinaryName = "${WRAPPER}"
# END loopfs
`;

const DAEMON_JSON = '{\n\t"log-level": "warn",\n\t"runtimes": {"other": {"path": "/usr/bin/other-runtime"}}\n}\n';

describe('loopfs install --runtime / uninstall (scratch files)', () => {
  let scratch = '';
  afterEach(() => {
    if (scratch) removeTree(scratch);
    scratch = '';
  });

  const p = (rel: string) => join(scratch, rel);
  const flags = () => [
    '--prefix', p('usr/local'), '--helper-dir', p('sbin'), '--record', p('var/install.json'),
    '--docker-config', p('etc/docker/daemon.json'), '--containerd-config', p('etc/containerd/config.toml'),
    '--containers-conf-dir', p('etc/containers/containers.conf.d'), '--runtime-config', p('etc/loopfs/runtime.json'),
  ];
  const engineFiles = () => {
    mkdirSync(p('etc/docker'), { recursive: true });
    mkdirSync(p('etc/containerd'), { recursive: true });
    writeFileSync(p('etc/docker/daemon.json'), DAEMON_JSON);
    writeFileSync(p('etc/containerd/config.toml'), DEBIAN_CONTAINERD);
  };
  // the runc install finds first on a PATH without loopfs's bin/
  const runc = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'].map((d) => join(d, 'runc')).find((f) => existsSync(f));
  const pinned = { LOOPFS_RUNTIME_DIR: '/run/loopfs-test', LOOPFS_LIMITS: '/etc/loopfs/limits-test' };

  it('merges daemon.json, appends the containerd block, writes the podman drop-in and runtime.json: exact contents', () => {
    scratch = makeTempDir('loopfs-runtime-install');
    engineFiles();
    const r = loopfs(['install', '--runtime', 'docker,containerd', '--runtime', 'podman', ...flags()], { ...process.env, ...pinned });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout.split('\n').filter((l) => !l.startsWith(p('usr')) && !l.startsWith(p('sbin')))).toEqual([
      `${p('etc/docker/daemon.json')}: runtime loopfs added`,
      `${p('etc/containerd/config.toml')}: runtime loopfs added`,
      p('etc/containers/containers.conf.d/loopfs.conf'),
      p('etc/loopfs/runtime.json'),
      'docker: reload dockerd to use it: systemctl reload docker (or kill -HUP $(pidof dockerd))',
      'containerd: restart containerd to use it: systemctl restart containerd',
      'podman: podman reads it at its next command: no restart needed',
      '',
    ]);
    // everything that was there is kept, in its order and indentation (tabs here)
    expect(readFileSync(p('etc/docker/daemon.json'), 'utf8')).toBe(
      `{\n\t"log-level": "warn",\n\t"runtimes": {\n\t\t"other": {\n\t\t\t"path": "/usr/bin/other-runtime"\n\t\t},\n\t\t"loopfs": {\n\t\t\t"path": "${WRAPPER}"\n\t\t}\n\t}\n}\n`,
    );
    expect(readFileSync(p('etc/containerd/config.toml'), 'utf8')).toBe(`${DEBIAN_CONTAINERD}\n${CONTAINERD_BLOCK}`);
    expect(readFileSync(p('etc/containers/containers.conf.d/loopfs.conf'), 'utf8')).toBe(
      `# the runtime loopfs (loopfs install --runtime podman; loopfs uninstall removes this file)\n[engine.runtimes]\nloopfs = ["${WRAPPER}"]\n`,
    );
    expect(JSON.parse(readFileSync(p('etc/loopfs/runtime.json'), 'utf8'))).toEqual({ ...(runc ? { runtime: runc } : {}), env: pinned });
    // the wrapper reads "runtime" without a JSON parser: it must be on one line of its own
    if (runc) expect(readFileSync(p('etc/loopfs/runtime.json'), 'utf8')).toContain(`\n  "runtime": "${runc}",\n`);
  });

  it('a second install changes nothing, and so does one where the runtime is registered already by hand', () => {
    scratch = makeTempDir('loopfs-runtime-install');
    engineFiles();
    expect(loopfs(['install', '--runtime', 'docker,containerd,podman', ...flags()]).status).toBe(0);
    const after = snapshot(scratch);
    const again = loopfs(['install', '--runtime', 'podman,docker', '--runtime', 'containerd', ...flags()]);
    expect([again.status, again.stderr]).toEqual([0, '']);
    expect(again.stdout).toBe(
      ['podman', 'docker', 'containerd'].map((e) => `${e}: runtime loopfs is already registered (see ${p('var/install.json')})\n`).join(''),
    );
    expect(snapshot(scratch)).toEqual(after);

    // no record of ours, but the files already name the wrapper: nothing to add, nothing recorded for them
    const other = p('var/other.json');
    const r = loopfs(['install', '--runtime', 'docker,containerd,podman', '--prefix', p('usr2'), '--helper-dir', p('sbin2'), '--record', other, ...flags().slice(6)]);
    expect(r.stderr).toBe('');
    expect(r.stdout).toContain(`docker: runtime loopfs is already registered in ${p('etc/docker/daemon.json')}\n`);
    expect(r.stdout).toContain(`containerd: runtime loopfs is already registered in ${p('etc/containerd/config.toml')}\n`);
    expect(r.stdout).toContain(`podman: runtime loopfs is already registered in ${p('etc/containers/containers.conf.d/loopfs.conf')}\n`);
    const rec = JSON.parse(readFileSync(other, 'utf8')) as { changes: Array<{ path: string }> };
    expect(rec.changes.map((c) => c.path).filter((x) => x.startsWith(p('etc')))).toEqual([]);
  });

  it('a runtime added to an earlier install joins its record; uninstall gives every file back byte for byte', () => {
    scratch = makeTempDir('loopfs-runtime-install');
    engineFiles();
    const before = snapshot(scratch);
    expect(loopfs(['install', ...flags()]).status).toBe(0);
    const r = loopfs(['install', '--runtime', 'docker,containerd,podman', ...flags()]);
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(r.stdout).not.toContain('mount.loop'); // the earlier install stays as it was
    const u = loopfs(['uninstall', '--record', p('var/install.json')]);
    expect([u.status, u.stderr]).toEqual([0, '']);
    expect(u.stdout).toContain(`undone: ${p('etc/docker/daemon.json')}\n`);
    expect(u.stdout).toContain('\ndocker: reload dockerd to drop runtime loopfs: systemctl reload docker\n');
    expect(u.stdout).toContain('\ncontainerd: restart containerd to drop runtime loopfs: systemctl restart containerd\n');
    expect(snapshot(scratch).filter((x) => !x.startsWith('var'))).toEqual(before);
    expect(readFileSync(p('etc/docker/daemon.json'), 'utf8')).toBe(DAEMON_JSON);
    expect(readFileSync(p('etc/containerd/config.toml'), 'utf8')).toBe(DEBIAN_CONTAINERD);
  });

  it('files that did not exist are created and removed again, with the directories made for them', () => {
    scratch = makeTempDir('loopfs-runtime-install');
    const before = snapshot(scratch);
    const r = loopfs(['install', '--runtime', 'docker,containerd', ...flags()]);
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(readFileSync(p('etc/docker/daemon.json'), 'utf8')).toBe(`{\n  "runtimes": {\n    "loopfs": {\n      "path": "${WRAPPER}"\n    }\n  }\n}\n`);
    expect(readFileSync(p('etc/containerd/config.toml'), 'utf8')).toBe(`version = 2\n\n${CONTAINERD_BLOCK}`);
    expect(loopfs(['uninstall', '--record', p('var/install.json')]).status).toBe(0);
    expect(snapshot(scratch).filter((x) => !x.startsWith('var'))).toEqual(before);
  });

  it('files edited after install: uninstall takes out only the runtime loopfs and keeps the edits', () => {
    scratch = makeTempDir('loopfs-runtime-install');
    engineFiles();
    expect(loopfs(['install', '--runtime', 'docker,containerd', ...flags()]).status).toBe(0);
    const dj = JSON.parse(readFileSync(p('etc/docker/daemon.json'), 'utf8')) as Record<string, unknown>;
    writeFileSync(p('etc/docker/daemon.json'), JSON.stringify({ ...dj, debug: true }, null, '\t'));
    writeFileSync(p('etc/containerd/config.toml'), `${readFileSync(p('etc/containerd/config.toml'), 'utf8')}\n[debug]\n  level = "debug"\n`);
    const u = loopfs(['uninstall', '--record', p('var/install.json')]);
    expect(u.status).toBe(0);
    expect(u.stderr).toBe('');
    expect(u.stdout).toContain(`\n${p('etc/docker/daemon.json')}: changed since install; removed only runtime loopfs\n`);
    expect(u.stdout).toContain(`\n${p('etc/containerd/config.toml')}: changed since install; removed only runtime loopfs\n`);
    expect(JSON.parse(readFileSync(p('etc/docker/daemon.json'), 'utf8'))).toEqual({
      'log-level': 'warn',
      runtimes: { other: { path: '/usr/bin/other-runtime' } },
      debug: true,
    });
    expect(readFileSync(p('etc/containerd/config.toml'), 'utf8')).toBe(`${DEBIAN_CONTAINERD}\n[debug]\n  level = "debug"\n`);
  });

  for (const [what, content, message] of [
    ['malformed', '{"log-level": "warn",\n', (f: string) => `${f}: not valid JSON (`],
    ['an array', '["log-level"]\n', (f: string) => `${f}: not a JSON object; not changing it`],
    ['runtimes not an object', '{"runtimes": ["runc"]}\n', (f: string) => `${f}: "runtimes" is not an object; not changing it`],
    ['loopfs registered as something else', '{"runtimes": {"loopfs": {"path": "/opt/x"}}}\n', (f: string) => `${f}: runtime "loopfs" is already registered as {"path":"/opt/x"}; not replacing it`],
  ] as const) {
    it(`daemon.json ${what}: refused with one line, nothing changed`, () => {
      scratch = makeTempDir('loopfs-runtime-install');
      engineFiles();
      writeFileSync(p('etc/docker/daemon.json'), content);
      const before = snapshot(scratch);
      // containerd and podman come first on the command line: the refusal must undo nothing because nothing was done
      const r = loopfs(['install', '--runtime', 'containerd,podman,docker', ...flags()]);
      expect(r.status).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr.split('\n')).toHaveLength(2);
      expect(r.stderr.startsWith(`loopfs: ${message(p('etc/docker/daemon.json'))}`)).toBe(true);
      expect(snapshot(scratch)).toEqual(before);
    });
  }

  it('a containerd config that is not version 2: the snippet is printed, the file is not touched', () => {
    scratch = makeTempDir('loopfs-runtime-install');
    mkdirSync(p('etc/containerd'), { recursive: true });
    writeFileSync(p('etc/containerd/config.toml'), 'root = "/var/lib/containerd"\n');
    const before = snapshot(scratch);
    const r = loopfs(['install', '--runtime', 'containerd', ...flags()]);
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(r.stdout.split('\n').slice(-11)).toEqual([
      `containerd: ${p('etc/containerd/config.toml')} is a version 1 containerd config; add this to it (the runc entry only if it configures no runtime yet), then restart containerd:`,
      "# configuring any runtime replaces containerd's built-in list: keep the default one",
      '[plugins.cri.containerd.runtimes.runc]',
      '  runtime_type = "io.containerd.runc.v2"',
      '',
      '[plugins.cri.containerd.runtimes.loopfs]',
      '  runtime_type = "io.containerd.runc.v2"',
      '  pod_annotations = ["io.loopfs.*"]',
      '  [plugins.cri.containerd.runtimes.loopfs.options]',
      `    BinaryName = "${WRAPPER}"`,
      '',
    ]);
    expect(existsSync(p('etc/loopfs/runtime.json'))).toBe(false); // no runtime registered: no wrapper config either
    expect(readFileSync(p('etc/containerd/config.toml'), 'utf8')).toBe('root = "/var/lib/containerd"\n');
    expect(snapshot(scratch).filter((x) => x.startsWith('etc'))).toEqual(before.filter((x) => x.startsWith('etc')));
  });

  it('an unknown engine is refused with one line', () => {
    scratch = makeTempDir('loopfs-runtime-install');
    const r = loopfs(['install', '--runtime', 'docker,lxd', ...flags()]);
    expect([r.status, r.stdout, r.stderr]).toEqual([1, '', "loopfs: unknown container engine 'lxd' (expected docker, containerd, podman)\n"]);
    expect(readdirSync(scratch)).toEqual([]);
  });
});

// ---- the real engines read what install wrote ---------------------------------------------

const root = process.getuid?.() === 0;
const has = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;

/** Wait until `probe` succeeds (a daemon answering on its socket), at most `ms`. */
async function until(probe: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!probe()) {
    if (Date.now() > end) throw new Error(`${what} did not come up within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Stop a daemon we started, by its pid, and wait for it to be gone. */
async function stop(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  await gone;
  clearTimeout(timer);
}

const dockerReason = firstReason(root ? undefined : 'needs root to start dockerd', has('dockerd') && has('docker') ? undefined : 'dockerd/docker not installed');
const containerdReason = firstReason(root ? undefined : 'needs root to start containerd', has('containerd') && has('ctr') ? undefined : 'containerd/ctr not installed');
const podmanReason = firstReason(
  root ? undefined : 'needs root for a private mount namespace',
  has('podman') ? undefined : 'podman not installed',
  existsSync(WRAPPER) ? undefined : `${WRAPPER} is missing (podman checks that a runtime's path exists)`,
);
announceSkip('install --runtime docker with a private dockerd', dockerReason);
announceSkip('install --runtime containerd with a private containerd', containerdReason);
announceSkip('install --runtime podman with podman (overlay /etc/containers)', podmanReason);

describe('the engines load what install --runtime wrote', () => {
  let scratch = '';
  let daemon: ChildProcess | undefined;
  afterEach(async () => {
    await stop(daemon);
    daemon = undefined;
    if (scratch) removeTree(scratch);
    scratch = '';
  });
  const base = () => ['--prefix', join(scratch, 'usr'), '--helper-dir', join(scratch, 'sbin'), '--record', join(scratch, 'rec.json'), '--runtime-config', join(scratch, 'runtime.json')];

  it.skipIf(!!dockerReason)('dockerd started before the install knows runtime loopfs after a reload (SIGHUP); after uninstall, a restarted one does not', async () => {
    scratch = makeTempDir('loopfs-runtime-dockerd');
    const sock = join(scratch, 'd.sock');
    const conf = join(scratch, 'daemon.json');
    const original = `${JSON.stringify({ iptables: false, ip6tables: false, bridge: 'none', 'data-root': join(scratch, 'data'), 'exec-root': join(scratch, 'exec'), pidfile: join(scratch, 'dockerd.pid'), hosts: [`unix://${sock}`] }, null, 2)}\n`;
    writeFileSync(conf, original);
    daemon = spawn('dockerd', ['--config-file', conf], { stdio: ['ignore', 'ignore', 'ignore'] });
    const runtimes = () => {
      const r = spawnSync('docker', ['-H', `unix://${sock}`, 'info', '--format', '{{json .Runtimes}}'], { encoding: 'utf8' });
      return r.status === 0 ? (JSON.parse(r.stdout) as Record<string, { path: string }>) : null;
    };
    await until(() => runtimes() !== null, 30_000, 'dockerd');
    expect(runtimes()?.loopfs).toBeUndefined();

    const r = loopfs(['install', '--runtime', 'docker', '--docker-config', conf, ...base()]);
    expect([r.status, r.stderr]).toEqual([0, '']);
    daemon.kill('SIGHUP');
    await until(() => runtimes()?.loopfs !== undefined, 10_000, 'the reloaded runtime');
    expect(runtimes()?.loopfs).toEqual({ path: WRAPPER });

    const u = loopfs(['uninstall', '--record', join(scratch, 'rec.json')]);
    expect([u.status, u.stderr]).toEqual([0, '']);
    expect(readFileSync(conf, 'utf8')).toBe(original);
    // daemon.json names no runtimes any more, and then a reload keeps the ones dockerd knows: restart
    expect(u.stdout).toContain('\ndocker: restart dockerd to drop runtime loopfs: systemctl restart docker\n');
    await stop(daemon);
    daemon = spawn('dockerd', ['--config-file', conf], { stdio: ['ignore', 'ignore', 'ignore'] });
    await until(() => runtimes() !== null, 30_000, 'dockerd, restarted');
    expect(runtimes()?.loopfs).toBeUndefined();
  }, 90_000);

  it.skipIf(!!containerdReason)("a private containerd loads the edited Debian config: the CRI plugin is ok and the runtime is in its config", async () => {
    scratch = makeTempDir('loopfs-runtime-containerd');
    const conf = join(scratch, 'config.toml');
    const sock = join(scratch, 'c.sock');
    // Debian's file, with this daemon's own root, state and sockets (top-level keys go before the tables)
    const priv = [
      `root = "${join(scratch, 'root')}"`, `state = "${join(scratch, 'state')}"`,
      '[grpc]', `  address = "${sock}"`, '[ttrpc]', `  address = "${join(scratch, 't.sock')}"`,
      '[debug]', `  address = "${join(scratch, 'debug.sock')}"`, '[metrics]', '  address = ""', '',
    ].join('\n');
    writeFileSync(conf, DEBIAN_CONTAINERD.replace('version = 2\n', `version = 2\n${priv}`));
    const r = loopfs(['install', '--runtime', 'containerd', '--containerd-config', conf, ...base()]);
    expect([r.status, r.stderr]).toEqual([0, '']);

    const dump = spawnSync('containerd', ['--config', conf, 'config', 'dump'], { encoding: 'utf8' });
    expect(dump.status).toBe(0);
    const section = (name: string) => dump.stdout.split(/\n\s*\n/).find((s) => s.trimStart().startsWith(`[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.${name}]`)) ?? '';
    expect(section('loopfs')).toMatch(/^\s+pod_annotations = \["io\.loopfs\.\*"\]$/m);
    expect(section('loopfs')).toMatch(/^\s+runtime_type = "io\.containerd\.runc\.v2"$/m);
    expect(section('runc')).toMatch(/^\s+runtime_type = "io\.containerd\.runc\.v2"$/m);
    expect(dump.stdout).toContain(`BinaryName = "${WRAPPER}"`);
    expect(dump.stdout).toMatch(/^\s+bin_dir = "\/usr\/lib\/cni"$/m); // Debian's own CRI setting survives

    daemon = spawn('containerd', ['--config', conf], { stdio: ['ignore', 'ignore', 'ignore'] });
    const plugins = () => {
      const p = spawnSync('ctr', ['-a', sock, 'plugins', 'ls'], { encoding: 'utf8', timeout: 5000 });
      return p.status === 0 ? p.stdout : null;
    };
    await until(() => plugins() !== null, 30_000, 'containerd');
    expect(plugins()).toMatch(/^io\.containerd\.grpc\.v1\s+cri\s+\S+\s+ok\s*$/m);
  }, 90_000);

  it.skipIf(!!podmanReason)('podman (private mount namespace, overlay /etc/containers) knows runtime loopfs from the drop-in; uninstall removes it', () => {
    scratch = makeTempDir('loopfs-runtime-podman');
    mkdirSync(join(scratch, 'upper'));
    mkdirSync(join(scratch, 'work'));
    const info = `podman --runtime loopfs info --format '{{.Host.OCIRuntime.Name}} {{.Host.OCIRuntime.Path}}' 2>&1 | tail -1`;
    const script = `
set -e
mount -t overlay overlay -o lowerdir=/etc/containers,upperdir=${scratch}/upper,workdir=${scratch}/work /etc/containers
${LOOPFS} install --runtime podman ${base().join(' ')} >/dev/null
${info}
podman --runtime runc info --format '{{.Host.OCIRuntime.Name}}'
${LOOPFS} uninstall --record ${scratch}/rec.json >/dev/null
test ! -e /etc/containers/containers.conf.d
${info} || true
`;
    const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'bash', '-c', script], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout.split('\n')).toEqual([`loopfs ${WRAPPER}`, 'runc', 'Error: default OCI runtime "loopfs" not found: invalid argument', '']);
    expect(existsSync('/etc/containers/containers.conf.d/loopfs.conf')).toBe(false); // the host's never saw it
  }, 60_000);
});
