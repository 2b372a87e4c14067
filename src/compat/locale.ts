/**
 * Whether util-linux would run with a UTF-8 character set: libsmartcols escapes every
 * non-ASCII byte of a table cell in the C locale and prints it raw under UTF-8, so the
 * answer changes both the bytes and the column widths of `losetup -l`.
 *
 * setlocale(LC_ALL, "") takes LC_ALL, else LC_CTYPE, else LANG; a locale that is not
 * installed leaves the program in "C". C.UTF-8 is built into glibc (>= 2.35) and Debian.
 */
import { existsSync } from 'node:fs';

export function localeIsUtf8(env: NodeJS.ProcessEnv = process.env): boolean {
  const name = env.LC_ALL || env.LC_CTYPE || env.LANG || '';
  const m = /^([^.@]+)\.(utf-?8)(@.*)?$/i.exec(name);
  if (!m) return false;
  if (m[1] === 'C' || m[1] === 'POSIX') return true;
  // an installed locale: in the archive (assumed to hold what `locale-gen` built) or a directory
  return (
    existsSync(`/usr/lib/locale/${m[1]}.${m[2]}`) ||
    existsSync(`/usr/lib/locale/${m[1]}.utf8`) ||
    existsSync('/usr/lib/locale/locale-archive')
  );
}
