/**
 * Whether the pieces outside the package are in place: mount.loop where mount(8) looks
 * for helpers (`loopfs install`). Missing is a warning (it is optional); present but
 * pointing at a loopfs that is gone is a failure (mounts fail).
 */
import { lstatSync, readFileSync, realpathSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { HELPER_DIR } from '../install/install.js';
import type { Check } from './check.js';

/** The package a bin/… file belongs to, if it is loopfs. */
function loopfsPackageOf(binFile: string): string | null {
  const root = dirname(dirname(binFile));
  try {
    return (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { name?: string }).name === 'loopfs' ? root : null;
  } catch {
    return null;
  }
}

export const mountHelperCheck: Check = {
  id: 'mount-helper',
  title: 'mount.loop helper',
  run() {
    const helper = join(HELPER_DIR, 'mount.loop');
    try {
      lstatSync(helper);
    } catch {
      return {
        status: 'warn',
        detail: `${helper} is not installed: mount -t loop and fstab type loop do not use loopfs`,
        fix: { command: 'loopfs install', safe: false },
      };
    }
    let target: string;
    try {
      target = realpathSync(helper);
    } catch {
      return {
        status: 'fail',
        detail: `${helper} points to a file that is gone: mount -t loop fails`,
        fix: { command: 'loopfs uninstall && loopfs install', safe: false },
      };
    }
    const pkg = loopfsPackageOf(target);
    if (!pkg) return { status: 'warn', detail: `${helper} is not loopfs's (${target})` };
    return { status: 'ok', detail: `${helper} -> ${target}` };
  },
};
