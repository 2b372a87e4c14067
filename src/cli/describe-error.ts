/**
 * The text of a failure as every loopfs command prints it after "loopfs: ": a system
 * error names its path first, as util-linux does ("loopfs: /run/x: Permission denied").
 */
import { isSysError } from '../kernel/errors.js';

export function describeError(e: unknown): string {
  if (isSysError(e)) return `${e.path ? `${e.path}: ` : ''}${e.description ?? e.message}`;
  if (e instanceof Error) return e.message;
  return String(e);
}
