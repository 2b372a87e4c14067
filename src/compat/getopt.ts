/**
 * glibc 2.36 `getopt_long()` emulation.
 *
 * losetup's observable behaviour (which argument is an option, which is an operand, and the
 * exact wording of every usage error) is glibc's, not util-linux's, so this is a faithful
 * re-implementation of glibc's state machine rather than a "nice" option parser:
 *
 *  - non-options are permuted to the end (unless the option string starts with '+' or
 *    POSIXLY_CORRECT is set, which stop at the first non-option; '-' returns them in order
 *    as option 1);
 *  - `--` ends option processing; `-` and the empty string are operands;
 *  - long options may be abbreviated to any unique prefix; an exact name wins over longer
 *    names it prefixes; candidates that are identical (same has/val) are not ambiguous;
 *  - optional arguments are taken only when attached (`--direct-io=on`, `-xVALUE`).
 *
 * Everything is done on UTF-8 bytes, like glibc does on `char`: an invalid non-ASCII short
 * option is reported one *byte* at a time (`-é` prints the lone byte 0xC3), which a JS
 * string cannot hold, so every error also comes as `errorBytes`. The `-W foo` extension
 * ("W;" in the option string) is not implemented; losetup does not use it.
 */

export type ArgKind = 'none' | 'required' | 'optional';

/** `val` is the short option character ('a') or a numeric id (>= 128) for long-only options. */
export interface LongOption {
  name: string;
  has: ArgKind;
  val: string | number;
}

/**
 * One getopt_long() result. `opt` is the option char / long-option val, '?' for an error,
 * ':' for a missing argument when the option string starts with ':', or 1 for an in-order
 * operand ('-' mode). `error` is the line glibc would print to stderr (no trailing newline;
 * absent when glibc prints nothing); `errorBytes` is the same line as exact bytes.
 */
export interface GetoptItem {
  opt: string | number;
  arg?: string;
  error?: string;
  errorBytes?: Uint8Array;
}

type Ordering = 'permute' | 'require' | 'in-order';

const DASH = 0x2d;
const EQUALS = 0x3d;

/** One argv element: the caller's string plus its bytes (what glibc actually scans). */
interface Arg {
  text: string;
  bytes: Buffer;
}

function toArg(text: string): Arg {
  return { text, bytes: Buffer.from(text, 'utf8') };
}

/** Numeric identity of a `val`, used for glibc's "same option?" comparison. */
function valCode(val: string | number): number {
  return typeof val === 'number' ? val : val.codePointAt(0) ?? 0;
}

export class Getopt {
  private readonly argv: Arg[];
  private readonly argv0: Buffer;
  private readonly shortopts: string;
  private readonly longopts: readonly LongOption[];
  private readonly longNames: Buffer[];
  private readonly ordering: Ordering;
  private readonly printErrors: boolean;

  /** Index of the next argv element to scan (glibc `optind`). */
  private optind = 1;
  /**
   * The rest of a cluster of short options still to scan (glibc `nextchar`): the element's
   * bytes and an offset. Kept apart from optind, which moves on before the cluster is done.
   */
  private nextchar: { bytes: Buffer; pos: number } | null = null;
  /** The run of skipped non-options that still has to be moved behind the options. */
  private firstNonopt = 1;
  private lastNonopt = 1;
  private finished = false;

  /**
   * @param argv0 printed at the start of each error, exactly as glibc prints `argv[0]`.
   * @param env   only `POSIXLY_CORRECT` is looked at (any value, even '', counts as set,
   *              like getenv() != NULL). Nothing is read from `process.env` here.
   */
  constructor(
    argv0: string,
    args: string[],
    shortopts: string,
    longopts: readonly LongOption[],
    env?: { POSIXLY_CORRECT?: string },
  ) {
    this.argv0 = Buffer.from(argv0, 'utf8');
    this.argv = [toArg(argv0), ...args.map(toArg)];
    this.longopts = longopts;
    this.longNames = longopts.map((o) => Buffer.from(o.name, 'utf8'));

    if (shortopts.startsWith('-')) {
      this.ordering = 'in-order';
      shortopts = shortopts.slice(1);
    } else if (shortopts.startsWith('+')) {
      this.ordering = 'require';
      shortopts = shortopts.slice(1);
    } else if (env?.POSIXLY_CORRECT !== undefined) {
      this.ordering = 'require';
    } else {
      this.ordering = 'permute';
    }
    // A leading ':' (after '+'/'-') silences messages and makes a missing argument ':'.
    this.printErrors = !shortopts.startsWith(':');
    this.shortopts = shortopts;
  }

  /** Next option, or null where getopt_long() returns -1. Stays null once finished. */
  next(): GetoptItem | null {
    if (this.finished) return null;

    if (this.nextchar === null || this.nextchar.pos >= this.nextchar.bytes.length) {
      const item = this.advance();
      if (item !== undefined) return item;
    }
    return this.shortOption();
  }

  /** argv[optind..] — after next() returned null, the operands in glibc's permuted order. */
  operands(): string[] {
    return this.argv.slice(this.optind).map((a) => a.text);
  }

  private cur(): Arg {
    return this.argv[this.optind];
  }

  private isNonOption(i: number): boolean {
    const b = this.argv[i].bytes;
    return b.length < 2 || b[0] !== DASH;
  }

  /**
   * Move to the next argv element (permuting skipped non-options). Returns an item when the
   * element is complete by itself (end, operand, long option); undefined when it starts a
   * cluster of short options, left in `nextchar`.
   */
  private advance(): GetoptItem | null | undefined {
    const argc = this.argv.length;

    if (this.ordering === 'permute') {
      // Options found after some non-options are moved in front of them.
      if (this.firstNonopt !== this.lastNonopt && this.lastNonopt !== this.optind) this.exchange();
      else if (this.lastNonopt !== this.optind) this.firstNonopt = this.optind;

      while (this.optind < argc && this.isNonOption(this.optind)) this.optind++;
      this.lastNonopt = this.optind;
    }

    // '--' is skipped like an option, swapped with the pending non-options, and everything
    // after it becomes an operand (even if it looks like an option).
    if (this.optind !== argc && this.cur().text === '--') {
      this.optind++;
      if (this.firstNonopt !== this.lastNonopt && this.lastNonopt !== this.optind) this.exchange();
      else if (this.firstNonopt === this.lastNonopt) this.firstNonopt = this.optind;
      this.lastNonopt = argc;
      this.optind = argc;
    }

    if (this.optind === argc) {
      // Point optind back at the permuted non-options so operands() returns them.
      if (this.firstNonopt !== this.lastNonopt) this.optind = this.firstNonopt;
      return this.finish();
    }

    if (this.isNonOption(this.optind)) {
      if (this.ordering === 'require') return this.finish();
      return { opt: 1, arg: this.argv[this.optind++].text };
    }

    if (this.cur().bytes[1] === DASH) return this.longOption();
    this.nextchar = { bytes: this.cur().bytes, pos: 1 };
    return undefined;
  }

  private finish(): null {
    this.finished = true;
    this.nextchar = null;
    return null;
  }

  /** glibc exchange(): swap [firstNonopt,lastNonopt) with [lastNonopt,optind), keeping order. */
  private exchange(): void {
    const nonopts = this.argv.slice(this.firstNonopt, this.lastNonopt);
    const opts = this.argv.slice(this.lastNonopt, this.optind);
    this.argv.splice(this.firstNonopt, this.optind - this.firstNonopt, ...opts, ...nonopts);
    this.firstNonopt += this.optind - this.lastNonopt;
    this.lastNonopt = this.optind;
  }

  private error(...parts: Array<string | Buffer>): Pick<GetoptItem, 'error' | 'errorBytes'> {
    if (!this.printErrors) return {};
    const bytes = Buffer.concat([this.argv0, ...parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : p))]);
    return { error: bytes.toString('utf8'), errorBytes: new Uint8Array(bytes) };
  }

  private shortOption(): GetoptItem {
    const next = this.nextchar as { bytes: Buffer; pos: number };
    const c = next.bytes[next.pos++];
    // optind moves on as soon as the last character of the element is being processed.
    const atEnd = next.pos >= next.bytes.length;
    if (atEnd) this.optind++;

    const ch = String.fromCharCode(c);
    const idx = c < 0x80 ? this.shortopts.indexOf(ch) : -1;
    if (idx < 0 || ch === ':' || ch === ';') {
      return { opt: '?', ...this.error(": invalid option -- '", Buffer.from([c]), "'") };
    }

    if (this.shortopts[idx + 1] !== ':') return { opt: ch };

    const rest = atEnd ? undefined : next.bytes.subarray(next.pos).toString('utf8');
    this.nextchar = null;
    if (this.shortopts[idx + 2] === ':') {
      // Optional argument: only the rest of this element, never the next one.
      if (rest === undefined) return { opt: ch };
      this.optind++;
      return { opt: ch, arg: rest };
    }
    if (rest !== undefined) {
      this.optind++;
      return { opt: ch, arg: rest };
    }
    if (this.optind === this.argv.length) {
      return {
        opt: this.shortopts.startsWith(':') ? ':' : '?',
        ...this.error(": option requires an argument -- '", ch, "'"),
      };
    }
    return { opt: ch, arg: this.argv[this.optind++].text };
  }

  /** argv[optind] starts with "--" (and is not "--" itself). */
  private longOption(): GetoptItem {
    const body = this.cur().bytes.subarray(2);
    const eq = body.indexOf(EQUALS);
    const name = eq < 0 ? body : body.subarray(0, eq);
    // Messages about the spelling quote the whole rest of the element, '=value' included.
    const spelled = Buffer.concat([Buffer.from('--'), body]);

    let found = this.longNames.findIndex((n) => n.equals(name));
    if (found < 0) {
      // Abbreviations. Like glibc, a later candidate only makes the match ambiguous if it
      // differs from the *first* candidate in has/val; all differing ones are listed.
      const ambiguous: number[] = [];
      this.longNames.forEach((n, i) => {
        if (n.length < name.length || !n.subarray(0, name.length).equals(name)) return;
        if (found < 0) {
          found = i;
          return;
        }
        const a = this.longopts[found];
        const b = this.longopts[i];
        if (a.has !== b.has || valCode(a.val) !== valCode(b.val)) {
          if (ambiguous.length === 0) ambiguous.push(found);
          ambiguous.push(i);
        }
      });
      if (ambiguous.length > 0) {
        this.nextchar = null;
        this.optind++;
        const list = ambiguous.map((i) => ` '--${this.longopts[i].name}'`).join('');
        return { opt: '?', ...this.error(": option '", spelled, "' is ambiguous; possibilities:", list) };
      }
    }

    this.optind++;
    this.nextchar = null;
    if (found < 0) {
      return { opt: '?', ...this.error(": unrecognized option '", spelled, "'") };
    }

    const o = this.longopts[found];
    if (eq >= 0) {
      if (o.has === 'none') {
        return { opt: '?', ...this.error(": option '--", o.name, "' doesn't allow an argument") };
      }
      return { opt: o.val, arg: body.subarray(eq + 1).toString('utf8') };
    }
    if (o.has === 'required') {
      if (this.optind < this.argv.length) return { opt: o.val, arg: this.argv[this.optind++].text };
      return {
        opt: this.shortopts.startsWith(':') ? ':' : '?',
        ...this.error(": option '--", o.name, "' requires an argument"),
      };
    }
    return { opt: o.val };
  }
}
