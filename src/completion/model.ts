/**
 * What shell completion knows, derived from the one source of each fact: the `loopfs`
 * commands, flags and args from oclif's command metadata (the manifest), and losetup's
 * options from its getopt table (compat/losetup/options.ts) and output columns. The
 * shell scripts are rendered from this model; nothing is listed by hand.
 */
import type { Command } from '@oclif/core';
import { COLUMNS } from '../compat/losetup/columns.js';
import { LONGOPTS, SHORTOPTS } from '../compat/losetup/options.js';

/**
 * What a flag value or an argument completes to: nothing in particular, files,
 * directories, loop devices (bound ones, or all) of the current instance, fixed words,
 * or a comma-separated list of words.
 */
export type ValueKind =
  | { kind: 'any' }
  | { kind: 'file' }
  | { kind: 'dir' }
  | { kind: 'device'; bound: boolean }
  | { kind: 'words'; words: string[] }
  | { kind: 'list'; words: string[] };

export interface FlagSpec {
  /** `--name` and/or `-c` */
  names: string[];
  /** null: a switch */
  value: ValueKind | null;
}

export interface CommandSpec {
  /** words after `loopfs`, e.g. "instance create" */
  path: string;
  flags: FlagSpec[];
  /** positional arguments in order; `rest` completes every further one */
  args: ValueKind[];
  rest: ValueKind | null;
}

export interface CompletionModel {
  /** command path ("" for the top) → the words that may follow it */
  children: Map<string, string[]>;
  commands: CommandSpec[];
  losetup: { flags: FlagSpec[]; shortWithValue: string };
}

type Loadable = Pick<Command.Loadable, 'id' | 'hidden' | 'aliases' | 'strict' | 'flags' | 'args'>;

const ANY: ValueKind = { kind: 'any' };

/** A path-like value from what the flag or argument says it is. */
function kindFromText(name: string, description = '', options?: readonly string[]): ValueKind {
  if (options && options.length > 0) return { kind: 'words', words: [...options] };
  const text = `${name} ${description}`;
  if (name === 'instance' || /\bdir\b|director|hooks|prefix/i.test(text)) return { kind: 'dir' };
  if (/\bfile\b|\brecord\b|\bpath\b/i.test(text)) return { kind: 'file' };
  return ANY;
}

function commandSpec(c: Loadable, path: string): CommandSpec {
  const flags: FlagSpec[] = [];
  for (const f of Object.values(c.flags ?? {})) {
    if (f.hidden) continue;
    const names = [`--${f.name}`, ...(f.char ? [`-${f.char}`] : [])];
    const value = f.type === 'boolean' ? null : kindFromText(f.name, f.description, (f as { options?: string[] }).options);
    flags.push({ names, value });
  }
  flags.push({ names: ['--help', '-h'], value: null });
  const args = Object.values(c.args ?? {}).map((a) => kindFromText(a.name, a.description, a.options));
  // a non-strict command takes its last argument any number of times (serve DIR…)
  const rest = c.strict === false && args.length > 0 ? args[args.length - 1] : null;
  return { path, flags, args, rest };
}

export function buildModel(commands: readonly Loadable[]): CompletionModel {
  const children = new Map<string, Set<string>>();
  const add = (parent: string, word: string) => {
    if (!children.has(parent)) children.set(parent, new Set());
    children.get(parent)!.add(word);
  };
  const specs: CommandSpec[] = [];
  for (const c of commands) {
    if (c.hidden || c.id.startsWith('_')) continue;
    const words = c.id.split(':');
    words.forEach((w, i) => add(words.slice(0, i).join(' '), w));
    // losetup is completed from its own getopt table below, not from oclif's view of it
    if (c.id !== 'losetup') specs.push(commandSpec(c, words.join(' ')));
  }
  const sorted = new Map([...children].map(([k, v]) => [k, [...v].sort()]));
  return { children: sorted, commands: specs.sort((a, b) => a.path.localeCompare(b.path)), losetup: losetupSpec() };
}

/** Value kinds of losetup's options that take one (by the letter or id getopt returns). */
function losetupValue(val: string | number, name: string): ValueKind {
  switch (val) {
    case 'd':
    case 'c':
      return { kind: 'device', bound: true };
    case 'j':
      return { kind: 'file' };
    case 'O':
      return { kind: 'list', words: COLUMNS.map((c) => c.name) };
    default:
      return name === 'instance' ? { kind: 'dir' } : ANY;
  }
}

function losetupSpec(): CompletionModel['losetup'] {
  const flags: FlagSpec[] = [];
  const shortTakes = new Set<string>();
  for (let i = 0; i < SHORTOPTS.length; i++) if (SHORTOPTS[i + 1] === ':') shortTakes.add(SHORTOPTS[i]);
  const shortDone = new Set<string>();
  for (const o of LONGOPTS) {
    const short = typeof o.val === 'string' && SHORTOPTS.includes(o.val) ? o.val : null;
    if (short) shortDone.add(short);
    // an optional value (--direct-io[=on|off]) must be attached: offered as the words
    if (o.has === 'optional') {
      flags.push({ names: [`--${o.name}`, `--${o.name}=on`, `--${o.name}=off`], value: null });
      continue;
    }
    flags.push({ names: [`--${o.name}`, ...(short ? [`-${short}`] : [])], value: o.has === 'required' ? losetupValue(o.val, o.name) : null });
  }
  for (const ch of SHORTOPTS.replace(/:/g, '')) {
    if (!shortDone.has(ch)) flags.push({ names: [`-${ch}`], value: shortTakes.has(ch) ? losetupValue(ch, '') : null });
  }
  return { flags, shortWithValue: [...shortTakes].join('') };
}
