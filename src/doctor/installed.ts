/**
 * Whether the pieces outside the package are in place: mount.loop where mount(8) looks
 * for helpers (`loopfs install`), and the OCI hook files where podman looks for hooks
 * (`loopfs install --oci-hooks DIR`). Missing is a warning (both are optional); present
 * but pointing at a loopfs that is gone is a failure (mounts or container starts fail).
 */
import { existsSync, lstatSync, readFileSync, realpathSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { HELPER_DIR } from '../install/install.js';
import { DEFAULT_HOOKS_DIRS, hookFileName, ociHookStatus } from '../oci/hooks-json.js';
import { STAGES } from '../oci/policy.js';
import type { Check } from './check.js';

/** The package a bin/… file belongs to, if it is loopfs. */
function loopfsPackageOf(binFile: string): string | null {
  const root = dirname(dirname(binFile));
  try {
    return (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { name?: string }).name === 'loopfs' ? root : null;
  } catch {
    // no package.json there (ENOENT) or not JSON: not a loopfs package
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
      // not there (ENOENT): not installed, which is the finding
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
      // a dangling symlink (ENOENT): the finding
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

export const ociHookCheck: Check = {
  id: 'oci-hook',
  title: 'OCI hook',
  run() {
    const status = ociHookStatus(DEFAULT_HOOKS_DIRS);
    // a directory with any of our hook files is one we installed into; there every stage must work
    const present = status.filter((s) => STAGES.some((stage) => existsSync(join(s.dir, hookFileName(stage)))));
    const installed = present.filter((s) => s.broken.length === 0);
    const broken = present.filter((s) => s.broken.length > 0);
    if (broken.length > 0) {
      return {
        status: 'fail',
        detail: 'loopfs OCI hook files that cannot run: containers asking for an instance fail to start',
        items: broken.map((s) => `${s.dir}: ${s.broken.join(', ')} broken`),
        fix: { command: `loopfs uninstall && loopfs install --oci-hooks ${broken[0].dir}`, safe: false },
      };
    }
    if (installed.length > 0) return { status: 'ok', detail: `installed in ${installed.map((s) => s.dir).join(', ')}` };
    if (!DEFAULT_HOOKS_DIRS.some((d) => existsSync(dirname(dirname(d))))) {
      return { status: 'skip', detail: 'no container engine configuration here (no hooks directory)' };
    }
    return {
      status: 'warn',
      detail: 'not installed: containers cannot get a private instance through the hook',
      fix: { command: `loopfs install --oci-hooks ${DEFAULT_HOOKS_DIRS[1]}`, safe: false },
    };
  },
};
