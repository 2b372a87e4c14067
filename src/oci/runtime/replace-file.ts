/**
 * Replacing a bundle's config.json so that the runtime (or an engine reading it in
 * parallel) sees the old file or the new one, never a torn one, even across a crash:
 * a temporary file in the same directory with the original's mode and owner, fsync,
 * rename over the original, fsync of the directory.
 */
import { closeSync, fchmodSync, fchownSync, fsyncSync, openSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

export function replaceFile(path: string, data: string): void {
  const st = statSync(path);
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.loopfs-${process.pid}-${Date.now()}`);
  const fd = openSync(tmp, 'wx', 0o600);
  let renamed = false;
  try {
    // a rootless runtime may not chown; it needs to only where the owner is not already us
    if (st.uid !== process.geteuid?.() || st.gid !== process.getegid?.()) fchownSync(fd, st.uid, st.gid);
    fchmodSync(fd, st.mode & 0o7777);
    const buf = Buffer.from(data);
    for (let off = 0; off < buf.length; ) off += writeSync(fd, buf, off);
    fsyncSync(fd);
    closeSync(fd);
    renameSync(tmp, path);
    renamed = true;
  } finally {
    if (!renamed) {
      try {
        closeSync(fd);
      } catch {
        // already closed before the rename failed
      }
      unlinkSync(tmp);
    }
  }
  const dfd = openSync(dir, 'r');
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
}
