/**
 * The package root (where bin/, man/ and native/ live), found from the calling module's
 * location: the nearest directory above it that holds bin/loopfs. Modules run from
 * dist/<dir>/<file>.js, dist/<dir>/<sub>/<file>.js and the esbuild bundles in
 * dist/bundle/, so a fixed number of '..' would be right for only some of them.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let cached: string | null = null;

export function packageRoot(): string {
  if (cached) return cached;
  const start = dirname(fileURLToPath(import.meta.url));
  for (let dir = start; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'bin', 'loopfs')) && existsSync(join(dir, 'package.json'))) return (cached = dir);
    if (dirname(dir) === dir) throw new Error(`loopfs: no package root above ${start}`);
  }
}
