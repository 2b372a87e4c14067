// util-linux err_exclusive_options(), including the unsorted-group quirk of losetup 2.38.1,
// checked by hand and against the real binary for every ordered pair of relevant options.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ExclusiveChecker, type ExclGroup } from '../../src/compat/exclusive.js';
import { Getopt, type LongOption } from '../../src/compat/getopt.js';
import {
  OPT_OUTPUT_ALL,
  OPT_RAW,
  SHORTOPTS,
  UTIL_LINUX_LONGOPTS as LONGOPTS,
  EXCL,
} from '../../src/compat/losetup/options.js';

const LOSETUP = '/usr/sbin/losetup';
const MSG1 = 'mutually exclusive arguments: --detach-all --all --set-capacity --detach --find --associated';
const MSG2 = 'mutually exclusive arguments: --detach-all --set-capacity --detach --find --list';
const MSG4 = 'mutually exclusive arguments: --json --raw';

function firstConflict(opts: Array<string | number>, groups = EXCL, longopts = LONGOPTS): string | null {
  const c = new ExclusiveChecker(groups, longopts);
  for (const o of opts) {
    const m = c.check(o);
    if (m !== null) return m;
  }
  return null;
}

describe('ExclusiveChecker', () => {
  it('reports the whole group, in declaration order', () => {
    expect(firstConflict(['a', 'd'])).toBe(MSG1);
    expect(firstConflict(['d', 'a'])).toBe(MSG1);
    expect(firstConflict(['a', 'f'])).toBe(MSG1);
    expect(firstConflict(['j', 'a'])).toBe(MSG1);
    expect(firstConflict(['l', 'd'])).toBe(MSG2);
    expect(firstConflict(['J', OPT_RAW])).toBe(MSG4);
    expect(firstConflict([OPT_RAW, 'J'])).toBe(MSG4);
  });

  it('the first group containing both options wins', () => {
    // D and f share groups 1, 2 and 3; group 1 is checked first.
    expect(firstConflict(['D', 'f'])).toBe(MSG1);
    expect(firstConflict(['l', 'D'])).toBe(MSG2);
  });

  it('repeating an option, or combining options of different groups, is fine', () => {
    expect(firstConflict(['a', 'a', 'a'])).toBeNull();
    expect(firstConflict(['d', 'd'])).toBeNull();
    expect(firstConflict(['a', 'l', 'J', 'n', 'o', 'O', OPT_OUTPUT_ALL])).toBeNull();
    expect(firstConflict(['?', ':', 1])).toBeNull();
  });

  it("the unsorted group {D,c,d,f,O} is never enforced for 'O' (loop bounds quirk)", () => {
    for (const o of ['D', 'c', 'd', 'f']) {
      expect(firstConflict(['O', o])).toBeNull();
      expect(firstConflict([o, 'O'])).toBeNull();
    }
  });

  it('a sorted version of the same group is enforced (the algorithm, not a special case)', () => {
    const sorted: ExclGroup[] = [['D', 'O', 'c', 'd', 'f']];
    expect(firstConflict(['O', 'd'], sorted)).toBe(
      'mutually exclusive arguments: --detach-all --output --set-capacity --detach --find',
    );
  });

  it('the scan stops at the first group whose first member is greater than the option', () => {
    // 'b' < 'c': the second row is never reached for 'b'.
    const groups: ExclGroup[] = [['c', 'x'], ['a', 'b']];
    expect(firstConflict(['a', 'b'], groups)).toBeNull();
    expect(firstConflict(['c', 'x'], groups)).toBe('mutually exclusive arguments: --set-capacity -x');
  });

  it('options without a long name print as -c when graphic, and not at all otherwise', () => {
    const groups: ExclGroup[] = [['X', 'Y', 200]];
    expect(firstConflict(['X', 'Y'], groups, [])).toBe('mutually exclusive arguments: -X -Y');
    expect(firstConflict([200, 'X'], groups, [])).toBe('mutually exclusive arguments: -X -Y');
  });

  it('long names are looked up by value, first match in table order', () => {
    const longopts: LongOption[] = [
      { name: 'first', has: 'none', val: 'x' },
      { name: 'second', has: 'none', val: 'x' },
      { name: 'why', has: 'none', val: 121 },
    ];
    expect(firstConflict(['x', 'y'], [['x', 'y']], longopts)).toBe('mutually exclusive arguments: --first --why');
  });

  it('at most 15 members are printed', () => {
    const big: ExclGroup = 'ABCDEFGHIJKLMNOPQRS'.split('');
    expect(firstConflict(['A', 'B'], [big], [])).toBe(
      'mutually exclusive arguments: ' + 'ABCDEFGHIJKLMNO'.split('').map((c) => `-${c}`).join(' '),
    );
  });
});

// ---------------------------------------------------------------------------------------------

function binarySkipReason(): string | undefined {
  if (!existsSync(LOSETUP)) return `${LOSETUP} not installed`;
  const v = spawnSync(LOSETUP, ['--version'], { encoding: 'utf8' });
  if (v.stdout.trim() !== 'losetup from util-linux 2.38.1') return `${LOSETUP} is not util-linux 2.38.1`;
  return undefined;
}
const binarySkip = binarySkipReason();

describe.skipIf(binarySkip !== undefined)(`exclusive options vs ${LOSETUP}${binarySkip ? ` (skipped: ${binarySkip})` : ''}`, () => {
  // A path that is not a loop device makes -c/-d exit during parsing, before any action; the
  // trailing unknown option makes every other probe exit in getopt. Nothing is ever acted on.
  const notALoop = '/loopfs-test-no-such-device';
  const words: Record<string, string[]> = {
    a: ['-a'],
    c: ['-c', notALoop],
    d: ['-d', notALoop],
    D: ['-D'],
    f: ['-f'],
    j: ['-j', '/loopfs-test-no-such-file'],
    l: ['-l'],
    O: ['-O', 'NAME'],
    J: ['-J'],
    raw: ['--raw'],
    n: ['-n'],
    o: ['-o', '512'],
  };
  const optOf = (k: string): string | number => (k === 'raw' ? OPT_RAW : k);
  const SENTINEL = '--loopfs-test-sentinel';

  it('every ordered pair gives the same verdict and message as losetup', () => {
    const keys = Object.keys(words);
    let conflicts = 0;
    for (const x of keys) {
      for (const y of keys) {
        const args = [...words[x], ...words[y], SENTINEL];
        const r = spawnSync(LOSETUP, args, { encoding: 'utf8' });
        const line = r.stderr.split('\n')[0];
        // The real run stops early at -c/-d with a bad device; so must our prediction.
        const seq: Array<string | number> = [];
        for (const k of [x, y]) {
          seq.push(optOf(k));
          if (k === 'c' || k === 'd') break;
        }
        const want = firstConflict(seq);
        if (want !== null) conflicts++;
        expect(r.status, args.join(' ')).toBe(1);
        if (want === null) expect(line, args.join(' ')).not.toContain('mutually exclusive');
        else expect(line, args.join(' ')).toBe(`losetup: ${want}`);
      }
    }
    expect(conflicts).toBeGreaterThan(20);
  });

  it('options come through getopt first (long spellings, clusters)', () => {
    const args = ['--fi', '-lJ', '--raw', SENTINEL];
    const g = new Getopt(LOSETUP, args, SHORTOPTS, LONGOPTS);
    const c = new ExclusiveChecker(EXCL, LONGOPTS);
    let msg: string | null = null;
    for (let it = g.next(); it && msg === null; it = g.next()) msg = c.check(it.opt);
    const r = spawnSync(LOSETUP, args, { encoding: 'utf8' });
    expect(msg).toBe(MSG2);
    expect(r.stderr.split('\n')[0]).toBe(`losetup: ${msg}`);
  });
});
