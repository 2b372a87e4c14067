// Issue 4, "Activation": `loopfs activate DIR --dev D --pool N` prepares a container's /dev so
// that *unmodified* util-linux inside a private mount namespace (D bind-mounted over /dev, no
// loop-control) uses only the instance's devices.
//
// Real devices, real processes. The host's /dev is never changed: every bind mount and every
// mount happens inside `unshare -m` (private propagation), and dies with it. A device attached
// on the host with /usr/sbin/losetup before activation must stay exactly as it was and must not
// appear in D. The namespace scripts never name /dev/null (in the namespace /dev is D, and a
// redirection there would create a file in D).
//
// Cleanup (also on failure): the watcher is killed, the namespace is gone with its mounts, the
// instance is destroyed, and Sandbox.cleanup detaches (util-linux) whatever is still bound to a
// sandbox file. An idle pool device is an unbound host device: a concurrent host tool may bind
// it (LOOP_CTL_GET_FREE); then `instance destroy` would detach that stranger's device, so the
// test does not destroy, reports it and leaves the stranger alone.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { formatState, readLoopState, waitUnbound } from '../helpers/devices.js';
import { REF_LOSETUP } from '../helpers/env.js';
import { runProgram, type RunResult } from '../helpers/run.js';
import { instanceSkipReason, LOOPFS, LOSETUP, loopEntries, minorOf, nodeInfo, Sandbox, skipTitle, sleep, text, type StateFile } from './support.js';

/** Tools the namespace part needs, and whether this process may create a mount namespace. */
function namespaceSkipReason(): string | undefined {
  for (const tool of ['unshare', 'mount', 'umount', 'findmnt', 'mountpoint', 'mkfs.ext4']) {
    const r = spawnSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' });
    if (r.status !== 0) return `${tool} not installed`;
  }
  const r = spawnSync('unshare', ['-m', 'true'], { encoding: 'utf8' });
  if (r.status !== 0) return `cannot create a mount namespace (unshare -m: ${(r.stderr ?? '').trim() || `exit ${r.status}`})`;
  return undefined;
}

const baseReason = instanceSkipReason('activation tests');
const nsReason = baseReason ? undefined : namespaceSkipReason();
if (nsReason) console.warn(`[skip] activation tests: ${nsReason}`);
const reason = baseReason ?? nsReason;

/** Runs `script` in bash inside `unshare -m` after bind-mounting $D over /dev (private propagation). */
function inNamespace(sb: Sandbox, script: string, vars: Record<string, string>): Promise<RunResult> {
  const prologue = ['set -eu', 'mount --bind "$D" /dev'].join('\n');
  return runProgram('unshare', ['-m', '--propagation', 'private', 'bash', '-c', `${prologue}\n${script}`], {
    env: { ...sb.env, ...vars },
    cwd: sb.root,
    timeoutMs: 60_000,
  });
}

const heldMinors = (s: StateFile | null): number[] => Object.keys(s?.devices ?? {}).map(Number);

/** loopN entries of D with their device numbers. */
function devNodes(d: string): Array<{ name: string; major: number; minor: number; block: boolean }> {
  return loopEntries(d).map((name) => {
    const i = nodeInfo(path.join(d, name));
    return { name, major: i?.major ?? -1, minor: i?.minor ?? -1, block: i?.block ?? false };
  });
}

/** The sysfs backing file of loopN, or null when unbound. */
function backing(minor: number): string | null {
  return readLoopState(`loop${minor}`)?.backingFile ?? null;
}

/**
 * Instance devices bound to a file that is not the sandbox's. An idle pool device is an
 * unbound host device, and LOOP_CTL_GET_FREE hands the lowest unbound device to every host
 * `losetup -f`: when other people's tools run at the same time they can take it (and activate
 * then shows their device in D). Reported on its own so such a failure is not mistaken for
 * another one.
 */
function strangers(sb: Sandbox, dir: string): string[] {
  return heldMinors(sb.state(dir))
    .map((m) => ({ m, back: backing(m) }))
    .filter((x) => x.back !== null && !x.back.startsWith(`${sb.root}/`))
    .map((x) => `loop${x.m} -> ${x.back}`);
}

function expectNoStrangers(sb: Sandbox, dir: string, when: string): void {
  const found = strangers(sb, dir);
  expect(
    found,
    `${when}: pool device(s) of the instance were bound by a host tool outside the test ` +
      '(idle pool devices are the lowest free indexes, which LOOP_CTL_GET_FREE gives to any host losetup -f)',
  ).toEqual([]);
}

function describeRun(r: RunResult): string {
  return `exit ${r.exitCode}${r.signal ? ` (${r.signal})` : ''}\n--- stdout\n${text(r.stdout)}--- stderr\n${text(r.stderr)}`;
}

/** `loopfs activate ... --watch` in the background, with its output collected. */
class Watcher {
  readonly child: ChildProcess;
  out = '';
  err = '';
  private exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(sb: Sandbox, args: string[]) {
    this.child = spawn(LOOPFS, args, { env: sb.env, cwd: sb.root, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.on('data', (b: Buffer) => (this.out += b.toString()));
    this.child.stderr!.on('data', (b: Buffer) => (this.err += b.toString()));
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
  }

  running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Stop with `signal`; resolves with how it ended, or null if it did not end in time. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 5000): Promise<{ code: number | null; signal: NodeJS.Signals | null } | null> {
    if (this.running()) this.child.kill(signal);
    return Promise.race([this.exited, sleep(timeoutMs).then(() => null)]);
  }

  /** Last resort for cleanup: TERM, then KILL. */
  async kill(): Promise<void> {
    if (!this.running()) return;
    if ((await this.stop('SIGTERM', 3000)) === null) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
  }
}

async function waitFor<T>(what: () => T | undefined, timeoutMs: number, everyMs = 50): Promise<T | undefined> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = what();
    if (v !== undefined) return v;
    if (Date.now() > end) return undefined;
    await sleep(everyMs);
  }
}

describe.skipIf(reason)(skipTitle('activation', reason), () => {
  let sb: Sandbox;
  let dir: string; // the instance
  let devDir: string; // the container's /dev (D)
  let watcher: Watcher | null;

  beforeEach(() => {
    sb = new Sandbox('loopfs-activate');
    dir = sb.path('inst');
    devDir = sb.path('dev');
    fs.mkdirSync(devDir);
    watcher = null;
  });

  afterEach(async () => {
    const errors: string[] = [];
    if (watcher) await watcher.kill();
    // Destroy only when every bound device of the instance is bound to one of our files: a
    // pool device taken by a host tool would be detached by destroy.
    if (sb.state(dir)) {
      const foreign = strangers(sb, dir);
      if (foreign.length === 0) {
        const r = await sb.loopfs(['instance', 'destroy', dir, '--force']);
        if (r.exitCode !== 0) errors.push(`instance destroy: ${describeRun(r)}`);
      } else {
        // Sandbox.cleanup still detaches our devices and removes the unbound indexes we claimed
        console.warn(`[activate] not destroying ${dir}: its pool devices ${foreign.join(', ')} belong to someone else now`);
      }
    }
    try {
      await sb.cleanup();
    } catch (e) {
      errors.push((e as Error).message);
    }
    if (errors.length) throw new Error(errors.join('\n'));
  });

  it('stock losetup -f and mount -o loop in the namespace use only instance devices; the host device is untouched', async () => {
    // a host device that belongs to no instance, attached before the instance exists
    const hostImg = sb.file('host.img');
    const hostDev = sb.hostAttach(hostImg);
    const hostMinor = minorOf(hostDev);
    const hostBefore = formatState(readLoopState(hostDev)!);

    await sb.create(dir);
    const raw = sb.file('raw.img');
    const content = sb.path('content');
    fs.mkdirSync(content);
    fs.writeFileSync(path.join(content, 'hello.txt'), 'hello from an activated instance\n');
    const fsImg = sb.path('fs.img');
    const mk = spawnSync('mkfs.ext4', ['-q', '-F', '-d', content, fsImg, '16M'], { encoding: 'utf8' });
    expect(mk.status, `mkfs.ext4: ${mk.stderr}`).toBe(0);
    const mnt = sb.path('mnt');
    fs.mkdirSync(mnt);

    const act = await sb.loopfs(['activate', dir, '--dev', devDir, '--pool', '2']);
    expect(act.exitCode, describeRun(act)).toBe(0);
    expectNoStrangers(sb, dir, 'after activate');
    const pool = sb.state(dir)!;
    const poolMinors = heldMinors(pool);
    expect(poolMinors, 'activate --pool 2 reserves two devices').toHaveLength(2);
    for (const m of poolMinors) expect(backing(m), `pool device loop${m} is idle`).toBeNull();
    // D: exactly the instance's nodes, no loop-control, nothing of the host
    expect(fs.readdirSync(devDir).sort()).toEqual(poolMinors.map((m) => `loop${m}`).sort());
    for (const n of devNodes(devDir)) expect(n, `${n.name} in D`).toMatchObject({ block: true, major: 7, minor: Number(n.name.slice(4)) });
    expect(devNodes(devDir).map((n) => n.minor)).not.toContain(hostMinor);

    const out = sb.path('out');
    fs.mkdirSync(out);
    const ns = await inNamespace(
      sb,
      [
        // whatever happens below, nothing stays mounted (the namespace dies anyway)
        'trap \'if mountpoint -q "$MNT"; then umount "$MNT"; fi\' EXIT',
        'ls -A /dev > "$OUT/dev-listing"',
        '"$REF" -f --show "$RAW" > "$OUT/attached"',
        'mount -o loop "$FS" "$MNT"',
        'cat "$MNT/hello.txt" > "$OUT/content"',
        'findmnt -n -o MAJ:MIN --mountpoint "$MNT" > "$OUT/mount-majmin"',
        'findmnt -n -o SOURCE --mountpoint "$MNT" > "$OUT/mount-source"',
        'LOOPFS_INSTANCE="$INST" "$OURS" -a > "$OUT/ours-a" 2> "$OUT/ours-a.err"',
        'umount "$MNT"',
        '"$REF" -d "$(cat "$OUT/attached")"',
        'echo done > "$OUT/done"',
      ].join('\n'),
      { D: devDir, REF: REF_LOSETUP, OURS: LOSETUP, RAW: raw, FS: fsImg, MNT: mnt, INST: dir, OUT: out },
    );
    expectNoStrangers(sb, dir, 'after the namespace run');
    expect(ns.exitCode, describeRun(ns)).toBe(0);
    const read = (name: string) => fs.readFileSync(path.join(out, name), 'utf8');
    expect(read('done')).toBe('done\n');

    const after = sb.state(dir)!;
    const held = new Set(heldMinors(after));
    expect(read('dev-listing').split('\n').filter(Boolean).sort(), 'the namespace /dev is D').toEqual(
      poolMinors.map((m) => `loop${m}`).sort(),
    );

    // losetup -f --show used an instance device
    const attached = read('attached').trim();
    expect(attached).toMatch(/^\/dev\/loop\d+$/);
    const attachedMinor = minorOf(attached);
    expect([...held], `${attached} must be an instance device`).toContain(attachedMinor);

    // mount -o loop used the other instance device, and the file reads back
    expect(read('content')).toBe('hello from an activated instance\n');
    const [maj, mountMinor] = read('mount-majmin').trim().split(':').map(Number);
    expect(maj).toBe(7);
    expect([...held], `the loop mount's device loop${mountMinor} must be an instance device`).toContain(mountMinor);
    expect(read('mount-source').trim()).toBe(`/dev/loop${mountMinor}`);
    expect(mountMinor).not.toBe(attachedMinor);

    // ours, scoped to the instance, lists exactly the two devices bound at that moment
    expect(read('ours-a.err')).toBe('');
    const listed = read('ours-a').split('\n').filter(Boolean);
    for (const l of listed) expect(l, 'only instance nodes').toMatch(new RegExp(`^${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/loop\\d+: `));
    expect(listed.map((l) => minorOf(l.slice(0, l.indexOf(':')))).sort((a, b) => a - b)).toEqual(
      [attachedMinor, mountMinor].sort((a, b) => a - b),
    );
    expect(listed.find((l) => l.includes(hostImg)), 'the host device is not listed').toBeUndefined();
    expect(read('ours-a')).toContain(`(${raw})`);
    expect(read('ours-a')).toContain(`(${fsImg})`);

    // after umount (autoclear) and -d both instance devices are free again, still the instance's
    expect(await waitUnbound(`loop${mountMinor}`), `loop${mountMinor} freed by autoclear at umount`).toBe(true);
    expect(await waitUnbound(attached)).toBe(true);
    expect(new Set(heldMinors(sb.state(dir)))).toEqual(held);

    // the host device: untouched, and never a node in D
    expect(formatState(readLoopState(hostDev)!)).toBe(hostBefore);
    expect(readLoopState(hostDev)!.backingFile).toBe(hostImg);
    expect(held.has(hostMinor)).toBe(false);
    expect(devNodes(devDir).map((n) => n.minor)).not.toContain(hostMinor);
    expect(fs.existsSync(path.join(devDir, `loop${hostMinor}`))).toBe(false);
    // nothing bound to a sandbox file outside the instance, apart from the host device
    for (const st of sb.bound()) expect(st.minor === hostMinor || held.has(st.minor), `${st.name} -> ${st.backingFile}`).toBe(true);
  });

  it('--watch refills the pool when a stock tool in the namespace binds a pool device, and stops on SIGTERM', async () => {
    await sb.create(dir);
    const raw = sb.file('raw.img');
    const out = sb.path('out');
    fs.mkdirSync(out);

    watcher = new Watcher(sb, ['activate', dir, '--dev', devDir, '--pool', '2', '--watch', '--interval', '100']);
    const w = watcher;
    const started = await waitFor(() => (/node\(s\)/.test(w.out) ? true : undefined), 20_000);
    expect(started, `watcher did not report its first sync\n${w.out}${w.err}`).toBe(true);
    expect(w.running(), `watcher exited early\n${w.out}${w.err}`).toBe(true);
    expectNoStrangers(sb, dir, 'after the first sync');
    const initial = new Set(loopEntries(devDir));
    expect(initial.size, `D after the first sync: ${[...initial].join(' ')}`).toBe(2);

    const ns = await inNamespace(sb, '"$REF" -f --show "$RAW" > "$OUT/attached"', { D: devDir, REF: REF_LOSETUP, RAW: raw, OUT: out });
    expectNoStrangers(sb, dir, 'after the namespace run');
    expect(ns.exitCode, describeRun(ns)).toBe(0);
    const attached = fs.readFileSync(path.join(out, 'attached'), 'utf8').trim();
    const attachedMinor = minorOf(attached);
    expect([...initial], `${attached} is one of the pool nodes`).toContain(`loop${attachedMinor}`);
    expect(backing(attachedMinor)).toBe(raw);

    // the watcher notices the pool shrank to one idle device and reserves a new one
    const t0 = Date.now();
    const fresh = await waitFor(() => loopEntries(devDir).find((n) => !initial.has(n)), 5000);
    expect(fresh, `no new idle node in D within 5 s (D: ${loopEntries(devDir).join(' ')})\n${w.out}${w.err}`).toBeDefined();
    expectNoStrangers(sb, dir, 'after the refill');
    const freshMinor = Number(fresh!.slice(4));
    const s = sb.state(dir)!;
    expect(heldMinors(s), 'the new node is an instance device').toContain(freshMinor);
    expect(backing(freshMinor), 'the new device is idle').toBeNull();
    expect(nodeInfo(path.join(devDir, fresh!))).toMatchObject({ block: true, major: 7, minor: freshMinor });
    // the bound device keeps its node; D now offers two idle devices again
    expect(loopEntries(devDir)).toContain(`loop${attachedMinor}`);
    const idle = loopEntries(devDir).filter((n) => backing(Number(n.slice(4))) === null);
    expect(idle, `idle nodes in D (refilled after ${Date.now() - t0} ms)`).toHaveLength(2);

    const end = await w.stop('SIGTERM', 5000);
    expect(end, `watcher did not exit within 5 s of SIGTERM\n${w.out}${w.err}`).not.toBeNull();
    expect(end!.signal === null && end!.code === 0, `watcher ended with ${JSON.stringify(end)}\n${w.err}`).toBe(true);

    // detach in the namespace as the container would; the device stays the instance's
    const d = await inNamespace(sb, '"$REF" -d "$DEV"', { D: devDir, REF: REF_LOSETUP, DEV: `/dev/loop${attachedMinor}` });
    expect(d.exitCode, describeRun(d)).toBe(0);
    expect(await waitUnbound(`loop${attachedMinor}`)).toBe(true);
  });
});
