/**
 * One error shape for everything the kernel layer throws: the native addon's
 * SysError, or a Node fs error normalised to the same fields. The presentation
 * layer prints `description` (glibc's strerror text) in util-linux's words.
 */
import { constants as osConstants } from 'node:os';
import { native, isSysError, type SysError } from './native.js';

export type { SysError } from './native.js';
export { isSysError } from './native.js';

const errnoByCode = osConstants.errno as Record<string, number>;

/** Build a SysError for a condition the kernel layer detects itself (e.g. ENODEV for "not a loop device"). */
export function sysError(code: string, syscall: string, path?: string): SysError {
  const errno = errnoByCode[code] ?? 0;
  const description = strerror(errno);
  const err = new Error(`${code}: ${description}, ${syscall}${path ? ` '${path}'` : ''}`) as SysError;
  err.code = code;
  err.errno = errno;
  err.syscall = syscall;
  err.description = description;
  if (path !== undefined) err.path = path;
  return err;
}

/** Normalise any thrown value into a SysError (Node fs errors carry a negative errno). */
export function toSysError(e: unknown): SysError {
  if (isSysError(e) && typeof e.description === 'string') return e;
  const ne = e as NodeJS.ErrnoException;
  if (ne && typeof ne.code === 'string' && ne.code in errnoByCode) {
    const err = sysError(ne.code, ne.syscall ?? 'unknown', ne.path);
    err.stack = ne.stack;
    return err;
  }
  throw e; // not a system error: a bug, let it surface
}

/** strerror(3) text, exactly as glibc words it. */
export function strerror(errno: number): string {
  return native().strerror(errno);
}

/** True when `e` is a system error with one of the given codes. */
export function hasCode(e: unknown, ...codes: string[]): boolean {
  return typeof e === 'object' && e !== null && codes.includes((e as { code?: string }).code ?? '');
}
