/**
 * util-linux 2.38.1 `strtosize()` / `parse_size()` (lib/strutils.c) and `parse_switch()`.
 *
 * Accepted: optional leading white space, an optional '+', a C integer in base 0 (decimal,
 * 0x hex, 0 octal — via strtoumax), optionally a fraction after the locale's decimal point,
 * then an optional suffix: K M G T P E Z Y (or lower case k m g t p e z y) alone or with
 * "iB"/"ib" for powers of 1024, or with "B"/"b" for powers of 1000. '-' is rejected.
 * Results are uint64 (`uintmax_t`): scaling overflow is ERANGE, but adding the fraction
 * wraps silently exactly as the C code does.
 *
 * The C parser is emulated byte for byte, including two accidents worth knowing:
 *  - after a fraction made only of zeros ("1.0", "2.000") it inspects up to three bytes
 *    *past the string's terminating NUL*. For argv strings that is the next argv element:
 *    usually a non-NUL byte, giving EINVAL; if the next argument is "", "iB" or "B" the
 *    suffix search finds the NUL of its own table and scales by 1024^9 (or 1000^9): ERANGE
 *    for non-zero values, 0 for "0.0". Pass that memory as `following` to reproduce it.
 *  - Z and Y with a fraction use a fraction base stuck at 2^60 (the base scaling overflows
 *    and is ignored), so "0.5Z" succeeds as 2^59.
 */

export type StrtosizeErrno = 'EINVAL' | 'ERANGE';

export class StrtosizeError extends Error {
  readonly errno: StrtosizeErrno;
  readonly code: StrtosizeErrno;
  readonly input: string;

  constructor(errno: StrtosizeErrno, input: string) {
    super(`${errno === 'ERANGE' ? 'Numerical result out of range' : 'Invalid argument'}: '${input}'`);
    this.name = 'StrtosizeError';
    this.errno = errno;
    this.code = errno;
    this.input = input;
  }
}

export interface StrtosizeOptions {
  /** LC_NUMERIC decimal point; '.' in C and C.UTF-8. */
  decimalPoint?: string;
  /**
   * The bytes that follow the string's NUL in the C process's memory: for an argv string,
   * the next argv element (for the last one, the first environment string). Only read by
   * the zero-fraction quirk above. Default: an unknown non-NUL byte.
   */
  following?: string;
}

const U64_MAX = (1n << 64n) - 1n;
const MASK = U64_MAX;

const SUFFIX_UPPER = 'KMGTPEZY';
const SUFFIX_LOWER = 'kmgtpezy';

/** C isspace() for single bytes in the C and UTF-8 locales. */
function isSpace(b: number): boolean {
  return b === 0x20 || (b >= 0x09 && b <= 0x0d);
}

function isDigit(b: number): boolean {
  return b >= 0x30 && b <= 0x39;
}

function digitValue(b: number): number {
  if (isDigit(b)) return b - 0x30;
  const l = b | 0x20;
  if (l >= 0x61 && l <= 0x7a) return l - 0x61 + 10;
  return 99;
}

/** glibc strtoumax(s + at, &end, 0) for strings without '-'. Returns end === at when no digits. */
function strtoumax(mem: Uint8Array, at: number): { value: bigint; end: number; erange: boolean } {
  let p = at;
  while (isSpace(mem[p])) p++;
  if (mem[p] === 0x2b /* + */) p++;

  let base = 10;
  if (mem[p] === 0x30 && (mem[p + 1] | 0x20) === 0x78 /* x */ && digitValue(mem[p + 2]) < 16) {
    base = 16;
    p += 2;
  } else if (mem[p] === 0x30) {
    base = 8;
  }

  const first = p;
  let value = 0n;
  let erange = false;
  while (digitValue(mem[p]) < base) {
    value = value * BigInt(base) + BigInt(digitValue(mem[p]));
    if (value > U64_MAX) erange = true;
    p++;
  }
  if (p === first) return { value: 0n, end: at, erange: false };
  return { value: erange ? U64_MAX : value, end: p, erange };
}

/** do_scale_by_power(): multiply `power` times, failing *before* a multiplication overflows. */
function scale(x: bigint, base: bigint, power: number): { value: bigint; ok: boolean } {
  while (power-- > 0) {
    if (U64_MAX / base < x) return { value: x, ok: false };
    x *= base;
  }
  return { value: x, ok: true };
}

function cstrlenBytes(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  const nul = b.indexOf(0);
  return nul < 0 ? b : b.subarray(0, nul);
}

/**
 * Parse a size like util-linux does. Throws StrtosizeError (errno EINVAL or ERANGE) where
 * strtosize() returns an error.
 */
export function strtosize(str: string, opts: StrtosizeOptions = {}): bigint {
  const fail = (errno: StrtosizeErrno): never => {
    throw new StrtosizeError(errno, str);
  };
  const dp = cstrlenBytes(opts.decimalPoint ?? '.');
  // The string as the C code sees it: NUL-terminated, followed by whatever memory follows.
  const own = cstrlenBytes(str);
  const after = opts.following === undefined ? Buffer.from('\x01') : cstrlenBytes(opts.following);
  const mem = new Uint8Array(own.length + after.length + 2 + 4);
  mem.set(own, 0);
  mem.set(after, own.length + 1);
  const at = (i: number): number => mem[i] ?? 0;

  if (own.length === 0) fail('EINVAL');

  let p = 0;
  while (isSpace(at(p))) p++;
  if (at(p) === 0x2d /* - */) fail('EINVAL');

  const num = strtoumax(mem, 0);
  if (num.end === 0) fail('EINVAL');
  if (num.erange) fail('ERANGE');
  let x = num.value;
  if (at(num.end) === 0) return x;

  let base = 1024n;
  let frac = 0n;
  let fracZeros = 0;
  p = num.end;

  // The C code loops back here after parsing a fraction.
  for (;;) {
    if (at(p + 1) === 0x69 /* i */ && (at(p + 2) === 0x42 || at(p + 2) === 0x62) && at(p + 3) === 0) {
      base = 1024n;
      break;
    }
    if ((at(p + 1) === 0x42 || at(p + 1) === 0x62) && at(p + 2) === 0) {
      base = 1000n;
      break;
    }
    if (at(p + 1) === 0) break;

    // Something longer than a suffix: only acceptable as "<decimal point><digits>...".
    const isDp = dp.length > 0 && dp.every((b, i) => at(p + i) === b);
    if (!(frac === 0n && at(p) !== 0 && isDp)) fail('EINVAL');
    p += dp.length;
    while (at(p) === 0x30) {
      p++;
      fracZeros++;
    }
    let end = p;
    if (isDigit(at(p))) {
      const f = strtoumax(mem, p);
      if (f.end === p) fail('EINVAL');
      if (f.erange) fail('ERANGE');
      frac = f.value;
      end = f.end;
    }
    if (frac !== 0n && at(end) === 0) fail('EINVAL'); // a fraction needs a suffix
    p = end;
  }

  // strchr() also "finds" the terminating NUL, which is how a NUL here gives power 9.
  const c = at(p);
  let pwr: number;
  if (c === 0) pwr = SUFFIX_UPPER.length + 1;
  else {
    const ch = String.fromCharCode(c);
    const i = c < 0x80 ? SUFFIX_UPPER.indexOf(ch) : -1;
    const j = c < 0x80 ? SUFFIX_LOWER.indexOf(ch) : -1;
    if (i >= 0) pwr = i + 1;
    else if (j >= 0) pwr = j + 1;
    else return fail('EINVAL');
  }

  const scaled = scale(x, base, pwr);
  x = scaled.value;

  if (frac !== 0n && pwr !== 0) {
    // Fraction base: the unit size; its own overflow is ignored by the C code.
    const fracBase = scale(1n, base, pwr).value;
    let fracDiv = 10n;
    let fracPoz = 1n;
    while (fracDiv < frac) {
      if (fracDiv <= U64_MAX / 10n) fracDiv *= 10n;
      else frac /= 10n;
    }
    for (let i = 0; i < fracZeros; i++) {
      if (fracDiv <= U64_MAX / 10n) fracDiv *= 10n;
      else frac /= 10n;
    }
    // Add each digit's share of the unit, last digit first, truncating at every step.
    do {
      const seg = frac % 10n;
      const segDiv = fracDiv / fracPoz;
      frac /= 10n;
      fracPoz = (fracPoz * 10n) & MASK;
      if (seg !== 0n && segDiv / seg !== 0n) x = (x + fracBase / (segDiv / seg)) & MASK;
    } while (frac !== 0n);
  }

  if (!scaled.ok) fail('ERANGE');
  return x;
}

/**
 * util-linux parse_switch(): `on[i]`/`off[i]` are tried as pairs, in order; returns true for
 * an "on" word, false for an "off" word, null when nothing matches (the caller then prints
 * "<errmesg>: '<arg>'" and exits). Matching is exact and case-sensitive.
 */
export function parseSwitch(arg: string, on: string[], off: string[]): boolean | null {
  const pairs = Math.min(on.length, off.length);
  for (let i = 0; i < pairs; i++) {
    if (arg === on[i]) return true;
    if (arg === off[i]) return false;
  }
  return null;
}
