// Issue 4, "Scope": inside an instance every losetup action sees and touches only the
// instance's devices; output formats stay util-linux's (only names differ).
//
// Real devices, real processes: `bin/losetup --instance DIR ...` next to a device attached on the
// host with /usr/sbin/losetup and a device of a second instance. The expected output is always
// util-linux's own for the same devices, with `/dev/loopN` renamed `DIR/loopN` (and the table's
// NAME heading widened by as much): byte for byte, padding included. The instances are named
// relatively (`--instance inst`, cwd = the sandbox): nodes still print with the absolute DIR, so
// that a printed name works again as an operand.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { formatState, readLoopState } from '../helpers/devices.js';
import { REF_LOSETUP } from '../helpers/env.js';
import { instanceSkipReason, lines, minorOf, nodeInfo, Sandbox, skipTitle, text } from './support.js';

const reason = instanceSkipReason('instance scope tests');

/**
 * util-linux's output for the same devices, named the way the instance names them: `/dev/loopN`
 * becomes `DIR/loopN` for the given minors. In a padded table every name grows by the same
 * number of characters, so only the NAME heading needs that many more spaces.
 */
function ref(args: string[], dir: string, minors: number[], opts: { table?: boolean } = {}): string {
  let out = execFileSync(REF_LOSETUP, args, { encoding: 'utf8', env: { ...process.env, LANG: 'C.UTF-8' } });
  out = out.replace(/\/dev\/loop(\d+)\b/g, (m, n: string) => (minors.includes(Number(n)) ? `${dir}/loop${n}` : m));
  if (opts.table) out = out.replace(/^NAME /, `NAME ${' '.repeat(dir.length - '/dev'.length)}`);
  return out;
}

/** Everything a failed foreign operation must leave as it was. */
function snapshot(sb: Sandbox, devs: string[], dirs: string[]): string {
  const parts = devs.map((d) => `${d} => ${readLoopState(d) ? formatState(readLoopState(d)!) : 'unbound'}`);
  for (const dir of dirs) parts.push(`${dir} => ${JSON.stringify(sb.state(dir)?.devices)} ${fs.readdirSync(dir).sort().join(',')}`);
  return parts.join('\n');
}

describe.skipIf(reason)(skipTitle('instance scope', reason), () => {
  let sb: Sandbox;
  beforeEach(() => {
    sb = new Sandbox('loopfs-scope');
  });
  afterEach(async () => {
    await sb.cleanup();
  });

  it('-f --show allocates into the instance: prints DIR/loopN, node owned by the instance owner, mode 0660', async () => {
    const dir = sb.path('inst');
    await sb.create(dir, ['--owner', '1234:1234', '--mode', '0660']);
    const file = sb.file('a.img');
    const r = await sb.losetup(['--instance', 'inst', '-f', '--show', file]);
    expect(text(r.stderr)).toBe('');
    expect(r.exitCode).toBe(0);
    expect(text(r.stdout)).toMatch(new RegExp(`^${dir}/loop\\d+\\n$`));
    const minor = minorOf(text(r.stdout).trim());
    expect(nodeInfo(`${dir}/loop${minor}`)).toEqual({ uid: 1234, gid: 1234, mode: 0o660, block: true, major: 7, minor });
    expect(readLoopState(`loop${minor}`)?.backingFile).toBe(file);
    const st = sb.state(dir)!;
    expect(st.devices[minor]).toEqual({ state: 'held' });
    expect(sb.claims()).toEqual([{ minor, id: st.id, dir: expect.any(String), uid: 1234 }]);

    // $LOOPFS_INSTANCE works the same way
    const file2 = sb.file('b.img');
    const r2 = await sb.losetup(['-f', '--show', file2], { env: { LOOPFS_INSTANCE: dir } });
    expect(r2.exitCode).toBe(0);
    expect(text(r2.stdout)).toMatch(new RegExp(`^${dir}/loop\\d+\\n$`));
    const m2 = minorOf(text(r2.stdout).trim());
    expect(m2).not.toBe(minor);
    expect(nodeInfo(`${dir}/loop${m2}`)).toMatchObject({ uid: 1234, gid: 1234, mode: 0o660, block: true, minor: m2 });
    // the only device nodes in DIR are the instance's
    expect(fs.readdirSync(dir).filter((n) => n !== '.loopfs').sort()).toEqual([`loop${minor}`, `loop${m2}`].sort());
  });

  describe('with a host device and a second instance attached at the same time', () => {
    let a1: number, a2: number, b1: number;
    let hostDev: string, fileA: string, fileB: string, fileH: string, dirA: string, dirB: string;

    beforeEach(async () => {
      dirA = sb.path('inst');
      dirB = sb.path('othr');
      await sb.create(dirA, ['--owner', '1234:1234']);
      await sb.create(dirB, ['--owner', '4321:4321']);
      fileA = sb.file('a.img');
      fileB = sb.file('b.img', 2 * 1024 * 1024);
      fileH = sb.file('h.img', 3 * 1024 * 1024);
      hostDev = sb.hostAttach(fileH);
      // two devices on the same file: util-linux `-j fileA` then selects exactly the instance's devices
      const ra1 = await sb.losetup(['--instance', 'inst', '-f', '--show', fileA]);
      const ra2 = await sb.losetup(['--instance', 'inst', '-f', '--show', fileA]);
      const rb1 = await sb.losetup(['--instance', 'othr', '-f', '--show', fileB]);
      for (const r of [ra1, ra2, rb1]) expect(r.exitCode, text(r.stderr)).toBe(0);
      a1 = minorOf(text(ra1.stdout).trim());
      a2 = minorOf(text(ra2.stdout).trim());
      b1 = minorOf(text(rb1.stdout).trim());
      expect(new Set([a1, a2, b1, minorOf(hostDev)]).size).toBe(4);
    });

    it('-a lists only the instance devices, in util-linux format', async () => {
      const r = await sb.losetup(['--instance', 'inst', '-a']);
      expect(r.exitCode).toBe(0);
      expect(text(r.stderr)).toBe('');
      expect(text(r.stdout)).toBe(ref(['-j', fileA], dirA, [a1, a2]));
      expect(lines(r.stdout)).toHaveLength(2);
      expect(text(r.stdout)).not.toContain(fileH);
      expect(text(r.stdout)).not.toContain(fileB);
    });

    it('-l, -l --raw, -l -n -O and -J list only the instance devices, in util-linux format', async () => {
      const table = await sb.losetup(['--instance', 'inst', '-l']);
      expect(table.exitCode).toBe(0);
      expect(text(table.stdout)).toBe(ref(['-l', '-j', fileA], dirA, [a1, a2], { table: true }));
      const raw = await sb.losetup(['--instance', 'inst', '-l', '--raw']);
      expect(text(raw.stdout)).toBe(ref(['-l', '--raw', '-j', fileA], dirA, [a1, a2]));
      const cols = await sb.losetup(['--instance', 'inst', '-l', '-n', '-O', 'NAME,BACK-FILE,SIZELIMIT']);
      expect(text(cols.stdout)).toBe(ref(['-l', '-n', '-O', 'NAME,BACK-FILE,SIZELIMIT', '-j', fileA], dirA, [a1, a2]));
      const json = await sb.losetup(['--instance', 'inst', '-J', '-l']);
      expect(json.exitCode).toBe(0);
      expect(text(json.stdout)).toBe(ref(['-J', '-l', '-j', fileA], dirA, [a1, a2]));
      // `-J` alone means `-J -l` (util-linux: argc == 2); the instance from the environment
      const jsonEnv = await sb.losetup(['-J'], { env: { LOOPFS_INSTANCE: 'inst' } });
      expect(jsonEnv.exitCode, text(jsonEnv.stderr)).toBe(0);
      expect(text(jsonEnv.stdout)).toBe(ref(['-J', '-l', '-j', fileA], dirA, [a1, a2]));
      for (const r of [table, raw, cols, json, jsonEnv]) {
        expect(text(r.stdout)).not.toContain(fileH);
        expect(text(r.stdout)).not.toContain(fileB);
        expect(text(r.stdout)).not.toContain(hostDev);
      }
    });

    // util-linux takes a lone -J (argc == 2) as `-J -l`; --instance DIR must not count in argc.
    it('--instance DIR -J alone lists like -J -l', async () => {
      const r = await sb.losetup(['--instance', 'inst', '-J']);
      expect(text(r.stderr)).toBe('');
      expect(text(r.stdout)).toBe(ref(['-J', '-l', '-j', fileA], dirA, [a1, a2]));
    });

    it('-j FILE and DEV see only the instance devices', async () => {
      const jA = await sb.losetup(['--instance', 'inst', '-j', fileA]);
      expect(text(jA.stdout)).toBe(ref(['-j', fileA], dirA, [a1, a2]));
      // files attached elsewhere: nothing, status 0, like util-linux for an unused file
      for (const f of [fileH, fileB]) {
        const r = await sb.losetup(['--instance', 'inst', '-j', f]);
        expect([r.exitCode, text(r.stdout), text(r.stderr)]).toEqual([0, '', '']);
        // ... while the host instance sees them
        const host = await sb.losetup(['-j', f]);
        expect([host.exitCode, text(host.stderr)]).toEqual([0, '']);
        expect(lines(host.stdout)).toHaveLength(1);
      }
      const one = await sb.losetup(['--instance', 'inst', `${dirA}/loop${a1}`]);
      expect(one.exitCode).toBe(0);
      expect(text(one.stdout)).toBe(ref([`/dev/loop${a1}`], dirA, [a1]));
      const oneList = await sb.losetup(['--instance', 'inst', '-l', `${dirA}/loop${a2}`]);
      expect(text(oneList.stdout)).toBe(ref(['-l', `/dev/loop${a2}`], dirA, [a2], { table: true }));
      // a relative name is looked up in the instance, not in /dev (nor in the cwd)
      const rel = await sb.losetup(['--instance', 'inst', `loop${a1}`]);
      expect(text(rel.stdout)).toBe(ref([`/dev/loop${a1}`], dirA, [a1]).replace(`${dirA}/`, `${dirA}/`));
      // foreign devices do not exist here: one util-linux style line, status 1
      for (const dev of [hostDev, `othr/loop${b1}`, `${dirB}/loop${b1}`, `loop${minorOf(hostDev)}`]) {
        const r = await sb.losetup(['--instance', 'inst', dev]);
        expect(r.exitCode, dev).toBe(1);
        expect(text(r.stdout)).toBe('');
        expect(text(r.stderr)).toBe(`losetup: ${dev}: failed to use device: No such device\n`);
      }
    });

    it('-d, -c, --direct-io, --sector-size and DEV FILE on a foreign device fail with one line and change nothing', async () => {
      const fileX = sb.file('x.img');
      const foreign = [hostDev, `othr/loop${b1}`, `${dirB}/loop${b1}`];
      const watched = [hostDev, `loop${b1}`, `loop${a1}`, `loop${a2}`];
      const before = snapshot(sb, watched, [dirA, dirB]);
      const claimsBefore = JSON.stringify(sb.claims());
      for (const dev of foreign) {
        const useFail = `losetup: ${dev}: failed to use device: No such device\n`;
        const cases: Array<[string[], string | RegExp]> = [
          [['-d', dev], useFail],
          [['-c', dev], useFail],
          [['--direct-io=on', dev], useFail],
          [['--sector-size', '4096', dev], useFail],
          // a relative name is looked up inside the instance (inst/othr/loopN does not exist)
          [[dev, fileX], /^losetup: \S+: failed to set up loop device: (No such device|No such file or directory)\n$/],
        ];
        for (const [args, stderr] of cases) {
          const r = await sb.losetup(['--instance', 'inst', ...args]);
          expect([r.exitCode, text(r.stdout)], args.join(' ')).toEqual([1, '']);
          if (typeof stderr === 'string') expect(text(r.stderr), args.join(' ')).toBe(stderr);
          else expect(text(r.stderr), args.join(' ')).toMatch(stderr);
          expect(snapshot(sb, watched, [dirA, dirB]), args.join(' ')).toBe(before);
        }
      }
      // an absolute foreign node with a file: named as given
      const r = await sb.losetup(['--instance', 'inst', hostDev, fileX]);
      expect([r.exitCode, text(r.stderr)]).toEqual([1, `losetup: ${hostDev}: failed to set up loop device: No such device\n`]);
      expect(snapshot(sb, watched, [dirA, dirB])).toBe(before);
      expect(JSON.stringify(sb.claims())).toBe(claimsBefore);
      expect(fs.existsSync(`/sys/block/loop${minorOf(hostDev)}/loop/backing_file`)).toBe(true);
      // and the host view is unchanged: util-linux still sees all four devices bound
      const all = execFileSync(REF_LOSETUP, ['-a'], { encoding: 'utf8' });
      for (const m of [a1, a2, b1, minorOf(hostDev)]) expect(all).toContain(`/dev/loop${m}:`);
    });

    it('-D detaches only the instance devices', async () => {
      const r = await sb.losetup(['--instance', 'inst', '-D']);
      expect([r.exitCode, text(r.stdout), text(r.stderr)]).toEqual([0, '', '']);
      expect(readLoopState(`loop${a1}`)?.backingFile).not.toBe(fileA);
      expect(readLoopState(`loop${a2}`)?.backingFile).not.toBe(fileA);
      expect(readLoopState(hostDev)?.backingFile).toBe(fileH);
      expect(readLoopState(`loop${b1}`)?.backingFile).toBe(fileB);
      expect(sb.bound().map((s) => s.backingFile).sort()).toEqual([fileB, fileH]);
      // pool 0: the detached devices left the instance (nodes, state, claims)
      expect(fs.readdirSync(dirA).filter((n) => n !== '.loopfs')).toEqual([]);
      expect(sb.ownDevices(dirA)).toEqual({});
      expect(sb.claims().map((c) => c.minor).filter((m) => !sb.takenByOthers(m))).toEqual([b1]);
      const after = await sb.losetup(['--instance', 'inst', '-a']);
      expect([after.exitCode, text(after.stdout)]).toEqual([0, '']);
      expect(text((await sb.losetup(['--instance', 'othr', '-a'])).stdout)).toContain(`${dirB}/loop${b1}:`);
    });

    it('-d of its own device: the name -f --show printed, or a name relative to the instance', async () => {
      const r = await sb.losetup(['--instance', 'inst', '-d', `${dirA}/loop${a1}`]);
      expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
      expect(readLoopState(`loop${a1}`)?.backingFile).not.toBe(fileA);
      expect(readLoopState(`loop${a2}`)?.backingFile).toBe(fileA);
      // pool 0: the device left the instance
      expect(Object.keys(sb.ownDevices(dirA))).toEqual([String(a2)]);
      expect(fs.existsSync(`${dirA}/loop${a1}`)).toBe(false);
      const r2 = await sb.losetup(['--instance', 'inst', '-d', `loop${a2}`]);
      expect([r2.exitCode, text(r2.stderr)]).toEqual([0, '']);
      expect(readLoopState(`loop${a2}`)?.backingFile).not.toBe(fileA);
      expect(sb.ownDevices(dirA)).toEqual({});
      expect(readLoopState(hostDev)?.backingFile).toBe(fileH);
      expect(readLoopState(`loop${b1}`)?.backingFile).toBe(fileB);
    });

    it('the host instance (no --instance) lists every device, named /dev/loopN', async () => {
      const r = await sb.losetup(['-a']);
      expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
      const out = text(r.stdout);
      for (const [m, f] of [[a1, fileA], [a2, fileA], [b1, fileB], [minorOf(hostDev), fileH]] as const) {
        expect(out).toContain(`/dev/loop${m}: `);
        expect(out.split('\n').find((l) => l.startsWith(`/dev/loop${m}: `))).toContain(`(${f})`);
      }
      expect(out).not.toContain(dirA);
    });
  });

  it('two instances allocating at the same time never share a device', async () => {
    const dirA = sb.path('inst');
    const dirB = sb.path('othr');
    await sb.create(dirA);
    await sb.create(dirB);
    const N = 10;
    const jobs: Array<Promise<{ inst: string; file: string; r: Awaited<ReturnType<Sandbox['losetup']>> }>> = [];
    for (let i = 0; i < N; i++) {
      for (const inst of ['inst', 'othr']) {
        const file = sb.file(`${inst}-${i}.img`);
        jobs.push(sb.losetup(['--instance', inst, '-f', '--show', file]).then((r) => ({ inst, file, r })));
      }
    }
    const results = await Promise.all(jobs);
    for (const { r } of results) expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
    const byInst = new Map<string, number[]>([['inst', []], ['othr', []]]);
    for (const { inst, file, r } of results) {
      const out = text(r.stdout).trim();
      expect(out.startsWith(`${sb.path(inst)}/loop`)).toBe(true);
      const m = minorOf(out);
      byInst.get(inst)!.push(m);
      expect(readLoopState(`loop${m}`)?.backingFile).toBe(file);
    }
    const a = byInst.get('inst')!;
    const b = byInst.get('othr')!;
    expect(new Set(a).size).toBe(N);
    expect(new Set(b).size).toBe(N);
    expect(a.filter((m) => b.includes(m))).toEqual([]);
    const sa = Object.keys(sb.state(dirA)!.devices).map(Number).sort((x, y) => x - y);
    const sbb = Object.keys(sb.state(dirB)!.devices).map(Number).sort((x, y) => x - y);
    expect(sa).toEqual([...a].sort((x, y) => x - y));
    expect(sbb).toEqual([...b].sort((x, y) => x - y));
    // each listing shows exactly its own N devices
    expect(lines((await sb.losetup(['--instance', 'inst', '-a'])).stdout)).toHaveLength(N);
    expect(lines((await sb.losetup(['--instance', 'othr', '-a'])).stdout)).toHaveLength(N);
    // claims: one per device, naming the right instance
    const ids = { inst: sb.state(dirA)!.id, othr: sb.state(dirB)!.id };
    for (const c of sb.claims()) expect(c.id).toBe(a.includes(c.minor) ? ids.inst : ids.othr);
    expect(sb.claims()).toHaveLength(2 * N);
  });
});
