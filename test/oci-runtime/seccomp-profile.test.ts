// `loopfs seccomp-profile`: an engine's profile FILE (containers/common / moby format) with
// loopfs's seccomp agent in it, for `podman run --security-opt seccomp=FILE` without the
// runtime wrapper. The edit is the wrapper's (src/oci/seccomp-edit.ts); profile rules may
// carry includes/excludes, which decide the verdict per capability.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { engineMountVerdict, profileWithAgent } from '../../src/oci/seccomp-edit.js';
import { announceSkip, REPO_ROOT } from '../helpers/env.js';

const PODMAN_PROFILE = '/usr/share/containers/seccomp.json';
const podmanReason = existsSync(PODMAN_PROFILE) ? undefined : `${PODMAN_PROFILE} missing (containers-common, with podman)`;
announceSkip("seccomp-profile on podman's profile", podmanReason);

const TRAPPED = ['mount', 'umount2', 'open_tree', 'move_mount', 'fsopen', 'fsconfig', 'fsmount', 'fspick', 'mount_setattr'];
const AGENT_RULES = [
  { names: ['mount', 'umount2'], action: 'SCMP_ACT_NOTIFY' },
  { names: ['open_tree', 'move_mount', 'fsopen', 'fsconfig', 'fsmount', 'fspick', 'mount_setattr'], action: 'SCMP_ACT_ERRNO', errnoRet: 38 },
];
const ENV = { LOOPFS_RUNTIME_DIR: '/run/rt-test' };
const tmp = mkdtempSync(path.join(os.tmpdir(), 'loopfs-seccomp-profile-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function loopfs(args: string[], env: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(process.execPath, [path.join(REPO_ROOT, 'bin', 'loopfs'), ...args], { encoding: 'utf8', env: { ...process.env, ...env } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** What the edit must make of podman's profile, spelled out rule by rule. */
function expectedPodman(): Record<string, any> {
  const orig = JSON.parse(readFileSync(PODMAN_PROFILE, 'utf8'));
  const rules = orig.syscalls as Array<Record<string, any>>;
  // the one rule naming the trapped calls: the big unconditional ALLOW (containers/common 0.50)
  const naming = rules.map((r, i) => [i, r.names.filter((n: string) => TRAPPED.includes(n))] as const).filter(([, t]) => t.length > 0);
  expect(naming).toEqual([[1, ['fsconfig', 'fsmount', 'fsopen', 'fspick', 'mount', 'mount_setattr', 'move_mount', 'open_tree', 'umount2']]]);
  expect(rules[1]).toMatchObject({ action: 'SCMP_ACT_ALLOW', args: [], includes: {}, excludes: {} });
  const big = { ...rules[1], names: rules[1].names.filter((n: string) => !TRAPPED.includes(n)) };
  expect(big.names).toContain('umount');
  expect(big.names).toHaveLength(rules[1].names.length - 9);
  return { ...orig, syscalls: [rules[0], big, ...rules.slice(2), ...AGENT_RULES], listenerPath: '/run/rt-test/seccomp.sock', listenerMetadata: 'loopfs/1 mount=allow' };
}

describe('seccomp-profile: the edit of profile files', () => {
  it.skipIf(podmanReason)("podman's /usr/share/containers/seccomp.json: mount allowed unconditionally -> allow; defaultErrnoRet 38 and archMap kept", () => {
    const out = profileWithAgent(PODMAN_PROFILE, ENV, 'x64', '6.1.0').profile;
    expect(out).toEqual(expectedPodman());
    expect(out.defaultErrnoRet).toBe(38);
  });

  // moby's default profile ties mount to CAP_SYS_ADMIN (rules with includes/excludes caps)
  const moby = (extra: object[] = []) => ({
    defaultAction: 'SCMP_ACT_ERRNO',
    defaultErrnoRet: 1,
    archMap: [{ architecture: 'SCMP_ARCH_X86_64', subArchitectures: ['SCMP_ARCH_X86', 'SCMP_ARCH_X32'] }],
    syscalls: [
      { names: ['read', 'write'], action: 'SCMP_ACT_ALLOW', args: [], comment: '', includes: {}, excludes: {} },
      ...extra,
      { names: ['bpf', 'mount', 'umount2', 'unshare'], action: 'SCMP_ACT_ALLOW', args: [], comment: '', includes: { caps: ['CAP_SYS_ADMIN'] }, excludes: {} },
    ],
  });

  it('moby-style: mount allowed only with CAP_SYS_ADMIN -> cap:21 with the default errno; the rule keeps its conditions', () => {
    const file = path.join(tmp, 'moby.json');
    writeFileSync(file, JSON.stringify(moby()));
    expect(profileWithAgent(file, ENV, 'x64', '6.1.0').profile).toEqual({
      ...moby(),
      syscalls: [
        moby().syscalls[0],
        { names: ['bpf', 'unshare'], action: 'SCMP_ACT_ALLOW', args: [], comment: '', includes: { caps: ['CAP_SYS_ADMIN'] }, excludes: {} },
        ...AGENT_RULES,
      ],
      listenerPath: '/run/rt-test/seccomp.sock',
      listenerMetadata: 'loopfs/1 mount=cap:21:1',
    });
  });

  it('verdicts from caps, arches and kernels', () => {
    const v = (p: object) => engineMountVerdict(p as any, 'x64', '6.1.0');
    // containers/common style pair: ALLOW with the cap, ERRNO 13 without it
    const pair = [
      { names: ['mount'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_SYS_ADMIN'] } },
      { names: ['mount'], action: 'SCMP_ACT_ERRNO', errnoRet: 13, excludes: { caps: ['CAP_SYS_ADMIN'] } },
    ];
    expect(v({ defaultAction: 'SCMP_ACT_ALLOW', syscalls: pair })).toEqual({ kind: 'cap', cap: 21, errno: 13 });
    expect(v(moby())).toEqual({ kind: 'cap', cap: 21, errno: 1 });
    // allowed only WITHOUT the cap: not expressible, refuse
    expect(v({ defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['mount'], action: 'SCMP_ACT_ERRNO', includes: { caps: ['CAP_SYS_ADMIN'] } }] })).toEqual({ kind: 'errno', errno: 1 });
    // two caps needed: refuse (the metadata names one)
    expect(v({ defaultAction: 'SCMP_ACT_ERRNO', defaultErrnoRet: 38, syscalls: [{ names: ['mount'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_SYS_ADMIN', 'CAP_NET_ADMIN'] } }] })).toEqual({ kind: 'errno', errno: 38 });
    // a cap that makes no difference
    expect(v({ defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['mount'], action: 'SCMP_ACT_ALLOW', includes: { caps: ['CAP_SYS_ADMIN'] } }] })).toEqual({ kind: 'allow' });
    // rules for other architectures and newer kernels do not apply here
    expect(v({ defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['mount'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['s390x'] } }] })).toEqual({ kind: 'errno', errno: 1 });
    expect(v({ defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['mount'], action: 'SCMP_ACT_ALLOW', includes: { arches: ['amd64'] } }] })).toEqual({ kind: 'allow' });
    expect(v({ defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['mount'], action: 'SCMP_ACT_ALLOW', excludes: { arches: ['amd64'] } }] })).toEqual({ kind: 'errno', errno: 1 });
    expect(v({ defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['mount'], action: 'SCMP_ACT_ALLOW', includes: { minKernel: '6.2' } }] })).toEqual({ kind: 'errno', errno: 1 });
    expect(v({ defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['mount'], action: 'SCMP_ACT_ALLOW', includes: { minKernel: '5.8' } }] })).toEqual({ kind: 'allow' });
  });
});

describe('loopfs seccomp-profile (the command)', () => {
  it.skipIf(podmanReason)('writes the edited default profile to stdout, and with -o to FILE; LOOPFS_RUNTIME_DIR decides listenerPath', () => {
    const r = loopfs(['seccomp-profile'], ENV);
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(JSON.parse(r.stdout)).toEqual(expectedPodman());
    expect(r.stdout).toBe(`${JSON.stringify(expectedPodman(), null, 2)}\n`);
    const out = path.join(tmp, 'out.json');
    const w = loopfs(['seccomp-profile', '--from', PODMAN_PROFILE, '-o', out], ENV);
    expect([w.status, w.stdout, w.stderr]).toEqual([0, '', '']);
    expect(readFileSync(out, 'utf8')).toBe(r.stdout);
  });

  it('refuses with one line and writes nothing: missing, malformed, another listener, unwritable output', () => {
    const bad = path.join(tmp, 'bad.json');
    writeFileSync(bad, '{"defaultAction": ');
    const other = path.join(tmp, 'other.json');
    writeFileSync(other, JSON.stringify({ defaultAction: 'SCMP_ACT_ALLOW', listenerPath: '/run/x.sock' }));
    const noAction = path.join(tmp, 'noaction.json');
    writeFileSync(noAction, '{"syscalls": []}');
    mkdirSync(path.join(tmp, 'adir'));
    const before = readdirSync(tmp).sort();
    for (const [args, line] of [
      [['--from', path.join(tmp, 'missing.json')], `loopfs: ${tmp}/missing.json: No such file or directory\n`],
      [['--from', bad], `loopfs: ${bad}: not JSON\n`],
      [['--from', noAction], `loopfs: ${noAction}: no defaultAction\n`],
      [['--from', other], `loopfs: ${other}.listenerPath is already set (/run/x.sock): another seccomp agent serves this container\n`],
      [['--from', other, '-o', path.join(tmp, 'out2.json')], `loopfs: ${other}.listenerPath is already set (/run/x.sock): another seccomp agent serves this container\n`],
    ] as Array<[string[], string]>) {
      const r = loopfs(['seccomp-profile', ...args], ENV);
      expect([r.status, r.stdout, r.stderr]).toEqual([1, '', line]);
    }
    const w = loopfs(['seccomp-profile', '--from', path.join(tmp, 'moby.json'), '-o', path.join(tmp, 'nodir', 'x.json')], ENV);
    expect([w.status, w.stdout, w.stderr]).toEqual([1, '', `loopfs: ${tmp}/nodir/x.json: No such file or directory\n`]);
    // the rename fails: the temporary file goes again
    const dir = loopfs(['seccomp-profile', '--from', path.join(tmp, 'moby.json'), '-o', path.join(tmp, 'adir')], ENV);
    expect([dir.status, dir.stdout, dir.stderr]).toEqual([1, '', `loopfs: ${tmp}/adir: Is a directory\n`]);
    expect(readdirSync(tmp).sort()).toEqual(before);
  });
});
