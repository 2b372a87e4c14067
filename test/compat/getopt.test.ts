// glibc getopt_long() emulation. Three layers of evidence:
//  1. hand-written expectations for each documented glibc rule;
//  2. the real util-linux 2.38.1 losetup: its first stderr line for bad options must equal our
//     error line byte for byte (every probe ends in a getopt error, so nothing is ever acted on);
//  3. a differential fuzz against glibc's own getopt_long(), compiled from a small C harness
//     when a C compiler is available (options, arguments, messages and final operand order).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Getopt, type GetoptItem, type LongOption } from '../../src/compat/getopt.js';
import {
  OPT_DIO,
  OPT_OUTPUT_ALL,
  OPT_SHOW,
  OPT_SIZELIMIT,
  SHORTOPTS,
  UTIL_LINUX_LONGOPTS,
} from '../../src/compat/losetup/options.js';
import { prng } from '../helpers/prng.js';

// losetup 2.38.1's table, in source order (the order matters for ambiguity messages)
const LONGOPTS: LongOption[] = [...UTIL_LINUX_LONGOPTS];

const LOSETUP = '/usr/sbin/losetup';
const A0 = '/usr/sbin/losetup';

function parse(
  args: string[],
  opts: { shortopts?: string; longopts?: LongOption[]; env?: { POSIXLY_CORRECT?: string } } = {},
): { items: GetoptItem[]; operands: string[] } {
  const g = new Getopt(A0, args, opts.shortopts ?? SHORTOPTS, opts.longopts ?? LONGOPTS, opts.env);
  const items: GetoptItem[] = [];
  for (let it = g.next(); it !== null; it = g.next()) items.push(it);
  return { items, operands: g.operands() };
}

/** Items without errorBytes, for readable expectations. */
function simple(args: string[], opts?: Parameters<typeof parse>[1]): { items: object[]; operands: string[] } {
  const r = parse(args, opts);
  return {
    items: r.items.map(({ errorBytes: _b, ...rest }) => rest),
    operands: r.operands,
  };
}

describe('getopt: glibc rules', () => {
  it('permutes operands behind the options, keeping both orders', () => {
    expect(simple(['a', '-f', 'b', '-o', '5', 'c'])).toEqual({
      items: [{ opt: 'f' }, { opt: 'o', arg: '5' }],
      operands: ['a', 'b', 'c'],
    });
  });

  it('no permutation with a leading "+" or with POSIXLY_CORRECT (even empty)', () => {
    const want = { items: [{ opt: 'f' }], operands: ['a', '-r', 'b'] };
    expect(simple(['-f', 'a', '-r', 'b'], { shortopts: '+' + SHORTOPTS })).toEqual(want);
    expect(simple(['-f', 'a', '-r', 'b'], { env: { POSIXLY_CORRECT: '' } })).toEqual(want);
    expect(simple(['-f', 'a', '-r', 'b'], { env: { POSIXLY_CORRECT: undefined } })).toEqual({
      items: [{ opt: 'f' }, { opt: 'r' }],
      operands: ['a', 'b'],
    });
  });

  it('a leading "-" returns operands in order as option 1', () => {
    expect(simple(['x', '-f', 'y'], { shortopts: '-' + SHORTOPTS })).toEqual({
      items: [{ opt: 1, arg: 'x' }, { opt: 'f' }, { opt: 1, arg: 'y' }],
      operands: [],
    });
  });

  it('"--" ends options; later option-like words, "-" and "" are operands', () => {
    expect(simple(['a', '-f', '--', '-r', '--all', '-', ''])).toEqual({
      items: [{ opt: 'f' }],
      operands: ['a', '-r', '--all', '-', ''],
    });
    expect(simple(['-', '', '-a'])).toEqual({ items: [{ opt: 'a' }], operands: ['-', ''] });
    // Only the first "--" is special.
    expect(simple(['--', '--'])).toEqual({ items: [], operands: ['--'] });
  });

  it('clustered short options and attached or separate required arguments', () => {
    expect(simple(['-fP', '-o1024', '-fo', '2048', '-Pfo3'])).toEqual({
      items: [
        { opt: 'f' },
        { opt: 'P' },
        { opt: 'o', arg: '1024' },
        { opt: 'f' },
        { opt: 'o', arg: '2048' },
        { opt: 'P' },
        { opt: 'f' },
        { opt: 'o', arg: '3' },
      ],
      operands: [],
    });
  });

  it('a required argument is the next element whatever it looks like', () => {
    expect(simple(['-o', '--all', '-j', '--', 'x'])).toEqual({
      items: [
        { opt: 'o', arg: '--all' },
        { opt: 'j', arg: '--' },
      ],
      operands: ['x'],
    });
    expect(simple(['--offset', '-f', '--sizelimit', ''])).toEqual({
      items: [
        { opt: 'o', arg: '-f' },
        { opt: OPT_SIZELIMIT, arg: '' },
      ],
      operands: [],
    });
  });

  it('optional arguments only when attached', () => {
    expect(simple(['--direct-io', 'on', '--direct-io=off', '--direct-io='])).toEqual({
      items: [{ opt: OPT_DIO }, { opt: OPT_DIO, arg: 'off' }, { opt: OPT_DIO, arg: '' }],
      operands: ['on'],
    });
    expect(simple(['-xfoo', 'bar'], { shortopts: 'x::' })).toEqual({
      items: [{ opt: 'x', arg: 'foo' }],
      operands: ['bar'],
    });
    expect(simple(['-x', 'bar'], { shortopts: 'x::' })).toEqual({ items: [{ opt: 'x' }], operands: ['bar'] });
  });

  it('long options: =value, abbreviations, exact match wins', () => {
    expect(simple(['--sho', '--off=7', '--detach', 'd0', '--detach-all', '--detach-', '--output-'])).toEqual({
      items: [
        { opt: OPT_SHOW },
        { opt: 'o', arg: '7' },
        { opt: 'd', arg: 'd0' },
        { opt: 'D' },
        { opt: 'D' },
        { opt: OPT_OUTPUT_ALL },
      ],
      operands: [],
    });
    expect(simple(['--offset=a=b'])).toEqual({ items: [{ opt: 'o', arg: 'a=b' }], operands: [] });
  });

  it('ambiguous prefixes list the candidates in table order, quoting the whole word', () => {
    expect(simple(['--d'])).toEqual({
      items: [
        {
          opt: '?',
          error: `${A0}: option '--d' is ambiguous; possibilities: '--detach' '--detach-all' '--direct-io'`,
        },
      ],
      operands: [],
    });
    expect(parse(['--o=5']).items[0].error).toBe(
      `${A0}: option '--o=5' is ambiguous; possibilities: '--offset' '--output' '--output-all'`,
    );
    // "--=x": the empty name is a prefix of every option.
    expect(parse(['--=x']).items[0].error).toBe(
      `${A0}: option '--=x' is ambiguous; possibilities: ` + LONGOPTS.map((o) => `'--${o.name}'`).join(' '),
    );
  });

  it('candidates identical to the first one (same has and val) are not ambiguous', () => {
    const longopts: LongOption[] = [
      { name: 'zalias', has: 'none', val: 'a' },
      { name: 'zalias2', has: 'none', val: 'a' },
      { name: 'zother', has: 'none', val: 'b' },
      { name: 'zalias3', has: 'none', val: 97 }, // same val as 'a', spelled as a number
    ];
    expect(simple(['--zal'], { shortopts: 'ab', longopts })).toEqual({ items: [{ opt: 'a' }], operands: [] });
    // Only candidates that differ from the *first* one are listed (zalias2/zalias3 are not).
    expect(parse(['--z'], { shortopts: 'ab', longopts }).items[0].error).toBe(
      `${A0}: option '--z' is ambiguous; possibilities: '--zalias' '--zother'`,
    );
  });

  it('error messages', () => {
    const err = (args: string[]): string | undefined => parse(args).items.find((i) => i.opt === '?')?.error;
    expect(err(['--all=1'])).toBe(`${A0}: option '--all' doesn't allow an argument`);
    expect(err(['--al=1'])).toBe(`${A0}: option '--all' doesn't allow an argument`);
    expect(err(['--offset'])).toBe(`${A0}: option '--offset' requires an argument`);
    expect(err(['--off'])).toBe(`${A0}: option '--offset' requires an argument`);
    expect(err(['-o'])).toBe(`${A0}: option requires an argument -- 'o'`);
    expect(err(['-fo'])).toBe(`${A0}: option requires an argument -- 'o'`);
    expect(err(['--bogus=3'])).toBe(`${A0}: unrecognized option '--bogus=3'`);
    expect(err(['---x'])).toBe(`${A0}: unrecognized option '---x'`);
    expect(err(['-x'])).toBe(`${A0}: invalid option -- 'x'`);
    expect(err(['-a-'])).toBe(`${A0}: invalid option -- '-'`);
    expect(err(['-:'])).toBe(`${A0}: invalid option -- ':'`);
    expect(err(['-W'])).toBe(`${A0}: invalid option -- 'W'`);
  });

  it('a non-ASCII short option is reported one byte at a time', () => {
    const { items } = parse(['-é']);
    expect(items.map((i) => i.opt)).toEqual(['?', '?']);
    expect(Buffer.from(items[0].errorBytes!)).toEqual(
      Buffer.concat([Buffer.from(`${A0}: invalid option -- '`), Buffer.from([0xc3]), Buffer.from("'")]),
    );
    expect(Buffer.from(items[1].errorBytes!).includes(Buffer.from([0xa9, 0x27]))).toBe(true);
  });

  it('parsing continues after an error, and the bad element is consumed', () => {
    expect(simple(['--bogus', 'x', '-f'])).toEqual({
      items: [{ opt: '?', error: `${A0}: unrecognized option '--bogus'` }, { opt: 'f' }],
      operands: ['x'],
    });
  });

  it('a leading ":" silences errors and reports a missing argument as ":"', () => {
    expect(simple(['-o'], { shortopts: ':' + SHORTOPTS })).toEqual({ items: [{ opt: ':' }], operands: [] });
    expect(simple(['--offset', '-x', '-q', '--bogus'], { shortopts: ':' + SHORTOPTS }).items).toEqual([
      { opt: 'o', arg: '-x' },
      { opt: '?' },
      { opt: '?' },
    ]);
    expect(simple(['--offset'], { shortopts: ':' + SHORTOPTS }).items).toEqual([{ opt: ':' }]);
  });

  it('next() stays null after the end', () => {
    const g = new Getopt(A0, ['--', '-a'], SHORTOPTS, LONGOPTS);
    expect(g.next()).toBeNull();
    expect(g.next()).toBeNull();
    expect(g.operands()).toEqual(['-a']);
  });
});

// ---------------------------------------------------------------------------------------------
// The real binary. Each probe stops in getopt itself; a trailing unknown option guarantees that
// even a probe we misjudged can never reach an action (losetup exits at the first '?').

const SENTINEL = '--loopfs-test-sentinel';

function binarySkipReason(): string | undefined {
  if (!existsSync(LOSETUP)) return `${LOSETUP} not installed`;
  const v = spawnSync(LOSETUP, ['--version'], { encoding: 'utf8' });
  if (v.stdout.trim() !== 'losetup from util-linux 2.38.1') return `${LOSETUP} is not util-linux 2.38.1`;
  return undefined;
}
const binarySkip = binarySkipReason();

function firstStderrLine(args: string[]): { line: Buffer; status: number | null; stdout: Buffer } {
  const r = spawnSync(LOSETUP, args, { encoding: 'buffer' });
  const nl = r.stderr.indexOf(0x0a);
  return { line: nl < 0 ? r.stderr : r.stderr.subarray(0, nl), status: r.status, stdout: r.stdout };
}

describe.skipIf(binarySkip !== undefined)(`getopt vs ${LOSETUP}${binarySkip ? ` (skipped: ${binarySkip})` : ''}`, () => {
  // [args, append the sentinel?] — no sentinel where it would be taken as the missing argument.
  const probes: Array<[string[], boolean]> = [
    [['--d'], true],
    [['--de'], true],
    [['--o'], true],
    [['--out'], true],
    [['--s'], true],
    [['--d=x'], true],
    [['--=x'], true],
    [['--='], true],
    [['---x'], true],
    [['---'], true],
    [['--bogus'], true],
    [['--bogus=3'], true],
    [['--all=1'], true],
    [['--al=1'], true],
    [['--raw='], true],
    [['--offset'], false],
    [['--off'], false],
    [['--sizelimit'], false],
    [['--detach'], false],
    [['-o'], false],
    [['-fo'], false],
    [['-j'], false],
    [['-d'], false],
    [['-c'], false],
    [['-x'], true],
    [['-fx'], true],
    [['-a-'], true],
    [['-:'], true],
    [['-;'], true],
    [['-W'], true],
    [['-é'], true],
    [['-aé'], true],
    [['x', 'y', '-q'], true],
    [['-l', '--noheadings', '--bog'], true],
    [['-o', '5', '--sh=1'], true],
    [['--help=1'], true],
    [['--version=x'], true],
    [['--direct-io=on', '-Z'], true],
    [['--output-al=1'], true],
    [['--ver'], true],
  ];

  for (const [args, sentinel] of probes) {
    const full = sentinel ? [...args, SENTINEL] : args;
    it(`losetup ${JSON.stringify(full)}`, () => {
      const real = firstStderrLine(full);
      expect(real.status).toBe(1);
      expect(real.stdout.length).toBe(0);
      const ours = parse(full).items.find((i) => i.opt === '?');
      expect(ours?.errorBytes).toBeDefined();
      expect(Buffer.from(ours!.errorBytes!).toString('latin1')).toBe(real.line.toString('latin1'));
    });
  }

  it('argv[0] is printed as given', () => {
    // spawnSync's argv0 sets what the program sees as argv[0].
    const r = spawnSync(LOSETUP, ['-x'], { encoding: 'utf8', argv0: 'weird name' });
    const g = new Getopt('weird name', ['-x'], SHORTOPTS, LONGOPTS);
    expect(r.stderr.split('\n')[0]).toBe(g.next()?.error);
  });
});

// ---------------------------------------------------------------------------------------------
// Differential fuzz against glibc's getopt_long() itself.

const HARNESS_C = String.raw`
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <getopt.h>
#include <unistd.h>

/* stdin: one case per line: <posixly 0|1> <hex optstring> <hex arg>... ("-" = empty arg).
   Long options come from argv[1..] as name:has:val. stderr is merged into stdout so each
   glibc message appears right before the item it belongs to. */
static int unhex(const char *h, char *out) {
  if (strcmp(h, "-") == 0) { out[0] = 0; return 0; }
  size_t n = strlen(h) / 2;
  for (size_t i = 0; i < n; i++) { unsigned v; sscanf(h + 2 * i, "%2x", &v); out[i] = (char)v; }
  out[n] = 0;
  return (int)n;
}
static void hex(const char *s) {
  if (!*s) { fputs("-", stdout); return; }
  for (; *s; s++) printf("%02x", (unsigned char)*s);
}
int main(int argc, char **argv) {
  struct option lo[64];
  int n = 0;
  for (int i = 1; i < argc; i++, n++) {
    char *name = strdup(argv[i]);
    char *c1 = strchr(name, ':'); *c1 = 0;
    char *c2 = strchr(c1 + 1, ':'); *c2 = 0;
    lo[n].name = name; lo[n].has_arg = atoi(c1 + 1); lo[n].flag = NULL; lo[n].val = atoi(c2 + 1);
  }
  memset(&lo[n], 0, sizeof lo[n]);
  setvbuf(stdout, NULL, _IONBF, 0);
  dup2(1, 2);
  static char line[65536];
  while (fgets(line, sizeof line, stdin)) {
    char *cav[64]; int cac = 0; char *tok; char optstr[256]; int posix;
    line[strcspn(line, "\n")] = 0;
    tok = strtok(line, " "); posix = atoi(tok);
    tok = strtok(NULL, " "); unhex(tok, optstr);
    cav[cac++] = "/usr/sbin/losetup";
    while ((tok = strtok(NULL, " "))) { cav[cac] = malloc(strlen(tok) + 1); unhex(tok, cav[cac]); cac++; }
    cav[cac] = NULL;
    if (posix) setenv("POSIXLY_CORRECT", "", 1); else unsetenv("POSIXLY_CORRECT");
    optind = 0;
    int c;
    while ((c = getopt_long(cac, cav, optstr, lo, NULL)) != -1) {
      printf("@@ %d ", c);
      if (optarg) hex(optarg); else fputs("none", stdout);
      fputs("\n", stdout);
    }
    fputs("@@END", stdout);
    for (int i = optind; i < cac; i++) { fputs(" ", stdout); hex(cav[i]); }
    fputs("\n", stdout);
  }
  return 0;
}
`;

function compilerSkipReason(): string | undefined {
  const cc = spawnSync('cc', ['--version'], { encoding: 'utf8' });
  if (cc.error || cc.status !== 0) return 'no C compiler (cc) to build the glibc reference harness';
  const ldd = spawnSync('ldd', ['--version'], { encoding: 'utf8' });
  if (!/GLIBC|GNU libc/i.test(`${ldd.stdout}${ldd.stderr}`)) return 'libc is not glibc';
  return undefined;
}
const ccSkip = compilerSkipReason();

const hexOf = (s: string): string => (s === '' ? '-' : Buffer.from(s, 'utf8').toString('hex'));
const unhexOf = (h: string): string => (h === '-' ? '' : Buffer.from(h, 'hex').toString('utf8'));

describe.skipIf(ccSkip !== undefined)(`getopt vs glibc getopt_long()${ccSkip ? ` (skipped: ${ccSkip})` : ''}`, () => {
  const dir = ccSkip ? '' : mkdtempSync(path.join(os.tmpdir(), 'loopfs-getopt-'));
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  // Extra same-val aliases exercise glibc's "not really ambiguous" rule.
  const longopts: LongOption[] = [
    ...LONGOPTS,
    { name: 'zalias', has: 'none', val: 'a' },
    { name: 'zalias2', has: 'none', val: 'a' },
    { name: 'zother', has: 'required', val: 'b' },
  ];
  const hasNum = { none: 0, required: 1, optional: 2 } as const;
  const toC = (o: LongOption): string =>
    `${o.name}:${hasNum[o.has]}:${typeof o.val === 'number' ? o.val : o.val.charCodeAt(0)}`;

  const pool = [
    '-a', '-f', '-fP', '-Pf', '-o', '-o1024', '-ob', '-fo', '-x', '-é', '-:', '-a-', '-c', '-cdev',
    '-', '', '--', '---x', '--=x', '--=', '--offset', '--offset=5', '--off', '--o', '--d', '--de',
    '--detach', '--detach-all', '--detach-', '--direct-io', '--direct-io=on', '--dir', '--all=1',
    '--show', '--sh', '--bogus', '--bogus=1', '--json', '-J', '--za', '--z', '--zalias=1', '--zo',
    '--zother=q', 'file', 'x y', 'é', '-vV', '--raw', '--output-', '--sizelimit',
  ];
  const optstrings = [SHORTOPTS, '+' + SHORTOPTS, '-' + SHORTOPTS, ':' + SHORTOPTS, 'ab::c:fo:PvV'];

  it('matches glibc on 4000 random command lines', () => {
    const exe = path.join(dir, 'getopt-ref');
    writeFileSync(path.join(dir, 'harness.c'), HARNESS_C);
    const build = spawnSync('cc', ['-O0', '-o', exe, path.join(dir, 'harness.c')], { encoding: 'utf8' });
    expect(build.status, build.stderr).toBe(0);

    const rand = prng(20240601);
    const cases: Array<{ posix: boolean; optstr: string; args: string[] }> = [];
    for (let i = 0; i < 4000; i++) {
      const n = Math.floor(rand() * 7);
      const args = Array.from({ length: n }, () => pool[Math.floor(rand() * pool.length)]);
      const optstr = optstrings[Math.floor(rand() * optstrings.length)];
      cases.push({ posix: rand() < 0.15, optstr, args });
    }
    const input = cases.map((c) => [c.posix ? 1 : 0, hexOf(c.optstr), ...c.args.map(hexOf)].join(' ')).join('\n') + '\n';
    const run = spawnSync(exe, longopts.map(toC), { input, maxBuffer: 64 << 20 });
    expect(run.status).toBe(0);

    // Split the reference output into per-case transcripts (messages are raw bytes).
    const out = run.stdout.toString('latin1').split('\n');
    out.pop();
    let k = 0;
    for (const c of cases) {
      const want: string[] = [];
      for (;;) {
        const l = out[k++];
        if (l.startsWith('@@END')) {
          want.push('END' + l.slice(5).split(' ').filter(Boolean).map((h) => ` [${unhexOf(h)}]`).join(''));
          break;
        }
        if (l.startsWith('@@ ')) {
          const [, code, arg] = l.split(' ');
          want.push(`opt ${code} ${arg === 'none' ? 'none' : `[${unhexOf(arg)}]`}`);
        } else {
          want.push(`msg ${l}`);
        }
      }

      const g = new Getopt(A0, c.args, c.optstr, longopts, c.posix ? { POSIXLY_CORRECT: '' } : {});
      const got: string[] = [];
      for (let it = g.next(); it !== null; it = g.next()) {
        if (it.errorBytes) got.push(`msg ${Buffer.from(it.errorBytes).toString('latin1')}`);
        const code = typeof it.opt === 'number' ? it.opt : it.opt.charCodeAt(0);
        got.push(`opt ${code} ${it.arg === undefined ? 'none' : `[${it.arg}]`}`);
      }
      got.push('END' + g.operands().map((o) => ` [${o}]`).join(''));
      expect(got, `${c.posix ? 'POSIXLY_CORRECT ' : ''}optstring ${JSON.stringify(c.optstr)} args ${JSON.stringify(c.args)}`).toEqual(want);
    }
  });
});
