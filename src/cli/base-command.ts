/**
 * Shared behaviour of the `loopfs` oclif commands: failures print one line in
 * util-linux style ("loopfs: DIR: what went wrong") and exit 1, whatever threw.
 */
import { Command } from '@oclif/core';
import { describeError } from './describe-error.js';

export abstract class LoopfsCommand extends Command {
  static enableJsonFlag = true;

  /** One error line, exit status 1. */
  protected fail(message: string): never {
    process.stderr.write(`loopfs: ${message}\n`);
    this.exit(1);
  }

  protected describeError(e: unknown): string {
    return describeError(e);
  }

  protected async catch(err: Error & { exitCode?: number; oclif?: { exit?: number } }): Promise<unknown> {
    // oclif's own exit/parse errors keep their behaviour
    if (err.oclif !== undefined) return super.catch(err);
    this.fail(this.describeError(err));
  }
}

/** Columns padded to the widest cell; the last column is not padded. */
export function alignedTable(header: string[], rows: string[][]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => r[i].length)));
  return all
    .map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  '))
    .join('\n')
    .concat('\n');
}
