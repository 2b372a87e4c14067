// util-linux strtosize()/parse_size() and parse_switch(). Expected values are worked out from
// lib/strutils.c; the verdicts (ok / EINVAL / ERANGE) are then checked against the real losetup
// 2.38.1 (`-o VALUE` fails in option parsing with the errno text), and the values themselves
// against util-linux 2.38.1 fallocate, whose `-v -p -l VALUE` prints the parsed length.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseSwitch, strtosize, StrtosizeError, type StrtosizeOptions } from '../../src/compat/strtosize.js';

const K = 1024n;
const M = K * K;
const G = M * K;
const E = G * G;
const U64_MAX = (1n << 64n) - 1n;

type Want = bigint | 'EINVAL' | 'ERANGE';

function result(s: string, opts?: StrtosizeOptions): Want {
  try {
    return strtosize(s, opts);
  } catch (e) {
    if (e instanceof StrtosizeError) return e.errno;
    throw e;
  }
}

// [input, expected] — the table the binary checks below also run through.
const CASES: Array<[string, Want]> = [
  ['0', 0n],
  ['1', 1n],
  ['512', 512n],
  ['  42', 42n],
  ['\t\n\v\f\r7', 7n],
  ['+5', 5n],
  [' +5', 5n],
  ['0x10', 16n],
  ['0X1f', 31n],
  ['010', 8n],
  ['0777', 511n],
  ['0x10K', 16n * K],
  ['010K', 8n * K],
  ['1K', K],
  ['1k', K],
  ['1KiB', K],
  ['1Kib', K],
  ['1kiB', K],
  ['1KB', 1000n],
  ['1Kb', 1000n],
  ['1kB', 1000n],
  ['20M', 20n * M],
  ['3MiB', 3n * M],
  ['1G', G],
  ['2T', 2n * G * K],
  ['1P', G * M],
  ['15E', 15n * E],
  ['15EiB', 15n * E],
  ['1EB', 10n ** 18n],
  ['18EB', 18n * 10n ** 18n],
  ['16E', 'ERANGE'],
  ['19EB', 'ERANGE'],
  ['1Z', 'ERANGE'],
  ['1Y', 'ERANGE'],
  ['0Y', 0n],
  ['0z', 0n],
  ['18446744073709551615', U64_MAX],
  ['18446744073709551616', 'ERANGE'],
  ['99999999999999999999999K', 'ERANGE'],
  ['0xffffffffffffffff', U64_MAX],
  ['16777216T', 'ERANGE'],
  ['16777215T', 16777215n * G * K],
  // decimal point (a suffix is required after a fraction)
  ['1.5M', M + M / 2n],
  ['1.5MiB', M + M / 2n],
  ['1.5MB', 1500000n],
  ['0.5MB', 500000n],
  ['0.5MiB', 512n * K],
  ['0.25G', G / 4n - 1n], // each digit's share is truncated separately
  ['1.05K', 1075n],
  ['1.005K', 1029n],
  ['1.999K', 2150n], // yes: the 9 in the hundredths place adds 10/9 -> 1 whole unit
  ['1.0K', K],
  ['1.00K', K],
  ['1.K', K],
  ['.5K', 'EINVAL'],
  ['1.5', 'EINVAL'],
  ['1.5B', 'EINVAL'],
  ['1.', 'EINVAL'],
  ['1.5.5M', 'EINVAL'],
  ['1.0.5M', M + (M * 5n) / 100n], // a quirk: zeros of both "fractions" add up
  ['1.99999999999999999999999M', 'ERANGE'],
  ['1.123456789012345678M', 1178029n],
  ['0.5Z', 1n << 59n], // Z's fraction base overflows and is silently stuck at 2^60
  ['0.5ZB', 5n * 10n ** 17n],
  ['0.9999999999999999999E', 1269272257027920438n],
  ['15.9999999999E', 116350752305781316n], // adding the fraction wraps around 2^64
  // rejected
  ['', 'EINVAL'],
  [' ', 'EINVAL'],
  ['abc', 'EINVAL'],
  ['-1', 'EINVAL'],
  ['  -1', 'EINVAL'],
  ['+-5', 'EINVAL'],
  ['+ 5', 'EINVAL'],
  ['- 5', 'EINVAL'],
  ['5 ', 'EINVAL'],
  ['1 K', 'EINVAL'],
  ['1KK', 'EINVAL'],
  ['1KIB', 'EINVAL'],
  ['1iB', 'EINVAL'],
  ['1B', 'EINVAL'],
  ['1X', 'EINVAL'],
  ['1KiBx', 'EINVAL'],
  ['0x', 'EINVAL'],
  ['0xg', 'EINVAL'],
  ['08', 'EINVAL'],
  ['09K', 'EINVAL'],
  ['0b101', 'EINVAL'],
  ['1é', 'EINVAL'],
  ['１', 'EINVAL'],
  // the zero-fraction overread, with the default "something non-NUL follows"
  ['1.0', 'EINVAL'],
  ['0.0', 'EINVAL'],
];

describe('strtosize', () => {
  for (const [input, want] of CASES) {
    it(`${JSON.stringify(input)} -> ${want}`, () => {
      expect(result(input)).toEqual(want);
    });
  }

  it('reads past the NUL after a zero-only fraction (what follows in memory matters)', () => {
    expect(result('1.0', { following: 'next-arg' })).toBe('EINVAL');
    expect(result('1.0', { following: '' })).toBe('ERANGE');
    expect(result('1.00', { following: 'iB' })).toBe('ERANGE');
    expect(result('1.0', { following: 'B' })).toBe('ERANGE');
    expect(result('0.0', { following: '' })).toBe(0n);
    expect(result('0.000', { following: 'iB' })).toBe(0n);
    expect(result('0.0', { following: 'iBx' })).toBe('EINVAL');
    // Without a zero-only fraction nothing past the string is read.
    expect(result('1.5K', { following: '' })).toBe(K + K / 2n);
    expect(result('1K', { following: '' })).toBe(K);
  });

  it('the decimal point comes from the locale', () => {
    expect(result('1,5M', { decimalPoint: ',' })).toBe(M + M / 2n);
    expect(result('1.5M', { decimalPoint: ',' })).toBe('EINVAL');
  });

  it('errors carry errno, code and the input', () => {
    try {
      strtosize('xyz');
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(StrtosizeError);
      expect((e as StrtosizeError).errno).toBe('EINVAL');
      expect((e as StrtosizeError).code).toBe('EINVAL');
      expect((e as StrtosizeError).input).toBe('xyz');
    }
  });
});

describe('parseSwitch', () => {
  it('matches on/off pairs exactly, case-sensitively', () => {
    expect(parseSwitch('on', ['on'], ['off'])).toBe(true);
    expect(parseSwitch('off', ['on'], ['off'])).toBe(false);
    expect(parseSwitch('ON', ['on'], ['off'])).toBeNull();
    expect(parseSwitch('', ['on'], ['off'])).toBeNull();
    expect(parseSwitch('maybe', ['on'], ['off'])).toBeNull();
    expect(parseSwitch('no', ['on', 'yes'], ['off', 'no'])).toBe(false);
    expect(parseSwitch('yes', ['on', 'yes'], ['off', 'no'])).toBe(true);
  });

  it('pairs are tried in order and an unpaired word is ignored', () => {
    expect(parseSwitch('x', ['x'], ['x'])).toBe(true);
    expect(parseSwitch('x', ['a', 'x'], ['x', 'b'])).toBe(false);
    expect(parseSwitch('y', ['on', 'y'], ['off'])).toBeNull();
  });
});

// ---------------------------------------------------------------------------------------------
// The real programs.

const LOSETUP = '/usr/sbin/losetup';
const FALLOCATE = '/usr/bin/fallocate';
const SENTINEL = '--loopfs-test-sentinel';

function utilLinuxSkip(bin: string, name: string): string | undefined {
  if (!existsSync(bin)) return `${bin} not installed`;
  const v = spawnSync(bin, ['--version'], { encoding: 'utf8' });
  if (v.stdout.trim() !== `${name} from util-linux 2.38.1`) return `${bin} is not util-linux 2.38.1`;
  return undefined;
}
const losetupSkip = utilLinuxSkip(LOSETUP, 'losetup');
const fallocateSkip = utilLinuxSkip(FALLOCATE, 'fallocate');

const strerror = { EINVAL: 'Invalid argument', ERANGE: 'Numerical result out of range' };

describe.skipIf(losetupSkip !== undefined)(`verdicts vs ${LOSETUP}${losetupSkip ? ` (skipped: ${losetupSkip})` : ''}`, () => {
  // `losetup -o V <following...> SENTINEL`: a bad V stops option parsing with the errno text;
  // a good one runs into the unknown sentinel option. Nothing is ever acted on.
  const verdict = (v: string, following: string[] = []): string => {
    const r = spawnSync(LOSETUP, ['-o', v, ...following, SENTINEL], { encoding: 'utf8' });
    const line = r.stderr.split('\n')[0];
    if (line.includes(SENTINEL)) return 'ok';
    const m = /^losetup: failed to parse offset: '.*': (.*)$/s.exec(line);
    return m ? m[1] : `unexpected: ${line}`;
  };
  const ours = (v: string, following: string): string => {
    const w = result(v, { following });
    return typeof w === 'bigint' ? 'ok' : strerror[w];
  };

  it('every table entry', () => {
    // Arguments cannot contain NUL and the argv element after V is the sentinel.
    for (const [input] of CASES) {
      expect(verdict(input), JSON.stringify(input)).toBe(ours(input, SENTINEL));
    }
  });

  it('the past-the-NUL read sees the next argv element', () => {
    for (const v of ['1.0', '0.0', '7.000', '0.00']) {
      for (const next of ['', 'iB', 'B', 'ib', 'x', 'iBx']) {
        expect(verdict(v, [next]), `${v} then ${JSON.stringify(next)}`).toBe(ours(v, next));
      }
    }
  });
});

describe.skipIf(fallocateSkip !== undefined)(`values vs ${FALLOCATE}${fallocateSkip ? ` (skipped: ${fallocateSkip})` : ''}`, () => {
  const dir = fallocateSkip ? '' : mkdtempSync(path.join(os.tmpdir(), 'loopfs-strtosize-'));
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('parsed lengths equal ours (punching holes in an empty file)', () => {
    const file = path.join(dir, 'f');
    writeFileSync(file, '');
    let compared = 0;
    for (const [input, want] of CASES) {
      // Lengths must be positive and below what the file system allows for a hole.
      if (typeof want !== 'bigint' || want === 0n || want > 1n << 40n) continue;
      const r = spawnSync(FALLOCATE, ['-v', '-p', '-l', input, file], { encoding: 'utf8' });
      const m = /\((\d+) bytes\)/.exec(r.stdout);
      expect(m?.[1], `${JSON.stringify(input)}: ${r.stdout}${r.stderr}`).toBe(
        result(input, { following: file }).toString(),
      );
      compared++;
    }
    expect(compared).toBeGreaterThan(30);
  });
});
