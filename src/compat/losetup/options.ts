/**
 * losetup's command line, parsed the way util-linux 2.38.1 parses it: glibc
 * getopt_long with the same option table, the same exclusive-option groups checked
 * as each option is seen, and the same order of follow-up checks after parsing, so
 * that every usage error comes out with the same text and at the same moment.
 */
import { isSysError } from '../../kernel/errors.js';
import { ExclusiveChecker, type ExclGroup } from '../exclusive.js';
import { Getopt, type LongOption } from '../getopt.js';
import type { Output } from '../output.js';
import { Exit } from '../output.js';
import { parseSwitch, strtosize } from '../strtosize.js';
import { versionLine } from '../version.js';
import { COLUMNS, DEFAULT_COLUMNS, parseColumnList, UnknownColumn } from './columns.js';
import { usage } from './help.js';

/**
 * LO_FLAGS values (linux/loop.h); kept here so option parsing needs no native code.
 * AUTOCLEAR is for the -L re-use path (which clears it, as util-linux does).
 */
export const LO_FLAGS_READ_ONLY = 1;
export const LO_FLAGS_AUTOCLEAR = 4;
export const LO_FLAGS_PARTSCAN = 8;
export const LO_FLAGS_DIRECT_IO = 16;

export type Action =
  | 'create'
  | 'delete'
  | 'delete-all'
  | 'show'
  | 'show-one'
  | 'find-free'
  | 'set-capacity'
  | 'set-direct-io'
  | 'set-blocksize';

/** Long-only option ids, numbered after CHAR_MAX like util-linux's enum. */
export const OPT_SIZELIMIT = 128;
export const OPT_SHOW = 129;
export const OPT_RAW = 130;
export const OPT_DIO = 131;
export const OPT_OUTPUT_ALL = 132;
/** loopfs extension: no short option, so util-linux's option letters stay untouched. */
const OPT_INSTANCE = 133;

export const SHORTOPTS = 'ab:c:d:Dfhj:JlLno:O:PrvV';

/**
 * util-linux 2.38.1's table, in source order (the order shows in getopt's ambiguity
 * messages). The compat tests check it against the real binary.
 */
export const UTIL_LINUX_LONGOPTS: readonly LongOption[] = [
  { name: 'all', has: 'none', val: 'a' },
  { name: 'set-capacity', has: 'required', val: 'c' },
  { name: 'detach', has: 'required', val: 'd' },
  { name: 'detach-all', has: 'none', val: 'D' },
  { name: 'find', has: 'none', val: 'f' },
  { name: 'nooverlap', has: 'none', val: 'L' },
  { name: 'help', has: 'none', val: 'h' },
  { name: 'associated', has: 'required', val: 'j' },
  { name: 'json', has: 'none', val: 'J' },
  { name: 'list', has: 'none', val: 'l' },
  { name: 'sector-size', has: 'required', val: 'b' },
  { name: 'noheadings', has: 'none', val: 'n' },
  { name: 'offset', has: 'required', val: 'o' },
  { name: 'output', has: 'required', val: 'O' },
  { name: 'output-all', has: 'none', val: OPT_OUTPUT_ALL },
  { name: 'sizelimit', has: 'required', val: OPT_SIZELIMIT },
  { name: 'partscan', has: 'none', val: 'P' },
  { name: 'read-only', has: 'none', val: 'r' },
  { name: 'direct-io', has: 'optional', val: OPT_DIO },
  { name: 'raw', has: 'none', val: OPT_RAW },
  { name: 'show', has: 'none', val: OPT_SHOW },
  { name: 'verbose', has: 'none', val: 'v' },
  { name: 'version', has: 'none', val: 'V' },
];

/** Ours: util-linux's, plus --instance at the end. */
export const LONGOPTS: LongOption[] = [...UTIL_LINUX_LONGOPTS, { name: 'instance', has: 'required', val: OPT_INSTANCE }];

/** util-linux's groups, in its (ASCII) order; the third one is never enforced, on purpose. */
export const EXCL: ExclGroup[] = [
  ['D', 'a', 'c', 'd', 'f', 'j'],
  ['D', 'c', 'd', 'f', 'l'],
  ['D', 'c', 'd', 'f', 'O'],
  ['J', OPT_RAW],
];

export interface LosetupPlan {
  action: Action;
  /** The device of -c, -d (first), DEV FILE, DEV alone. */
  device: string | null;
  /** Further -d operands, checked only when the detach runs (as util-linux does). */
  moreDevices: string[];
  file: string | null;
  offset: bigint;
  offsetSet: boolean;
  sizelimit: bigint;
  sizelimitSet: boolean;
  blockSize: bigint;
  loFlags: number;
  noOverlap: boolean;
  showDevice: boolean;
  useDirectIo: boolean;
  list: boolean;
  json: boolean;
  raw: boolean;
  noHeadings: boolean;
  columns: number[];
}

export interface ParseContext {
  /** argv[0] as glibc's getopt prints it. */
  argv0: string;
  out: Output;
  /**
   * Validates a device argument like util-linux's is_loopdev(): throws a SysError for a
   * device that fails; anything else thrown (an unusable instance) propagates.
   */
  checkDevice(arg: string): void;
  env?: NodeJS.ProcessEnv;
}

function sizeOrDie(out: Output, arg: string, what: string): bigint {
  try {
    return strtosize(arg);
  } catch (e) {
    return out.err(`${what}: '${arg}'`, errnoText(e));
  }
}

function errnoText(e: unknown): string {
  const code = (e as { errno?: unknown; code?: unknown }).errno ?? (e as { code?: unknown }).code;
  return code === 'ERANGE' ? 'Numerical result out of range' : 'Invalid argument';
}

export function parseLosetup(args: string[], ctx: ParseContext): LosetupPlan {
  const { out } = ctx;
  const p: LosetupPlan = {
    action: undefined as unknown as Action,
    device: null,
    moreDevices: [],
    file: null,
    offset: 0n,
    offsetSet: false,
    sizelimit: 0n,
    sizelimitSet: false,
    blockSize: 0n,
    loFlags: 0,
    noOverlap: false,
    showDevice: false,
    useDirectIo: false,
    list: false,
    json: false,
    raw: false,
    noHeadings: false,
    columns: [],
  };
  let act: Action | null = null;
  let setDio = false;
  let setBlocksize = false;
  let outarg: string | null = null;

  const useDevice = (arg: string): string => {
    try {
      ctx.checkDevice(arg);
    } catch (e) {
      // Only a device that fails the check is util-linux's "failed to use device". An
      // instance that cannot be used at all (its broker not running) is said as such by
      // the caller: "No such device" would send a script looking for a device that is fine.
      if (!isSysError(e)) throw e;
      out.err(`${arg}: failed to use device`, (e as { description?: string }).description ?? 'No such device');
    }
    return arg;
  };

  const longopts = LONGOPTS;
  const g = new Getopt(ctx.argv0, args, SHORTOPTS, longopts, { POSIXLY_CORRECT: ctx.env?.POSIXLY_CORRECT });
  const excl = new ExclusiveChecker(EXCL, longopts);

  for (let item = g.next(); item !== null; item = g.next()) {
    const c = item.opt;
    const clash = excl.check(c);
    if (clash) {
      out.errRaw(`${out.prog}: ${clash}\n`);
      throw new Exit(1);
    }
    const arg = item.arg ?? '';
    switch (c) {
      case 'a':
        act = 'show';
        break;
      case 'b':
        setBlocksize = true;
        p.blockSize = sizeOrDie(out, arg, 'failed to parse logical block size');
        break;
      case 'c':
        act = 'set-capacity';
        p.device = useDevice(arg);
        break;
      case 'r':
        p.loFlags |= LO_FLAGS_READ_ONLY;
        break;
      case 'd':
        act = 'delete';
        p.device = useDevice(arg);
        break;
      case 'D':
        act = 'delete-all';
        break;
      case 'f':
        act = 'find-free';
        break;
      case 'J':
        p.json = true;
        break;
      case 'j':
        act = 'show';
        p.file = arg;
        break;
      case 'l':
        p.list = true;
        break;
      case 'L':
        p.noOverlap = true;
        break;
      case 'n':
        p.noHeadings = true;
        break;
      case OPT_RAW:
        p.raw = true;
        break;
      case 'o':
        p.offset = sizeOrDie(out, arg, 'failed to parse offset');
        p.offsetSet = true;
        break;
      case 'O':
        outarg = arg;
        p.list = true;
        break;
      case OPT_OUTPUT_ALL:
        p.columns = DEFAULT_ALL;
        break;
      case 'P':
        p.loFlags |= LO_FLAGS_PARTSCAN;
        break;
      case OPT_SHOW:
        p.showDevice = true;
        break;
      case OPT_DIO: {
        setDio = true;
        let on = true;
        if (item.arg !== undefined) {
          const v = parseSwitch(item.arg, ['on'], ['off']);
          on = v ?? out.errx(`argument error: '${item.arg}'`);
        }
        p.useDirectIo = on;
        if (on) p.loFlags |= LO_FLAGS_DIRECT_IO;
        break;
      }
      case 'v':
        break;
      case OPT_INSTANCE:
        break; // taken by prescanInstance() before parsing: the scope decides what a device is
      case OPT_SIZELIMIT:
        p.sizelimit = sizeOrDie(out, arg, 'failed to parse size');
        p.sizelimitSet = true;
        break;
      case 'h':
        out.out(usage(out.prog));
        throw new Exit(0);
      case 'V':
        out.out(versionLine(out.prog));
        throw new Exit(0);
      default:
        if (item.error) out.errRaw(`${item.error}\n`);
        tryHelp(out);
    }
  }

  const operands = g.operands();
  let i = 0;
  // argc counts argv[0]: "losetup" alone is argc 1; util-linux tests argc, so do we.
  // Our own --instance DIR is not util-linux's: `losetup --instance D -J` must behave as
  // `losetup -J` does, so its argv elements do not count.
  const argc = args.length + 1 - instanceArgCount(args);

  if (argc === 1) {
    act = 'show';
    p.list = true;
  }
  if (!act && argc === 2 && (p.raw || p.json)) {
    act = 'show';
    p.list = true;
  }
  if (p.list && p.columns.length === 0) p.columns = [...DEFAULT_COLUMNS];

  if (act === 'find-free' && i < operands.length) {
    act = 'create';
    p.file = operands[i++];
    if (i < operands.length) out.errx('unexpected arguments');
  }
  if (p.list && !act && i === operands.length) act = 'show';

  if (!act && i + 1 === operands.length) {
    if (setDio) {
      act = 'set-direct-io';
      p.loFlags &= ~LO_FLAGS_DIRECT_IO;
    } else if (setBlocksize) {
      act = 'set-blocksize';
    } else {
      act = 'show-one';
    }
    p.device = useDevice(operands[i++]);
  }
  if (!act) {
    act = 'create';
    if (i >= operands.length) out.errx('no loop device specified');
    // no is_loopdev() here: the device may not exist yet
    p.device = operands[i++];
    if (i >= operands.length) out.errx('no file specified');
    p.file = operands[i++];
  }
  if (act === 'delete') p.moreDevices = operands.slice(i);

  if (act !== 'create' && (p.sizelimit !== 0n || p.loFlags !== 0 || p.showDevice)) {
    out.errx('the options --{sizelimit,partscan,read-only,show} are allowed during loop device setup only');
  }
  if (p.offsetSet && act !== 'create' && (act !== 'show' || !p.file)) {
    out.errx('the option --offset is not allowed in this context');
  }
  if (outarg !== null) {
    let cols: number[] | null;
    try {
      cols = parseColumnList(outarg, p.columns);
    } catch (e) {
      if (!(e instanceof UnknownColumn)) throw e;
      out.warnx(e.message);
      cols = null;
    }
    if (cols === null) throw new Exit(1);
    p.columns = cols;
  }
  p.action = act;
  return p;
}

/** --output-all: every column in table order. */
const DEFAULT_ALL = COLUMNS.map((_, i) => i);

function tryHelp(out: Output): never {
  out.errRaw(`Try '${out.prog} --help' for more information.\n`);
  throw new Exit(1);
}

/**
 * The --instance value, found before the real parse: device operands (-d, -c) are
 * checked against the scope as they are parsed, and --instance may come after them.
 * Parse errors are left for the real pass to report.
 */
export function prescanInstance(args: string[], env?: NodeJS.ProcessEnv): string | null {
  const g = new Getopt('losetup', args, SHORTOPTS, LONGOPTS, { POSIXLY_CORRECT: env?.POSIXLY_CORRECT });
  let dir: string | null = null;
  for (let item = g.next(); item !== null; item = g.next()) {
    if (item.opt === '?') break;
    if (item.opt === OPT_INSTANCE) dir = item.arg ?? null;
  }
  return dir;
}

/**
 * How many argv elements --instance takes ("--instance=D" is one, "--instance D" two;
 * getopt accepts any unambiguous prefix, and no other long option starts with "i").
 */
function instanceArgCount(args: string[]): number {
  let n = 0;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--') break;
    const m = /^--(i[a-z-]*)(=.*)?$/.exec(a);
    if (!m || !'instance'.startsWith(m[1])) continue;
    if (m[2] !== undefined) n += 1;
    else {
      n += Math.min(2, args.length - i);
      i++;
    }
  }
  return n;
}
