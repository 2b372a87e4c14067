/**
 * Which devices already use a file: util-linux's loopcxt_is_used() and
 * loopcxt_find_overlap(), shared by `losetup -j`/`-L` and mount.loop's re-use check.
 */
import { statSync } from 'node:fs';
import type { LoopDevice } from '../kernel/loop-device.js';
import type { LoopScope } from '../instance/scope.js';
import { canonicalize } from './canonicalize.js';

/**
 * util-linux's loopcxt_is_used(): match by st_dev/st_ino when both the file and the
 * device's ids are known, else by backing-file name (first as given, then
 * canonicalised), then by offset when -o was given.
 */
export class FileMatcher {
  private readonly st: { dev: bigint; ino: bigint } | null;
  private canonical: string | null = null;

  constructor(
    private readonly file: string,
    private readonly offset: bigint | null,
  ) {
    try {
      const s = statSync(file, { bigint: true });
      this.st = { dev: s.dev, ino: s.ino };
    } catch {
      // a file that cannot be stat'ed (ENOENT, EACCES) overlaps nothing by inode
      this.st = null;
    }
  }

  matches(dev: LoopDevice): boolean {
    let found = this.matchesFile(dev, this.canonical ?? this.file);
    if (!found && this.canonical === null) {
      this.canonical = canonicalize(this.file);
      found = this.matchesFile(dev, this.canonical);
    }
    if (!found) return false;
    return this.offset === null || dev.offset() === this.offset;
  }

  private matchesFile(dev: LoopDevice, name: string): boolean {
    const ids = this.st ? dev.backingIds() : null;
    if (this.st && ids) return ids.ino === this.st.ino && ids.dev === this.st.dev;
    return dev.backingFile() === name;
  }
}


export type Overlap = { kind: 'none' } | { kind: 'overlap' } | { kind: 'full'; dev: LoopDevice };

/** util-linux loopcxt_find_overlap(): the first device on the same file that overlaps the range. */
export function findOverlap(scope: LoopScope, file: string, offset: bigint, sizelimit: bigint): Overlap {
  const m = new FileMatcher(file, null);
  for (const dev of scope.usedDevices()) {
    if (!m.matches(dev)) continue;
    const devOffset = dev.offset();
    const devLimit = dev.sizelimit();
    if (devOffset === null || devLimit === null) continue; // raced with autoclear
    if (devLimit === sizelimit && devOffset === offset) return { kind: 'full', dev };
    if (devLimit !== 0n && offset >= devOffset + devLimit) continue;
    if (sizelimit !== 0n && offset + sizelimit <= devOffset) continue;
    return { kind: 'overlap' };
  }
  return { kind: 'none' };
}

