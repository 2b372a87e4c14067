/**
 * util-linux `err_exclusive_options()` (include/optutils.h), made generic.
 *
 * The C checker assumes every group is sorted and that groups are sorted by their first
 * member, and it relies on that to stop scanning early. losetup 2.38.1 declares the group
 * { 'D','c','d','f','O' }, which is *not* sorted ('O' < 'c'), so for 'O' the scan stops at
 * 'c' before reaching it and that group is never enforced for -O. We reproduce the loop
 * bounds exactly instead of "fixing" them, because the real binary behaves that way.
 */
import type { LongOption } from './getopt.js';

/** Option chars or numeric ids, in the order written in the C source. */
export type ExclGroup = Array<string | number>;

/** ul_excl_t rows hold at most 15 options (16 ints, zero-terminated). */
const MAX_GROUP = 15;

/** Options compare as C ints: chars by their code, long-only options by their id. */
function code(opt: string | number): number {
  return typeof opt === 'number' ? opt : opt.codePointAt(0) ?? 0;
}

export class ExclusiveChecker {
  private readonly groups: number[][];
  private readonly longopts: readonly LongOption[];
  /** Per group: the first option of that group seen so far (0 = none), like excl_st[]. */
  private readonly seen: number[];

  constructor(groups: ExclGroup[], longopts: readonly LongOption[]) {
    // A 0 entry terminates a row in C; anything after it is invisible.
    this.groups = groups.map((g) => {
      const row = g.map(code);
      const end = row.indexOf(0);
      return (end < 0 ? row : row.slice(0, end)).slice(0, MAX_GROUP);
    });
    this.longopts = longopts;
    this.seen = this.groups.map(() => 0);
  }

  /**
   * Record option `opt` (call for every getopt result, in order). Returns the error text
   * without the "program: " prefix when it conflicts with an option seen before, else null.
   */
  check(opt: string | number): string | null {
    const c = code(opt);
    // The outer loop stops at the first group whose first member is greater than c (or at
    // an empty row, the C terminator).
    for (let e = 0; e < this.groups.length; e++) {
      const row = this.groups[e];
      if (row.length === 0 || row[0] > c) break;
      // The inner loop stops at the first member greater than c — the unsorted-group quirk.
      for (const member of row) {
        if (member > c) break;
        if (member !== c) continue;
        if (this.seen[e] === 0) this.seen[e] = c;
        else if (this.seen[e] !== c) return this.message(row);
        break;
      }
    }
    return null;
  }

  private message(row: number[]): string {
    let text = 'mutually exclusive arguments:';
    for (const member of row) {
      const long = this.longopts.find((o) => code(o.val) === member);
      if (long) text += ` --${long.name}`;
      else if (member > 0x20 && member < 0x7f) text += ` -${String.fromCharCode(member)}`;
    }
    return text;
  }
}
