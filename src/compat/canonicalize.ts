import { realpathSync } from 'node:fs';

/** util-linux canonicalize_path(): realpath, or the path unchanged when that fails. */
export function canonicalize(path: string): string {
  try {
    return realpathSync.native(path);
  } catch {
    // as util-linux's canonicalize_path: a path that cannot be resolved (ENOENT, EACCES, ELOOP) is kept as given
    return path;
  }
}
