/**
 * mount.loop's command line (mount-loop.ts): argv as libmount builds it, the options that
 * configure the loop device (consumed here, never passed on) and mount(8)'s way of
 * failing ("mount: DIR: message.", its exit statuses).
 */
import { Getopt, type LongOption } from '../compat/getopt.js';
import { Exit, Output } from '../compat/output.js';
import {
  formatMountOptions,
  isReadOnly,
  MountOptionError,
  optionValue,
  parseMountOptions,
  type MountOption,
} from '../compat/mount-options.js';
import { strtosize } from '../compat/strtosize.js';
import { versionLine } from '../compat/version.js';

/** mount(8)'s exit statuses. */
export const MOUNT_EX_USAGE = 1;
export const MOUNT_EX_FAIL = 32;

/** Options that select or configure the loop device: consumed here, never passed on. */
const LOOP_OPTIONS = new Set(['loop', 'offset', 'sizelimit', 'encryption', 'direct-io']);
/** Options libmount drops before a helper sees them; a hand-made call may still carry them. */
const DROPPED = new Set(['defaults', 'auto', 'noauto', 'comment']);

const OPT_INSTANCE = 256;
const OPT_HELP = 257;
const OPT_VERSION = 258;
const LONGOPTS: LongOption[] = [
  { name: 'instance', has: 'required', val: OPT_INSTANCE },
  { name: 'help', has: 'none', val: OPT_HELP },
  { name: 'version', has: 'none', val: OPT_VERSION },
];
export interface MountLoopArgs {
  spec: string;
  dir: string;
  sloppy: boolean;
  fake: boolean;
  noMtab: boolean;
  verbose: boolean;
  options: MountOption[];
  type: string | null;
  namespace: string | null;
  instance: string | null;
}

export function usage(prog: string): string {
  return `
Usage:
 ${prog} [--instance <dir>] <image|loopdev> <dir> [-sfnv] [-o <options>] [-t loop.<type>] [-N <ns>]

Mount a filesystem image through a loop device of the current loopfs instance.

Options:
 -o <options>          mount options; loop options: loop[=<loopdev>], offset=<num>,
                         sizelimit=<num>, direct-io[=on|off]; ro makes the device read-only;
                         fuse|nofuse: a userspace driver or the kernel parses the image
                         (instances served by loopfs serve)
 -t loop.<type>        filesystem type (default: probed)
 -s                    tolerate sloppy mount options
 -f                    fake: do everything but attach and mount
 -n                    do not write utab
 -v                    verbose
 -N <ns>               mount in another mount namespace
     --instance <dir>  use the loop devices of instance <dir>
                         (default: $LOOPFS_INSTANCE, then /dev/loopfs, then the host)

 -h, --help            display this help
 -V, --version         display version

For more details see mount.loop(8).
`;
}

export function parse(argv0: string, args: string[], out: Output, env: NodeJS.ProcessEnv): MountLoopArgs {
  const g = new Getopt(argv0, args, 'sfnvo:t:N:hV', LONGOPTS, { POSIXLY_CORRECT: env.POSIXLY_CORRECT });
  const r: MountLoopArgs = {
    spec: '',
    dir: '',
    sloppy: false,
    fake: false,
    noMtab: false,
    verbose: false,
    options: [],
    type: null,
    namespace: null,
    instance: null,
  };
  const optionTexts: string[] = [];
  for (let item = g.next(); item !== null; item = g.next()) {
    switch (item.opt) {
      case 's':
        r.sloppy = true;
        break;
      case 'f':
        r.fake = true;
        break;
      case 'n':
        r.noMtab = true;
        break;
      case 'v':
        r.verbose = true;
        break;
      case 'o':
        optionTexts.push(item.arg!);
        break;
      case 't':
        r.type = item.arg!;
        break;
      case 'N':
        r.namespace = item.arg!;
        break;
      case OPT_INSTANCE:
        r.instance = item.arg!;
        break;
      case 'h':
      case OPT_HELP:
        out.out(usage(out.prog));
        throw new Exit(0);
      case 'V':
      case OPT_VERSION:
        out.out(versionLine(out.prog));
        throw new Exit(0);
      default:
        if (item.error) out.errRaw(`${item.error}\n`);
        out.errRaw(`Try '${out.prog} --help' for more information.\n`);
        throw new Exit(MOUNT_EX_USAGE);
    }
  }
  const operands = g.operands();
  if (operands.length !== 2) {
    out.warnx(operands.length < 2 ? 'no image or mount point specified' : 'too many arguments');
    out.errRaw(`Try '${out.prog} --help' for more information.\n`);
    throw new Exit(MOUNT_EX_USAGE);
  }
  [r.spec, r.dir] = operands;
  try {
    r.options = optionTexts.flatMap((t) => parseMountOptions(t));
  } catch (e) {
    if (!(e instanceof MountOptionError)) throw e;
    fail(out, r.dir, `failed to parse mount options '${optionTexts.join(',')}': Invalid argument`, MOUNT_EX_USAGE);
  }
  return r;
}

/** mount(8) style: "mount: DIR: message." */
export function fail(out: Output, dir: string, message: string, status = MOUNT_EX_FAIL): never {
  out.errRaw(`mount: ${dir}: ${message}.\n`);
  throw new Exit(status);
}

/** The filesystem type: `-t loop.ext4` names it; `-t loop` (or none) means "probe". */
export function fsType(r: MountLoopArgs, out: Output): string | null {
  if (r.type === null || r.type === 'loop' || r.type === 'auto') return null;
  if (r.type.startsWith('loop.')) return r.type.slice(5) || null;
  if (r.type.includes('.')) fail(out, r.dir, `unknown filesystem type '${r.type}'`);
  return r.type;
}

export interface LoopSetup {
  offset: bigint;
  sizelimit: bigint;
  explicitDevice: string | null;
  readOnly: boolean;
  /** true/false when asked for; null: on if the backing file allows it (the default) */
  directIo: boolean | null;
  passOn: MountOption[];
}

export function loopSetup(r: MountLoopArgs, out: Output): LoopSetup {
  const bad = () => fail(out, r.dir, `failed to parse mount options '${formatMountOptions(r.options)}': Invalid argument`, MOUNT_EX_USAGE);
  const size = (v: string | null | undefined): bigint => {
    if (v === undefined) return 0n;
    if (v === null || v === '') bad();
    try {
      return strtosize(v!);
    } catch {
      // any parse error of a size is mount(8)'s 'Invalid argument'
      return bad();
    }
  };
  if (optionValue(r.options, 'encryption') !== undefined) bad(); // cryptoloop is gone from Linux
  const loop = optionValue(r.options, 'loop');
  const dio = optionValue(r.options, 'direct-io');
  if (dio !== undefined && dio !== null && dio !== 'on' && dio !== 'off') bad();
  return {
    offset: size(optionValue(r.options, 'offset')),
    sizelimit: size(optionValue(r.options, 'sizelimit')),
    explicitDevice: typeof loop === 'string' && loop !== '' ? loop : null,
    readOnly: isReadOnly(r.options),
    directIo: dio === undefined ? null : dio === null || dio === 'on',
    passOn: r.options.filter((o) => !LOOP_OPTIONS.has(o.name) && !DROPPED.has(o.name) && !o.name.startsWith('x-')),
  };
}

