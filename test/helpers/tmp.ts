// Temporary directories for root integration tests. They live under /tmp (ext4 on these machines,
// so inode numbers are large and O_DIRECT works), are unique per run, and are removed afterwards.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export function makeTempDir(prefix: string): string {
  return mkdtempSync(path.join(os.tmpdir(), `${prefix}-`));
}

export function removeTree(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}
