// What a call that must fail threw, for the tests of the native and kernel layers.
import { isSysError, type SysError } from '../../src/kernel/native.js';

/** The SysError `fn` throws (typed as T); fails the test when it throws something else or nothing. */
export function sysErrorOf<T extends SysError = SysError>(fn: () => unknown): T {
  try {
    fn();
  } catch (e) {
    if (isSysError(e)) return e as T;
    throw e;
  }
  throw new Error('expected a SysError, but the call succeeded');
}
