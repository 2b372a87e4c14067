// The runtime wrapper's edit of config.json (src/oci/runtime/edit.ts) and the seccomp
// edit it shares with `loopfs seccomp-profile` (src/oci/seccomp-edit.ts), on configs that
// Docker 20.10 and podman 4.3 wrote on this machine (test/oci-runtime/fixtures, captured
// from a real `docker run` / `podman run` through a runtime that copied the bundle) and on
// small hand-written ones. Every expectation is the whole resulting document.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { editConfig, type EditContext } from '../../src/oci/runtime/edit.js';
import { engineMountVerdict, withAgent } from '../../src/oci/seccomp-edit.js';
import { REPO_ROOT } from '../helpers/env.js';

const FIXTURES = path.join(REPO_ROOT, 'test', 'oci-runtime', 'fixtures');
type Doc = Record<string, any>;
const fixture = (name: string): Doc => JSON.parse(readFileSync(path.join(FIXTURES, name), 'utf8'));
const clone = <T>(v: T): T => structuredClone(v);

const CTX: EditContext = { env: { LOOPFS_RUNTIME_DIR: '/run/rt-test' }, packageRoot: '/opt/loopfs', nodePath: '/usr/bin/node', arch: 'x64', release: '6.1.0' };
const HOOK_ENV = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'LOOPFS_DATA_DIR=/nonexistent', 'LOOPFS_RUNTIME_DIR=/run/rt-test'];
const hook = (stage: string) => ({ path: '/usr/bin/node', args: ['node', '/opt/loopfs/bin/loopfs', 'oci-hook', stage], env: HOOK_ENV });
const TRAPPED = ['mount', 'umount2', 'open_tree', 'move_mount', 'fsopen', 'fsconfig', 'fsmount', 'fspick', 'mount_setattr'];
const AGENT_RULES = [
  { names: ['mount', 'umount2'], action: 'SCMP_ACT_NOTIFY' },
  { names: ['open_tree', 'move_mount', 'fsopen', 'fsconfig', 'fsmount', 'fspick', 'mount_setattr'], action: 'SCMP_ACT_ERRNO', errnoRet: 38 },
];
const LISTENER = '/run/rt-test/seccomp.sock';
const without = (names: string[]) => names.filter((n) => !TRAPPED.includes(n));

describe('runtime wrapper: config.json edit', () => {
  it('Docker 20.10, -e LOOPFS_OCI=1, resolved default profile without mount: EPERM verdict, rules kept, agent rules added', () => {
    const orig = fixture('docker-20.10.json');
    const before = JSON.stringify(orig);
    const out = editConfig(orig, CTX);
    expect(JSON.stringify(orig)).toBe(before); // the input is not modified
    const want = clone(orig);
    want.annotations = { 'io.loopfs.instance': 'true' };
    want.hooks = { prestart: orig.hooks.prestart, createRuntime: [hook('createRuntime')], poststop: [hook('poststop')] };
    // the resolved profile names none of the trapped syscalls: every rule stays as it was
    expect(orig.linux.seccomp.syscalls.flatMap((r: Doc) => r.names).filter((n: string) => TRAPPED.includes(n))).toEqual([]);
    want.linux.seccomp = {
      defaultAction: 'SCMP_ACT_ERRNO',
      architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'],
      syscalls: [...orig.linux.seccomp.syscalls, ...AGENT_RULES],
      listenerPath: LISTENER,
      listenerMetadata: 'loopfs/1 mount=errno:1',
    };
    expect(out).toEqual(want);
    // Docker does not mask /sys/dev/block: the list is the engine's, unchanged
    expect(out!.linux.maskedPaths).toEqual(orig.linux.maskedPaths);
  });

  it('Docker 20.10 with CAP_SYS_ADMIN: mount in an ALLOW rule with 23 other names: the rule loses exactly the trapped names, verdict allow', () => {
    const orig = fixture('docker-20.10-cap-sys-admin.json');
    orig.process.env.push('LOOPFS_OCI=yes', 'LOOPFS_OCI_POOL=2', 'LOOPFS_OCI_MAX=6');
    const out = editConfig(orig, CTX);
    const rules = orig.linux.seccomp.syscalls;
    expect(rules[9].names).toEqual([
      'bpf', 'clone', 'clone3', 'fanotify_init', 'fsconfig', 'fsmount', 'fsopen', 'fspick', 'lookup_dcookie', 'mount', 'mount_setattr', 'move_mount',
      'name_to_handle_at', 'open_tree', 'perf_event_open', 'quotactl', 'quotactl_fd', 'setdomainname', 'sethostname', 'setns', 'syslog', 'umount', 'umount2', 'unshare',
    ]);
    const want = clone(orig);
    want.annotations = { 'io.loopfs.instance': 'true', 'io.loopfs.pool': '2', 'io.loopfs.max': '6' };
    want.hooks = { prestart: orig.hooks.prestart, createRuntime: [hook('createRuntime')], poststop: [hook('poststop')] };
    want.linux.seccomp.syscalls = [
      ...rules.slice(0, 9),
      {
        names: ['bpf', 'clone', 'clone3', 'fanotify_init', 'lookup_dcookie', 'name_to_handle_at', 'perf_event_open', 'quotactl', 'quotactl_fd', 'setdomainname', 'sethostname', 'setns', 'syslog', 'umount', 'unshare'],
        action: 'SCMP_ACT_ALLOW',
      },
      rules[10],
      ...AGENT_RULES,
    ];
    want.linux.seccomp.listenerPath = LISTENER;
    want.linux.seccomp.listenerMetadata = 'loopfs/1 mount=allow';
    expect(out).toEqual(want);
  });

  it('podman 4.3 with the annotation: /sys/dev/block unmasked, mount in the big ALLOW rule, verdict allow, defaultErrnoRet kept', () => {
    const orig = fixture('podman-4.3.json');
    orig.annotations['io.loopfs.instance'] = 'true';
    const out = editConfig(orig, CTX);
    const want = clone(orig); // annotations already say it: unchanged
    want.hooks = { createRuntime: [hook('createRuntime')], poststop: [hook('poststop')] };
    want.linux.maskedPaths = ['/proc/acpi', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list', '/proc/timer_stats', '/proc/sched_debug', '/proc/scsi', '/sys/firmware', '/sys/fs/selinux'];
    const rules = orig.linux.seccomp.syscalls;
    expect(rules[1].names).toHaveLength(374);
    want.linux.seccomp.syscalls = [rules[0], { ...rules[1], names: without(rules[1].names) }, ...rules.slice(2), ...AGENT_RULES];
    want.linux.seccomp.listenerPath = LISTENER;
    want.linux.seccomp.listenerMetadata = 'loopfs/1 mount=allow';
    expect(out).toEqual(want);
    expect(out!.linux.seccomp.syscalls[1].names).toHaveLength(365);
    expect(out!.linux.seccomp.defaultErrnoRet).toBe(38);
  });

  it('no seccomp at all: a filter that allows everything else', () => {
    const orig = { ociVersion: '1.0.2', process: { args: ['sh'], env: ['LOOPFS_OCI=1'] }, root: { path: 'rootfs' }, linux: { namespaces: [{ type: 'mount' }] } };
    expect(editConfig(orig, CTX)).toEqual({
      ociVersion: '1.0.2',
      process: { args: ['sh'], env: ['LOOPFS_OCI=1'] },
      root: { path: 'rootfs' },
      linux: { namespaces: [{ type: 'mount' }], seccomp: { defaultAction: 'SCMP_ACT_ALLOW', syscalls: AGENT_RULES, listenerPath: LISTENER, listenerMetadata: 'loopfs/1 mount=allow' } },
      annotations: { 'io.loopfs.instance': 'true' },
      hooks: { createRuntime: [hook('createRuntime')], poststop: [hook('poststop')] },
    });
    // and no linux section either
    expect(editConfig({ annotations: { 'io.loopfs.instance': '1' } }, CTX)).toEqual({
      annotations: { 'io.loopfs.instance': '1' },
      hooks: { createRuntime: [hook('createRuntime')], poststop: [hook('poststop')] },
      linux: { seccomp: { defaultAction: 'SCMP_ACT_ALLOW', syscalls: AGENT_RULES, listenerPath: LISTENER, listenerMetadata: 'loopfs/1 mount=allow' } },
    });
  });

  it('an ERRNO rule naming mount decides with its errnoRet; the rule keeps its other names and fields', () => {
    const seccomp = {
      defaultAction: 'SCMP_ACT_ALLOW',
      flags: ['SECCOMP_FILTER_FLAG_LOG'],
      syscalls: [
        { names: ['mount', 'chroot', 'umount2'], action: 'SCMP_ACT_ERRNO', errnoRet: 13 },
        { names: ['mount'], action: 'SCMP_ACT_ALLOW' },
        { names: ['fsopen', 'fsmount'], action: 'SCMP_ACT_ALLOW' },
      ],
    };
    expect(withAgent(seccomp, CTX.env, 'x')).toEqual({
      defaultAction: 'SCMP_ACT_ALLOW',
      flags: ['SECCOMP_FILTER_FLAG_LOG'],
      syscalls: [{ names: ['chroot'], action: 'SCMP_ACT_ERRNO', errnoRet: 13 }, ...AGENT_RULES],
      listenerPath: LISTENER,
      listenerMetadata: 'loopfs/1 mount=errno:13',
    });
  });

  it('umount2 goes to the agent only where the engine judges it as it judges mount (the agent gives it the mount verdict)', () => {
    // mount refused with EACCES, umount2 allowed: umount2 stays the engine's
    const seccomp = { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['mount', 'chroot'], action: 'SCMP_ACT_ERRNO', errnoRet: 13 }] };
    expect(withAgent(seccomp, CTX.env, 'x')).toEqual({
      defaultAction: 'SCMP_ACT_ALLOW',
      syscalls: [
        { names: ['chroot'], action: 'SCMP_ACT_ERRNO', errnoRet: 13 },
        { names: ['mount'], action: 'SCMP_ACT_NOTIFY' },
        AGENT_RULES[1],
      ],
      listenerPath: LISTENER,
      listenerMetadata: 'loopfs/1 mount=errno:13',
    });
    // umount2 filtered by its flags: not the same verdict, left in its rule
    const args = [{ index: 1, value: 2, op: 'SCMP_CMP_MASKED_EQ', valueTwo: 2 }];
    const withArgs = { defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['mount'], action: 'SCMP_ACT_ALLOW' }, { names: ['umount2'], action: 'SCMP_ACT_ALLOW', args }] };
    expect(withAgent(withArgs, CTX.env, 'x').syscalls).toEqual([{ names: ['umount2'], action: 'SCMP_ACT_ALLOW', args }, { names: ['mount'], action: 'SCMP_ACT_NOTIFY' }, AGENT_RULES[1]]);
  });

  it('the verdict: default action and defaultErrnoRet, ERRNO without errnoRet, args, kill, log', () => {
    const v = (f: Doc) => engineMountVerdict(f as any, 'x64', '6.1.0');
    expect(v({ defaultAction: 'SCMP_ACT_ERRNO', defaultErrnoRet: 38, syscalls: [{ names: ['read'], action: 'SCMP_ACT_ALLOW' }] })).toEqual({ kind: 'errno', errno: 38 });
    expect(v({ defaultAction: 'SCMP_ACT_ERRNO' })).toEqual({ kind: 'errno', errno: 1 });
    expect(v({ defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['mount'], action: 'SCMP_ACT_ERRNO' }] })).toEqual({ kind: 'errno', errno: 1 });
    expect(v({ defaultAction: 'SCMP_ACT_LOG' })).toEqual({ kind: 'allow' });
    expect(v({ defaultAction: 'SCMP_ACT_KILL_PROCESS' })).toEqual({ kind: 'errno', errno: 1 });
    // mount allowed only for some flags: the metadata cannot say which, so refuse
    const args = [{ index: 3, value: 4096, op: 'SCMP_CMP_MASKED_EQ', valueTwo: 4096 }];
    expect(v({ defaultAction: 'SCMP_ACT_ERRNO', defaultErrnoRet: 38, syscalls: [{ names: ['mount'], action: 'SCMP_ACT_ALLOW', args }] })).toEqual({ kind: 'errno', errno: 38 });
    expect(v({ defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['mount'], action: 'SCMP_ACT_ALLOW', args }] })).toEqual({ kind: 'errno', errno: 1 });
    expect(v({ defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: ['mount'], action: 'SCMP_ACT_ERRNO', errnoRet: 22, args }] })).toEqual({ kind: 'errno', errno: 22 });
    // moby's older single-name rule
    expect(v({ defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ name: 'mount', action: 'SCMP_ACT_ALLOW' }] })).toEqual({ kind: 'allow' });
  });

  it('existing hooks are kept in order; a loopfs hook already merged (podman hooks.d) is not added twice', () => {
    const merged = { path: '/usr/local/bin/node', args: ['node', '/usr/lib/node_modules/loopfs/bin/loopfs', 'oci-hook', 'createRuntime'], env: ['PATH=/bin'] };
    const other = { path: '/usr/bin/nvidia-hook', args: ['nvidia-hook', 'createRuntime'] };
    const orig = { annotations: { 'io.loopfs.instance': 'true' }, hooks: { prestart: [other], createRuntime: [other, merged], poststop: [other] }, linux: { seccomp: { defaultAction: 'SCMP_ACT_ALLOW' } } };
    expect(editConfig(orig, CTX)!.hooks).toEqual({ prestart: [other], createRuntime: [other, merged], poststop: [other, hook('poststop')] });
  });

  it('idempotent: an edited config (a second create from the same bundle) comes back unchanged; another runtime dir is another agent', () => {
    const once = editConfig(fixture('podman-4.3.json'), { ...CTX, env: CTX.env });
    const orig = fixture('podman-4.3.json');
    orig.annotations['io.loopfs.instance'] = 'true';
    const first = editConfig(orig, CTX)!;
    expect(once).toBeNull();
    expect(editConfig(clone(first), CTX)).toEqual(first);
    expect(() => editConfig(clone(first), { ...CTX, env: { LOOPFS_RUNTIME_DIR: '/run/other' } })).toThrow(
      'config.json linux.seccomp.listenerPath is already set (/run/rt-test/seccomp.sock): another seccomp agent serves this container',
    );
  });

  it('not opted in: null (the bundle is left alone), whatever else the config says', () => {
    for (const doc of [
      fixture('docker-20.10-cap-sys-admin.json'),
      fixture('podman-4.3.json'),
      { process: { env: ['LOOPFS_OCI=0', 'LOOPFS_OCI_POOL=3'] } },
      { process: { env: ['XLOOPFS_OCI=1', 'LOOPFS_OCI1=1'] } },
      // an explicit annotation wins over the variable
      { annotations: { 'io.loopfs.instance': 'false' }, process: { env: ['LOOPFS_OCI=1'] } },
      {},
    ])
      expect(editConfig(doc, CTX)).toBeNull();
  });

  it('an annotation the engine set wins over the variable; the first of two equal variables counts', () => {
    const out = editConfig({ annotations: { 'io.loopfs.pool': '1' }, process: { env: ['LOOPFS_OCI=1', 'LOOPFS_OCI_POOL=3', 'LOOPFS_OCI_MAX=2', 'LOOPFS_OCI_MAX=9'] } }, CTX);
    expect(out!.annotations).toEqual({ 'io.loopfs.pool': '1', 'io.loopfs.instance': 'true', 'io.loopfs.max': '2' });
  });

  it('refusals, one line each: bad opt-in values, another agent, malformed fields', () => {
    const err = (doc: unknown) => {
      try {
        editConfig(doc, CTX);
      } catch (e) {
        return (e as Error).message;
      }
      return 'no error';
    };
    expect(err({ process: { env: ['LOOPFS_OCI=1', 'LOOPFS_OCI_POOL=lots'] } })).toBe(
      'config.json process.env LOOPFS_OCI*: annotation io.loopfs.pool=lots: expected a number from 0 to 64',
    );
    expect(err({ process: { env: ['LOOPFS_OCI=1', 'LOOPFS_OCI_POOL=5', 'LOOPFS_OCI_MAX=2'] } })).toBe(
      'config.json process.env LOOPFS_OCI*: annotation io.loopfs.pool=5 exceeds io.loopfs.max=2',
    );
    expect(err({ annotations: { 'io.loopfs.instance': 'true', 'io.loopfs.max': '-1' } })).toBe('annotation io.loopfs.max=-1: expected a number from 0 to 1048576');
    expect(err({ annotations: { 'io.loopfs.instance': 'true' }, linux: { seccomp: { defaultAction: 'SCMP_ACT_ALLOW', listenerPath: '/run/other/agent.sock' } } })).toBe(
      'config.json linux.seccomp.listenerPath is already set (/run/other/agent.sock): another seccomp agent serves this container',
    );
    expect(err({ annotations: { 'io.loopfs.instance': 'true' }, linux: { seccomp: { syscalls: [] } } })).toBe('config.json linux.seccomp: no defaultAction');
    expect(err({ annotations: { 'io.loopfs.instance': 'true' }, linux: { seccomp: { defaultAction: 'SCMP_ACT_ALLOW', syscalls: [{ names: 'mount', action: 'SCMP_ACT_ALLOW' }] } } })).toBe(
      'config.json linux.seccomp.syscalls[0].names: expected a list of names',
    );
    expect(err({ annotations: { 'io.loopfs.instance': 'true' }, hooks: { poststop: {} } })).toBe('config.json hooks.poststop: expected a list');
    expect(err({ annotations: { 'io.loopfs.instance': 'true' }, linux: { maskedPaths: '/sys' } })).toBe('config.json linux.maskedPaths: expected a list');
    expect(err({ annotations: { 'io.loopfs.instance': 7 } })).toBe('config.json annotations: expected an object of strings');
    expect(err({ process: { env: 'LOOPFS_OCI=1' } })).toBe('config.json process.env: expected a list of strings');
    expect(err([1])).toBe('config.json: expected a JSON object');
  });
});
