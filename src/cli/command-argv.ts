/**
 * The command line of a launcher (`loopfs run [OPTION...] [--] CMD [ARG...]`): which words are
 * the launcher's own options and which are CMD's argv, decided before any flag parser sees them.
 *
 * oclif's non-strict parse cannot be given CMD: it looks for flags among all the words, also
 * after `--`, and reorders or drops repeated ones (`printf '%s|' a 1 b 1` lost a `1`). So
 * only the option words go to oclif; CMD's words are passed on untouched, in order, as
 * getopt with a leading '+' (POSIXLY_CORRECT) does for `env`, `unshare` and `setpriv`:
 * the options end at the first `--` (which is dropped) or at the first word that is not an
 * option (which starts CMD, so `loopfs run sh -c 'x' -- y` gives sh its `--`).
 */

export interface LauncherArgv {
  /** The launcher's option words (without the `--`), for the flag parser. */
  options: string[];
  /** CMD and its arguments, exactly as given. */
  command: string[];
}

/**
 * Split argv. `takesValue` names the long options (without `--`) that consume the next word
 * when written without `=` (`--instance DIR`); short options here take no value.
 */
export function splitLauncherArgv(argv: readonly string[], takesValue: ReadonlySet<string>): LauncherArgv {
  let i = 0;
  while (i < argv.length) {
    const w = argv[i];
    if (w === '--') return { options: argv.slice(0, i), command: argv.slice(i + 1) };
    // '-' alone and '' are operands (getopt's rule), so they start CMD
    if (!w.startsWith('-') || w === '-') break;
    i += w.startsWith('--') && !w.includes('=') && takesValue.has(w.slice(2)) ? 2 : 1;
  }
  return { options: argv.slice(0, Math.min(i, argv.length)), command: argv.slice(i) };
}

/** The long names of an oclif flag table that take a value (`type: 'option'`). */
export function valueFlags(flags: Record<string, { type: string }>): Set<string> {
  return new Set(Object.entries(flags).filter(([, f]) => f.type === 'option').map(([name]) => name));
}
