/**
 * A directory opened once and then used only through its fd.
 *
 * An instance directory may belong to an untrusted owner (a container's root), who can
 * rename or replace any entry in it at any moment. Every operation here is relative to
 * the pinned fd and never follows a symlink in the final component, so a planted
 * symlink can neither redirect a state write nor hand a chown/chmod to another file.
 */
import { fsyncSync, linkSync, opendirSync, readSync, writeSync } from 'node:fs';
import { isBlockDevice } from '../kernel/devnum.js';
import { hasCode, toSysError, type SysError } from '../kernel/errors.js';
import { native, type NativeStat } from '../kernel/native.js';
import { tempNameFor } from './random.js';

export class PinnedDir {
  private constructor(
    readonly path: string,
    readonly fd: number,
  ) {}

  /**
   * Open `path` as a directory. The path itself is the caller's choice and may contain
   * symlinks; only what lies *inside* is treated as hostile.
   */
  static open(path: string): PinnedDir {
    const n = native();
    return new PinnedDir(path, n.open(path, n.constants.O_RDONLY | n.constants.O_DIRECTORY));
  }

  /** A subdirectory of this one, refusing a symlink in its place. */
  openSub(name: string): PinnedDir {
    const n = native();
    const fd = n.openat(this.fd, name, n.constants.O_RDONLY | n.constants.O_DIRECTORY | n.constants.O_NOFOLLOW);
    return new PinnedDir(`${this.path}/${name}`, fd);
  }

  close(): void {
    native().close(this.fd);
  }

  /** lstat of an entry, or null when it does not exist. */
  lstat(name: string): NativeStat | null {
    try {
      return native().lstatat(this.fd, name);
    } catch (e) {
      if (hasCode(e, 'ENOENT')) return null;
      throw e;
    }
  }

  /** Names in the directory, in readdir order (read through the pinned fd). */
  list(): string[] {
    const names: string[] = [];
    const d = opendirSync(`/proc/self/fd/${this.fd}`, { bufferSize: 1024 });
    try {
      for (let e = d.readSync(); e !== null; e = d.readSync()) names.push(e.name);
    } finally {
      d.closeSync();
    }
    return names;
  }

  /** Read a regular file (refusing symlinks, FIFOs and devices), or null when absent. */
  readFile(name: string): string | null {
    const n = native();
    let fd: number;
    try {
      fd = n.openat(this.fd, name, n.constants.O_RDONLY | n.constants.O_NOFOLLOW | n.constants.O_NONBLOCK);
    } catch (e) {
      if (hasCode(e, 'ENOENT')) return null;
      throw e;
    }
    try {
      const st = n.fstat(fd);
      if ((st.mode & n.constants.S_IFMT) !== n.constants.S_IFREG) {
        throw Object.assign(new Error(`${this.path}/${name}: not a regular file`), { code: 'EINVAL' });
      }
      // sized by fstat (one more byte to see the end in the same read): state files are
      // small and read by the thousand in a listing, a 64 KiB buffer each cost more than
      // the read; a file that grows meanwhile is still read whole
      const chunks: Buffer[] = [];
      const buf = Buffer.allocUnsafe(Math.min(65536, Number(st.size) + 1));
      for (let r = readSync(fd, buf); r > 0; r = readSync(fd, buf)) chunks.push(Buffer.from(buf.subarray(0, r)));
      return chunks.length === 1 ? chunks[0].toString('utf8') : Buffer.concat(chunks).toString('utf8');
    } finally {
      n.close(fd);
    }
  }

  /**
   * Replace `name` atomically: write a temporary file, fsync it, rename it over the old
   * one. A reader (or a crash at any point) sees the old content or the new, never a mix.
   */
  writeFileAtomic(name: string, content: string, mode = 0o644, syncDir = true): void {
    const tmp = this.writeTemp(name, content, mode);
    try {
      native().renameat(this.fd, tmp, this.fd, name);
    } catch (e) {
      this.unlinkQuiet(tmp);
      throw e;
    }
    // make the rename itself durable (a caller that writes a batch fsyncs once, after it)
    if (syncDir) fsyncSync(this.fd);
  }

  /**
   * `content` in a new temporary file beside `name`, fsynced; returns the temporary's name.
   * A failure removes the temporary and is reported against `name` (node's own write and
   * fsync errors name no file: a full filesystem would read "ENOSPC: ..., write").
   */
  private writeTemp(name: string, content: string, mode: number): string {
    const n = native();
    const c = n.constants;
    const tmp = tempNameFor(name);
    let fd: number;
    try {
      fd = n.openat(this.fd, tmp, c.O_WRONLY | c.O_CREAT | c.O_EXCL | c.O_NOFOLLOW, mode);
    } catch (e) {
      throw errorAt(e, `${this.path}/${name}`);
    }
    try {
      const data = Buffer.from(content, 'utf8');
      for (let off = 0; off < data.length; ) off += writeSync(fd, data, off);
      fsyncSync(fd);
    } catch (e) {
      n.close(fd);
      this.unlinkQuiet(tmp);
      throw errorAt(e, `${this.path}/${name}`);
    }
    n.close(fd);
    return tmp;
  }

  /** fsync the directory: makes the entries created, renamed and removed in it durable. */
  fsync(): void {
    fsyncSync(this.fd);
  }

  /** Create a file exclusively with content (used for claims): EEXIST when it exists. */
  createExclusive(name: string, content: string, mode = 0o644): void {
    // write under a private name first, then link(): the claim appears complete or not at all
    const tmp = this.writeTemp(name, content, mode);
    this.fsync();
    try {
      linkAt(this, tmp, name);
    } finally {
      this.unlinkQuiet(tmp);
    }
  }

  mkdir(name: string, mode: number): void {
    native().mkdirat(this.fd, name, mode);
  }

  unlink(name: string): void {
    native().unlinkat(this.fd, name, 0);
  }

  /** unlink that ignores ENOENT; returns whether something was removed. */
  unlinkQuiet(name: string): boolean {
    try {
      this.unlink(name);
      return true;
    } catch (e) {
      if (hasCode(e, 'ENOENT')) return false;
      throw e;
    }
  }

  rmdirQuiet(name: string): void {
    try {
      native().unlinkat(this.fd, name, native().constants.AT_REMOVEDIR);
    } catch (e) {
      if (!hasCode(e, 'ENOENT')) throw e;
    }
  }

  rename(from: string, to: string): void {
    native().renameat(this.fd, from, this.fd, to);
  }

  /**
   * Create a block device node with exact ownership and mode (umask does not apply):
   * created under a temporary name, checked to be the node we made, then renamed into
   * place so that the final name never shows a half-configured node.
   */
  mknodBlock(name: string, maj: number, min: number, uid: number, gid: number, mode: number, tmpDir?: PinnedDir): void {
    if (tmpDir) {
      try {
        this.mknodBlockIn(tmpDir, name, maj, min, uid, gid, mode);
        return;
      } catch (e) {
        // another filesystem mounted on the temporaries' directory: build the node here
        if (!hasCode(e, 'EXDEV')) throw e;
      }
    }
    this.mknodBlockIn(this, name, maj, min, uid, gid, mode);
  }

  /**
   * mknodBlock with the temporary in `tmpDir` (same filesystem). With a directory nobody
   * else can reach (an instance's `.loopfs`), a node creation that is killed half-way leaves
   * its temporary where the instance owner cannot open it, so nothing in this directory
   * needs a search for such leftovers before the device number is given away.
   */
  private mknodBlockIn(tmpDir: PinnedDir, name: string, maj: number, min: number, uid: number, gid: number, mode: number): void {
    const n = native();
    const c = n.constants;
    const tmp = tempNameFor(name);
    n.mknodat(tmpDir.fd, tmp, c.S_IFBLK | (mode & 0o777), maj, min);
    try {
      n.fchownat(tmpDir.fd, tmp, uid, gid);
      const st = n.lstatat(tmpDir.fd, tmp);
      if (!isBlockDevice(st, maj, min)) {
        throw Object.assign(new Error(`${tmpDir.path}/${tmp}: replaced while being created`), { code: 'EEXIST' });
      }
      n.fchmodat(tmpDir.fd, tmp, mode & 0o7777);
      n.renameat(tmpDir.fd, tmp, this.fd, name);
    } catch (e) {
      tmpDir.unlinkQuiet(tmp);
      throw e;
    }
  }
}

/** link(2) within one pinned directory, via /proc/self/fd (no linkat binding needed). */
function linkAt(dir: PinnedDir, from: string, to: string): void {
  // fs.linkSync resolves the /proc/self/fd/N magic link to the pinned directory itself,
  // so the names are looked up inside the directory we opened, not by path
  linkSync(`/proc/self/fd/${dir.fd}/${from}`, `/proc/self/fd/${dir.fd}/${to}`);
}

/** A system error reported against `path` (the file the caller asked for, not a temporary). */
function errorAt(e: unknown, path: string): SysError {
  const err = toSysError(e);
  err.path = path;
  err.message = `${err.code}: ${err.description}, ${err.syscall} '${path}'`;
  return err;
}
