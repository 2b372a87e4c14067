/**
 * The `--version` line of every util-linux command loopfs mirrors (losetup, mount.loop):
 * the util-linux release whose behaviour is copied, and loopfs's own version.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const UTIL_LINUX_VERSION = 'util-linux 2.38.1';

/**
 * loopfs's own version from its package.json, read only when asked for (not on the
 * hot path). Found by walking up from this module, which works both from dist/ and
 * from the single-file bundle.
 */
export function loopfsVersion(): string {
  for (let dir = dirname(fileURLToPath(import.meta.url)); ; dir = dirname(dir)) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'loopfs' && pkg.version) return pkg.version;
    } catch {
      /* not here: keep walking */
    }
    if (dirname(dir) === dir) return 'unknown';
  }
}

/** Keeps "util-linux 2.38.1" in the line for scripts that sniff the version. */
export function versionLine(prog: string): string {
  return `${prog} from ${UTIL_LINUX_VERSION} (loopfs ${loopfsVersion()})\n`;
}
