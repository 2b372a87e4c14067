// Fixtures for the seccomp agent tests (test/oci/seccomp-agent*.test.ts): a real `loopfs
// oci-broker` in the sandbox's runtime dir, real runc containers from hand-written bundles
// (the mount notify rule, listenerPath and listenerMetadata in linux.seccomp, and the
// loopfs oci-hook createRuntime/poststop hooks), and a compiled mount(2) caller
// (test/intercept/fixtures/mnt.c) inside the rootfs so that tests see the exact errno.
//
// Hygiene: runc runs with a private --root under the sandbox; every container is killed
// and deleted (`runc delete -f`, which runs the poststop hook) in finally; the broker is
// stopped by its pid; the sandbox teardown detaches what is bound to its files.
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ENOSYS_SYSCALLS, formatMetadata, NOTIFIED_SYSCALLS, seccompSocketPath, type EngineVerdict } from '../../src/oci/agent-contract.js';
import { hookCommand } from '../../src/oci/hooks-json.js';
import { announceSkip, firstReason, REPO_ROOT } from '../helpers/env.js';
import { runProgram, type RunResult } from '../helpers/run.js';
import { BrokerSandbox, brokerSkipReason, Server, text, waitFor } from '../broker/support.js';
import { buildRootfs } from './support.js';

export { text };

const MNT_SOURCE = path.join(REPO_ROOT, 'test', 'intercept', 'fixtures', 'mnt.c');

function installed(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

/** Why the agent tests cannot run here (printed once per file), or undefined. */
export function agentSkipReason(what: string, needRunc = true): string | undefined {
  const base = brokerSkipReason(what);
  if (base) return base;
  const reason = firstReason(
    fs.existsSync(path.join(REPO_ROOT, 'dist', 'oci', 'seccomp-agent.js')) ? undefined : 'dist/oci/seccomp-agent.js missing (run npm run build)',
    process.arch === 'x64' ? undefined : `the tests' filters are built for x86_64 only (this is ${process.arch})`,
    installed('gcc') ? undefined : 'gcc not installed',
    ...(needRunc ? ['runc', 'mkfs.minix'].map((t) => (installed(t) ? undefined : `${t} not installed`)) : []),
    !needRunc || fs.existsSync('/bin/busybox') ? undefined : '/bin/busybox missing (busybox-static)',
  );
  announceSkip(what, reason);
  return reason;
}

/** `loopfs oci-broker` as root in the sandbox; resolves once it listens on seccomp.sock too. */
export async function startBroker(sb: BrokerSandbox): Promise<Server> {
  const s = await Server.launch(sb, ['oci-broker']);
  await waitFor('seccomp.sock', () => fs.existsSync(seccompSocketPath(sb.env)));
  return s;
}

export function brokerLog(s: Server): string {
  return s.stderr.join('');
}

/** mnt.c compiled to `dest` (mode 0755). */
export function compileMnt(dest: string): void {
  execFileSync('gcc', ['-O2', '-Wall', '-pthread', '-o', dest, MNT_SOURCE], { stdio: 'pipe' });
  fs.chmodSync(dest, 0o755);
}

export interface BundleOptions {
  /** Map the container's root to this host uid:gid (a user namespace); none: no user namespace. */
  root?: { uid: number; gid: number };
  /** Capabilities of the process (bounding = effective = permitted). */
  caps: string[];
  verdict: EngineVerdict;
  /** Host files bound into the container: [host path, container path]. */
  binds: Array<[string, string]>;
  args: string[];
  /** Syscalls sent to the agent (default: the contract's NOTIFIED_SYSCALLS). */
  notify?: readonly string[];
}

/** Docker's default capabilities (no CAP_SYS_ADMIN). */
export const DOCKER_CAPS = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_FSETID', 'CAP_FOWNER', 'CAP_MKNOD', 'CAP_NET_RAW', 'CAP_SETGID', 'CAP_SETUID',
  'CAP_SETFCAP', 'CAP_SETPCAP', 'CAP_NET_BIND_SERVICE', 'CAP_SYS_CHROOT', 'CAP_KILL', 'CAP_AUDIT_WRITE',
];

/** A runc bundle in `dir` (rootfs built there) whose mount(2) goes to the sandbox's agent. */
export function writeBundle(sb: BrokerSandbox, dir: string, o: BundleOptions): void {
  const rootfs = path.join(dir, 'rootfs');
  if (!fs.existsSync(rootfs)) {
    buildRootfs(rootfs);
    compileMnt(path.join(rootfs, 'bin', 'mnt'));
  }
  const userns = o.root !== undefined;
  // mount points for the binds: a runtime in a user namespace cannot create them in a
  // rootfs owned by the host's root
  for (const [, dst] of o.binds) {
    const p = path.join(rootfs, dst);
    if (!fs.existsSync(p)) fs.writeFileSync(p, '');
  }
  const mounts: object[] = [
    { destination: '/proc', type: 'proc', source: 'proc' },
    { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
    { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'] },
    { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
    // sysfs cannot be mounted in a user namespace without a network namespace of its own: bind it
    { destination: '/sys', type: 'none', source: '/sys', options: ['rbind', 'nosuid', 'noexec', 'nodev', 'ro'] },
    { destination: '/usr', type: 'none', source: '/usr', options: ['rbind', 'ro'] },
    // writable for the container's root (the rootfs is the host root's)
    { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777'] },
    ...o.binds.map(([src, dst]) => ({ destination: dst, type: 'none', source: src, options: ['rbind', 'rw'] })),
  ];
  const stage = (s: 'createRuntime' | 'poststop') => [hookCommand(s, REPO_ROOT, process.execPath, sb.env)];
  const config = {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: 0, gid: 0 },
      args: o.args,
      env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin', 'HOME=/'],
      cwd: '/',
      capabilities: { bounding: o.caps, effective: o.caps, permitted: o.caps },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }],
      noNewPrivileges: true,
    },
    root: { path: 'rootfs', readonly: false },
    hostname: 'agent-test',
    mounts,
    annotations: { 'io.loopfs.instance': 'true', 'io.loopfs.pool': '2' },
    hooks: { createRuntime: stage('createRuntime'), poststop: stage('poststop') },
    linux: {
      ...(userns
        ? {
            uidMappings: [{ containerID: 0, hostID: o.root!.uid, size: 1 }],
            gidMappings: [{ containerID: 0, hostID: o.root!.gid, size: 1 }],
          }
        : {}),
      resources: { devices: [{ allow: false, access: 'rwm' }] },
      namespaces: [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, ...(userns ? [{ type: 'user' }] : [])],
      seccomp: {
        defaultAction: 'SCMP_ACT_ALLOW',
        architectures: ['SCMP_ARCH_X86_64'],
        listenerPath: seccompSocketPath(sb.env),
        listenerMetadata: formatMetadata(o.verdict),
        syscalls: [
          { names: [...(o.notify ?? NOTIFIED_SYSCALLS)], action: 'SCMP_ACT_NOTIFY' },
          { names: [...ENOSYS_SYSCALLS], action: 'SCMP_ACT_ERRNO', errnoRet: 38 },
        ],
      },
      maskedPaths: ['/proc/kcore', '/proc/keys', '/sys/firmware'],
      readonlyPaths: ['/proc/sys', '/proc/sysrq-trigger'],
    },
  };
  fs.writeFileSync(path.join(dir, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
}

/** runc with its state under the sandbox. */
export class Runc {
  readonly root: string;
  private readonly ids = new Set<string>();

  constructor(readonly sb: BrokerSandbox) {
    this.root = sb.path('runc-state');
    fs.mkdirSync(this.root, { recursive: true });
  }

  private run(args: string[], timeoutMs = 60_000): Promise<RunResult> {
    return runProgram('runc', ['--root', this.root, ...args], { env: { PATH: process.env.PATH, LANG: 'C.UTF-8' }, cwd: this.sb.root, timeoutMs });
  }

  /** `runc run` in the foreground: the bundle's process runs to its end. */
  runForeground(id: string, bundle: string, timeoutMs = 60_000): Promise<RunResult> {
    this.ids.add(id);
    return this.run(['run', '--bundle', bundle, id], timeoutMs);
  }

  /** `runc run -d` (its stdio to /dev/null): the bundle's process keeps running. */
  async runDetached(id: string, bundle: string): Promise<void> {
    this.ids.add(id);
    const r = await runProgram('sh', ['-c', 'exec runc --root "$1" run -d --bundle "$2" "$3" </dev/null >/dev/null 2>"$4"', 'sh', this.root, bundle, id, path.join(bundle, 'runc.err')], {
      env: { PATH: process.env.PATH, LANG: 'C.UTF-8' },
      cwd: this.sb.root,
    });
    if (r.exitCode !== 0) throw new Error(`runc run -d ${id} failed (${r.exitCode}): ${fs.readFileSync(path.join(bundle, 'runc.err'), 'utf8')}`);
  }

  exec(id: string, script: string): Promise<RunResult> {
    return this.run(['exec', id, 'sh', '-c', script]);
  }

  /** Host pid of the container's init (runc state). */
  async initPid(id: string): Promise<number> {
    const r = await this.run(['state', id]);
    return (JSON.parse(text(r.stdout)) as { pid: number }).pid;
  }

  /** Kill and delete every container started here (poststop runs at delete). */
  async removeAll(): Promise<string[]> {
    const errors: string[] = [];
    for (const id of this.ids) {
      await this.run(['kill', id, 'KILL']);
      const r = await this.run(['delete', '-f', id]);
      if (r.exitCode !== 0 && !/does not exist/.test(text(r.stderr))) errors.push(`runc delete ${id}: ${text(r.stderr)}`);
    }
    this.ids.clear();
    return errors;
  }
}
