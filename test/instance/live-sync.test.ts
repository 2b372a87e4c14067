// Issue 13, live devices and partitions: with a watcher running (`loopfs instance watch`,
// `loopfs activate --watch`, `loopfs serve`), partitions of an instance's devices appear as
// DIR/loopNpM (and in an activated /dev) and vanish with them, and a device freed by
// autoclear goes back to the pool policy, all within a second and with no command run.
//
// Real devices, real tools. This kernel has no partition-table parsers, so partitions are
// added with BLKPG (`partx -a`, which reads the MBR in userspace) after `losetup -P`, as
// image builders do on such kernels. The MBR is written by the test itself (no sfdisk).
//
// Hygiene: every test has its own Sandbox (private runtime dir and limits file, backing files
// under the sandbox); mounts happen inside `unshare -m --propagation private` (they die with
// it) or on a tmpfs under the sandbox (Sandbox.cleanup unmounts it). afterEach kills every
// watcher and server this file started (by its pid), destroys the sandbox's instances and
// runs the Sandbox cleanup, which detaches only devices bound to sandbox files and removes
// only indexes the sandbox's instances claimed. Never `losetup -D`.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { REF_LOSETUP, REPO_ROOT } from '../helpers/env.js';
import { runProgram, type RunResult } from '../helpers/run.js';
import { BrokerSandbox, brokerSkipReason, Server } from '../broker/support.js';
import { instanceSkipReason, LOOPFS, loopEntries, MiB, nodeInfo, Sandbox, skipTitle, sleep, text } from './support.js';

const MOUNT_LOOP = path.join(REPO_ROOT, 'bin', 'mount.loop');

function toolsSkipReason(): string | undefined {
  for (const tool of ['partx', 'unshare', 'mount', 'umount', 'findmnt', 'mkfs.ext4', 'blockdev']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) return `${tool} not installed`;
  }
  const r = spawnSync('unshare', ['-m', 'true'], { encoding: 'utf8' });
  if (r.status !== 0) return `cannot create a mount namespace (unshare -m: ${(r.stderr ?? '').trim() || `exit ${r.status}`})`;
  return undefined;
}

const base = instanceSkipReason('live sync tests');
const tools = base ? undefined : toolsSkipReason();
if (tools) console.warn(`[skip] live sync tests: ${tools}`);
const reason = base ?? tools;

const OWNER = { uid: 4321, gid: 4321 };
const MODE = 0o640;

/**
 * An MBR image of 16 MiB with two Linux partitions: p1 4 MiB at LBA 2048, p2 8 MiB at LBA
 * 10240 (big enough for mkfs.ext4). Sizes in bytes, for checking what the nodes open.
 */
const P1_BYTES = 4 * MiB;
const P2_BYTES = 8 * MiB;
function mbrImage(file: string): string {
  const b = Buffer.alloc(16 * MiB);
  const entry = (i: number, start: number, count: number) => {
    const o = 446 + 16 * i;
    b[o + 4] = 0x83;
    b.writeUInt32LE(start, o + 8);
    b.writeUInt32LE(count, o + 12);
  };
  entry(0, 2048, P1_BYTES / 512);
  entry(1, 10240, P2_BYTES / 512);
  b[510] = 0x55;
  b[511] = 0xaa;
  fs.writeFileSync(file, b);
  return file;
}

/** Partitions of loopN in sysfs now: name → "major:minor". */
function sysParts(disk: string): Map<string, string> {
  const out = new Map<string, string>();
  let names: string[] = [];
  try {
    names = fs.readdirSync(`/sys/block/${disk}`);
  } catch {
    return out;
  }
  for (const n of names) {
    if (!new RegExp(`^${disk}p\\d+$`).test(n)) continue;
    try {
      out.set(n, fs.readFileSync(`/sys/block/${disk}/${n}/dev`, 'utf8').trim());
    } catch {
      /* deleted meanwhile */
    }
  }
  return out;
}

interface Recorded {
  state: 'held' | 'removing';
  partitions?: string[];
}

/**
 * The devices an instance records, by minor: state.json's map (format version 1) or one
 * record per device in DIR/.loopfs/devices/loopN (version 2).
 */
function recorded(dir: string): Record<string, Recorded> {
  const head = JSON.parse(fs.readFileSync(path.join(dir, '.loopfs', 'state.json'), 'utf8')) as { devices?: Record<string, Recorded> };
  if (head.devices) return head.devices;
  const out: Record<string, Recorded> = {};
  let names: string[] = [];
  try {
    names = fs.readdirSync(path.join(dir, '.loopfs', 'devices'));
  } catch {
    return out;
  }
  for (const n of names) {
    const m = /^loop(\d+)$/.exec(n);
    if (!m) continue;
    try {
      // an empty record is a held device without partitions (state.ts)
      const t = fs.readFileSync(path.join(dir, '.loopfs', 'devices', n), 'utf8');
      out[m[1]] = t === '' ? ({ state: 'held' } as Recorded) : (JSON.parse(t) as Recorded);
    } catch {
      /* removed meanwhile */
    }
  }
  return out;
}

/** Poll until `cond` holds; the milliseconds it took, or null after `timeoutMs`. */
async function within(timeoutMs: number, cond: () => boolean, everyMs = 5): Promise<number | null> {
  const start = Date.now();
  for (;;) {
    if (cond()) return Date.now() - start;
    if (Date.now() - start > timeoutMs) return null;
    await sleep(everyMs);
  }
}

function partx(args: string[]): { status: number | null; stderr: string } {
  const r = spawnSync('partx', args, { encoding: 'utf8' });
  return { status: r.status, stderr: r.stderr };
}

function describeRun(r: RunResult): string {
  return `exit ${r.exitCode}${r.signal ? ` (${r.signal})` : ''}\n--- stdout\n${text(r.stdout)}--- stderr\n${text(r.stderr)}`;
}

/** A `loopfs` daemon (instance watch, activate --watch) in the background, output collected. */
class Daemon {
  readonly child: ChildProcess;
  out = '';
  err = '';
  readonly exited: Promise<void>;

  constructor(sb: Sandbox, args: string[]) {
    this.child = spawn(LOOPFS, args, { env: sb.env, cwd: sb.root, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.on('data', (b: Buffer) => (this.out += b.toString()));
    this.child.stderr!.on('data', (b: Buffer) => (this.err += b.toString()));
    this.exited = new Promise((resolve) => this.child.once('exit', () => resolve()));
  }

  get pid(): number {
    return this.child.pid!;
  }

  running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  outLines(): string[] {
    return this.out.split('\n').filter((l) => l !== '');
  }

  /** Wait until stdout holds the line `line`; fails with the output otherwise. */
  async waitLine(line: string, timeoutMs = 15_000): Promise<void> {
    const t = await within(timeoutMs, () => this.outLines().includes(line) || !this.running(), 10);
    if (t === null || !this.outLines().includes(line)) {
      throw new Error(`no line '${line}' from loopfs ${this.child.spawnargs.slice(1).join(' ')}\n--- stdout\n${this.out}--- stderr\n${this.err}`);
    }
  }

  async sigkill(): Promise<void> {
    if (this.running()) this.child.kill('SIGKILL');
    await this.exited;
  }

  /** TERM, then KILL: for cleanup. */
  async stop(): Promise<void> {
    if (!this.running()) return;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 3000);
    await this.exited;
    clearTimeout(t);
  }
}

/** Exactly the names in DIR besides .loopfs and loop-control. */
function dirEntries(dir: string): string[] {
  return fs
    .readdirSync(dir)
    .filter((n) => n !== '.loopfs' && n !== 'loop-control')
    .sort();
}

/** The node DIR/name is a block device for `majmin`, with the instance's owner and mode. */
function expectNode(dir: string, name: string, majmin: string, owner = OWNER, mode = MODE): void {
  const i = nodeInfo(path.join(dir, name));
  expect(i, `${dir}/${name} exists`).not.toBeNull();
  expect({ name, block: i!.block, dev: `${i!.major}:${i!.minor}`, uid: i!.uid, gid: i!.gid, mode: i!.mode.toString(8) }).toEqual({
    name,
    block: true,
    dev: majmin,
    uid: owner.uid,
    gid: owner.gid,
    mode: mode.toString(8),
  });
}

/** Run a bash script in a private mount namespace. */
function inMountNs(sb: Sandbox, script: string, vars: Record<string, string>, timeoutMs = 60_000): Promise<RunResult> {
  return runProgram('unshare', ['-m', '--propagation', 'private', 'bash', '-c', `set -eu\n${script}`], {
    env: { ...sb.env, ...vars },
    cwd: sb.root,
    timeoutMs,
  });
}

describe.skipIf(reason)(skipTitle('live sync', reason), () => {
  let sb: Sandbox;
  let daemons: Daemon[];
  const start = (args: string[]) => {
    const d = new Daemon(sb, args);
    daemons.push(d);
    return d;
  };

  beforeEach(() => {
    sb = new Sandbox('loopfs-live');
    daemons = [];
  });

  afterEach(async () => {
    const errors: string[] = [];
    for (const d of daemons) await d.stop();
    for (const dir of sb.instanceDirs()) {
      if (!sb.state(dir)) continue;
      const r = await sb.loopfs(['instance', 'destroy', '--force', dir]);
      if (r.exitCode !== 0) errors.push(`destroy ${dir}: ${describeRun(r)}`);
    }
    await sb.loopfs(['instance', 'gc']);
    try {
      await sb.cleanup();
    } catch (e) {
      errors.push((e as Error).message);
    }
    if (errors.length) throw new Error(errors.join('\n'));
  });

  it('instance watch: partx -a publishes DIR/loopNp1 and p2 within 1 s with the instance owner and mode; ext4 on p2 works; partx -d and -d remove them', async () => {
    const dir = sb.path('inst');
    await sb.create(dir, ['--owner', `${OWNER.uid}:${OWNER.gid}`, '--mode', MODE.toString(8)]);
    const w = start(['instance', 'watch', dir]);
    await w.waitLine('watching 1 instance(s)');
    const img = mbrImage(sb.path('files', 'disk.img'));

    const r = await sb.losetup(['--instance', dir, '-f', '--show', '-P', img]);
    expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
    const node = text(r.stdout).trim();
    expect(node).toMatch(new RegExp(`^${dir}/loop\\d+$`));
    const disk = path.basename(node);
    // no partition parser in this kernel: -P found nothing, DIR holds the device alone
    expect(dirEntries(dir)).toEqual([disk]);

    const px = partx(['-a', node]);
    expect(px, 'partx -a').toEqual({ status: 0, stderr: '' });
    const parts = sysParts(disk);
    expect([...parts.keys()].sort()).toEqual([`${disk}p1`, `${disk}p2`]);
    const t = await within(1000, () => dirEntries(dir).length === 3);
    expect(t, `DIR after partx -a: ${dirEntries(dir).join(' ')}\n${w.out}${w.err}`).not.toBeNull();
    expect(dirEntries(dir)).toEqual([disk, `${disk}p1`, `${disk}p2`]);
    expectNode(dir, disk, `7:${disk.slice(4)}`);
    for (const [name, majmin] of parts) expectNode(dir, name, majmin);
    expect(recorded(dir)[disk.slice(4)].partitions).toEqual([`${disk}p1`, `${disk}p2`]);
    // the watcher did it (no command ran), with gc's own wording (its output may trail the nodes)
    await within(1000, () => w.outLines().length >= 3);
    expect(w.outLines()).toEqual(['watching 1 instance(s)', `${dir}: published partition ${disk}p1`, `${dir}: published partition ${disk}p2`]);
    // the nodes open the partitions
    for (const [name, bytes] of [[`${disk}p1`, P1_BYTES], [`${disk}p2`, P2_BYTES]] as const) {
      const sz = spawnSync('blockdev', ['--getsize64', path.join(dir, name)], { encoding: 'utf8' });
      expect(sz.stdout).toBe(`${bytes}\n`);
    }

    // mkfs.ext4 on p2, mount it, write a file, read it back (also after a remount)
    const mk = spawnSync('mkfs.ext4', ['-q', '-F', path.join(dir, `${disk}p2`)], { encoding: 'utf8' });
    expect([mk.status, mk.stderr]).toEqual([0, '']);
    const mnt = sb.path('mnt');
    fs.mkdirSync(mnt);
    const payload = `written through ${disk}p2 at ${Date.now()}\n`;
    const m = await inMountNs(
      sb,
      ['mount "$P" "$M"', 'printf %s "$DATA" > "$M/file"', 'umount "$M"', 'mount -o ro "$P" "$M"', 'cat "$M/file"', 'findmnt -no SOURCE "$M"', 'umount "$M"'].join('\n'),
      { P: path.join(dir, `${disk}p2`), M: mnt, DATA: payload },
    );
    expect(describeRun(m)).toBe(describeRun({ ...m, exitCode: 0, stdout: Buffer.from(`${payload}${dir}/${disk}p2\n`), stderr: Buffer.alloc(0) }));
    // p1 was not touched by the filesystem on p2: still zeros
    const p1 = fs.readFileSync(path.join(dir, `${disk}p1`)).subarray(0, 64 * 1024);
    expect(p1.equals(Buffer.alloc(64 * 1024))).toBe(true);

    // partx -d --nr 1: p1's node goes, p2's stays
    expect(partx(['-d', '--nr', '1', node])).toEqual({ status: 0, stderr: '' });
    const gone = await within(1000, () => !dirEntries(dir).includes(`${disk}p1`) && recorded(dir)[disk.slice(4)].partitions?.length === 1);
    expect(gone, `DIR after partx -d --nr 1: ${dirEntries(dir).join(' ')}`).not.toBeNull();
    expect(dirEntries(dir)).toEqual([disk, `${disk}p2`]);
    expect(recorded(dir)[disk.slice(4)].partitions).toEqual([`${disk}p2`]);
    await within(1000, () => w.outLines().length >= 4);
    expect(w.outLines().slice(3)).toEqual([`${dir}: removed stale partition node ${disk}p1`]);

    // and back: partx -a adds p1 again
    expect(partx(['-a', '--nr', '1', node]).status).toBe(0);
    expect(await within(1000, () => dirEntries(dir).length === 3)).not.toBeNull();
    expectNode(dir, `${disk}p1`, sysParts(disk).get(`${disk}p1`)!);

    // -d: the device and all its partitions go
    const d = await sb.losetup(['--instance', dir, '-d', node]);
    expect([d.exitCode, text(d.stdout), text(d.stderr)]).toEqual([0, '', '']);
    expect(dirEntries(dir)).toEqual([]);
    await sleep(200); // the watcher's reaction to the kernel's remove events must not bring anything back
    expect(dirEntries(dir)).toEqual([]);
    expect(recorded(dir)).toEqual({});
    expect(w.running()).toBe(true);
    expect(w.err).toBe('');
  });

  it('activate --watch: stock util-linux losetup -P + partx -a in the namespace, then mkfs and mount on /dev/loopNp2', async () => {
    const dir = sb.path('inst');
    await sb.create(dir, ['--owner', `${OWNER.uid}:${OWNER.gid}`, '--mode', MODE.toString(8)]);
    const devDir = sb.path('dev');
    fs.mkdirSync(devDir);
    // the container's /dev: a tmpfs (Sandbox.cleanup unmounts it)
    const tm = spawnSync('mount', ['-t', 'tmpfs', '-o', 'mode=0755,size=1m', 'loopfs-live-dev', devDir], { encoding: 'utf8' });
    expect([tm.status, tm.stderr]).toEqual([0, '']);
    const w = start(['activate', dir, '--dev', devDir, '--pool', '1', '--watch']);
    const first = await within(15_000, () => /: 1 node\(s\) \(loop\d+\), pool 1$/m.test(w.out) || !w.running(), 10);
    expect(first, `activate --watch did not report its first sync\n${w.out}${w.err}`).not.toBeNull();
    const img = mbrImage(sb.path('files', 'disk.img'));
    const mnt = sb.path('mnt');
    fs.mkdirSync(mnt);
    const payload = 'hello from /dev/loopNp2\n';

    const script = [
      'mount --bind "$D" /dev',
      'dev=$("$LOSETUP" -f --show -P "$IMG")',
      'echo "dev=$dev"',
      'partx -a "$dev"',
      // the watcher outside publishes /dev/loopNp2: give it a second
      'for i in $(seq 200); do [ -b "${dev}p2" ] && break; sleep 0.005; done',
      'echo "p2ms=$((i * 5))"',
      'stat -c "%n %t:%T %u:%g %a" "${dev}p1" "${dev}p2"',
      'mkfs.ext4 -q -F "${dev}p2"',
      'mount "${dev}p2" "$M"',
      'printf %s "$DATA" > "$M/file"',
      'umount "$M"',
      'mount -o ro "${dev}p2" "$M"',
      'cat "$M/file"',
      'umount "$M"',
      '"$LOSETUP" -d "$dev"',
    ].join('\n');
    const r = await inMountNs(sb, script, { D: devDir, IMG: img, M: mnt, DATA: payload, LOSETUP: REF_LOSETUP });
    expect(r.exitCode, describeRun(r)).toBe(0);
    const out = text(r.stdout).split('\n');
    const dev = out[0].replace(/^dev=/, '');
    expect(dev).toMatch(/^\/dev\/loop\d+$/);
    const disk = path.basename(dev);
    const p2ms = Number(out[1].replace(/^p2ms=/, ''));
    expect(p2ms, `/dev/${disk}p2 did not appear within 1 s\n${w.out}${w.err}`).toBeLessThan(1000);
    // numbers are those the kernel gave the partitions, in hex as stat prints them
    const stats = out.slice(2, 4).map((l) => l.split(' '));
    for (const [i, s] of stats.entries()) {
      expect(s[0]).toBe(`${dev}p${i + 1}`);
      expect(s[1]).toMatch(/^103:[0-9a-f]+$/); // 259 = 0x103: blkext
      expect(s.slice(2)).toEqual([`${OWNER.uid}:${OWNER.gid}`, MODE.toString(8)]);
    }
    expect(out.slice(4)).toEqual([payload.trimEnd(), '']);
    expect(text(r.stderr)).toBe('');
    // after -d: no partition node is left, in D or DIR, nor in the record
    const isPart = (n: string) => /^loop\d+p\d+$/.test(n);
    const clean = await within(
      1000,
      () => !loopEntries(devDir).some(isPart) && !loopEntries(dir).some(isPart) && (recorded(dir)[disk.slice(4)]?.partitions ?? []).length === 0,
    );
    expect(clean, `D: ${loopEntries(devDir).join(' ')} DIR: ${loopEntries(dir).join(' ')} ${JSON.stringify(recorded(dir))}`).not.toBeNull();
    // the device stock losetup found in /dev was the instance's: the watcher published its
    // partitions in the view
    const added = w.out
      .split('\n')
      .filter((l) => l.startsWith(`${devDir}: +`))
      .flatMap((l) => l.slice(devDir.length + 3).split(' ')[0].split(','));
    expect(added, w.out).toEqual(expect.arrayContaining([`${disk}p1`, `${disk}p2`]));
    // freed by the stock -d: the pool policy leaves exactly one idle device (--pool 1)
    const idle = await within(1000, () => Object.keys(recorded(dir)).length === 1);
    expect(idle, JSON.stringify(recorded(dir))).not.toBeNull();
    const [kept] = Object.keys(recorded(dir));
    expect(recorded(dir)[kept]).toEqual({ state: 'held' });
    expect(fs.existsSync(`/sys/block/loop${kept}/loop/backing_file`)).toBe(false);
    expect(loopEntries(devDir)).toEqual([`loop${kept}`]);
    expect(w.running()).toBe(true);
  });

  it('pool 0: after umount of an autoclear mount the freed device leaves the instance within 1 s, with no command run', async () => {
    const dir = sb.path('inst');
    await sb.create(dir, ['--owner', `${OWNER.uid}:${OWNER.gid}`]);
    expect(JSON.parse(fs.readFileSync(path.join(dir, '.loopfs', 'state.json'), 'utf8')).pool).toBe(0);
    const content = sb.path('content');
    fs.mkdirSync(content);
    fs.writeFileSync(path.join(content, 'hello.txt'), 'hello\n');
    const img = sb.path('files', 'fs.img');
    const mk = spawnSync('mkfs.ext4', ['-q', '-F', '-d', content, img, '8M'], { encoding: 'utf8' });
    expect([mk.status, mk.stderr]).toEqual([0, '']);
    const mnt = sb.path('mnt');
    fs.mkdirSync(mnt);
    // mount.loop (autoclear), read, umount: prints the device and the time right after umount
    const script = [
      '"$HELPER" --instance "$DIR" "$IMG" "$M"',
      'src=$(findmnt -no SOURCE "$M")',
      'cat "$M/hello.txt"',
      'cat "/sys/block/${src##*/}/loop/autoclear"',
      'umount "$M"',
      'echo "$src"',
      'date +%s%3N',
    ].join('\n');
    const mountUmount = async () => {
      const r = await inMountNs(sb, script, { HELPER: MOUNT_LOOP, DIR: dir, IMG: img, M: mnt });
      expect(r.exitCode, describeRun(r)).toBe(0);
      const [hello, autoclear, src, at] = text(r.stdout).trimEnd().split('\n');
      expect([hello, autoclear]).toEqual(['hello', '1']);
      expect(src).toMatch(new RegExp(`^${dir}/loop\\d+$`));
      return { name: path.basename(src), minor: src.slice(src.lastIndexOf('loop') + 4), umountedAt: Number(at) };
    };
    const held = (minor: string) => recorded(dir)[minor] !== undefined;
    const claimed = (minor: string) => sb.claims().some((c) => c.minor === Number(minor));

    // without a watcher the freed device stays idle in the instance (until a command or gc)
    const a = await mountUmount();
    await sleep(1000);
    expect({ held: held(a.minor), node: fs.existsSync(path.join(dir, a.name)), claimed: claimed(a.minor) }).toEqual({ held: true, node: true, claimed: true });
    expect(fs.existsSync(`/sys/block/${a.name}/loop/backing_file`), 'autoclear unbound it at umount').toBe(false);

    // a watcher settles it at start (its first sync is gc's reconcile)
    const w = start(['instance', 'watch', dir]);
    await w.waitLine('watching 1 instance(s)');
    expect(w.outLines()).toEqual([`${dir}: released idle device above the pool size`, 'watching 1 instance(s)']);
    expect({ held: held(a.minor), node: fs.existsSync(path.join(dir, a.name)), claimed: claimed(a.minor) }).toEqual({ held: false, node: false, claimed: false });

    // with the watcher running: released within 1 s of the umount, nothing else run
    const b = await mountUmount();
    const left = await within(1000 - Math.max(0, Date.now() - b.umountedAt), () => !held(b.minor) && !claimed(b.minor) && !fs.existsSync(path.join(dir, b.name)));
    expect(left, `loop${b.minor} still in the instance 1 s after umount\n${JSON.stringify(recorded(dir))}\n${w.out}${w.err}`).not.toBeNull();
    await within(1000, () => w.outLines().length >= 3); // its output may trail the release
    expect(w.outLines()).toEqual([`${dir}: released idle device above the pool size`, 'watching 1 instance(s)', `${dir}: released idle device above the pool size`]);
    expect(recorded(dir)).toEqual({});
    expect(dirEntries(dir)).toEqual([]);
    expect(w.err).toBe('');
  });

  it('pool 0: a device losetup -f reserved (no file) stays with the watcher running, through later events, until it is bound', async () => {
    const dir = sb.path('inst');
    await sb.create(dir, ['--owner', `${OWNER.uid}:${OWNER.gid}`]);
    const w = start(['instance', 'watch', dir]);
    await w.waitLine('watching 1 instance(s)');
    const other = await sb.losetup(['--instance', dir, '-f', '--show', '-P', mbrImage(sb.path('files', 'disk.img'))]);
    expect([other.exitCode, text(other.stderr)]).toEqual([0, '']);
    const node = text(other.stdout).trim();
    const f = await sb.losetup(['--instance', dir, '-f']);
    expect([f.exitCode, text(f.stderr)]).toEqual([0, '']);
    const free = text(f.stdout).trim();
    expect(free).toMatch(new RegExp(`^${dir}/loop\\d+$`));
    expect(free).not.toBe(node);
    const freeMinor = free.slice(free.lastIndexOf('loop') + 4);
    // then events about the instance: partitions of the other device added and deleted
    expect(partx(['-a', node]).status).toBe(0);
    expect(await within(1000, () => dirEntries(dir).length === 4)).not.toBeNull();
    expect(partx(['-d', node]).status).toBe(0);
    expect(await within(1000, () => dirEntries(dir).length === 2)).not.toBeNull();
    await sleep(300);
    expect(dirEntries(dir)).toEqual([path.basename(free), path.basename(node)].sort());
    expect(recorded(dir)[freeMinor]).toEqual({ state: 'held' });
    // the name printed is still the instance's device: bind it through it
    const bind = await sb.losetup(['--instance', dir, free, sb.file('later.img')]);
    expect([bind.exitCode, text(bind.stderr)]).toEqual([0, '']);
    expect(fs.readFileSync(`/sys/block/loop${freeMinor}/loop/backing_file`, 'utf8')).toBe(`${sb.path('files', 'later.img')}\n`);
    expect(w.outLines().filter((l) => l.includes('released'))).toEqual([]);
  });

  it('faults: SIGKILL the watcher at random moments while partitions come and go; a restart or gc leaves exactly the right nodes, nothing of another instance', async () => {
    const a = sb.path('a');
    const b = sb.path('b');
    await sb.create(a, ['--owner', `${OWNER.uid}:${OWNER.gid}`, '--mode', MODE.toString(8)]);
    const ownerB = { uid: 4322, gid: 4322 };
    await sb.create(b, ['--owner', `${ownerB.uid}:${ownerB.gid}`]);
    const attach = async (dir: string, name: string) => {
      const r = await sb.losetup(['--instance', dir, '-f', '--show', '-P', mbrImage(sb.path('files', name))]);
      expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
      return text(r.stdout).trim();
    };
    const nodeA = await attach(a, 'a.img');
    const nodeB = await attach(b, 'b.img');
    const diskA = path.basename(nodeA);
    const diskB = path.basename(nodeB);
    const devA = `/dev/${diskA}`;
    const devB = `/dev/${diskB}`;
    expect(partx(['-a', devB]).status).toBe(0);

    /** What DIR must hold: the device and exactly the partitions sysfs has now. */
    const expectExact = (dir: string, disk: string, owner: { uid: number; gid: number }, mode: number, what: string) => {
      const parts = sysParts(disk);
      expect(dirEntries(dir), what).toEqual([disk, ...[...parts.keys()]].sort());
      expectNode(dir, disk, `7:${disk.slice(4)}`, owner, mode);
      for (const [n, majmin] of parts) expectNode(dir, n, majmin, owner, mode);
      expect([...(recorded(dir)[disk.slice(4)].partitions ?? [])].sort(), what).toEqual([...parts.keys()].sort());
    };
    /** No entry of `dir` names or opens a device or partition of the other instance's disk. */
    const expectNothingOf = (dir: string, otherDisk: string, what: string) => {
      const foreign = new Set([`7:${otherDisk.slice(4)}`, ...sysParts(otherDisk).values()]);
      for (const n of fs.readdirSync(dir)) {
        expect(n.startsWith(otherDisk), `${what}: ${dir}/${n}`).toBe(false);
        const i = nodeInfo(path.join(dir, n));
        if (i?.block) expect(foreign.has(`${i.major}:${i.minor}`), `${what}: ${dir}/${n} opens ${i.major}:${i.minor}`).toBe(false);
      }
    };

    const rnd = (n: number) => Math.floor(Math.random() * n);
    // partx runs asynchronously, so the SIGKILL lands while it runs or while the watcher syncs
    const px = (args: string[]) => () => runProgram('partx', args, { env: sb.env });
    const ops = [
      px(['-a', devA]),
      px(['-d', devA]),
      px(['-a', '--nr', '1', devA]),
      px(['-a', '--nr', '2', devA]),
      px(['-d', '--nr', '1', devA]),
      px(['-d', '--nr', '2', devA]),
      () => runProgram('partx', ['-d', '--nr', String(1 + rnd(2)), devB], { env: sb.env }),
      px(['-a', devB]),
    ];
    let restarts = 0;
    let gcs = 0;
    for (let i = 0; i < 30; i++) {
      const w = start(['instance', 'watch', a, b]);
      // two in three are killed once running (mid-sync or idle), the others while starting
      const running = i % 3 !== 0;
      if (running) await w.waitLine('watching 2 instance(s)');
      const killAt = rnd(running ? 150 : 800);
      const killed = sleep(killAt).then(() => w.sigkill());
      const churn = (async () => {
        for (let k = 0; k < 2 + rnd(4); k++) {
          await ops[rnd(ops.length)]();
          await sleep(rnd(30));
        }
      })();
      await Promise.all([killed, churn]);
      const what = `iteration ${i} (SIGKILL ${killAt} ms after ${running ? 'its first pass' : 'its start'})`;
      if (i % 2 === 0) {
        const again = start(['instance', 'watch', a, b]);
        await again.waitLine('watching 2 instance(s)');
        expectExact(a, diskA, OWNER, MODE, `${what}, restarted`);
        expectExact(b, diskB, ownerB, 0o660, `${what}, restarted`);
        await again.sigkill();
        restarts++;
      } else {
        const gc = await sb.loopfs(['instance', 'gc']);
        expect(gc.exitCode, describeRun(gc)).toBe(0);
        expectExact(a, diskA, OWNER, MODE, `${what}, gc`);
        expectExact(b, diskB, ownerB, 0o660, `${what}, gc`);
        gcs++;
      }
      expectNothingOf(a, diskB, what);
      expectNothingOf(b, diskA, what);
    }
    expect([restarts, gcs]).toEqual([15, 15]);
    // the only temporaries a killed node creation leaves were removed too
    expect(fs.readdirSync(a).filter((n) => n.endsWith('.tmp'))).toEqual([]);
  }, 300_000);
});

// ------------------------------------------------------------------ loopfs serve

const serveReason = reason ?? brokerSkipReason('live sync through the broker');

describe.skipIf(serveReason)(skipTitle('live sync: loopfs serve', serveReason), () => {
  let sb: BrokerSandbox;
  let server: Server | null;

  beforeEach(() => {
    sb = new BrokerSandbox('loopfs-live-serve');
    server = null;
  });

  afterEach(async () => {
    try {
      await server?.stop();
    } finally {
      await sb.teardown();
    }
  });

  it('a brokered instance gets its partitions published by the serving broker, also one served after SIGHUP (--all)', async () => {
    const user = { uid: sb.user.uid, gid: sb.user.gid };
    const a = await sb.instance('a');
    server = await Server.start(sb, [], ['--all']);
    const s = server;
    const logLines = () => s.stderr.join('').split('\n').filter((l) => l !== '');

    /** As the unprivileged user in its user namespace, through the broker: losetup -f --show -P. */
    const attachAsUser = async (dir: string, name: string) => {
      const img = mbrImage(path.join(sb.files, name));
      sb.giveToUser(img);
      const r = await sb.asUser(`${path.join(REPO_ROOT, 'bin', 'losetup')} -f --show -P ${img}`, { LOOPFS_INSTANCE: dir });
      expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
      const node = text(r.stdout).trim();
      expect(node).toMatch(new RegExp(`^${dir}/loop\\d+$`));
      return path.basename(node);
    };
    const published = async (dir: string, disk: string) => {
      expect(partx(['-a', `/dev/${disk}`])).toEqual({ status: 0, stderr: '' });
      const t = await within(1000, () => dirEntries(dir).length === 3);
      expect(t, `${dir}: ${dirEntries(dir).join(' ')}\n${s.stderr.join('')}`).not.toBeNull();
      expect(dirEntries(dir)).toEqual([disk, `${disk}p1`, `${disk}p2`]);
      for (const [n, majmin] of sysParts(disk)) expectNode(dir, n, majmin, user, 0o660);
      await within(1000, () => logLines().includes(`loopfs serve: ${dir}: published partition ${disk}p2`));
      expect(logLines()).toEqual(expect.arrayContaining([`loopfs serve: ${dir}: published partition ${disk}p1`, `loopfs serve: ${dir}: published partition ${disk}p2`]));
    };

    const diskA = await attachAsUser(a, 'a.img');
    await published(a, diskA);
    // the user can open its partition node (owner and mode) and sees p2's size
    const size = await sb.asUser(`blockdev --getsize64 ${a}/${diskA}p2`);
    expect([size.exitCode, text(size.stdout)]).toEqual([0, `${P2_BYTES}\n`]);

    expect(partx(['-d', '--nr', '2', `/dev/${diskA}`])).toEqual({ status: 0, stderr: '' });
    expect(await within(1000, () => !dirEntries(a).includes(`${diskA}p2`))).not.toBeNull();
    expect(dirEntries(a)).toEqual([diskA, `${diskA}p1`]);
    await within(1000, () => logLines().includes(`loopfs serve: ${a}: removed stale partition node ${diskA}p2`));
    expect(logLines()).toContain(`loopfs serve: ${a}: removed stale partition node ${diskA}p2`);

    // the served set changes at runtime: an instance created now and served after SIGHUP
    const b = await sb.instance('b');
    s.child.kill('SIGHUP');
    const served = await within(10_000, () => logLines().includes(`loopfs serve: now serving ${b}`), 20);
    expect(served, s.stderr.join('')).not.toBeNull();
    const diskB = await attachAsUser(b, 'b.img');
    await published(b, diskB);
    // nothing of one instance in the other
    expect(dirEntries(a)).toEqual([diskA, `${diskA}p1`]);
    for (const n of fs.readdirSync(b)) expect(n.startsWith(diskA)).toBe(false);

    // detach through the broker: every node of the device goes
    const d = await sb.asUser(`${path.join(REPO_ROOT, 'bin', 'losetup')} -d ${a}/${diskA}`, { LOOPFS_INSTANCE: a });
    expect([d.exitCode, text(d.stderr)]).toEqual([0, '']);
    expect(await within(1000, () => dirEntries(a).length === 0)).not.toBeNull();
    expect(s.alive).toBe(true);
    expect(logLines().filter((l) => l.includes('live sync'))).toEqual([]);
  });
});
